"""The built-in record kinds: sample rows, shard stats, filter decisions."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from vlcurate.schemas.core import SCHEMA_VERSION, RecordSchema, register

SAMPLE_STATUSES = ("ok", "failed")


def _check_keys(table: pa.Table) -> list[tuple[int, str, str]]:
    problems = []
    seen: set[str] = set()
    for row, key in enumerate(table.column("key").to_pylist()):
        if key is None:
            continue
        if "." in key or "/" in key or not key:
            problems.append((row, "key", f"{key!r} is empty or contains '.' or '/'"))
        elif key in seen:
            problems.append((row, "key", f"{key!r} is not unique"))
        seen.add(key)
    return problems


def _check_sample_status(table: pa.Table) -> list[tuple[int, str, str]]:
    problems = []
    status = table.column("status").to_pylist()
    kind = table.column("error_kind").to_pylist()
    sha = table.column("sha256").to_pylist()
    width = table.column("width").to_pylist()
    for row, (s, k, h, w) in enumerate(zip(status, kind, sha, width)):
        if s not in SAMPLE_STATUSES:
            problems.append((row, "status", f"{s!r} is not one of {SAMPLE_STATUSES}"))
        elif s == "ok" and (k is not None or h is None or w is None):
            problems.append((row, "status", "ok row needs sha256 and width and no error_kind"))
        elif s == "failed" and k is None:
            problems.append((row, "error_kind", "failed row without an error kind"))
    return problems


SAMPLE = register(
    RecordSchema(
        name="sample",
        version=SCHEMA_VERSION,
        schema=pa.schema(
            [
                pa.field("key", pa.string(), nullable=False),
                pa.field("url", pa.string()),  # as in the input: a null URL stays null (schema 2)
                pa.field("caption", pa.string()),
                pa.field("status", pa.string(), nullable=False),
                pa.field("error_kind", pa.string()),
                pa.field("error_message", pa.string()),
                pa.field("http_status", pa.int32()),
                pa.field("width", pa.int32()),
                pa.field("height", pa.int32()),
                pa.field("original_width", pa.int32()),
                pa.field("original_height", pa.int32()),
                pa.field("sha256", pa.string()),
                pa.field("phash", pa.string()),
                # A row fetched again by `download --retry-failed`: the error of its
                # first failed fetch (in the version it was first fetched in), kept
                # beside the latest outcome; null for rows fetched once.
                pa.field("first_error_kind", pa.string()),
                pa.field("first_error_message", pa.string()),
                pa.field("first_http_status", pa.int32()),
            ]
        ),
        open_columns=True,  # source columns carried through follow the fixed ones
        row_checks=(_check_keys, _check_sample_status),
    )
)


def _check_counts(table: pa.Table) -> list[tuple[int, str, str]]:
    problems = []
    for row, counts in enumerate(table.column("counts").to_pylist()):
        for name, value in counts or []:
            if value < 0:
                problems.append((row, "counts", f"{name} is negative ({value})"))
    return problems


SHARD_STATS = register(
    RecordSchema(
        name="shard_stats",
        version=SCHEMA_VERSION,
        schema=pa.schema(
            [
                pa.field("stage", pa.string(), nullable=False),
                pa.field("shard", pa.int32(), nullable=False),
                pa.field("rows", pa.int64(), nullable=False),
                pa.field("counts", pa.map_(pa.string(), pa.int64()), nullable=False),
            ]
        ),
        row_checks=(_check_counts,),
    )
)


def _check_decisions(table: pa.Table) -> list[tuple[int, str, str]]:
    keep = table.column("keep")
    reason = table.column("reason")
    bad = pc.and_(pc.invert(keep), pc.is_null(reason))
    return [(i, "reason", "dropped without a reason") for i, b in enumerate(bad.to_pylist()) if b]


DECISION = register(
    RecordSchema(
        name="decision",
        version=SCHEMA_VERSION,
        schema=pa.schema(
            [
                pa.field("key", pa.string(), nullable=False),
                pa.field("stage", pa.string(), nullable=False),
                pa.field("keep", pa.bool_(), nullable=False),
                pa.field("reason", pa.string()),
                pa.field("score", pa.float64()),
                pa.field("detail", pa.string()),
            ]
        ),
        row_checks=(_check_decisions,),
    )
)


# The k-means partition of a shard's samples by their stored image embeddings
# (stage ``embedding_clusters``): null cluster for a sample that has no embedding.
EMBEDDING_CLUSTER = register(
    RecordSchema(
        name="embedding_cluster",
        version=SCHEMA_VERSION,
        schema=pa.schema(
            [
                pa.field("key", pa.string(), nullable=False),
                pa.field("cluster", pa.int32()),
                pa.field("similarity", pa.float32()),  # cosine to the cluster's centroid
            ]
        ),
        row_checks=(_check_keys,),
    )
)
