"""Curation decisions: a filter says keep, or drop with a reason, for every sample.

Filters run in recipe order as a funnel: each sees only the samples every earlier
filter kept. A :class:`FilterStage` writes one ``decision`` row per sample it saw to
``<stage>/<shard>.parquet`` and counts ``kept`` and ``dropped.<reason>``; nothing
is dropped without a row saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from vlcurate.io.parquet import read_parquet, write_parquet
from vlcurate.io.stats import ShardStats
from vlcurate.pipelines.stage import Layout, Stage
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


def decision_files(layout: Layout, shard: int, exclude: str | None = None) -> list[Path]:
    """The decision sidecars already written for a shard (by earlier filters), except
    stage ``exclude``'s own."""
    found = []
    for path in sorted(layout.root.glob(f"*/{shard:05d}.parquet")):
        if path.parent.name == exclude:
            continue
        meta = pq.read_schema(path).metadata or {}
        if meta.get(b"vlcurate.record") == b"decision":
            found.append(path)
    return found


def alive_samples(layout: Layout, shard: int, columns: list[str] | None = None,
                  exclude: str | None = None) -> pa.Table:
    """The shard's downloaded samples that no earlier filter dropped, in key order.

    A stage passes its own name as ``exclude``: when a build was killed after the
    stage wrote its decision file but before its stats file, the stage runs on the
    shard again and must not see its own earlier drops as an earlier filter's (it
    would leave those samples out of its new file, and so bring them back to life).
    Later stages' files cannot exist yet: a shard goes through the stages in order."""
    table = read_parquet(layout.samples_parquet(shard))
    table = table.filter(pa.compute.equal(table.column("status"), "ok"))
    dropped: set[str] = set()
    for path in decision_files(layout, shard, exclude):
        d = pq.read_table(path, columns=["key", "keep"])
        dropped |= {k for k, keep in zip(d.column("key").to_pylist(), d.column("keep").to_pylist()) if not keep}
    if dropped:
        mask = pa.array([k not in dropped for k in table.column("key").to_pylist()])
        table = table.filter(mask)
    return table.select(columns) if columns else table


class FilterStage(Stage):
    """Base of every filter: subclasses implement ``decide`` (per sample row),
    ``decide_batch`` (whole shard, e.g. for model scoring) or ``decide_shard`` (when
    the decision also needs the shard's other files, e.g. stored features)."""

    needs_images: ClassVar[bool] = False

    def decide(self, row: dict[str, Any], corpus: Any) -> Decision:  # pragma: no cover
        raise NotImplementedError

    def decide_batch(self, rows: list[dict[str, Any]], corpus: Any) -> list[Decision]:
        return [self.decide(row, corpus) for row in rows]

    def decide_shard(self, shard: int, rows: list[dict[str, Any]], corpus: Any) -> list[Decision]:
        return self.decide_batch(rows, corpus)

    def run_shard(self, shard: int, corpus: Any = None) -> ShardStats:
        rows = alive_samples(self.layout, shard, exclude=self.name).to_pylist()
        decisions = self.decide_shard(shard, rows, corpus)
        stats = ShardStats(self.name, shard, len(rows))
        for d in decisions:
            stats.add("kept" if d.keep else f"dropped.{d.reason}")
        schema = get_schema("decision").schema
        table = pa.table(
            {
                "key": [r["key"] for r in rows],
                "stage": [self.name] * len(rows),
                "keep": [d.keep for d in decisions],
                "reason": [d.reason for d in decisions],
                "score": [d.score for d in decisions],
                "detail": [d.detail for d in decisions],
            },
            schema=schema,
        )
        write_parquet(table, self.layout.sidecar(self.name, shard), "decision")
        return stats
