"""Near-duplicates by pHash at scale, without a pipeline: synthetic 64-bit hashes
(uniform, plus a planted 10% of near-copies with 1-4 bits flipped), cut into the
bands ``near_dedup`` uses, and for each distance: the largest group, the pairs the
groups make to verify, and (where that is affordable) the wall time of resolving
every group with ``NearDedup.resolve`` in this process, and how many planted copies
were found.

    python benchmarks/near_dedup_hash.py --sizes 100000 1000000 --distances 4 8 14 --max-pairs 3e8
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vlcurate.filters.near_dedup import NearDedup, NearDedupConfig, band_masks
from vlcurate.pipelines.stage import Layout


def planted_hashes(n: int, seed: int = 0) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**63, size=n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    copies = n // 10
    source = rng.integers(0, n - copies, copies)
    flips = np.zeros(copies, np.uint64)
    for _ in range(4):  # up to 4 bits flipped (a repeated bit flips back: 0-4 in all)
        flips ^= np.uint64(1) << rng.integers(0, 64, copies).astype(np.uint64)
    hashes[n - copies:] = hashes[source] ^ flips
    return hashes, copies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--distances", type=int, nargs="+", default=[4, 8, 14])
    parser.add_argument("--max-pairs", type=float, default=3e8, help="resolve only when the groups make fewer pairs")
    args = parser.parse_args()
    print(f"{'hashes':>9} {'distance':>8} {'bands':>5} {'largest group':>13} {'pairs to verify':>16} "
          f"{'resolve s':>9} {'copies found':>12}")
    for n in args.sizes:
        hashes, copies = planted_hashes(n)
        keys = [f"{i // 1000:05d}_{i % 1000:06d}" for i in range(n)]
        for distance in args.distances:
            cfg = NearDedupConfig(distance=distance)
            groups, largest, pairs = [], 0, 0
            for band, (shift, mask) in enumerate(band_masks(cfg.band_count)):
                values = (hashes >> np.uint64(shift)) & np.uint64(mask)
                _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
                largest = max(largest, int(counts.max()))
                pairs += int((counts.astype(np.int64) * (counts - 1) // 2).sum())
                groups.append((band, values, inverse, counts))
            seconds, found = "-", "-"
            if pairs <= args.max_pairs:
                stage = NearDedup(cfg, Layout("/nonexistent"))
                hex_hashes = [f"{int(h):016x}" for h in hashes]
                dropped: set[str] = set()
                start = time.perf_counter()
                for band, values, inverse, counts in groups:
                    order = np.argsort(inverse, kind="stable")
                    bounds = np.concatenate([[0], np.cumsum(counts)])
                    for g in np.nonzero(counts > 1)[0]:
                        members = [(keys[i], hex_hashes[i]) for i in order[bounds[g]:bounds[g + 1]]]
                        dropped.update(key for _, (key, _) in stage.resolve(f"{band}:{g}", members))
                seconds = f"{time.perf_counter() - start:.1f}"
                found = f"{sum(k in dropped for k in keys[n - copies:]) / copies:.3f}"
            print(f"{n:>9} {distance:>8} {cfg.band_count:>5} {largest:>13} {pairs:>16,} {seconds:>9} {found:>12}")


if __name__ == "__main__":
    main()
