"""Near-duplicate removal by perceptual hash, across the whole corpus, without
comparing all pairs.

Rule (decided from pairs alone, so in one keyed pass): a sample is dropped as
``near_duplicate`` when a sample with a smaller key has a 64-bit pHash within
``distance`` bits of its own; ``detail`` names the smallest such key. Keys are
``<shard>_<row>``, so the earliest copy in input order is kept. The rule looks at
pairs, not at chains: when a ~ b and b ~ c but a and c are further apart, b and c are
both dropped (c points at b).

Multi-index hashing finds the pairs: the 64 bits are cut into ``bands`` bands (default
``distance + 1``); two hashes within ``distance`` bits differ in at most ``distance``
bands, so with ``distance + 1`` bands they agree on at least one (pigeonhole) and no
pair within the distance is missed. Each sample is a member of one group per band,
keyed by ``(band, band value)``; a group is verified on its own (every member against
the smaller keys of the group). A pair that agrees on several bands is found in
several groups, and a sample may meet smaller keys within the distance in several
groups: every group reports the smallest one it saw, and the shard takes the
smallest of its findings per sample, which is the smallest key within the distance
overall (that key shares a band with the sample, so its group saw it).

Short bands make big groups: with ``b``-bit bands a group holds about ``n / 2^b``
samples of ``n`` uniformly spread hashes, and verifying it costs its size squared.
The default ``distance`` (14) comes from the measurement in
``tests/filters/test_near_dedup.py`` (README: Near-duplicates by perceptual hash):
crops of up to 10% move a pHash by up to ~14 bits in 95% of copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from vlcurate.filters.base import KEEP, Decision, FilterConfig, FilterStage
from vlcurate.pipelines.keyed import KeyedStage, shard_of
from vlcurate.pipelines.samples import SampleRow, alive_samples
from vlcurate.pipelines.stage import register_stage
from vlcurate.typed import FieldError, bounded, check_bounds

HASH_BITS = 64


@dataclass(frozen=True)
class NearDedupConfig(FilterConfig):
    distance: int = bounded(14, ge=0, le=HASH_BITS - 1)  # max Hamming distance of near-copies
    bands: int | None = bounded(None, ge=1, le=HASH_BITS)  # None: distance + 1 (finds every pair)

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.bands is not None and self.bands <= self.distance:
            raise FieldError("bands", f"must be > distance ({self.distance}) or pairs within the distance "
                                      f"can be missed, got {self.bands}")

    @property
    def band_count(self) -> int:
        return self.bands if self.bands is not None else self.distance + 1


def band_masks(bands: int) -> list[tuple[int, int]]:
    """``(shift, mask)`` of each band: the 64 bits cut into ``bands`` near-equal runs."""
    widths = [HASH_BITS // bands + (1 if i < HASH_BITS % bands else 0) for i in range(bands)]
    out, shift = [], HASH_BITS
    for w in widths:
        shift -= w
        out.append((shift, (1 << w) - 1))
    return out


def smallest_within(keys: list[str], hashes: np.ndarray, distance: int, block: int = 512) -> Iterator[tuple[str, str]]:
    """``(key, smallest smaller key within distance)`` for every member of one group that
    has one; ``keys`` sorted, ``hashes`` the matching uint64 array. Compared ``block``
    members at a time against all smaller ones (memory: block x group size bytes)."""
    for start in range(1, len(keys), block):
        stop = min(start + block, len(keys))
        close = np.bitwise_count(hashes[start:stop, None] ^ hashes[None, :stop]) <= distance
        close &= np.arange(stop)[None, :] < np.arange(start, stop)[:, None]  # smaller keys only
        first = np.argmax(close, axis=1)
        for row in np.nonzero(close[np.arange(stop - start), first])[0]:
            yield keys[start + row], keys[int(first[row])]


@register_stage
class NearDedup(FilterStage, KeyedStage):
    """Drops samples whose pHash is within ``distance`` bits of a smaller key's."""

    name = "near_dedup"
    Config = NearDedupConfig

    def signatures(self, shard: int) -> Iterator[tuple[str, tuple[str, str]]]:
        table = alive_samples(self.layout, shard, ["key", "phash"], before=self.name)
        masks = band_masks(self.config.band_count)
        for key, phash in zip(table.column("key").to_pylist(), table.column("phash").to_pylist()):
            if phash is None:
                continue
            value = int(phash, 16)
            for band, (shift, mask) in enumerate(masks):
                yield f"{band}:{(value >> shift) & mask:x}", (key, phash)

    def resolve(self, group: str, members: Iterable[tuple[str, str]]) -> Iterator[tuple[int, tuple[str, str]]]:
        ordered = sorted(set(members))  # by key: content order, not arrival order
        if len(ordered) < 2:
            return
        hashes = np.array([int(h, 16) for _, h in ordered], dtype=np.uint64)
        for key, first in smallest_within([k for k, _ in ordered], hashes, self.config.distance):
            yield shard_of(key), (key, first)

    def decide_shard(self, shard: int, rows: list[SampleRow]) -> list[Decision]:
        nearest: dict[str, str] = {}
        for key, first in self.findings():  # a pair can share several bands: keep the smallest
            if key not in nearest or first < nearest[key]:
                nearest[key] = first
        unhashed = sum(r.get("phash") is None for r in rows)
        if unhashed:  # kept: nothing to compare them by
            self.count("near_dedup.no_phash", unhashed)
        return [KEEP if row["key"] not in nearest else Decision(False, "near_duplicate", detail=nearest[row["key"]])
                for row in rows]
