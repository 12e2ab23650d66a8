"""Keyed corpus-wide steps: decisions that depend on samples in other shards.

A :class:`KeyedStage` never sees the corpus at once. It works in three roles:

1. ``signatures(shard)``: small keyed records of one shard's samples (a hash, a band
   of a hash, a cluster id, a histogram), as ``(group_key, value)`` pairs;
2. ``resolve(group_key, values)``: one group, decided on its own (every value of a
   group lands in the same bucket, below); it yields ``(shard, finding)`` pairs,
   findings about samples of that shard;
3. ``run_shard(shard, findings)``: the shard's own findings, sorted, and nothing else.

So a worker holds at most one shard's rows plus one bucket of groups, on 1,000 samples
or on 1,000,000,000, on any Beam runner. A stage must decide a group from its values'
content alone (for instance the smallest key of a group is its representative), never
from the order they come in.

Nothing of the records crosses the runner's shuffle: they go through the storage layer,
as a MapReduce shuffle does. Each shard writes one *signatures file*: its records
pickled per *bucket* (a stable hash of the group key modulo the bucket count, the
build's shard count, so a bucket holds about one shard's worth of records), behind an
index of where each bucket's section lies. Each bucket is then resolved by reading its
section of every shard's file, and its findings are written as one *findings file*
with a section per shard; a shard reads its section of every findings file. The
runner shuffles only shard and bucket ids, to order the three phases: a GroupByKey
emits nothing in a batch pipeline before its whole input is in, so a bucket is
resolved only once every shard's signatures are written, and a shard runs only once
every bucket is resolved. A worker holds one shard's records, or one bucket's, and
what the runner keeps per element no longer grows with the corpus (on Beam's
DaskRunner, shuffled records stayed in worker memory: benchmarks/README.md,
Corpus-wide steps). The files live in the version's work directory, which the build
deletes before it writes the manifest; each is written whole, so a resumed build
reuses those that exist.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from abc import abstractmethod
from typing import Any, Hashable, Iterable, Iterator

from vlcurate.io import storage
from vlcurate.pipelines.stage import WORK_DIR, Layout, Stage


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

    def combine(self, group_key: Hashable, values: list) -> list:
        """``values`` of one group folded into fewer that ``resolve`` decides the same way
        (histograms added up, say), whatever their order. Called as a group's values pile
        up while its bucket is read, so a group that hears from every shard holds what
        ``combine`` keeps, not what every shard sent. By default nothing is folded."""
        return values


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


COMBINE_AT = 64  # a group's values are first combined when this many have piled up


def resolve_bucket(stage: KeyedStage, blobs: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """Every group of one bucket resolved (groups in key order, values as they came,
    combined as they pile up), the findings as one pickled list per shard."""
    groups: dict[Hashable, list] = {}
    combine_at: dict[Hashable, int] = {}
    for blob in blobs:
        for key, value in pickle.loads(blob):
            values = groups.setdefault(key, [])
            values.append(value)
            if len(values) >= combine_at.get(key, COMBINE_AT):
                values[:] = stage.combine(key, values)
                combine_at[key] = max(COMBINE_AT, 2 * len(values))  # amortised when little folds
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


_COUNT = struct.Struct("<Q")  # a sectioned file starts with its section count
_SECTION = struct.Struct("<QQ")  # then (offset, length) per section, then the sections


def write_sections(loc: str, sections: dict[int, bytes], count: int) -> None:
    """Write ``count`` sections (missing ones empty) as one file, committed whole."""
    header = bytearray(_COUNT.size + _SECTION.size * count)
    _COUNT.pack_into(header, 0, count)
    offset = len(header)
    for index in sorted(sections):
        _SECTION.pack_into(header, _COUNT.size + _SECTION.size * index, offset, len(sections[index]))
        offset += len(sections[index])
    with storage.open_write(loc) as f:
        f.write(header)
        for index in sorted(sections):
            f.write(sections[index])


def read_section(loc: str, index: int, count: int) -> bytes:
    """Section ``index`` of a file :func:`write_sections` wrote with ``count`` sections
    (b"" when empty): three small reads, whatever the file's size."""
    with storage.open_read(loc) as f:
        head = f.read(_COUNT.size)
        if len(head) != _COUNT.size or _COUNT.unpack(head)[0] != count:
            raise ValueError(f"{loc}: not a keyed-step file of {count} sections")
        f.seek(_COUNT.size + _SECTION.size * index)
        offset, length = _SECTION.unpack(f.read(_SECTION.size))
        if not length:
            return b""
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise ValueError(f"{loc}: section {index} is cut short")
    return data


def keyed_dir(layout: Layout, stage_name: str) -> str:
    """The work directory of a keyed stage in a version being built: its signatures and
    findings files, and whatever its ``resolve`` writes for every shard to read (a
    finding may be that file's location rather than a copy of it per shard)."""
    return storage.join(layout.root, WORK_DIR, "keyed", stage_name)


class KeyedFiles:
    """Where one keyed stage's signatures and findings files live in a version being
    built, and the three phases that read and write them (each skips a file that
    exists, which a resumed build wrote whole)."""

    def __init__(self, layout: Layout, stage_name: str, num_shards: int):
        self.dir = keyed_dir(layout, stage_name)
        self.shards = self.buckets = max(1, num_shards)

    def signatures_file(self, shard: int) -> str:
        return storage.join(self.dir, "signatures", f"{shard:05d}.bin")

    def findings_file(self, bucket: int) -> str:
        return storage.join(self.dir, "findings", f"{bucket:05d}.bin")

    def write_signatures(self, stage: KeyedStage, shard: int) -> None:
        loc = self.signatures_file(shard)
        if not storage.exists(loc):
            write_sections(loc, dict(packed_signatures(stage, shard, self.buckets)), self.buckets)

    def resolve(self, stage: KeyedStage, bucket: int) -> None:
        loc = self.findings_file(bucket)
        if not storage.exists(loc):
            blobs = (read_section(self.signatures_file(s), bucket, self.buckets) for s in range(self.shards))
            write_sections(loc, dict(resolve_bucket(stage, (b for b in blobs if b))), self.shards)

    def findings(self, shard: int) -> list:
        blobs = (read_section(self.findings_file(b), shard, self.shards) for b in range(self.buckets))
        return unpack_findings(b for b in blobs if b)
