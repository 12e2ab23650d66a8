"""Region-feature sidecars (``region_features/<shard>.parquet``): bottom-up-attention
regions per sample, one row per sample the stage saw.

Layout (column order as stored)::

    key            string, not null   the sample's key
    status         string, not null   "ok" | "failed"
    error_kind     string             why it failed (decode_error, model_error, no_regions, ...)
    error_message  string
    img_h          int32              original image height (pixels)
    img_w          int32              original image width
    num_boxes      int32              N, the number of regions kept (>= 1 on ok rows)
    boxes          list<list<float32>>  [N][4]  x1, y1, x2, y2 in original image pixels
    objects_id     list<int64>          [N]     best foreground class (0-based; never background)
    objects_conf   list<float32>        [N]     its probability
    attrs_id       list<int64>          [N]     best attribute (0-based; never "no attribute")
    attrs_conf     list<float32>        [N]     its probability
    features       binary               [N, D]  region features, float16 (float32 with storage: fp32)

Every column after ``error_message`` is null exactly when ``status`` is not ``ok``.
N varies per row (LXMERT's fixed 36, UNITER's 10-100). ``features`` is a tensor
column as in :mod:`vlcurate.schemas.features` (each row the bytes of one C-order
little-endian ``[N, D]`` array), declared in the schema metadata ``vlcurate.features``
as ``{"features": {"shape": [null, D], "dtype": "float16"}}``, so D and the storage
dtype are read from the file; ``vlcurate.model`` records the detector that produced
them. The small per-region columns are Arrow lists. Reading::

    from vlcurate.schemas.features import feature_arrays
    table = pq.read_table("v1/region_features/00000.parquet")
    feats = feature_arrays(table, "features")                         # [N, D] per row (None if failed)
    boxes = np.asarray(table.column("boxes")[0].as_py(), np.float32)  # [N, 4] of row 0

The row checks verify the declaration against the column's type; that on ``ok`` rows
every per-region array has ``num_boxes`` entries (each box 4 numbers, no nulls inside)
and ``features`` holds exactly ``num_boxes x D`` values; and that values are sane: boxes inside the image with
``x1 <= x2`` and ``y1 <= y2``, probabilities in [0, 1], ids >= 0, features finite.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlcurate.schemas.core import SCHEMA_VERSION, RecordSchema, register
from vlcurate.schemas.features import (
    FEATURE_BASE_FIELDS, FEATURE_DTYPES, FEATURES_META, TENSOR_TYPE, Problems, _chunk_bytes,
    check_feature_status, declared_features, feature_metadata, tensor_length_problems,
)
from vlcurate.schemas.records import _check_keys

REGION_FEATURES = "region_features"
FEATURES_COLUMN = "features"
BOX_COORDS = 4
# Boxes are clipped to the image in float32; allow for rounding when checking.
_BOX_SLACK = 1e-3

REGION_FIELDS = (
    pa.field("img_h", pa.int32()),
    pa.field("img_w", pa.int32()),
    pa.field("num_boxes", pa.int32()),
    pa.field("boxes", pa.list_(pa.list_(pa.float32()))),
    pa.field("objects_id", pa.list_(pa.int64())),
    pa.field("objects_conf", pa.list_(pa.float32())),
    pa.field("attrs_id", pa.list_(pa.int64())),
    pa.field("attrs_conf", pa.list_(pa.float32())),
)
SCALARS = ("img_h", "img_w", "num_boxes")
# Per-region arrays (num_boxes entries on an ok row); None: no inner dimension.
PER_REGION: dict[str, int | None] = {"boxes": BOX_COORDS, "objects_id": None, "objects_conf": None,
                                     "attrs_id": None, "attrs_conf": None}


def region_metadata(dim: int, dtype: str) -> dict[str, str]:
    """The ``vlcurate.features`` declaration of a sidecar, for ``write_parquet``."""
    return feature_metadata({FEATURES_COLUMN: ([None, dim], dtype)})


def declared_dim(schema: pa.Schema) -> tuple[int, str] | None:
    """``(D, dtype)`` a region sidecar declares for its features, or None."""
    spec = (declared_features(schema) or {}).get(FEATURES_COLUMN) or {}
    shape = spec.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and shape[0] is None and isinstance(shape[1], int)
            and shape[1] >= 1 and spec.get("dtype") in ("float16", "float32")):
        return None
    return shape[1], spec["dtype"]


def _declaration_problems(table: pa.Table) -> Problems:
    """The feature declaration, the ``features`` column against it, no stray columns."""
    declared = declared_features(table.schema)
    if declared is None:
        return [(0, "", f"schema metadata lacks {FEATURES_META.decode()} (the declared feature shape)")]
    problems: Problems = []
    if set(declared) != {FEATURES_COLUMN}:
        problems.append((0, "", f"{FEATURES_META.decode()} must declare exactly {FEATURES_COLUMN!r}, "
                         f"got {sorted(declared)}"))
    known = {f.name for f in (*FEATURE_BASE_FIELDS, *REGION_FIELDS)} | {FEATURES_COLUMN}
    problems += [(0, n, f"not part of {REGION_FEATURES}") for n in table.schema.names if n not in known]
    dim = declared_dim(table.schema)
    if dim is None:
        return problems + [(0, FEATURES_COLUMN, f"declared {declared.get(FEATURES_COLUMN)}: need shape "
                            f"[null, D >= 1] and dtype float16 or float32")]
    if FEATURES_COLUMN not in table.schema.names:
        return problems + [(0, FEATURES_COLUMN, "missing")]
    actual = table.schema.field(FEATURES_COLUMN).type
    if not actual.equals(TENSOR_TYPE):
        problems.append((0, FEATURES_COLUMN, f"type {actual}: features are stored as {TENSOR_TYPE} (array bytes)"))
    return problems


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def _numpy(col: pa.ChunkedArray | pa.Array, fill: int | bool) -> np.ndarray:
    return col.fill_null(fill).to_numpy(zero_copy_only=False)


def _chunks(col: pa.ChunkedArray) -> Iterator[tuple[int, pa.Array]]:
    """``(first row, chunk)``: checks go chunk by chunk, since a whole feature column may
    hold more values than one Arrow array's 32-bit list offsets can address."""
    start = 0
    for chunk in col.chunks:
        yield start, chunk
        start += len(chunk)


