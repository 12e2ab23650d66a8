"""Keyed corpus-wide steps: decisions that depend on samples in other shards.

A :class:`KeyedStage` never sees the corpus at once. It works in three roles:

1. ``signatures(shard)``: small keyed records of one shard's samples (a hash, a band
   of a hash, a cluster id, a histogram), as ``(group_key, value)`` pairs;
2. ``resolve(group_key, values)``: one group, decided on its own (the runner brings
   each group's values together with a GroupByKey); it yields ``(shard, finding)``
   pairs, findings about samples of that shard;
3. ``run_shard(shard, findings)``: the shard's own findings, sorted, and nothing else.

So a worker holds at most one shard's rows plus one group, on 1,000 samples or on
1,000,000,000, on any Beam runner. Values reach ``resolve`` in an order that depends
on the runner, so a stage must decide from their content alone (for instance the
smallest key of a group is its representative), never from their arrival order.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Hashable, Iterable, Iterator

from vlcurate.pipelines.stage import Stage


def shard_of(key: str) -> int:
    """The shard a sample key belongs to (keys are ``<shard>_<row>``)."""
    return int(key.split("_", 1)[0])


class KeyedStage(Stage):
    """A stage whose per-shard run needs findings from corpus-wide groups."""

    @abstractmethod
    def signatures(self, shard: int) -> Iterable[tuple[Hashable, Any]]:
        """The shard's keyed records: ``(group_key, value)`` pairs, small."""

    @abstractmethod
    def resolve(self, group_key: Hashable, values: Iterable[Any]) -> Iterator[tuple[int, Any]]:
        """Decide one group; yield ``(shard, finding)`` for the samples it concerns."""


def findings_by_shard(stage: KeyedStage, shards: Iterable[int]) -> dict[int, list]:
    """The keyed step run in this process, as the Beam graph runs it (signatures of
    every shard, groups resolved one by one, findings sorted per shard): for tests and
    tools that work on a few shards without a pipeline."""
    shards = list(shards)
    groups: dict[Hashable, list] = {}
    for shard in shards:
        for key, value in stage.signatures(shard):
            groups.setdefault(key, []).append(value)
    found: dict[int, list] = {s: [] for s in shards}
    for key in sorted(groups, key=repr):
        for shard, finding in stage.resolve(key, groups[key]):
            found[shard].append(finding)
    return {s: sorted(f) for s, f in found.items()}
