"""SemDeDup at scale, without a pipeline: ``n`` clustered unit vectors (``topics``
directions, 10% planted near-copies at cosine ~0.99), k-means trained on a sample as
``embedding_clusters`` trains it, every vector assigned, then each cluster resolved
with ``SemanticDedup.resolve`` in this process: wall time per step, largest cluster,
pairs inside clusters, and the planted copies found.

    python benchmarks/semantic_dedup.py --n 200000 --dim 64 --clusters 200 --sample 20000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vlcurate.filters.semantic_dedup import SemanticDedup, SemanticDedupConfig, spherical_kmeans
from vlcurate.pipelines.stage import Layout


def vectors(n: int, dim: int, topics: int, seed: int = 0) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, dim))
    x = centres[rng.integers(0, topics, n)] + 0.8 * rng.normal(size=(n, dim)) / np.sqrt(dim) * 4
    copies = n // 10
    source = rng.integers(0, n - copies, copies)
    x[n - copies:] = x[source] + 0.02 * rng.normal(size=(copies, dim)) * np.linalg.norm(x[source], axis=1, keepdims=True) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), copies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--topics", type=int, default=50)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--sample", type=int, default=20_000)
    parser.add_argument("--threshold", type=float, default=0.95)
    args = parser.parse_args()
    x, copies = vectors(args.n, args.dim, args.topics)
    keys = [f"{i // 1000:05d}_{i % 1000:06d}" for i in range(args.n)]
    start = time.perf_counter()
    sample = np.random.default_rng(1).choice(args.n, args.sample, replace=False)
    centroids = spherical_kmeans(x[np.sort(sample)], args.clusters, 20, 0)
    trained = time.perf_counter()
    assign = np.concatenate([np.argmax(x[i:i + 50_000].astype(np.float64) @ centroids.T, axis=1)
                             for i in range(0, args.n, 50_000)])
    assigned = time.perf_counter()
    stage = SemanticDedup(SemanticDedupConfig(threshold=args.threshold), Layout("/nonexistent"))
    sizes = np.bincount(assign, minlength=args.clusters)
    dropped: set[str] = set()
    for c in np.nonzero(sizes > 1)[0]:
        members = [(keys[i], x[i].astype("<f4").tobytes()) for i in np.nonzero(assign == c)[0]]
        dropped.update(key for _, (key, _) in stage.resolve(str(c), members))
    resolved = time.perf_counter()
    pairs = int((sizes.astype(np.int64) * (sizes - 1) // 2).sum())
    print(f"n={args.n} dim={args.dim} clusters={args.clusters} sample={args.sample} threshold={args.threshold}")
    print(f"train {trained - start:.1f} s, assign {assigned - trained:.1f} s, resolve {resolved - assigned:.1f} s; "
          f"largest cluster {int(sizes.max())}, pairs inside clusters {pairs:,}; "
          f"planted copies found {sum(k in dropped for k in keys[args.n - copies:]) / copies:.3f}, dropped {len(dropped)}")


if __name__ == "__main__":
    main()
