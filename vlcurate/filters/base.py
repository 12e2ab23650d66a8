"""Curation decisions: a filter says keep, or drop with a reason, for every sample.

Filters run in recipe order as a funnel: each sees only the samples every earlier
filter kept. A :class:`FilterStage` writes one ``decision`` row per sample it saw to
``<stage>/<shard>.parquet`` and counts ``kept`` and ``dropped.<reason>``; nothing
is dropped without a row saying why. A minimal filter:

    @dataclass(frozen=True)
    class ShortCaptionConfig:
        min_words: int = 3

    @register_stage
    class ShortCaption(FilterStage):
        name = "short_caption"
        Config = ShortCaptionConfig

        def decide(self, row: SampleRow) -> Decision:
            words = len((row["caption"] or "").split())
            return KEEP if words >= self.config.min_words else Decision(False, "too_few_words", score=words)
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from vlcurate.io.parquet import write_parquet
from vlcurate.io.stats import ShardStats
from vlcurate.pipelines.samples import DECISION, SampleRow, alive_samples
from vlcurate.pipelines.stage import Stage
from vlcurate.schemas import get_schema


@dataclass(frozen=True)
class Decision:
    keep: bool
    reason: str | None = None  # required when dropping: a short snake_case word
    score: float | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        if not self.keep and not self.reason:
            raise ValueError("a drop needs a reason")


KEEP = Decision(True)


class FilterStage(Stage):
    """Base of every filter: subclasses implement ``decide`` (one sample row) or
    ``decide_shard`` (the whole shard at once, e.g. for model scoring or when the
    decision also needs the shard's other files, such as stored features). Extra
    counters go through :meth:`count`."""

    record_kind = DECISION

    def decide(self, row: SampleRow) -> Decision:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} implements neither decide nor decide_shard")

    def decide_shard(self, shard: int, rows: list[SampleRow]) -> list[Decision]:
        return [self.decide(row) for row in rows]

    def findings(self) -> list:
        """A keyed filter's findings about the shard being decided on this thread."""
        return self._current.findings or []

    def run_shard(self, shard: int, findings: list | None = None) -> ShardStats:
        rows = alive_samples(self.layout, shard, before=self.name).to_pylist()
        stats = self.new_stats(shard, len(rows))
        self._current.findings = findings
        decisions = self.decide_shard(shard, rows)
        if len(decisions) != len(rows):
            raise RuntimeError(f"{type(self).__name__}: {len(decisions)} decisions for {len(rows)} samples")
        for d in decisions:
            stats.add("kept" if d.keep else f"dropped.{d.reason}")
        table = pa.table(
            {
                "key": [r["key"] for r in rows],
                "stage": [self.name] * len(rows),
                "keep": [d.keep for d in decisions],
                "reason": [d.reason for d in decisions],
                "score": [d.score for d in decisions],
                "detail": [d.detail for d in decisions],
            },
            schema=get_schema(DECISION).schema,
        )
        stats.add_file(write_parquet(table, self.layout.sidecar(self.name, shard), DECISION))
        return stats
