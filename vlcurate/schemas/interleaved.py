"""Record kinds of interleaved web documents (stage ``interleave`` and those after it).

- ``interleaved_document``: OBELICS's layout (HuggingFaceM4/OBELICS): ``images`` and
  ``texts`` are parallel lists where exactly one of the two is non-null at each
  position, ``metadata`` a JSON list with one entry per position (an object for an
  image, null for a text), ``general_metadata`` a JSON object with the page ``url``,
  plus our ``key`` first;
- ``page``: one row per page record of the input (every WARC response, resource or
  revisit record, every listed HTML file): ``document`` or ``dropped`` with a reason;
- ``page_image``: one row per image of a page, kept or dropped with a reason;
- ``flamingo_chunk``: Flamingo training samples (a token window with ``<image>``
  positions and at most a few images).
"""

from __future__ import annotations

import json

import pyarrow as pa

from vlcurate.schemas.core import SCHEMA_VERSION, RecordSchema, register

PAGE_STATUSES = ("document", "dropped")
DOCUMENT_KIND = "interleaved_document"
# Record kinds keyed by documents (or by every image of a page), not by a version's samples.
DOCUMENT_KEYED = ("interleaved_document", "page", "page_image", "flamingo_chunk")


def document_images(documents: pa.Table) -> pa.Table:
    """The images of ``documents`` as a URL list: ``key`` (the image's derived key),
    ``url``, ``caption`` (its alt text) and ``document_key``, in document order."""
    rows: dict[str, list] = {"key": [], "url": [], "caption": [], "document_key": []}
    for key, meta in zip(documents.column("key").to_pylist(), documents.column("metadata").to_pylist()):
        for entry in json.loads(meta):
            if entry:
                rows["key"].append(entry["image_key"])
                rows["url"].append(entry["src"])
                rows["caption"].append(entry.get("alt_text"))
                rows["document_key"].append(key)
    return pa.table(rows, schema=pa.schema([("key", pa.string()), ("url", pa.string()), ("caption", pa.string()),
                                            ("document_key", pa.string())]))


def _unique_keys(table: pa.Table) -> list[tuple[int, str, str]]:
    seen: set[str] = set()
    problems = []
    for row, key in enumerate(table.column("key").to_pylist()):
        if not key or "." in key or "/" in key:
            problems.append((row, "key", f"{key!r} is empty or contains '.' or '/'"))
        elif key in seen:
            problems.append((row, "key", f"{key!r} is not unique"))
        seen.add(key)
    return problems


def _layout_problem(texts: list, images: list) -> str | None:
    if len(texts) != len(images):
        return f"{len(texts)} texts but {len(images)} images"
    if not texts:
        return "empty document"
    for i, (t, im) in enumerate(zip(texts, images)):
        if (t is None) == (im is None):
            return f"position {i}: exactly one of texts/images must be non-null"
    return None


def _check_documents(table: pa.Table) -> list[tuple[int, str, str]]:
    import pyarrow.compute as pc

    problems = []
    urls: dict[str, int] = {}
    texts_col, images_col = table.column("texts"), table.column("images")
    # the layout in Arrow first (one pass in C); rows are looked at one by one only when it fails
    lengths_ok = pc.all(pc.equal(pc.list_value_length(texts_col), pc.list_value_length(images_col))).as_py()
    layout_ok = lengths_ok is not False and pc.all(pc.not_equal(
        pc.is_null(pc.list_flatten(texts_col)), pc.is_null(pc.list_flatten(images_col)))).as_py() is not False \
        and pc.all(pc.greater(pc.list_value_length(texts_col), 0)).as_py() is not False
    texts_rows = None if layout_ok else texts_col.to_pylist()
    images_rows = None if layout_ok else images_col.to_pylist()
    lengths = pc.list_value_length(texts_col).to_pylist()
    columns = (table.column(c).to_pylist() for c in ("metadata", "general_metadata"))
    for row, (n, meta, general) in enumerate(zip(lengths, *columns)):
        if texts_rows is not None and (problem := _layout_problem(texts_rows[row], images_rows[row])):
            problems.append((row, "images" if problem.startswith("position") else "texts", problem))
            if "texts but" in problem:
                continue
        try:
            meta_list, general_obj = json.loads(meta), json.loads(general)
        except ValueError:
            problems.append((row, "metadata", "not JSON"))
            continue
        if not isinstance(meta_list, list) or len(meta_list) != n:
            problems.append((row, "metadata", "not a list with one entry per position"))
        if not isinstance(general_obj, dict) or not general_obj.get("url"):
            problems.append((row, "general_metadata", "no page url"))
        elif general_obj["url"] in urls:
            problems.append((row, "general_metadata", f"page url also in row {urls[general_obj['url']]}"))
        else:
            urls[general_obj["url"]] = row
    return problems


