"""Page inputs: WARC / WARC.gz files, or HTML files named by a URL list, cut into shards.

An input shard is a small table of *ranges*: ``(kind, source, url, start, count, name)``.
A WARC range is ``count`` records from byte ``start`` of ``source`` (``count = -1``: to
the end of the file, i.e. one shard per input file); an HTML range is one file with
its page URL. A page's key is ``<shard>_<offset>``, the record's byte offset in its
WARC (an HTML page: its row in the URL list), so keys do not depend on how many
records came before it in the shard.

Reading never fails the shard: a record that cannot be read is a :class:`PageRecord`
with ``error`` set, and a file that breaks off mid-record ends its range with one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from vlcurate.io import storage
from vlcurate.io.inputs import InputError, InputSpec, read_inputs

WARC_SUFFIXES = (".warc", ".warc.gz", ".arc", ".arc.gz")
PAGE_RECORD_TYPES = ("response", "resource", "revisit")  # records that are captures of a page
# ``name``: what the version records as a page's source: the WARC's path inside the
# input directory it was found in (its file name when named itself), an HTML file as
# its list names it; never where the inputs are stored, which does not change a version.
RANGE_SCHEMA = pa.schema([("kind", pa.string()), ("source", pa.string()), ("url", pa.string()),
                          ("start", pa.int64()), ("count", pa.int64()), ("name", pa.string())])


@dataclass(frozen=True)
class PageRecord:
    offset: int  # byte offset of the record in its WARC; an HTML page's row in its list
    rec_type: str  # response | resource | revisit | request | metadata | warcinfo | html | ...
    url: str | None
    source: str  # the input's name (RANGE_SCHEMA)
    http_status: int | None = None
    content_type: str | None = None
    robots_header: str | None = None  # X-Robots-Tag
    body: bytes | None = None  # at most max_bytes + 1 bytes (more = too large)
    error: str | None = None  # why the record could not be read


def _is_warc(name: str) -> bool:
    return name.lower().endswith(WARC_SUFFIXES)


def list_warc_files(spec: InputSpec) -> list[tuple[str, str]]:
    """``(location, name)`` of the WARC files ``spec.paths`` names (directories searched
    recursively, sorted; the name is the path inside the directory, or the file name)."""
    found: list[tuple[str, str]] = []
    for raw in spec.paths:
        if storage.is_dir(raw):
            inner = sorted(f.path for f in storage.list_files(raw)
                           if _is_warc(f.path) and not any(p.startswith((".", "_")) for p in Path(f.path).parts))
            if not inner:
                raise InputError(f"input {raw}: directory has no WARC files ({', '.join(WARC_SUFFIXES)})")
            found += [(storage.join(raw, f), f) for f in inner]
        elif storage.exists(raw):
            if not _is_warc(raw):
                raise InputError(f"input {raw}: not a WARC file (expected {', '.join(WARC_SUFFIXES)})")
            found.append((os.fspath(raw), storage.basename(raw)))
        else:
            raise InputError(f"input {raw}: no such file or directory")
    return list(dict.fromkeys(found))


def record_offsets(source: str) -> list[int]:
    """Byte offsets of every record of a WARC file (an index pass, for record-count shards)."""
    from warcio.archiveiterator import ArchiveIterator

    offsets = []
    with storage.open_read(source) as f:
        it = ArchiveIterator(f, arc2warc=True)
        try:
            for _ in it:
                offsets.append(it.get_record_offset())
        except Exception:  # noqa: BLE001 - a broken tail is read (and reported) by the stage itself
            pass
    return offsets


def split_pages(spec: InputSpec, records_per_shard: int, html_path_col: str) -> list[pa.Table]:
    """The input as one range table per shard, in input order. Raises InputError naming
    the input on a missing or unreadable file."""
    if spec.format == "html":
        return _split_html(spec, html_path_col)
    shards = []
    for source, name in list_warc_files(spec):
        if records_per_shard <= 0:
            shards.append(_ranges([("warc", source, None, 0, -1, name)]))
            continue
        offsets = record_offsets(source)
        for i in range(0, max(1, len(offsets)), records_per_shard):
            start = offsets[i] if offsets else 0
            shards.append(_ranges([("warc", source, None, start, records_per_shard, name)]))
    return shards


def _split_html(spec: InputSpec, path_col: str) -> list[pa.Table]:
    """HTML pages: ``spec.paths`` are URL lists (any list format) with the page URL in
    ``url_col`` and the HTML file in ``path_col`` (relative to the list's directory)."""
    from dataclasses import replace

    shards = []
    for list_path in spec.paths:
        listed = replace(spec, paths=(list_path,), format="auto", caption_col=None, extra_cols=(path_col,))
        table = read_inputs(listed)
        base = storage.parent(list_path)
        rows = []
        for i, (url, rel) in enumerate(zip(table.column("url").to_pylist(), table.column(path_col).to_pylist())):
            source = "" if rel is None else rel if storage.is_remote(rel) or os.path.isabs(rel) \
                else storage.join(base, rel)
            rows.append(("html", source, url, i, 1, rel or ""))
        shards.append(_ranges(rows))
    return shards


def _ranges(rows: list[tuple]) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(RANGE_SCHEMA.names, r)) for r in rows], schema=RANGE_SCHEMA)


