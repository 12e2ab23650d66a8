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
