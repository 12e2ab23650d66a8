"""Feature sidecars: one row per sample a feature stage saw, ``ok`` with its features
or ``failed`` with a reason.

Layout of a ``vit_features`` file (``vit_features/<shard>.parquet``)::

    key            string, not null      the sample's key (as in the samples tar/parquet)
    status         string, not null      "ok" | "failed"
    error_kind     string                why it failed (decode_error, model_error, ...)
    error_message  string                the failure's message
    tokens         list<list<float16>>   [T][D], null unless ok
    embedding      list<float16>         [E], null unless ok

``tokens`` are the ``[T, D]`` outputs of one ViT block (CLS first when included) and
``embedding`` the L2-normalised CLIP image embedding; float16 by default, float32
with ``storage: fp32``. One list level per dimension keeps the shape in the data,
and the exact shape is declared in the schema metadata under ``vlcurate.features``
as JSON, e.g. ``{"tokens": {"shape": [17, 64], "dtype": "float16"}, "embedding":
{"shape": [32], "dtype": "float16"}}``. Reading them as arrays::

    df = pl.read_parquet("v1/vit_features/*.parquet").filter(pl.col("status") == "ok")
    tokens = df["tokens"].cast(pl.Array(pl.Float16, (T, D))).to_numpy()   # [N, T, D]
    # pyarrow: table.column("tokens").cast(pa.list_(pa.list_(pa.float16(), D), T))

Why not Arrow fixed-size lists on disk: pyarrow before 26 (and Beam pins it below 26)
cannot read back a Parquet fixed-size list column that holds a null row (apache/arrow
issue 35692, "Expected all lists to be of size=N but index i had size=0"), and failed
samples must have null features. Variable lists read everywhere; the row checks below
give them the guarantees a fixed size would: every ``ok`` row's arrays have exactly
the declared lengths at every level and no null values.

The record kind fixes only the first four columns (T, D and E depend on the model);
feature columns are open but must be declared. A declared first dimension of
``null`` is variable (e.g. a varying number of region boxes). ``vlcurate.model`` in
the metadata records which model produced the features (JSON, see
:mod:`vlcurate.extractors.vit_stage`).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from vlcurate.schemas.core import SCHEMA_VERSION, RecordSchema, register
from vlcurate.schemas.records import SAMPLE_STATUSES, _check_keys

FEATURES_META = b"vlcurate.features"
MODEL_META = b"vlcurate.model"
FEATURE_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}

# The columns every feature sidecar starts with; feature columns follow.
FEATURE_BASE_FIELDS = (
    pa.field("key", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error_kind", pa.string()),
    pa.field("error_message", pa.string()),
)

Problems = list[tuple[int, str, str]]
Shape = Sequence[int | None]


def feature_type(shape: Shape, dtype: str) -> pa.DataType:
    """The Arrow type of a feature column: one ``list`` level per dimension."""
    t: pa.DataType = FEATURE_DTYPES[dtype]
    for _ in shape:
        t = pa.list_(t)
    return t


def feature_metadata(columns: dict[str, tuple[Shape, str]]) -> dict[str, str]:
    """Schema metadata declaring ``{column: (shape, dtype)}``, for ``write_parquet``."""
    body = {name: {"shape": list(shape), "dtype": dtype} for name, (shape, dtype) in columns.items()}
    return {FEATURES_META.decode(): json.dumps(body, sort_keys=True)}


def declared_features(schema: pa.Schema) -> dict[str, dict[str, Any]] | None:
    """``{column: {"shape": [...], "dtype": ...}}`` from a file's schema metadata."""
    raw = (schema.metadata or {}).get(FEATURES_META)
    return json.loads(raw) if raw else None


def _type_problem(actual: pa.DataType, shape: list[int | None], dtype: str) -> str | None:
    """Why ``actual`` cannot hold ``shape``/``dtype`` (list item names are not
    compared: Parquet renames them to ``element``), or None."""
    if any(d is None for d in shape[1:]):
        return f"declared shape {shape}: only the first dimension may be variable (null)"
    t = actual
    for _ in shape:
        if not pa.types.is_list(t):
            return f"type {actual} does not have one list level per dimension of {shape}"
        t = t.value_type
    if dtype not in FEATURE_DTYPES or not t.equals(FEATURE_DTYPES[dtype]):
        return f"values are {t}, declared {dtype}"
    return None


def _row_of(levels: list[Any], i: int) -> int:
    """The table row that item ``i`` of ``levels[-1]`` (a flattened level) belongs to;
    only computed once a problem is found, so valid files never pay for it."""
    for parent in reversed(levels[:-1]):
        i = pc.list_parent_indices(parent)[i].as_py()
    return i


def _length_problems(col: pa.ChunkedArray, shape: list[int | None]) -> list[tuple[int, str]]:
    """The first row whose arrays do not have the declared length at some level, or
    that holds null items/values."""
    levels: list[Any] = [col]  # the column, then each list level flattened
    for depth, dim in enumerate(shape):
        lengths = pc.list_value_length(levels[-1])
        if dim is not None:
            bad = pc.and_kleene(pc.is_valid(lengths), pc.not_equal(lengths, dim))
            if pc.any(bad).as_py():
                i = pc.index(bad, True).as_py()
                return [(_row_of(levels, i), f"an array of length {lengths[i].as_py()} at level {depth}, declared {dim}")]
        levels.append(pc.list_flatten(levels[-1]))
        if levels[-1].null_count:
            i = pc.index(pc.is_null(levels[-1]), True).as_py()
            return [(_row_of(levels, i), "null items in the features")]
    return []


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
        why = _type_problem(col.type, spec["shape"], spec["dtype"])
        if why:
            problems.append((0, name, why))
            continue
        problems += [(row, name, what) for row, what in _length_problems(col, spec["shape"])]
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
