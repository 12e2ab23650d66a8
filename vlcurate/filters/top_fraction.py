"""DataComp's top fraction by CLIP score ("CLIP score top 30%, ViT-L/14", their best
filtering baseline): keep the top ``fraction`` of the samples that reach the filter,
ranked by the ``score`` an earlier filter wrote (``scores_from``, a ``clip_score``
stage, usually with ``tag_only: true`` or ``min_score: -1`` so it drops nothing).

One keyed pass, without gathering the scores: every shard sends a histogram of its
scores (``2^20`` buckets per unit of cosine, about 1e-6 wide, sparse: only the
buckets it uses) under one group key, with its shard number, so the group knows
every shard; ``resolve`` adds them up, finds the bucket of the cut and sends that
bucket to every shard; each shard then keeps its samples whose score falls in the
cut's bucket or above.

Rule and ties: with ``n`` scored samples reaching the filter, the cut is the score of
the ``k = floor(fraction * n)``-th highest; a sample is kept when its score's bucket is
at least the cut's bucket. So exactly ``k`` samples are kept, plus the samples that
share the cut's bucket but rank below the ``k``-th (scores within ~1e-6 of the cut
count as ties); ``k = 0`` keeps none. The decision depends on the scores alone, so it
is the same for every shard size, worker count and runner. Samples without a score
(the scoring stage did not score them) are dropped as ``unscored`` and not counted
in ``n``; the others below the cut are dropped as ``below_top_fraction`` with their
score, and ``detail`` of every scored row gives the cut's bucket floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from vlcurate.filters.base import Decision, FilterConfig, FilterStage
from vlcurate.io.parquet import read_parquet
from vlcurate.pipelines.keyed import KeyedStage
from vlcurate.pipelines.samples import DECISION, SampleRow, alive_samples
from vlcurate.pipelines.stage import register_stage
from vlcurate.typed import FieldError

BUCKETS_PER_UNIT = 1 << 20
HISTOGRAM = "histogram"  # the single group key: every shard's histogram meets there
COMPACT_AT = 4_000_000  # histogram entries held before they are merged (memory of resolve)
KEEP_NONE = 1 << 62  # the cut bucket when floor(fraction * n) = 0: above every bucket


def bucket_of(scores: np.ndarray) -> np.ndarray:
    """The histogram bucket of each score (monotone: a higher score never gets a lower one)."""
    return np.floor(np.asarray(scores, dtype=np.float64) * BUCKETS_PER_UNIT).astype(np.int64)


def merge_histograms(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """One histogram (buckets ascending, counts) from several."""
    buckets = np.concatenate([b for b, _ in parts])
    merged, inverse = np.unique(buckets, return_inverse=True)
    counts = np.bincount(inverse, weights=np.concatenate([c for _, c in parts]), minlength=len(merged))
    return merged, counts.astype(np.int64)


def cut_bucket(buckets: np.ndarray, counts: np.ndarray, fraction: float) -> int:
    """The bucket of the ``floor(fraction * n)``-th highest score, from a histogram
    (``buckets`` ascending, ``counts`` of each); :data:`KEEP_NONE` when that is 0."""
    k = math.floor(fraction * int(counts.sum()))
    if k == 0:
        return KEEP_NONE
    from_top = np.cumsum(counts[::-1])  # samples in this bucket or above, highest bucket first
    return int(buckets[::-1][int(np.searchsorted(from_top, k))])


@dataclass(frozen=True)
class TopFractionConfig(FilterConfig):
    fraction: float = 0.3  # DataComp's best baseline kept the top 30% by ViT-L/14 CLIP score
    scores_from: str = "clip_score"  # the earlier filter stage whose decision scores rank

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise FieldError("fraction", f"must be > 0 and <= 1, got {self.fraction!r}")

    def check_earlier_stages(self, earlier: list[tuple[str, str]]) -> None:
        """Called while the recipe is read, with the ``(name, kind)`` of the stages before."""
        from vlcurate.pipelines.stage import stage_class

        filters = [name for name, kind in earlier if stage_class(kind).record_kind == DECISION]
        if self.scores_from not in filters:
            raise ValueError(f"scores_from: {self.scores_from!r} is not a filter before this stage "
                             f"(earlier filters: {', '.join(filters) or 'none'})")


@register_stage
class TopFraction(FilterStage, KeyedStage):
    """Keeps the top ``fraction`` of the samples that reach it, by an earlier stage's score."""

    name = "top_fraction"
    Config = TopFractionConfig

    def scores(self, shard: int, keys: list[str]) -> dict[str, float]:
        """``{key: score}`` of ``keys`` that the ``scores_from`` stage scored."""
        source = self.config.scores_from
        earlier = [e.name for e in self.layout.stages[:[e.name for e in self.layout.stages].index(self.name)]
                   if e.record_kind == DECISION]
        if source not in earlier:
            raise ValueError(f"{self.name}.scores_from: {source!r} is not a filter before {self.name!r} "
                             f"(earlier filters: {', '.join(earlier) or 'none'})")
        table = read_parquet(self.layout.sidecar(source, shard), columns=["key", "score"])
        wanted = set(keys)
        return {k: s for k, s in zip(table.column("key").to_pylist(), table.column("score").to_pylist())
                if k in wanted and s is not None and not math.isnan(s)}

    def signatures(self, shard: int) -> Iterator[tuple[str, tuple[int, bytes, bytes]]]:
        keys = alive_samples(self.layout, shard, ["key"], before=self.name).column("key").to_pylist()
        scores = np.array(list(self.scores(shard, keys).values()), dtype=np.float64)
        buckets, counts = np.unique(bucket_of(scores), return_counts=True)
        # sent even when empty: the group must hear from every shard to answer every shard
        yield HISTOGRAM, ((shard,), buckets.astype("<i8").tobytes(), counts.astype("<i8").tobytes())

    def combine(self, group: str, histograms: list[tuple[tuple[int, ...], bytes, bytes]]) -> list:
        """Histograms added up into one, with the shards they came from."""
        shards = tuple(sorted(s for part, _, _ in histograms for s in part))
        buckets, counts = merge_histograms([(np.frombuffer(b, "<i8"), np.frombuffer(c, "<i8"))
                                            for _, b, c in histograms])
        return [(shards, buckets.astype("<i8").tobytes(), counts.astype("<i8").tobytes())]

    def resolve(self, group: str, histograms: Iterable[tuple[tuple[int, ...], bytes, bytes]]) -> Iterator[tuple[int, int]]:
        shards: list[int] = []
        merged = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        pending: list[tuple[np.ndarray, np.ndarray]] = []
        pending_size = 0
        for part, buckets, counts in histograms:  # folded in as they come: memory ~ distinct buckets
            shards.extend(part)
            pending.append((np.frombuffer(buckets, "<i8"), np.frombuffer(counts, "<i8")))
            pending_size += len(pending[-1][0])
            if pending_size > COMPACT_AT:
                merged, pending, pending_size = merge_histograms([merged, *pending]), [], 0
        merged = merge_histograms([merged, *pending])
        cut = cut_bucket(*merged, self.config.fraction)
        for shard in sorted(set(shards)):
            yield shard, cut

    def decide_shard(self, shard: int, rows: list[SampleRow]) -> list[Decision]:
        found = self.findings()
        if len(found) != 1:
            raise RuntimeError(f"{self.name}: shard {shard} got {len(found)} cuts, expected one")
        cut = found[0]
        scores = self.scores(shard, [r["key"] for r in rows])
        detail = "keep none" if cut == KEEP_NONE else f"cut {cut / BUCKETS_PER_UNIT:.7f}"
        decisions = []
        for row in rows:
            score = scores.get(row["key"])
            if score is None:
                decisions.append(Decision(False, "unscored"))
            elif int(bucket_of(np.array([score]))[0]) >= cut:
                decisions.append(Decision(True, score=score, detail=detail))
            else:
                decisions.append(Decision(False, "below_top_fraction", score=score, detail=detail))
        return decisions
