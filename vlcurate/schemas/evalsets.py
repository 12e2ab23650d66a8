"""Record kinds of eval-set decontamination.

``eval_item`` (``ROOT/_evalsets/NAME/items.parquet``): one row per image of an eval
set's source, in index order (the row number of an ``ok`` item among the ok items is
its position in the FAISS indexes)::

    id             string, not null      the eval item's id (relative path, sample key)
    source         string                where it came from (file path or URL)
    status         string, not null      "ok" | "failed"
    error_message  string                why it has no hash or embedding
    phash          string                64-bit DCT pHash, 16 hex digits (null unless ok)
    thumbnail      binary                JPEG, at most 64 px on its longer side, shown by the
                                         report beside a sample that matched it (null unless ok;
                                         absent from eval sets of manifest format 1)

``eval_match`` (``<decontaminate stage>/<shard>.matches.parquet``, the match report):
one row per sample the stage dropped (or, with ``tag_only``, would have dropped)::

    key            string, not null      the training sample's key
    stage          string, not null      the decontaminate stage
    evalset        string, not null      the eval set it matched
    eval_id        string, not null      the eval item it matched
    hash_distance  int32                 pHash Hamming distance to that item (null: no hash)
    similarity     float32               embedding cosine to that item (null: no embedding path)
    matched_by     string, not null      "hash" | "embedding" | "hash+embedding"
"""

from __future__ import annotations

import pyarrow as pa

from vlcurate.schemas.core import SCHEMA_VERSION, RecordSchema, register
from vlcurate.schemas.records import _check_keys

ITEM_STATUSES = ("ok", "failed")
MATCHED_BY = ("hash", "embedding", "hash+embedding")
Problems = list[tuple[int, str, str]]


def _check_items(table: pa.Table) -> Problems:
    problems: Problems = []
    seen: set[str] = set()
    for row, (item, status, ph) in enumerate(zip(table.column("id").to_pylist(), table.column("status").to_pylist(),
                                                table.column("phash").to_pylist())):
        if item in seen:
            problems.append((row, "id", f"{item!r} is not unique"))
        seen.add(item)
        if status not in ITEM_STATUSES:
            problems.append((row, "status", f"{status!r} is not one of {ITEM_STATUSES}"))
        elif (status == "ok") != (ph is not None):
            problems.append((row, "phash", "a phash must be present exactly when status is ok"))
        elif ph is not None and (len(ph) != 16 or any(c not in "0123456789abcdef" for c in ph)):
            problems.append((row, "phash", f"{ph!r} is not 16 lower-case hex digits"))
    return problems


EVAL_ITEM = register(
    RecordSchema(
        name="eval_item",
        version=SCHEMA_VERSION,
        schema=pa.schema([
            pa.field("id", pa.string(), nullable=False),
            pa.field("source", pa.string()),
            pa.field("status", pa.string(), nullable=False),
            pa.field("error_message", pa.string()),
            pa.field("phash", pa.string()),
            pa.field("thumbnail", pa.binary()),
        ]),
        row_checks=(_check_items,),
    )
)


def _check_matches(table: pa.Table) -> Problems:
    problems: Problems = []
    columns = [table.column(n).to_pylist() for n in ("matched_by", "hash_distance", "similarity")]
    for row, (by, dist, sim) in enumerate(zip(*columns)):
        if by not in MATCHED_BY:
            problems.append((row, "matched_by", f"{by!r} is not one of {MATCHED_BY}"))
            continue
        if "hash" in by and dist is None:
            problems.append((row, "hash_distance", "matched by hash without a hash distance"))
        if "embedding" in by and sim is None:
            problems.append((row, "similarity", "matched by embedding without a similarity"))
        if dist is not None and not 0 <= dist <= 64:
            problems.append((row, "hash_distance", f"{dist} is not in 0..64"))
    return problems


EVAL_MATCH = register(
    RecordSchema(
        name="eval_match",
        version=SCHEMA_VERSION,
        schema=pa.schema([
            pa.field("key", pa.string(), nullable=False),
            pa.field("stage", pa.string(), nullable=False),
            pa.field("evalset", pa.string(), nullable=False),
            pa.field("eval_id", pa.string(), nullable=False),
            pa.field("hash_distance", pa.int32()),
            pa.field("similarity", pa.float32()),
            pa.field("matched_by", pa.string(), nullable=False),
        ]),
        row_checks=(_check_keys, _check_matches),
    )
)