INTERLEAVED_DOCUMENT = register(RecordSchema(
    name="interleaved_document",
    version=SCHEMA_VERSION,
    schema=pa.schema([
        pa.field("key", pa.string(), nullable=False),
        pa.field("images", pa.list_(pa.string()), nullable=False),
        pa.field("metadata", pa.string(), nullable=False),
        pa.field("general_metadata", pa.string(), nullable=False),
        pa.field("texts", pa.list_(pa.string()), nullable=False),
    ]),
    row_checks=(_unique_keys, _check_documents),
))


def _check_pages(table: pa.Table) -> list[tuple[int, str, str]]:
    problems = []
    for row, (status, reason) in enumerate(zip(table.column("status").to_pylist(),
                                                table.column("reason").to_pylist())):
        if status not in PAGE_STATUSES:
            problems.append((row, "status", f"{status!r} is not one of {PAGE_STATUSES}"))
        elif status == "dropped" and not reason:
            problems.append((row, "reason", "dropped without a reason"))
    return problems


PAGE = register(RecordSchema(
    name="page",
    version=SCHEMA_VERSION,
    schema=pa.schema([
        pa.field("key", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("source", pa.string(), nullable=False),  # the WARC or HTML file
        pa.field("offset", pa.int64(), nullable=False),  # record offset in the WARC; row in an HTML list
        pa.field("record_type", pa.string(), nullable=False),
        pa.field("http_status", pa.int32()),
        pa.field("content_type", pa.string()),
        pa.field("charset", pa.string()),
        pa.field("charset_source", pa.string()),  # bom | header | meta | utf-8 | detected | fallback
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("images", pa.int32()),  # images kept in the document
        pa.field("words", pa.int32()),
    ]),
    row_checks=(_unique_keys, _check_pages),
))


def _check_image_rows(table: pa.Table) -> list[tuple[int, str, str]]:
    return [(row, "reason", "dropped without a reason")
            for row, (keep, reason) in enumerate(zip(table.column("keep").to_pylist(),
                                                     table.column("reason").to_pylist()))
            if not keep and not reason]


PAGE_IMAGE = register(RecordSchema(
    name="page_image",
    version=SCHEMA_VERSION,
    schema=pa.schema([
        pa.field("key", pa.string(), nullable=False),  # <document key>_<index>
        pa.field("document_key", pa.string(), nullable=False),
        pa.field("index", pa.int32(), nullable=False),  # among the page's images, in reading order
        pa.field("url", pa.string()),
        pa.field("src", pa.string()),
        pa.field("alt", pa.string()),
        pa.field("keep", pa.bool_(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
    ]),
    row_checks=(_unique_keys, _check_image_rows),
))


def _check_chunks(table: pa.Table) -> list[tuple[int, str, str]]:
    meta = table.schema.metadata or {}
    image_id = int(meta.get(b"vlcurate.image_token_id", b"-1"))
    max_tokens = int(meta.get(b"vlcurate.max_tokens", b"0") or 0)
    max_images = int(meta.get(b"vlcurate.max_images", b"0") or 0)
    problems = []
    for row, (ids, images) in enumerate(zip(table.column("token_ids").to_pylist(),
                                            table.column("images").to_pylist())):
        markers = sum(1 for t in ids if t == image_id)
        if markers != len(images):
            problems.append((row, "images", f"{markers} <image> tokens but {len(images)} images"))
        if max_tokens and len(ids) > max_tokens:
            problems.append((row, "token_ids", f"{len(ids)} tokens > {max_tokens}"))
        if max_images and len(images) > max_images:
            problems.append((row, "images", f"{len(images)} images > {max_images}"))
    return problems


FLAMINGO_CHUNK = register(RecordSchema(
    name="flamingo_chunk",
    version=SCHEMA_VERSION,
    schema=pa.schema([
        pa.field("key", pa.string(), nullable=False),  # <document key>_c<chunk>
        pa.field("document_key", pa.string(), nullable=False),
        pa.field("chunk", pa.int32(), nullable=False),
        pa.field("start", pa.int32(), nullable=False),  # token offset in the document's sequence
        pa.field("token_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("images", pa.list_(pa.string()), nullable=False),  # image keys, in token order
        pa.field("image_urls", pa.list_(pa.string()), nullable=False),
        pa.field("text", pa.string(), nullable=False),  # the window decoded, markers as written
    ]),
    row_checks=(_unique_keys, _check_chunks),
))
