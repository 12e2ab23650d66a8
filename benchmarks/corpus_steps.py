"""Exact dedup as a keyed corpus-wide step vs gathering the corpus in one worker, on
Beam's DaskRunner over a local dask.distributed cluster: wall time and every worker's
peak RSS, for synthetic (key, hash) rows.

    .venv/bin/python benchmarks/corpus_steps.py --rows 100000 1000000 --workers 2

Each shard's rows are generated inside its worker (no data crosses from the
launcher): keys ``<shard>_<row>``, hashes drawn from ``0.9 * rows`` values so that
about 1 row in 6 has a copy, mostly in another shard. ``keyed`` is the build's own
step (:func:`vlcurate.pipelines.beam.stage_step`: Signatures -> GroupByKey -> Resolve
-> GroupByKey -> RunStage, the records through the storage layer); ``runner`` is the
same graph with nothing in it (ids only), the DaskRunner's own cost per shard;
``gather`` is the path the keyed step replaced (every shard's table to one worker with
``ToList``, resolved there). Each run gets a fresh cluster, so a worker's peak RSS is
that run's alone.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlcurate.io.stats import ShardStats  # noqa: E402
from vlcurate.pipelines.keyed import KeyedStage, shard_of  # noqa: E402
from vlcurate.pipelines.stage import Layout  # noqa: E402
from dask_cluster import MemorySampler, local_cluster, peak_rss_mb  # noqa: E402  (benchmarks/dask_cluster.py)


@dataclass(frozen=True)
class SyntheticConfig:
    rows: int
    rows_per_shard: int
    seed: int = 0


def shard_rows(cfg: SyntheticConfig, shard: int) -> Iterator[tuple[str, str]]:
    n = min(cfg.rows_per_shard, cfg.rows - shard * cfg.rows_per_shard)
    values = np.random.default_rng([cfg.seed, shard]).integers(0, int(cfg.rows * 0.9), n)
    for i, v in enumerate(values.tolist()):
        yield hashlib.blake2b(v.to_bytes(8, "little"), digest_size=8).hexdigest(), f"{shard:05d}_{i:06d}"


class SyntheticDedup(KeyedStage):
    """exact_dedup's rule on synthetic rows; run_shard counts instead of writing decisions."""

    name = "synthetic_dedup"
    Config = SyntheticConfig

    def signatures(self, shard: int):
        return shard_rows(self.config, shard)

    def resolve(self, value, keys):
        first, *copies = sorted(keys)
        for key in copies:
            yield shard_of(key), (key, first)

    def run_shard(self, shard: int, findings: list | None = None) -> ShardStats:
        stats = self.new_stats(shard, 0)
        stats.add("duplicates", len(findings or []))
        return stats



def _gather_resolve(pairs: list) -> int:
    """The replaced path: every (hash, key) of the corpus in this one worker."""
    first: dict[str, str] = {}
    duplicates = 0
    for value, key in sorted(pairs, key=lambda p: p[1]):
        if first.setdefault(value, key) != key:
            duplicates += 1
    return duplicates


def run(mode: str, cfg: SyntheticConfig, workers: int, memory_limit: str | None = None) -> dict:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from vlcurate.pipelines.beam import StageRun, run_to_completion, runner_defaults, stage_step

    shards = -(-cfg.rows // cfg.rows_per_shard)
    with local_cluster(workers, memory_limit) as (cluster, client):
        idle = client.run(peak_rss_mb)
        root = tempfile.mkdtemp(prefix="corpus-steps-")
        layout = Layout(root)
        options = PipelineOptions(["--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
                                   f"--dask_client_address={cluster.scheduler_address}",
                                   *runner_defaults("DaskRunner", (f"--dask_client_address={cluster.scheduler_address}",),
                                                    shards)])
        started = time.monotonic()
        p = beam.Pipeline(options=options)
        ids = p | beam.Create(list(range(shards))) | beam.Reshuffle()
        if mode == "keyed":
            stage_step(ids, StageRun("synthetic_dedup", "dedup", cfg), layout, shards, SyntheticDedup)
        elif mode == "runner":  # the keyed step's graph with nothing in it: the runner's own cost
            (ids
             | "Phase1" >> beam.Map(lambda s: (s, s)) | "Barrier1" >> beam.GroupByKey()
             | "Phase2" >> beam.Map(lambda kv: (kv[0], kv[0])) | "Barrier2" >> beam.GroupByKey()
             | beam.Keys() | "Run" >> beam.Map(lambda s: s))
        else:
            (ids
             | beam.FlatMap(lambda s: list(shard_rows(cfg, s)))
             | beam.combiners.ToList()
             | beam.Map(_gather_resolve))
        with MemorySampler(client) as sampler:
            run_to_completion(p)
        seconds = time.monotonic() - started
        peaks = client.run(peak_rss_mb)
    return {"mode": mode, "rows": cfg.rows, "shards": shards, "seconds": seconds,
            "idle_mb": sorted(idle.values()), "peak_mb": sorted(peaks.values()),
            "growth_mb": sorted(peaks[w] - idle[w] for w in peaks), "managed_mb": sampler.managed_mb()}


def main(argv: list[str] | None = None) -> None:
    for name in ("distributed", "apache_beam", "root"):
        logging.getLogger(name if name != "root" else None).setLevel(logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--rows-per-shard", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default=None,
                    help="each worker's memory limit (e.g. 600MB): above 40%% of it the worker spills to disk")
    ap.add_argument("--modes", nargs="+", default=["keyed", "gather"], choices=["keyed", "runner", "gather"])
    args = ap.parse_args(argv)
    print(f"{'mode':<8}{'rows':>10}{'shards':>8}{'seconds':>9}  worker peak RSS MB (idle before; growth)"
          "  [managed MB at the highest sampled process memory]")
    for rows in args.rows:
        for mode in args.modes:
            r = run(mode, SyntheticConfig(rows, args.rows_per_shard), args.workers, args.memory_limit)
            peaks = ", ".join(f"{p:.0f}" for p in r["peak_mb"])
            idle = ", ".join(f"{p:.0f}" for p in r["idle_mb"])
            growth = ", ".join(f"+{g:.0f}" for g in r["growth_mb"])
            managed = ", ".join(f"{m}" for m in r["managed_mb"])
            print(f"{r['mode']:<8}{r['rows']:>10}{r['shards']:>8}{r['seconds']:>9.1f}  {peaks}  ({idle}; {growth})  [{managed}]",
                  flush=True)


if __name__ == "__main__":
    main()