def _item_row(chunk: pa.Array, start: int, item: int) -> int:
    """The table row of item ``item`` of a list chunk starting at table row ``start``."""
    return start + int(pc.list_parent_indices(chunk)[item].as_py())


def _length_problems(table: pa.Table, name: str, width: int | None, num: np.ndarray) -> Problems:
    """``num_boxes`` items per row, ``width`` values per item, no nulls inside. Rows are
    looked up only for a fault (a row index per value would be GBs for a big shard)."""
    for start, chunk in _chunks(table.column(name)):
        lengths = _numpy(pc.list_value_length(chunk), 0)
        i = _first(lengths != num[start:start + len(chunk)])
        if i is not None:
            return [(start + i, name, f"{lengths[i]} entries, num_boxes is {num[start + i]}")]
        items = pc.list_flatten(chunk)
        if items.null_count:
            return [(_item_row(chunk, start, _first(_numpy(items.is_null(), False))), name, "null entries")]
        if width is None:
            continue
        widths = _numpy(pc.list_value_length(items), 0)
        i = _first(widths != width)
        if i is not None:
            return [(_item_row(chunk, start, i), name, f"an entry of {widths[i]} values, {width} expected")]
        values = pc.list_flatten(items)
        if values.null_count:
            item = _first(_numpy(values.is_null(), False)) // width
            return [(_item_row(chunk, start, item), name, "null values")]
    return []


def _leaf_chunks(table: pa.Table, name: str) -> Iterator[np.ndarray]:
    """The leaf values of a list (of lists) column, chunk by chunk, in row order."""
    for chunk in table.column(name).chunks:
        while pa.types.is_list(chunk.type):
            chunk = pc.list_flatten(chunk)
        yield chunk.to_numpy(zero_copy_only=False)


def _first_bad_value(table: pa.Table, name: str, per_row: np.ndarray,
                     bad: Callable[[np.ndarray], np.ndarray]) -> tuple[int, Any] | None:
    """``(row, value)`` of the first leaf value where ``bad`` holds; ``per_row``: how many
    leaf values each row has (checked before), which maps a value back to its row."""
    ends, offset = np.cumsum(per_row), 0
    for values in _leaf_chunks(table, name):
        i = _first(bad(values))
        if i is not None:
            return int(np.searchsorted(ends, offset + i, side="right")), values[i]
        offset += len(values)
    return None


