"""Feature sidecars: one row per sample a feature stage saw, ``ok`` with its features
or ``failed`` with a reason.

Layout of a ``vit_features`` file (``vit_features/<shard>.parquet``)::

    key            string, not null      the sample's key (as in the samples tar/parquet)
    status         string, not null      "ok" | "failed"
    error_kind     string                why it failed (decode_error, model_error, ...)
    error_message  string                the failure's message
    tokens         binary                [T, D] float16 tensor, null unless ok
    embedding      binary                [E] float16 tensor, null unless ok

``tokens`` are the ``[T, D]`` outputs of one ViT block (CLS first when included) and
``embedding`` the L2-normalised CLIP image embedding; float16 by default, float32
with ``storage: fp32``.

**Tensor columns.** Every declared feature column holds, per row, the bytes of one
C-order little-endian array: ``np.frombuffer(value, dtype).reshape(shape)``. The
shape and dtype are declared in the schema metadata under ``vlcurate.features`` as
JSON, e.g. ``{"tokens": {"shape": [17, 64], "dtype": "float16"}, "embedding":
{"shape": [32], "dtype": "float16"}}``; a first dimension of ``null`` is variable
(e.g. a varying number of region boxes). Reading them::

    from vlcurate.schemas.features import feature_arrays, stacked_features
    table = pq.read_table("v1/vit_features/00000.parquet")
    tokens = stacked_features(table, "tokens")        # [n_ok, T, D], ok rows, zero-copy
    per_row = feature_arrays(table, "tokens")         # one array (or None) per row

Why bytes rather than nested Arrow lists: Parquet encodes a list column value by value
(a repetition and a definition level for each of a ViT-L-14 image's 263k numbers).
Measured on the development machine, for 128 rows of 257 x 1024 float16: nested lists
wrote at 69-120 MB/s and read at 215 MB/s; the same values as binary wrote at 530 MB/s
(uncompressed) and read at 5.9 GB/s. A GPU produces ViT-L-14 tokens at about 0.9 GB/s,
so nested lists made the writer, not the model, the speed of the stage. (Arrow
fixed-size lists have the same per-value Parquet encoding, and pyarrow before 26,
which Beam pins, cannot read back one holding a null row.) Within a column chunk the
ok rows' bytes are contiguous (null rows are empty), which is what lets
:func:`stacked_features` return one array without copying.

The record kind fixes only the first four columns (T, D and E depend on the model);
feature columns are open but must be declared. The row checks verify each ``ok`` row
holds exactly the declared number of bytes (a whole number of rows for a variable
first dimension) and that features are present exactly on ``ok`` rows.
``vlcurate.model`` in the metadata records which model produced the features (JSON,
see :mod:`vlcurate.extractors.vit_stage`).
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlcurate.schemas.core import SCHEMA_VERSION, RecordSchema, register
from vlcurate.schemas.records import SAMPLE_STATUSES, _check_keys

FEATURES_META = b"vlcurate.features"
MODEL_META = b"vlcurate.model"
# Storage dtypes of tensor columns, always little-endian on disk.
FEATURE_DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4"), "int64": np.dtype("<i8")}
TENSOR_TYPE = pa.binary()

# The columns every feature sidecar starts with; feature columns follow.
FEATURE_BASE_FIELDS = (
    pa.field("key", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error_kind", pa.string()),
    pa.field("error_message", pa.string()),
)

Problems = list[tuple[int, str, str]]
Shape = Sequence[int | None]


def tensor_array(values: Sequence[np.ndarray | None], dtype: str) -> pa.BinaryArray:
    """A tensor column chunk: each array's C-order little-endian bytes as ``dtype``
    (cast when needed), ``None`` as null. One copy of the values, no Python per value."""
    np_dtype = FEATURE_DTYPES[dtype]
    parts: list[np.ndarray] = []
    lengths = np.zeros(len(values), np.int64)
    valid = np.zeros(len(values), bool)
    for i, v in enumerate(values):
        if v is not None:
            a = np.asarray(v, dtype=np_dtype)
            parts.append(a.reshape(-1))
            lengths[i], valid[i] = a.nbytes, True
    offsets = np.zeros(len(values) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError(f"{offsets[-1]} bytes in one tensor chunk: build it from fewer rows")
    data = np.concatenate(parts).view(np.uint8) if parts else np.zeros(0, np.uint8)
    nulls = int((~valid).sum())
    mask = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    return pa.BinaryArray.from_buffers(TENSOR_TYPE, len(values),
                                       [mask, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)],
                                       null_count=nulls)


def _chunk_bytes(chunk: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, data)`` of a binary chunk as numpy views (no copy), offsets relative to data."""
    _, off_buf, data_buf = chunk.buffers()
    offsets = np.frombuffer(off_buf, np.int32)[chunk.offset:chunk.offset + len(chunk) + 1].astype(np.int64)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return offsets, data


def _spec(table: pa.Table, name: str) -> tuple[list[int | None], np.dtype]:
    spec = (declared_features(table.schema) or {}).get(name)
    if spec is None:
        raise KeyError(f"column {name!r} is not a declared feature column")
    return spec["shape"], FEATURE_DTYPES[spec["dtype"]]


