"""Per-shard, per-stage stats files: the completion marker of a stage on a shard.

A stage writes its stats file last, after every file it vouches for; a shard whose
stats file exists is complete for that stage and is skipped on resume. Besides the
counts, the marker records each file the stage wrote for the shard with the sha256,
size and row count its writer computed while writing, so the manifest is assembled
from the markers without reading any data file back. The contents are deterministic
(no timings), so they can be checksummed in the manifest.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from vlcurate.io import storage
from vlcurate.schemas import validate


@dataclass(frozen=True)
class FileRecord:
    """A committed file as its writer saw it. ``path`` is the location it was written
    to; in a stats marker it is relative to the version directory."""

    path: str
    kind: str  # a record kind for Parquet, "webdataset" for tars, "shard_stats"
    sha256: str
    bytes: int
    rows: int | None = None

    def relative_to(self, root: str) -> "FileRecord":
        prefix = storage.join(root, "")
        if not self.path.startswith(prefix):
            raise ValueError(f"{self.path}: not inside {root}")
        return FileRecord(self.path[len(prefix):].replace(os.sep, "/"), self.kind, self.sha256, self.bytes, self.rows)


@dataclass
class ShardStats:
    stage: str
    shard: int
    rows: int
    counts: dict[str, int] = field(default_factory=dict)
    files: list[FileRecord] = field(default_factory=list)

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def add_file(self, record: FileRecord) -> None:
        self.files.append(record)

    def to_table(self) -> pa.Table:
        return pa.table(
            {
                "stage": pa.array([self.stage], pa.string()),
                "shard": pa.array([self.shard], pa.int32()),
                "rows": pa.array([self.rows], pa.int64()),
                "counts": pa.array([sorted(self.counts.items())], pa.map_(pa.string(), pa.int64())),
            }
        )


def encode_stats(stats: ShardStats) -> bytes:
    validate(stats.to_table(), "shard_stats")
    body = {"stage": stats.stage, "shard": stats.shard, "rows": stats.rows, "counts": dict(sorted(stats.counts.items()))}
    if stats.files:
        body["files"] = [asdict(f) for f in sorted(stats.files, key=lambda f: f.path)]
    return (json.dumps(body, indent=1) + "\n").encode()


def write_stats(stats: ShardStats, loc: str | os.PathLike) -> None:
    """Commit the marker (the manifest records its checksum when it reads the markers)."""
    storage.write_bytes(loc, encode_stats(stats))


def decode_stats(data: bytes, where: str) -> ShardStats:
    try:
        body = json.loads(data)
        stats = ShardStats(body["stage"], int(body["shard"]), int(body["rows"]), dict(body["counts"]),
                           [FileRecord(**f) for f in body.get("files", [])])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{where}: not a valid stats file ({type(e).__name__}: {e})") from None
    validate(stats.to_table(), "shard_stats")
    return stats


def read_stats(loc: str | os.PathLike) -> ShardStats:
    return decode_stats(storage.read_bytes(loc), os.fspath(loc))