def iter_pages(ranges: pa.Table, max_bytes: int) -> Iterator[PageRecord]:
    """Every record of the shard's ranges, in order."""
    from dataclasses import replace

    for row in ranges.to_pylist():
        records = [_html_page(row, max_bytes)] if row["kind"] == "html" else \
            _warc_records(row["source"], row["start"], row["count"], max_bytes)
        for record in records:
            yield replace(record, source=row["name"])


def _html_page(row: dict, max_bytes: int) -> PageRecord:
    source = row["source"]
    try:
        with storage.open_read(source) as f:
            body = f.read(max_bytes + 1)
    except OSError as e:
        return PageRecord(row["start"], "html", row["url"], source,
                          error=f"cannot read {row['name']}: {type(e).__name__}")
    return PageRecord(row["start"], "html", row["url"], source, 200, "text/html", body=body)


def _header(record, name: str) -> str | None:
    return record.http_headers.get_header(name) if record.http_headers is not None else None


def _warc_records(source: str, start: int, count: int, max_bytes: int) -> Iterator[PageRecord]:
    from warcio.archiveiterator import ArchiveIterator

    with storage.open_read(source) as f:
        if start:
            f.seek(start)
        it = ArchiveIterator(f, arc2warc=True)
        records = iter(it)
        done = 0
        end = start  # the end of the last whole record
        shift = None  # warcio's offsets count from where the stream was opened or from its start: align them

        def at() -> int:
            nonlocal shift
            if shift is None:
                shift = start - it.get_record_offset()
            return shift + it.get_record_offset()

        def position() -> tuple[int, int]:
            """Offset and end of the current record; on a damaged one warcio may not
            know them: then the end of the last whole record (and one past it)."""
            try:
                here = at()
            except Exception:  # noqa: BLE001 - the record's own row carries the error
                return end, end + 1
            try:
                return here, here + it.get_record_length()
            except Exception:  # noqa: BLE001
                return here, here + 1

        while count < 0 or done < count:
            try:
                record = next(records, None)
            except Exception as e:  # noqa: BLE001 - a broken file ends its range with a recorded error
                yield PageRecord(end, "unreadable", None, source, error=_one_line(e))
                return
            if record is None:
                yield from _unread_tail(source, end)
                return
            done += 1
            rec_type = record.rec_type
            url = record.rec_headers.get_header("WARC-Target-URI")
            url = url.strip().strip("<>") if url else None
            if rec_type not in PAGE_RECORD_TYPES:
                offset, _ = position()
                yield PageRecord(offset, rec_type, url, source)
                _, end = position()
                continue
            status = None
            if record.http_headers is not None and rec_type != "resource":
                try:
                    status = int(record.http_headers.get_statuscode())
                except (TypeError, ValueError):
                    status = None
            content_type = _header(record, "Content-Type") if rec_type != "resource" \
                else record.rec_headers.get_header("Content-Type")
            if rec_type == "resource":
                status = 200
            body, error = None, None
            if rec_type != "revisit":
                try:
                    body = _read_up_to(record.content_stream(), max_bytes + 1)
                    if len(body) <= max_bytes and _payload_short(record, body):
                        error = "truncated record (payload shorter than declared)"
                except Exception as e:  # noqa: BLE001 - a damaged record is a row with its reason
                    error = _one_line(e)
            offset, _ = position()  # asked after the payload is read: asking reads the record
            yield PageRecord(offset, rec_type, url, source, status, content_type, _header(record, "X-Robots-Tag"),
                             body, error)
            _, end = position()


def _unread_tail(source: str, end: int) -> Iterator[PageRecord]:
    """A record for bytes after the last whole record (a crawl killed mid-write: the
    reader stops there without an error)."""
    size = storage.size(source)
    if end and size > end:
        yield PageRecord(end, "unreadable", None, source,
                         error=f"the file ends with {size - end} bytes that are not a whole record (truncated)")


def _read_up_to(stream, n: int) -> bytes:
    """Up to ``n`` bytes (a decoding stream's read returns one chunk at a time)."""
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(min(1 << 20, n - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _payload_short(record, body: bytes) -> bool:
    """Whether an uncompressed HTTP payload is shorter than its own Content-Length."""
    declared = _header(record, "Content-Length")
    encoded = _header(record, "Content-Encoding") or _header(record, "Transfer-Encoding")
    if not declared or encoded:
        return False
    try:
        return len(body) < int(declared)
    except ValueError:
        return False


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
