"""Parquet shards validated against the record schemas."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from vlcurate.io.atomic import atomic_path
from vlcurate.schemas import get_schema, validate

# Fixed writer settings: the same table always gives the same bytes.
_WRITE_OPTIONS = dict(compression="zstd", compression_level=3)


def _flat_columns(schema: pa.Schema) -> list[str]:
    """Columns that get dictionary encoding and min/max statistics: all but list
    columns. Feature arrays (millions of floats per shard) gain nothing from either,
    and computing them tripled the write time of a ViT token sidecar. A schema
    without list columns keeps both on every column, nested ones included."""
    return [f.name for f in schema if not (pa.types.is_list(f.type) or pa.types.is_large_list(f.type)
                                           or pa.types.is_fixed_size_list(f.type))]


def write_parquet(table: pa.Table, path: str | os.PathLike, kind: str,
                  metadata: Mapping[str, str] | None = None, row_group_size: int | None = None) -> int:
    """Validate ``table`` as record kind ``kind`` and commit it atomically. Returns rows.

    ``metadata``: extra schema metadata (e.g. declared feature shapes, model
    provenance) stored next to the record kind; it is attached before validation so
    row checks can read it. Other metadata already on ``table`` is not kept.
    ``row_group_size``: rows per row group (default: pyarrow's, i.e. one group for
    any shard we write); feature sidecars use small groups.
    """
    extra_meta = {k.encode(): v.encode() for k, v in (metadata or {}).items()}
    if extra_meta:
        table = table.replace_schema_metadata(extra_meta)
    validate(table, kind)
    record = get_schema(kind)
    extra = [f for f in table.schema if f.name not in record.schema.names]
    schema = record.with_extra(extra if record.open_columns else [])
    table = table.cast(schema)
    if extra_meta:
        table = table.replace_schema_metadata({**schema.metadata, **extra_meta})
    with atomic_path(path) as tmp:
        flat = _flat_columns(table.schema)
        per_column: bool | list[str] = True if len(flat) == len(table.schema) else flat  # no lists: as ever
        pq.write_table(table, tmp, row_group_size=row_group_size, use_dictionary=per_column,
                       write_statistics=per_column, **_WRITE_OPTIONS)
    return table.num_rows


def read_parquet(path: str | os.PathLike, kind: str | None = None) -> pa.Table:
    """Read a shard; validate it when ``kind`` is given."""
    table = pq.read_table(Path(path))
    if kind is not None:
        validate(table, kind)
    return table


def parquet_rows(path: str | os.PathLike) -> int:
    """Row count from the footer, without reading the data."""
    return pq.ParquetFile(path).metadata.num_rows


def record_kind(path: str | os.PathLike) -> str | None:
    """The record kind a vlcurate Parquet file says it holds (schema metadata)."""
    meta = pq.read_schema(path).metadata or {}
    kind = meta.get(b"vlcurate.record")
    return kind.decode() if kind else None