def _chunks_of(col: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return list(col.chunks) if isinstance(col, pa.ChunkedArray) else [col]


def feature_arrays(table: pa.Table, name: str) -> list[np.ndarray | None]:
    """One array per row of feature column ``name`` (None where null), shaped as declared;
    views of the table's buffers, so read-only."""
    shape, dtype = _spec(table, name)
    inner = [int(d) for d in shape[1:]]
    out: list[np.ndarray | None] = []
    for chunk in _chunks_of(table.column(name)):
        offsets, data = _chunk_bytes(chunk)
        valid = chunk.is_valid().to_numpy(zero_copy_only=False)
        for i in range(len(chunk)):
            values = data[offsets[i]:offsets[i + 1]].view(dtype)
            out.append((values.reshape(-1, *inner) if shape else values.reshape(())) if valid[i] else None)
    return out


def stacked_features(table: pa.Table, name: str) -> np.ndarray:
    """The non-null rows of a fixed-shape feature column as one ``[n, *shape]`` array
    (zero-copy when the column is one chunk)."""
    shape, dtype = _spec(table, name)
    if any(d is None for d in shape):
        raise ValueError(f"column {name!r} has a variable shape {shape}; use feature_arrays")
    parts = []
    for chunk in _chunks_of(table.column(name)):
        offsets, data = _chunk_bytes(chunk)
        parts.append(data[offsets[0]:offsets[-1]].view(dtype))  # null rows are empty
    flat = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, dtype)
    return flat.reshape(-1, *shape)


def feature_metadata(columns: dict[str, tuple[Shape, str]]) -> dict[str, str]:
    """Schema metadata declaring ``{column: (shape, dtype)}``, for ``write_parquet``."""
    body = {name: {"shape": list(shape), "dtype": dtype} for name, (shape, dtype) in columns.items()}
    return {FEATURES_META.decode(): json.dumps(body, sort_keys=True)}


def declared_features(schema: pa.Schema) -> dict[str, dict[str, Any]] | None:
    """``{column: {"shape": [...], "dtype": ...}}`` from a file's schema metadata."""
    raw = (schema.metadata or {}).get(FEATURES_META)
    return json.loads(raw) if raw else None


def _declaration_problem(actual: pa.DataType, shape: Any, dtype: Any) -> str | None:
    """Why a column of type ``actual`` cannot hold the declared ``shape``/``dtype``, or None."""
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 1 for d in shape[1:])
            and (not shape or shape[0] is None or (isinstance(shape[0], int) and shape[0] >= 1))):
        return f"declared shape {shape}: dimensions must be positive integers, only the first may be null"
    if dtype not in FEATURE_DTYPES:
        return f"declared dtype {dtype!r} is not one of {', '.join(FEATURE_DTYPES)}"
    if not pa.types.is_binary(actual):
        return f"type {actual}: a feature column holds each row's array as binary"
    return None


def tensor_length_problems(col: pa.ChunkedArray, shape: list[int | None], dtype: str,
                           rows: np.ndarray | None = None) -> list[tuple[int, str]]:
    """The first row whose bytes are not one array of the declared shape: ``prod(shape)``
    values, or for a variable first dimension a whole number of rows (exactly
    ``rows[i]`` of them when the caller knows each table row's count)."""
    unit = FEATURE_DTYPES[dtype].itemsize * math.prod(shape[1:])
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    lengths = pc.binary_length(col).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if shape and shape[0] is not None:
        want, need = np.full(len(lengths), unit * shape[0]), "{}"
    elif rows is not None:
        want, need = unit * rows.astype(np.int64), "{} (" + f"num_boxes x {unit})"
    else:
        want, need = lengths - lengths % unit, f"a multiple of {unit}"
    bad = np.flatnonzero(valid & (lengths != want))
    if not bad.size:
        return []
    i = int(bad[0])
    return [(i, f"{lengths[i]} bytes, the declared {shape} {dtype} needs {need.format(want[i])}")]


def check_feature_columns(table: pa.Table) -> Problems:
    """Declared shapes/dtypes and lengths, no undeclared columns, values exactly on ok rows."""
    base = {f.name for f in FEATURE_BASE_FIELDS}
    declared = declared_features(table.schema)
    if declared is None:
        return [(0, "", f"schema metadata lacks {FEATURES_META.decode()} (the declared feature shapes)")]
    problems: Problems = []
    for name in table.schema.names:
        if name not in base and name not in declared:
            problems.append((0, name, "feature column not declared in the schema metadata"))
    ok = pc.equal(table.column("status"), "ok")
    for name, spec in declared.items():
        if name not in table.schema.names:
            problems.append((0, name, "declared feature column is missing"))
            continue
        col = table.column(name)
        why = _declaration_problem(col.type, spec.get("shape"), spec.get("dtype"))
        if why:
            problems.append((0, name, why))
            continue
        problems += [(row, name, what) for row, what in tensor_length_problems(col, spec["shape"], spec["dtype"])]
        mismatch = pc.not_equal(ok, pc.is_valid(col))
        if pc.any(mismatch).as_py():  # one per column is enough to locate the fault
            problems.append((pc.index(mismatch, True).as_py(), name,
                             "features must be present exactly when status is ok"))
    return problems


def check_feature_status(table: pa.Table) -> Problems:
    problems: Problems = []
    status = table.column("status").to_pylist()
    kinds = table.column("error_kind").to_pylist()
    for row, (s, k) in enumerate(zip(status, kinds)):
        if s not in SAMPLE_STATUSES:
            problems.append((row, "status", f"{s!r} is not one of {SAMPLE_STATUSES}"))
        elif (s == "failed") != (k is not None):
            problems.append((row, "error_kind", "an error kind is required on failed rows and only there"))
    return problems


def feature_record(name: str) -> RecordSchema:
    """A feature record kind: the base columns, open feature columns, the checks above.
    Feature stages with their own kind (e.g. region features) register one of these."""
    return RecordSchema(
        name=name,
        version=SCHEMA_VERSION,
        schema=pa.schema(list(FEATURE_BASE_FIELDS)),
        open_columns=True,
        row_checks=(_check_keys, check_feature_status, check_feature_columns),
    )


VIT_FEATURES = register(feature_record("vit_features"))
