"""Per-shard, per-stage stats files: the completion marker of a stage on a shard.

A stage writes its stats file last; a shard whose stats file exists is complete for
that stage and is skipped on resume. The contents are deterministic (no timings), so
they can be checksummed in the manifest.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import pyarrow as pa

from vlcurate.io.atomic import write_bytes_atomic
from vlcurate.schemas import validate


@dataclass
class ShardStats:
    stage: str
    shard: int
    rows: int
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def to_table(self) -> pa.Table:
        return pa.table(
            {
                "stage": pa.array([self.stage], pa.string()),
                "shard": pa.array([self.shard], pa.int32()),
                "rows": pa.array([self.rows], pa.int64()),
                "counts": pa.array([sorted(self.counts.items())], pa.map_(pa.string(), pa.int64())),
            }
        )


def write_stats(stats: ShardStats, path: str | os.PathLike) -> None:
    validate(stats.to_table(), "shard_stats")
    body = {"stage": stats.stage, "shard": stats.shard, "rows": stats.rows, "counts": dict(sorted(stats.counts.items()))}
    write_bytes_atomic(path, (json.dumps(body, indent=1) + "\n").encode())


def read_stats(path: str | os.PathLike) -> ShardStats:
    with open(path) as f:
        body = json.load(f)
    stats = ShardStats(body["stage"], int(body["shard"]), int(body["rows"]), dict(body["counts"]))
    validate(stats.to_table(), "shard_stats")
    return stats
