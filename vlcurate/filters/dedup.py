"""Exact duplicate removal across the whole corpus (a global step).

Every shard contributes (key, sha256) of its surviving samples; the combined table
maps each image hash to its first key in (shard, row) order, so the result does not
depend on which worker finished first. Later copies are dropped as ``duplicate``,
with the key they duplicate in ``detail``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from vlcurate.filters.base import KEEP, Decision, FilterStage, alive_samples
from vlcurate.pipelines.stage import register_stage


@dataclass(frozen=True)
class ExactDedupConfig:
    column: str = "sha256"  # sha256 of the stored image; "url" dedups by URL, "phash" by perceptual hash


@register_stage
class ExactDedup(FilterStage):
    name = "exact_dedup"
    Config = ExactDedupConfig
    needs_corpus = True

    def collect(self, shard: int) -> pa.Table:
        return alive_samples(self.layout, shard, ["key", self.config.column])

    def combine(self, tables: list[pa.Table]) -> dict[str, str]:
        first: dict[str, str] = {}
        for table in tables:  # already in shard order; rows in key order within a shard
            for key, value in zip(table.column("key").to_pylist(), table.column(self.config.column).to_pylist()):
                if value is not None:
                    first.setdefault(value, key)
        return first

    def decide(self, row: dict[str, Any], corpus: dict[str, str]) -> Decision:
        value = row[self.config.column]
        original = corpus.get(value) if value is not None else None
        if original is None or original == row["key"]:
            return KEEP
        return Decision(False, "duplicate", detail=original)
