"""Exact duplicate removal across the whole corpus, as a keyed corpus-wide step.

Every surviving sample's value in ``column`` (sha256 of the stored image by default)
is a group key; each group is resolved on its own: its smallest sample key is the
representative and every other member is dropped as ``duplicate``, with the
representative's key in ``detail``. Keys are ``<shard>_<row>``, so the smallest key
is the first copy in input order, whichever worker finished first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Literal

from vlcurate.filters.base import KEEP, Decision, FilterConfig, FilterStage
from vlcurate.pipelines.keyed import KeyedStage, shard_of
from vlcurate.pipelines.samples import SampleRow, alive_samples
from vlcurate.pipelines.stage import register_stage


@dataclass(frozen=True)
class ExactDedupConfig(FilterConfig):
    # sha256 of the stored image; "url" dedups by URL, "phash" by identical perceptual hash
    column: Literal["sha256", "url", "phash"] = "sha256"


@register_stage
class ExactDedup(FilterStage, KeyedStage):
    name = "exact_dedup"
    Config = ExactDedupConfig

    def signatures(self, shard: int) -> Iterator[tuple[str, str]]:
        table = alive_samples(self.layout, shard, ["key", self.config.column], before=self.name)
        for key, value in zip(table.column("key").to_pylist(), table.column(self.config.column).to_pylist()):
            if value is not None:
                yield value, key

    def resolve(self, value: str, keys: Iterable[str]) -> Iterator[tuple[int, tuple[str, str]]]:
        first, *copies = sorted(keys)
        for key in copies:
            yield shard_of(key), (key, first)

    def decide_shard(self, shard: int, rows: list[SampleRow]) -> list[Decision]:
        originals = dict(self.findings())  # (copy key, representative key) pairs
        return [KEEP if row["key"] not in originals else Decision(False, "duplicate", detail=originals[row["key"]])
                for row in rows]
