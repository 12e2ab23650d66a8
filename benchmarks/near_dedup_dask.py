"""Near-duplicates by pHash as the build runs them: ``near_dedup``'s own signatures
(bands), resolve and per-shard min, in the build's keyed step on Beam's DaskRunner over
a local dask.distributed cluster; wall time and every worker's peak RSS.

    PYTHONPATH=. python benchmarks/near_dedup_dask.py --hashes 100000 1000000 --distances 4 14 --workers 2

Each shard's hashes are generated inside its worker (nothing crosses from the
launcher): uniform 64-bit hashes, and 10% near-copies (0-4 bits flipped) of hashes of
other shards, so most copies cross shards. Each run gets a fresh cluster, so a
worker's peak RSS is that run's alone.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlcurate.filters.near_dedup import NearDedup, NearDedupConfig, band_masks  # noqa: E402
from vlcurate.io.stats import ShardStats  # noqa: E402
from vlcurate.pipelines.beam import StageRun  # noqa: E402
from dask_cluster import rss_columns, run_keyed_on_dask  # noqa: E402  (benchmarks/dask_cluster.py)


@dataclass(frozen=True)
class SyntheticNearDedupConfig(NearDedupConfig):
    hashes: int = 100_000
    per_shard: int = 10_000


def base_hash(cfg: SyntheticNearDedupConfig, index: int) -> int:
    return int(np.random.default_rng([7, index]).integers(0, 2**63, dtype=np.uint64)) * 2 + index % 2


def shard_hashes(cfg: SyntheticNearDedupConfig, shard: int) -> list[tuple[str, int]]:
    n = min(cfg.per_shard, cfg.hashes - shard * cfg.per_shard)
    rng = np.random.default_rng([cfg.distance, shard])
    out = []
    for i in range(n):
        h = base_hash(cfg, shard * cfg.per_shard + i)
        if rng.random() < 0.1:  # a near-copy of a hash from anywhere in the corpus
            h = base_hash(cfg, int(rng.integers(0, cfg.hashes)))
            for bit in rng.integers(0, 64, int(rng.integers(0, 5))):
                h ^= 1 << int(bit)
        out.append((f"{shard:05d}_{i:06d}", h))
    return out


class SyntheticNearDedup(NearDedup):
    """near_dedup's bands, resolve and min rule on generated hashes; counts instead of writing."""

    name = "synthetic_near_dedup"
    Config = SyntheticNearDedupConfig

    def signatures(self, shard: int):
        masks = band_masks(self.config.band_count)
        for key, value in shard_hashes(self.config, shard):
            for band, (shift, mask) in enumerate(masks):
                yield f"{band}:{(value >> shift) & mask:x}", (key, f"{value:016x}")

    def run_shard(self, shard: int, findings: list | None = None) -> ShardStats:
        stats = self.new_stats(shard, 0)
        stats.add("near_duplicate", len({key for key, _ in findings or []}))
        return stats



def main() -> None:
    for name in ("distributed", "apache_beam", "root"):
        logging.getLogger(name if name != "root" else None).setLevel(logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hashes", type=int, nargs="+", default=[100_000])
    ap.add_argument("--distances", type=int, nargs="+", default=[4, 14])
    ap.add_argument("--per-shard", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default=None,
                    help="each worker's memory limit (e.g. 500MB): above 40%% of it the worker spills to disk")
    args = ap.parse_args()
    print(f"{'hashes':>9}{'distance':>9}{'shards':>8}{'seconds':>9}  worker peak RSS MB (idle before; growth)")
    for n in args.hashes:
        for d in args.distances:
            cfg = SyntheticNearDedupConfig(distance=d, hashes=n, per_shard=args.per_shard)
            r = run_keyed_on_dask(StageRun("synthetic_near_dedup", "synthetic_near_dedup", cfg), SyntheticNearDedup,
                                  -(-n // args.per_shard), args.workers, args.memory_limit)
            print(f"{n:>9}{d:>9}{r['shards']:>8}{r['seconds']:>9.1f}  {rss_columns(r)}", flush=True)


if __name__ == "__main__":
    main()
