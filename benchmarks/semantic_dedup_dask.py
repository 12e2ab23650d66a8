"""SemDeDup as the build runs it: ``semantic_dedup``'s own resolve (FAISS range search
inside a cluster, float64 decides, the smallest similar key) and per-shard rule, in the
build's keyed step on Beam's DaskRunner over a local dask.distributed cluster; wall
time, largest cluster, pairs inside clusters, planted copies found, and every worker's
peak RSS.

    PYTHONPATH=. python benchmarks/semantic_dedup_dask.py --n 200000 --per-shard 10000 --workers 2

Each shard's vectors are generated inside its worker from their global index (nothing
crosses from the launcher but the centroids): unit vectors around ``topics``
directions, 10% planted near-copies (cosine ~0.99) of vectors anywhere in the corpus.
The centroids are trained here on a sample, as ``embedding_clusters`` trains them, and
each worker assigns its shard's vectors to the nearest one, as ``embedding_clusters``
records it. The launcher regenerates the assignment only to report cluster sizes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlcurate.filters.semantic_dedup import SemanticDedup, SemanticDedupConfig, spherical_kmeans  # noqa: E402
from vlcurate.io.stats import ShardStats  # noqa: E402
from vlcurate.pipelines.beam import StageRun  # noqa: E402
from vlcurate.pipelines.keyed import shard_of  # noqa: E402
from dask_cluster import rss_columns, run_keyed_on_dask  # noqa: E402  (benchmarks/dask_cluster.py)


@dataclass(frozen=True)
class SyntheticSemanticConfig(SemanticDedupConfig):
    n: int = 200_000
    per_shard: int = 10_000
    dim: int = 64
    topics: int = 50
    centroids: bytes = b""  # float64, (clusters, dim)


def vector(cfg: SyntheticSemanticConfig, index: int, copy: bool = True) -> tuple[np.ndarray, bool]:
    """Vector ``index`` of the corpus (unit norm) and whether it is a planted copy."""
    rng = np.random.default_rng([11, index])
    centres = np.random.default_rng([11]).normal(size=(cfg.topics, cfg.dim))
    planted = rng.random() < 0.1  # drawn first, so the vector a copy copies is the one its index has
    if copy and index and planted:
        source, _ = vector(cfg, int(rng.integers(0, index)), copy=False)
        x = source + 0.02 * rng.normal(size=cfg.dim) / np.sqrt(cfg.dim)
        return x / np.linalg.norm(x), True
    x = centres[rng.integers(0, cfg.topics)] + 3.2 * rng.normal(size=cfg.dim) / np.sqrt(cfg.dim)
    return x / np.linalg.norm(x), False


def shard_vectors(cfg: SyntheticSemanticConfig, shard: int) -> tuple[list[str], np.ndarray, int]:
    start = shard * cfg.per_shard
    rows = [vector(cfg, i) for i in range(start, min(cfg.n, start + cfg.per_shard))]
    keys = [f"{shard:05d}_{i:06d}" for i in range(len(rows))]
    return keys, np.stack([v for v, _ in rows]).astype(np.float32), sum(c for _, c in rows)


def assign(cfg: SyntheticSemanticConfig, emb: np.ndarray) -> np.ndarray:
    centroids = np.frombuffer(cfg.centroids, np.float64).reshape(-1, cfg.dim)
    return np.argmax(emb.astype(np.float64) @ centroids.T, axis=1)


class SyntheticSemanticDedup(SemanticDedup):
    """semantic_dedup's groups, resolve and rule on generated vectors; counts instead of writing."""

    name = "synthetic_semantic_dedup"
    Config = SyntheticSemanticConfig

    def signatures(self, shard: int):
        keys, emb, _ = shard_vectors(self.config, shard)
        for key, vec, cluster in zip(keys, emb, assign(self.config, emb)):
            yield str(int(cluster)), (key, vec.astype("<f4").tobytes())

    def run_shard(self, shard: int, findings: list | None = None) -> ShardStats:
        stats = self.new_stats(shard, 0)
        stats.add("semantic_duplicate", len({key for key, _ in findings or [] if shard_of(key) == shard}))
        return stats


def main() -> None:
    for name in ("distributed", "apache_beam", "root"):
        logging.getLogger(name if name != "root" else None).setLevel(logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--per-shard", type=int, default=10_000)
    ap.add_argument("--clusters", type=int, default=200)
    ap.add_argument("--sample", type=int, default=20_000)
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    cfg = SyntheticSemanticConfig(threshold=args.threshold, n=args.n, per_shard=args.per_shard)
    shards = -(-args.n // args.per_shard)
    sample = np.sort(np.random.default_rng(1).choice(args.n, args.sample, replace=False))
    centroids = spherical_kmeans(np.stack([vector(cfg, int(i))[0] for i in sample]), args.clusters, 20, 0)
    cfg = SyntheticSemanticConfig(threshold=args.threshold, n=args.n, per_shard=args.per_shard,
                                  centroids=np.ascontiguousarray(centroids, np.float64).tobytes())
    sizes = np.zeros(args.clusters, np.int64)
    planted = 0
    for shard in range(shards):
        _, emb, copies = shard_vectors(cfg, shard)
        sizes += np.bincount(assign(cfg, emb), minlength=args.clusters)
        planted += copies
    r = run_keyed_on_dask(StageRun("synthetic_semantic_dedup", "synthetic_semantic_dedup", cfg),
                          SyntheticSemanticDedup, shards, args.workers)
    pairs = int((sizes * (sizes - 1) // 2).sum())
    print(f"n={args.n} shards={shards} clusters={args.clusters} threshold={args.threshold}: "
          f"{r['seconds']:.1f} s, largest cluster {int(sizes.max())}, pairs inside clusters {pairs:,} "
          f"(all pairs {args.n * (args.n - 1) // 2:,}), planted copies {planted}, dropped as copies "
          f"{r['counts'].get('semantic_duplicate', 0)}; "
          f"worker peak RSS MB {rss_columns(r)}", flush=True)


if __name__ == "__main__":
    main()
