"""The record kind of a training export's Parquet shards (``train/<shard>.parquet``).

One row per exported sample (kept by every filter of the source version)::

    key      string, not null          the sample's key in the source version
    image    struct<bytes, path>       the image file (Hugging Face ``Image`` layout)
    text     string, not null          the training caption: ``texts[0]``
    texts    list<string>, not null    every training caption, best first (CapFilt's
                                       selected captions, else the original caption)
    url      string                    where the image was fetched
    width    int32                     stored image size
    height   int32

then the requested feature columns, each as its reader expects it:

    vit        fixed_size_list<fixed_size_list<float16, D>, T>  ViT tokens [T, D]
    regions    list<fixed_size_list<float16, D>>                region features [N, D]
    boxes      list<fixed_size_list<float32, 4>>                region boxes [N, 4]
    num_boxes  int32                                            N

(float32 where the source sidecar stored float32). The schema metadata also carries
``huggingface`` (the ``datasets`` features, so feature columns load as arrays).
"""

from __future__ import annotations

import pyarrow as pa

from vlcurate.schemas.core import SCHEMA_VERSION, RecordSchema, register
from vlcurate.schemas.records import _check_keys

TRAINING_SAMPLE = "training_sample"
IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])


def _check_texts(table: pa.Table) -> list[tuple[int, str, str]]:
    problems = []
    for row, (text, texts) in enumerate(zip(table.column("text").to_pylist(), table.column("texts").to_pylist())):
        if not texts or texts[0] != text or any(t is None for t in texts):
            problems.append((row, "texts", "texts must be non-empty, without nulls, and start with text"))
    return problems


def _check_images(table: pa.Table) -> list[tuple[int, str, str]]:
    for row, image in enumerate(table.column("image").to_pylist()):
        if not image or not image.get("bytes"):
            return [(row, "image", "every exported sample needs its image bytes")]
    return []


def _check_regions(table: pa.Table) -> list[tuple[int, str, str]]:
    names = table.schema.names
    if "num_boxes" not in names:
        return []
    problems = []
    counts = table.column("num_boxes").to_pylist()
    for name in ("regions", "boxes"):
        if name in names:
            for row, (n, value) in enumerate(zip(counts, table.column(name).to_pylist())):
                if value is None or len(value) != n:
                    problems.append((row, name, f"{0 if value is None else len(value)} rows, num_boxes is {n}"))
                    break
    return problems


register(
    RecordSchema(
        name=TRAINING_SAMPLE,
        version=SCHEMA_VERSION,
        schema=pa.schema([
            pa.field("key", pa.string(), nullable=False),
            # nullable in the schema so that `datasets` matches it to its Image feature
            # (it compares whole fields); a row check refuses a missing image
            pa.field("image", IMAGE_TYPE),
            pa.field("text", pa.string(), nullable=False),
            pa.field("texts", pa.list_(pa.string()), nullable=False),
            pa.field("url", pa.string()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
        ]),
        open_columns=True,  # the requested feature columns follow
        row_checks=(_check_keys, _check_images, _check_texts, _check_regions),
    )
)
