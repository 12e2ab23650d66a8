"""Which samples of a shard are still alive: downloaded, and dropped by no filter.

Filters run in recipe order as a funnel, and every later stage (features, exports)
works on what survived; so this rule lives below the stages that share it.
"""

from __future__ import annotations

from typing import TypedDict

import pyarrow as pa
import pyarrow.compute as pc

from vlcurate.io.parquet import read_parquet
from vlcurate.pipelines.stage import Layout

DECISION = "decision"


class SampleRow(TypedDict, total=False):
    """One row of ``samples/<shard>.parquet`` as a filter receives it (extra input
    columns named in the recipe's ``extra_cols`` follow, under their own names)."""

    key: str
    url: str
    caption: str | None
    status: str  # "ok" for every row a filter sees
    error_kind: str | None
    error_message: str | None
    http_status: int | None
    width: int
    height: int
    original_width: int
    original_height: int
    sha256: str
    phash: str


def dropped_keys(layout: Layout, shard: int, before: str | None = None) -> set[str]:
    """Keys that a filter running before stage ``before`` (any filter, when None) dropped.

    A stage passes its own name: when a build was killed after the stage wrote its
    decision file but before its stats marker, the stage runs on the shard again and
    must not take its own earlier drops for an earlier filter's (it would leave those
    samples out of its new file, and so bring them back to life)."""
    dropped: set[str] = set()
    for loc in layout.sidecars(shard, DECISION, before=before):
        d = read_parquet(loc, columns=["key", "keep"])
        dropped.update(d.filter(pc.invert(d.column("keep"))).column("key").to_pylist())
    return dropped


def alive_samples(layout: Layout, shard: int, columns: list[str] | None = None,
                  before: str | None = None) -> pa.Table:
    """The shard's downloaded samples that no filter before stage ``before`` dropped,
    in key order (``columns`` only, when given)."""
    wanted = None if columns is None else sorted(set(columns) | {"key", "status"})
    table = read_parquet(layout.samples_parquet(shard), columns=wanted)
    table = table.filter(pc.equal(table.column("status"), "ok"))
    dropped = dropped_keys(layout, shard, before)
    if dropped:
        table = table.filter(pc.invert(pc.is_in(table.column("key"), value_set=pa.array(sorted(dropped), pa.string()))))
    return table.select(columns) if columns else table
