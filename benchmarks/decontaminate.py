"""Eval-set embedding search: exact (IndexFlatIP) against the approximate index
``vlcurate evalsets add`` builds above ``EXACT_MAX`` items (IndexIVFFlat, nprobe
chosen at build time for recall@1 >= 0.99 on held-out perturbed queries).

Index: N clustered unit vectors (2000 centres; a member is its centre plus noise of
norm ``--spread`` 1.0, renormalised: cosine ~0.7 to the centre, ~0.5 to its cluster
mates). Queries: perturbed index items (noise of norm 0.35, renormalised: cosine
~0.94 to the item, never the item itself; a seed the build's calibration does not
use) plus as many unrelated distractors (random unit vectors). Throughput is the
whole query batch searched at once, k=1, on every core FAISS gets. recall@1 is
against exact search; for distractors the nearest item does not matter to a
decision (its cosine is far below any threshold), so the decision agreement at a
0.9 threshold is reported for all queries.

The hash path's exact binary index is timed at ``--hash-sizes`` items (random codes:
brute-force popcount costs the same for any codes).

    python benchmarks/decontaminate.py [--n 200000] [--dims 512 768] [--queries 1000] [--hash-sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def clustered(n: int, d: int, clusters: int, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x *= spread / np.linalg.norm(x, axis=1, keepdims=True)
    x += centres[rng.integers(0, clusters, n)]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed_search(index, q: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    start = time.perf_counter()
    sims, ids = index.search(q, 1)
    return time.perf_counter() - start, sims[:, 0], ids[:, 0]


def main() -> None:
    import faiss

    from vlcurate.filters.eval_index import build_embedding_index, perturbed_queries

    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dims", type=int, nargs="*", default=[512, 768])
    parser.add_argument("--hash-sizes", type=int, nargs="*", default=[100_000, 1_000_000],
                        help="eval-set sizes for the hash path's exact IndexBinaryFlat")
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=1000, help="half perturbed items, half distractors")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--spread", type=float, default=1.0, help="member noise norm around its centre")
    args = parser.parse_args()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}, {os.cpu_count()} cores")
    for d in args.dims:
        x = clustered(args.n, d, args.clusters, args.spread, seed=d)
        t0 = time.perf_counter()
        ivf, info = build_embedding_index(x, exact_max=0, nlist=args.nlist)
        build_s = time.perf_counter() - t0
        flat = faiss.IndexFlatIP(d)
        flat.add(x)
        half = args.queries // 2
        rng = np.random.default_rng(7)
        distractors = rng.standard_normal((half, d)).astype(np.float32)
        distractors /= np.linalg.norm(distractors, axis=1, keepdims=True)
        q = np.concatenate([perturbed_queries(x, half, seed=12345), distractors])
        exact_s, exact_sim, exact_id = timed_search(flat, q)
        ivf_s, ivf_sim, ivf_id = timed_search(ivf, q)
        same = ivf_id == exact_id
        decisions = np.mean((exact_sim >= 0.9) == (ivf_sim >= 0.9))
        print(f"{args.n} x {d}-d: IVF nlist {info.nlist}, nprobe {info.nprobe} (build-time recall@1 "
              f"{info.recall_at_1} on {info.calibration_queries} queries; build {build_s:.1f} s)")
        print(f"  exact   {len(q) / exact_s:9.0f} queries/s")
        print(f"  ivf     {len(q) / ivf_s:9.0f} queries/s  = {exact_s / ivf_s:.1f}x exact")
        print(f"  recall@1 vs exact: perturbed {same[:half].mean():.4f}, distractors {same[half:].mean():.4f}; "
              f"decisions at cosine 0.9 agree on {decisions:.4f} of all queries "
              f"(max distractor cosine {exact_sim[half:].max():.3f})")

    for n in args.hash_sizes:
        rng = np.random.default_rng(n)
        index = faiss.IndexBinaryFlat(64)
        codes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
        index.add(codes)
        index.use_heap = False  # as EvalSetIndex.load sets it
        queries = rng.integers(0, 256, (args.queries, 8), dtype=np.uint8)
        seconds, dist, _ = timed_search(index, queries)
        # the same exact search in numpy (one thread), for comparison
        words, qwords = codes.view("<u8")[:, 0], queries.view("<u8")[:, 0]
        start = time.perf_counter()
        best = np.array([np.bitwise_count(words ^ w).min() for w in qwords])
        numpy_s = time.perf_counter() - start
        assert np.array_equal(best, dist)
        print(f"hash path, {n} eval hashes: IndexBinaryFlat {args.queries / seconds:.0f} queries/s, "
              f"numpy bitwise_count {args.queries / numpy_s:.0f} queries/s (same distances)")


if __name__ == "__main__":
    main()