def _not_finite(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.float16:  # the exponent bits, ~10x faster than isfinite on fp16
        return (values.view(np.uint16) & 0x7C00) == 0x7C00
    return ~np.isfinite(values)


def _value_problems(table: pa.Table, num: np.ndarray, dtype: str) -> Problems:
    problems: Problems = []
    chunks = list(_leaf_chunks(table, "boxes"))
    coords = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if coords.size:
        b, box_rows = coords.reshape(-1, BOX_COORDS), np.repeat(np.arange(len(num)), num)
        w, h = _numpy(table.column("img_w"), 0)[box_rows], _numpy(table.column("img_h"), 0)[box_rows]
        bad = (~np.isfinite(b).all(1) | (b[:, 0] < -_BOX_SLACK) | (b[:, 1] < -_BOX_SLACK) | (b[:, 0] > b[:, 2])
               | (b[:, 1] > b[:, 3]) | (b[:, 2] > w + _BOX_SLACK) | (b[:, 3] > h + _BOX_SLACK))
        i = _first(bad)
        if i is not None:
            problems.append((int(box_rows[i]), "boxes", f"box {b[i].tolist()} is not inside the {int(w[i])}x"
                             f"{int(h[i])} image with x1 <= x2, y1 <= y2"))
    checks: list[tuple[str, Callable[[np.ndarray], np.ndarray], str]] = [
        ("objects_conf", lambda v: ~((v >= 0) & (v <= 1)), "is not a probability"),
        ("attrs_conf", lambda v: ~((v >= 0) & (v <= 1)), "is not a probability"),
        ("objects_id", lambda v: v < 0, "is a negative id"),
        ("attrs_id", lambda v: v < 0, "is a negative id"),
    ]
    for name, bad_fn, what in checks:
        found = _first_bad_value(table, name, num, bad_fn)
        if found:
            problems.append((found[0], name, f"{found[1]} {what}"))
    start = 0
    for chunk in table.column(FEATURES_COLUMN).chunks:
        offsets, data = _chunk_bytes(chunk)
        values = data[offsets[0]:offsets[-1]].view(FEATURE_DTYPES[dtype])
        i = _first(_not_finite(values))
        if i is not None:  # byte offset -> row (lengths were checked, so rows are whole)
            row = start + int(np.searchsorted(offsets, offsets[0] + i * values.itemsize, side="right")) - 1
            problems.append((row, FEATURES_COLUMN, f"non-finite value {values[i]}"))
            break
        start += len(chunk)
    return problems


def check_regions(table: pa.Table) -> Problems:
    """Declared features, presence exactly on ok rows, per-region lengths, sane values."""
    problems = _declaration_problems(table)
    if problems:
        return problems  # the checks below rely on the declared type
    ok = _numpy(pc.equal(table.column("status"), "ok"), False)
    for name in [*SCALARS, *PER_REGION, FEATURES_COLUMN]:
        row = _first(_numpy(table.column(name).is_valid(), False) != ok)
        if row is not None:
            problems.append((row, name, "must be present exactly when status is ok"))
    if problems:
        return problems
    for name in SCALARS:
        row = _first(ok & (_numpy(table.column(name), 1) < 1))
        if row is not None:
            problems.append((row, name, "must be at least 1 on an ok row"))
    num = _numpy(table.column("num_boxes"), 0).astype(np.int64)  # int64: value counts pass 2**31
    dim, dtype = declared_dim(table.schema) or (0, "")  # declared: checked above
    for name, width in PER_REGION.items():
        problems += _length_problems(table, name, width, num)
    problems += [(row, FEATURES_COLUMN, what) for row, what in
                 tensor_length_problems(table.column(FEATURES_COLUMN), [None, dim], dtype, num)]
    if problems:
        return problems  # the value checks assume the lengths
    return _value_problems(table, num, dtype)


def region_schema(dim: int, dtype: str) -> pa.Schema:
    """The full schema of a sidecar holding ``dim``-wide features stored as ``dtype``,
    with their declaration in the metadata."""
    fields: list[Any] = [*FEATURE_BASE_FIELDS, *REGION_FIELDS, pa.field(FEATURES_COLUMN, TENSOR_TYPE)]
    return pa.schema(fields, metadata=region_metadata(dim, dtype))


REGION_RECORD = register(
    RecordSchema(
        name=REGION_FEATURES,
        version=SCHEMA_VERSION,
        schema=pa.schema([*FEATURE_BASE_FIELDS, *REGION_FIELDS]),
        open_columns=True,  # `features`, whose width and dtype the metadata declares
        row_checks=(_check_keys, check_feature_status, check_regions),
    )
)
