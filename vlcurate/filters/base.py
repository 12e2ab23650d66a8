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

Every filter has the setting ``tag_only`` (added to its config here, whether the config
declares it or not): the filter decides as usual, but a would-be drop becomes a kept
row with reason ``would_drop:<reason>`` (score and detail as the drop would have had)
and is counted as ``would_drop.<reason>`` besides ``kept``; so nothing is dropped and
the decision file says what a dropping run would have done.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

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
WOULD_DROP = "would_drop"  # reason prefix and counter prefix of a tag-only filter's would-be drops


@dataclass(frozen=True, kw_only=True)
class FilterConfig:
    """The settings every filter has. A filter's config need not derive from it:
    :class:`FilterStage` adds them to any config that lacks them."""

    tag_only: bool = False  # record what would be dropped, drop nothing


def with_filter_settings(config_cls: type) -> type:
    """``config_cls`` itself when it has the :class:`FilterConfig` fields, else a
    frozen subclass that adds them (keyword-only, so any field order works)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    missing = [f for f in dataclasses.fields(FilterConfig) if f.name not in names]
    if not missing:
        return config_cls
    extra = [(f.name, f.type, field(default=f.default, kw_only=True)) for f in missing]
    return dataclasses.make_dataclass(config_cls.__name__, extra, bases=(config_cls,), frozen=True,
                                      namespace={"__doc__": config_cls.__doc__, "__module__": config_cls.__module__})


def tag_only(decision: Decision) -> Decision:
    """What a tag-only filter records for ``decision``: a drop becomes a kept row
    whose reason says what would have happened."""
    if decision.keep:
        return decision
    return Decision(True, f"{WOULD_DROP}:{decision.reason}", decision.score, decision.detail)


class FilterStage(Stage):
    """Base of every filter: subclasses implement ``decide`` (one sample row) or
    ``decide_shard`` (the whole shard at once, e.g. for model scoring or when the
    decision also needs the shard's other files, such as stored features). Extra
    counters go through :meth:`count`."""

    record_kind = DECISION

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "Config" in cls.__dict__ and dataclasses.is_dataclass(cls.Config):
            cls.Config = with_filter_settings(cls.Config)

    def decide(self, row: SampleRow) -> Decision:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} implements neither decide nor decide_shard")

    def decide_shard(self, shard: int, rows: list[SampleRow]) -> list[Decision]:
        decisions = []
        for row in rows:
            decisions.append(self.decide(row))
            self.advance()
        return decisions

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
        if getattr(self.config, "tag_only", False):
            for d in decisions:
                if not d.keep:
                    stats.add(f"{WOULD_DROP}.{d.reason}")
            decisions = [tag_only(d) for d in decisions]
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
