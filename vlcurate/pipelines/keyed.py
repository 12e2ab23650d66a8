"""Keyed corpus-wide steps: decisions that depend on samples in other shards.

A :class:`KeyedStage` never sees the corpus at once. It works in three roles:

1. ``signatures(shard)``: small keyed records of one shard's samples (a hash, a band
   of a hash, a cluster id, a histogram), as ``(group_key, value)`` pairs;
2. ``resolve(group_key, values)``: one group, decided on its own (the runner brings
   each group's values together with a GroupByKey); it yields ``(shard, finding)``
   pairs, findings about samples of that shard;
3. ``run_shard(shard, findings)``: the shard's own findings, sorted, and nothing else.

So a worker holds at most one shard's rows plus one bucket of groups, on 1,000 samples
or on 1,000,000,000, on any Beam runner. Values reach ``resolve`` in an order that
depends on the runner, so a stage must decide from their content alone (for instance
the smallest key of a group is its representative), never from their arrival order.

What crosses the runner's shuffle is packed: a shard's signature records go out as one
pickled blob per *bucket* (a stable hash of the group key modulo the bucket count, the
build's shard count, so a bucket holds about one shard's worth of records), a bucket is
unpacked, grouped and resolved in one call, and its findings go back as one blob per
shard. Per record a runner then keeps ~40 bytes instead of a Python object of several
hundred (Beam's DaskRunner keeps every record of a shuffle in worker memory and sizes
objects it does not know by their shell, so unpacked records were unspillable and a
worker's memory followed the corpus: benchmarks/README.md, Corpus-wide steps).
"""

from __future__ import annotations

import hashlib
import pickle
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


def bucket_of(group_key: Hashable, buckets: int) -> int:
    """The bucket of a group key: stable across processes and runs (not ``hash()``,
    which is salted per process for strings)."""
    digest = hashlib.blake2b(repr(group_key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % buckets


def packed_signatures(stage: KeyedStage, shard: int, buckets: int) -> Iterator[tuple[int, bytes]]:
    """The shard's signature records, one pickled list of ``(group_key, value)`` per
    non-empty bucket."""
    by_bucket: dict[int, list] = {}
    for key, value in stage.signatures(shard):
        by_bucket.setdefault(bucket_of(key, buckets), []).append((key, value))
    for bucket, records in by_bucket.items():
        yield bucket, pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)


def resolve_bucket(stage: KeyedStage, blobs: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """Every group of one bucket resolved (groups in key order, values as they came),
    the findings as one pickled list per shard."""
    groups: dict[Hashable, list] = {}
    for blob in blobs:
        for key, value in pickle.loads(blob):
            groups.setdefault(key, []).append(value)
    found: dict[int, list] = {}
    for key in sorted(groups, key=repr):
        for shard, finding in stage.resolve(key, groups.pop(key)):
            found.setdefault(shard, []).append(finding)
    for shard, findings in found.items():
        yield shard, pickle.dumps(findings, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_findings(blobs: Iterable[bytes]) -> list:
    """One shard's findings from its blobs, sorted: the order blobs arrive in depends
    on the runner, the stage's input must not."""
    return sorted(f for blob in blobs for f in pickle.loads(blob))


def findings_by_shard(stage: KeyedStage, shards: Iterable[int]) -> dict[int, list]:
    """The keyed step run in this process, as the Beam graph runs it (packed signatures
    of every shard, buckets resolved one by one, findings unpacked and sorted per
    shard): for tests and tools that work on a few shards without a pipeline."""
    shards = list(shards)
    buckets: dict[int, list[bytes]] = {}
    for shard in shards:
        for bucket, blob in packed_signatures(stage, shard, len(shards) or 1):
            buckets.setdefault(bucket, []).append(blob)
    found: dict[int, list[bytes]] = {s: [] for s in shards}
    for bucket in sorted(buckets):
        for shard, blob in resolve_bucket(stage, buckets[bucket]):
            found[shard].append(blob)
    return {s: unpack_findings(blobs) for s, blobs in found.items()}
