"""Feature sidecars: one row per sample a feature stage saw, ``ok`` with its features
or ``failed`` with a reason.

Layout of a ``vit_features`` file (``vit_features/<shard>.parquet``)::

    key            string, not null      the sample's key (as in the samples tar/parquet)
    status         string, not null      "ok" | "failed"
    error_kind     string                why it failed (decode_error, model_error, ...)
    error_message  string                the failure's message
    tokens         fixed_size_list<fixed_size_list<float16>[D]>[T]   null unless ok
    embedding      fixed_size_list<float16>[E]                       null unless ok

``tokens`` are the ``[T, D]`` outputs of one ViT block (CLS first when included) and
``embedding`` the L2-normalised CLIP image embedding. Nested fixed-size lists keep
the shape in the Arrow type itself: polars reads ``tokens`` as ``Array(Float16,
shape=(T, D))`` (``.to_numpy()`` gives ``[N, T, D]``), pyarrow as a fixed-size list
(``pc.list_flatten`` twice, then reshape). Values are float16 by default, float32
with ``storage: fp32``.

Because T, D and E depend on the model, the record kind fixes only the first four
columns and leaves the feature columns open; every feature column is declared in the
schema metadata under ``vlcurate.features`` as JSON, e.g.
``{"tokens": {"shape": [17, 64], "dtype": "float16"}, "embedding": {"shape": [32],
"dtype": "float16"}}``. The first dimension may be declared ``null`` (variable: an
Arrow ``list`` of fixed-size lists), for feature kinds such as a varying number of
region boxes. The row checks verify that each column's type has exactly the declared
shape and dtype (so every array in it has the declared length), that no undeclared
column is present, and that feature values are present exactly on ``ok`` rows. ``vlcurate.model`` in the metadata records which
model produced the features (JSON, see :mod:`vlcurate.extractors.vit_stage`).
"""

from __future__ import annotations

import json
from typing import Any

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


def feature_type(shape: list[int | None] | tuple[int | None, ...], dtype: str) -> pa.DataType:
    """The Arrow type of one feature column: nested lists, outermost dim first."""
    t: pa.DataType = FEATURE_DTYPES[dtype]
    for dim in reversed(list(shape)):
        t = pa.list_(t) if dim is None else pa.list_(t, int(dim))
    return t


def feature_metadata(columns: dict[str, tuple[list[int | None] | tuple[int | None, ...], str]]) -> dict[str, str]:
    """Schema metadata declaring ``{column: (shape, dtype)}``, for ``write_parquet``."""
    body = {name: {"shape": list(shape), "dtype": dtype} for name, (shape, dtype) in columns.items()}
    return {FEATURES_META.decode(): json.dumps(body, sort_keys=True)}


def declared_features(schema: pa.Schema) -> dict[str, dict[str, Any]] | None:
    """``{column: {"shape": [...], "dtype": ...}}`` from a file's schema metadata."""
    raw = (schema.metadata or {}).get(FEATURES_META)
    return json.loads(raw) if raw else None


def _type_problem(actual: pa.DataType, shape: list[int | None], dtype: str) -> str | None:
    """Why ``actual`` does not hold ``shape``/``dtype`` (field names are not compared:
    Parquet renames list items to ``element``), or None."""
    if any(d is None for d in shape[1:]):
        return f"declared shape {shape}: only the first dimension may be variable (null)"
    t = actual
    for dim in shape:
        if dim is None:
            if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
                return f"type {actual}, declared shape {shape} {dtype}"
        elif not pa.types.is_fixed_size_list(t) or t.list_size != dim:
            got = f"[{t.list_size}]" if pa.types.is_fixed_size_list(t) else "not a fixed-size list"
            return f"type {actual} ({got} where the declared shape {shape} needs [{dim}])"
        t = t.value_type
    if dtype not in FEATURE_DTYPES or not t.equals(FEATURE_DTYPES[dtype]):
        return f"values are {t}, declared {dtype}"
    return None


def check_feature_columns(table: pa.Table) -> Problems:
    """Declared shapes/dtypes, no undeclared columns, values exactly on ``ok`` rows."""
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
        mismatch = pc.not_equal(ok, pc.is_valid(col)).to_pylist()
        for row, bad in enumerate(mismatch):
            if bad:
                problems.append((row, name, "features must be present exactly when status is ok"))
                break  # one per column is enough to locate the fault
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
