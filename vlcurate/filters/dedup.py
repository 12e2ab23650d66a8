"""Exact duplicate removal across the whole corpus (a global step).

Every shard contributes (key, sha256) of its surviving samples; the combined value
maps each later copy's key to the first key with the same hash in (shard, row)
order, so the result does not depend on which worker finished first. Only
duplicates are kept in it, so the file every shard reads stays small. Later copies
are dropped as ``duplicate``, with the key they duplicate in ``detail``.
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
        return alive_samples(self.layout, shard, ["key", self.config.column], exclude=self.name)

    def combine(self, tables: list[pa.Table]) -> dict[str, str]:
        first: dict[str, str] = {}
        duplicates: dict[str, str] = {}
        for table in tables:  # already in shard order; rows in key order within a shard
            for key, value in zip(table.column("key").to_pylist(), table.column(self.config.column).to_pylist()):
                if value is None:
                    continue
                original = first.setdefault(value, key)
                if original != key:
                    duplicates[key] = original
        return duplicates

    def decide(self, row: dict[str, Any], corpus: dict[str, str]) -> Decision:
        original = corpus.get(row["key"])
        return KEEP if original is None else Decision(False, "duplicate", detail=original)
