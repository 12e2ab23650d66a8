"""A fresh local dask.distributed cluster for the Dask benchmarks, and a worker's peak RSS.

With ``memory_limit`` each worker spills the results it holds (a shuffle's records
among them) to its local disk above 40 % of the limit and never pauses or restarts: a
paused worker cannot spill results in flight and the run stalls.
"""

from __future__ import annotations

import contextlib
import resource
from typing import Iterator

SPILL = {"distributed.worker.memory.target": 0.4, "distributed.worker.memory.spill": 0.5,
         "distributed.worker.memory.pause": False, "distributed.worker.memory.terminate": False}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def local_cluster(workers: int, memory_limit: str | None = None) -> Iterator[tuple]:
    """``(cluster, client)``: ``workers`` processes of one thread on loopback, closed at the end."""
    import dask
    import distributed

    with dask.config.set(SPILL if memory_limit else {}):
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None, host="127.0.0.1", silence_logs=50,
                                           memory_limit=memory_limit or "auto")
    client = distributed.Client(cluster)
    try:
        yield cluster, client
    finally:
        client.close()
        cluster.close()


class MemorySampler:
    """Polls the scheduler every second while a run goes on and keeps, per worker, the
    sample with the highest process memory: ``(process MB, managed MB)``, managed being
    the results Dask holds and counts (what it could spill), the rest the worker itself."""

    def __init__(self, client):
        import threading

        self.client = client
        self.at_peak: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            try:
                workers = self.client.scheduler_info()["workers"]
            except Exception:  # the scheduler is busy or closing: skip this sample
                continue
            for addr, w in workers.items():
                m = w["metrics"]
                sample = (m.get("memory", 0) >> 20, m.get("managed_bytes", 0) >> 20)
                if sample[0] > self.at_peak.get(addr, (0, 0))[0]:
                    self.at_peak[addr] = sample

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def managed_mb(self) -> list[int]:
        return sorted(managed for _, managed in self.at_peak.values())


def run_keyed_on_dask(run, cls, shards: int, workers: int, memory_limit: str | None = None) -> dict:
    """Stage ``run`` (of class ``cls``, keyed or not) on ``shards`` shard ids, as a build
    runs it (:func:`vlcurate.pipelines.beam.stage_step`), on Beam's DaskRunner over a fresh
    local cluster: wall time, and each worker's peak RSS, idle RSS and growth, in MB."""
    import tempfile
    import time

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from vlcurate.pipelines.beam import run_to_completion, runner_defaults, stage_step
    from vlcurate.pipelines.stage import Layout

    with local_cluster(workers, memory_limit) as (cluster, client):
        idle = client.run(peak_rss_mb)
        layout = Layout(tempfile.mkdtemp(prefix=f"{run.name}-"))
        options = PipelineOptions(["--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
                                   f"--dask_client_address={cluster.scheduler_address}",
                                   *runner_defaults("DaskRunner", (f"--dask_client_address={cluster.scheduler_address}",),
                                                    shards)])
        started = time.monotonic()
        p = beam.Pipeline(options=options)
        stage_step(p | beam.Create(list(range(shards))) | beam.Reshuffle(), run, layout, shards, cls)
        run_to_completion(p)
        seconds = time.monotonic() - started
        peaks = client.run(peak_rss_mb)
    return {"shards": shards, "seconds": seconds, "idle_mb": sorted(idle.values()), "peak_mb": sorted(peaks.values()),
            "growth_mb": sorted(peaks[w] - idle[w] for w in peaks), "counts": _summed_counts(layout, run.name, shards)}


def _summed_counts(layout, stage: str, shards: int) -> dict[str, int]:
    """The stage's counts over every shard, from the stats markers the run wrote."""
    import json

    from vlcurate.io import storage

    total: dict[str, int] = {}
    for shard in range(shards):
        for key, value in json.loads(storage.read_bytes(layout.stats(stage, shard)))["counts"].items():
            total[key] = total.get(key, 0) + value
    return total


def rss_columns(result: dict) -> str:
    """``peak, peak (idle, idle; +growth, +growth)`` of a :func:`run_keyed_on_dask` result."""
    def join(values, sign=""):
        return ", ".join(f"{sign}{v:.0f}" for v in values)
    return f"{join(result['peak_mb'])}  ({join(result['idle_mb'])}; {join(result['growth_mb'], '+')})"
