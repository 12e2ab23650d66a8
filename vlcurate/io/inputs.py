"""Read URL lists (Parquet, CSV, TSV, JSON Lines; text formats optionally gzipped)
into one Arrow table: `url`, `caption`, then the requested extra columns.

Every problem with an input file raises `InputError` whose message is one line
naming the file, e.g. "input urls.csv: no column 'url' (columns: a, b)".
Row order is deterministic: paths in the order given, files inside a directory
sorted by relative path, rows in file order. A path may be any location of the
storage layer (``gs://bucket/urls/``, ``s3://bucket/urls.csv.gz``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from vlcurate.io import storage
from vlcurate.typed import local_path

FORMATS = ("auto", "parquet", "csv", "tsv", "jsonl", "warc", "html")
# warc / html: pages for a first stage that reads pages (interleave), not a URL list:
# WARC files, or URL lists whose rows name HTML files (vlcurate/interleave/pages.py).
PAGE_FORMATS = ("warc", "html")
# Extension -> format. Text formats may carry a further ".gz" (pyarrow decompresses
# by extension); Parquet compresses internally.
_EXTENSIONS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_TEXT_FORMATS = ("csv", "tsv", "jsonl")


class InputError(ValueError):
    """An input file is missing, unreadable or lacks a column. One-line message."""


@dataclass(frozen=True)
class InputSpec:
    """Where the URL list is and which columns to take. Validated on construction."""

    paths: tuple[str, ...] = local_path()  # files or directories (searched recursively)
    format: str = "auto"  # auto|parquet|csv|tsv|jsonl; auto = by extension
    url_col: str = "url"
    caption_col: str | None = "caption"  # None: every caption is null
    extra_cols: tuple[str, ...] = ()  # carried through unchanged (img2dataset save_additional_columns)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"input format {self.format!r} not one of {', '.join(FORMATS)}")
        if not self.paths:
            raise ValueError("input paths: at least one file or directory is needed")
        source = [self.url_col, self.caption_col, *self.extra_cols]
        named = [c for c in source if c is not None]
        if len(set(named)) != len(named):
            raise ValueError(f"input columns repeat a name: {', '.join(named)}")
        clash = {"url", "caption"} & set(self.extra_cols)
        if clash:
            raise ValueError(f"input extra_cols may not be named {', '.join(sorted(clash))}")


def _file_format(path: Path, declared: str) -> str | None:
    """Format of `path` from its extension, or None if it has no known one."""
    name = path.name.lower()
    gz = name.endswith(".gz")
    fmt = _EXTENSIONS.get(Path(name[:-3] if gz else name).suffix)
    if gz and fmt not in _TEXT_FORMATS:
        return None
    if declared != "auto" and fmt != declared:
        return None
    return fmt


def _hidden(relative: Path) -> bool:
    # Skip dot files and Spark/Hadoop bookkeeping (_SUCCESS, _temporary/, .crc).
    return any(part.startswith((".", "_")) for part in relative.parts)


def _remote_files(raw: str, spec: InputSpec, wanted: str) -> list[str]:
    """The files a remote path names: itself, or a prefix's input files (the local
    rules: recursive, sorted by relative path, hidden ones skipped)."""
    if storage.is_dir(raw):
        found = [f.path for f in storage.list_files(raw)
                 if not _hidden(Path(f.path)) and _file_format(Path(f.path), spec.format)]
        if not found:
            raise InputError(f"input {raw}: directory has no input files (looked for {wanted}, "
                             f"optionally .gz for text formats)")
        return [storage.join(raw, f) for f in found]
    if not storage.exists(raw):
        raise InputError(f"input {raw}: no such file or directory")
    if spec.format == "auto" and _file_format(Path(raw), "auto") is None:
        raise InputError(f"input {raw}: unknown file type (expected {wanted}, "
                         f"optionally .gz for text formats); set the input format")
    return [raw]


def list_input_files(spec: InputSpec) -> list[Path | str]:
    """Expand `spec.paths` into the input files, in reading order.

    A directory contributes its files (recursively, sorted by relative path)
    whose extension matches `spec.format` (any known one for "auto"); dot and
    underscore files are skipped, other files ignored. An explicitly named file
    must have a known extension unless `spec.format` says what it is.
    Raises InputError for a missing path, a directory without inputs, or a
    file of unknown format.
    """
    files: list[Path | str] = []
    wanted = ", ".join(e for e, f in _EXTENSIONS.items() if spec.format in ("auto", f))
    for raw in spec.paths:
        if storage.is_remote(raw):
            try:
                files.extend(_remote_files(raw, spec, wanted))
            except OSError as e:
                raise InputError(f"input {raw}: cannot read: {_one_line(e)}") from None
            continue
        path = Path(raw)
        if path.is_dir():
            found = [
                f for f in path.rglob("*")
                if f.is_file() and not _hidden(f.relative_to(path)) and _file_format(f, spec.format)
            ]
            if not found:
                raise InputError(f"input {path}: directory has no input files (looked for {wanted}, "
                                 f"optionally .gz for text formats)")
            files.extend(sorted(found, key=lambda f: f.relative_to(path).as_posix()))
        elif path.is_file():
            if spec.format == "auto" and _file_format(path, "auto") is None:
                raise InputError(f"input {path}: unknown file type (expected {wanted}, "
                                 f"optionally .gz for text formats); set the input format")
            files.append(path)
        else:
            raise InputError(f"input {path}: no such file or directory")
    unique: dict[Path | str, Path | str] = {}
    for f in files:  # the same file named twice (or via a directory) is read once
        unique.setdefault(f if isinstance(f, str) else f.resolve(), f)
    return list(unique.values())


def read_inputs(spec: InputSpec) -> pa.Table:
    """Read every input file into one table: url (string), caption (string, null
    without a caption column), then `spec.extra_cols` with their file types.
    Raises InputError naming the file on any problem."""
    result: pa.Table | None = None
    for path in list_input_files(spec):
        table = read_input_file(path, spec)
        if result is None:
            result = table
            continue
        try:  # permissive: int32+int64 or null+string unify; string+int does not
            result = pa.concat_tables(_as_text_where_types_differ(result, table), promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise InputError(f"input {path}: columns incompatible with earlier files: "
                             f"{_one_line(e)}") from None
    assert result is not None  # list_input_files never returns an empty list
    return result


def _as_text_where_types_differ(a: pa.Table, b: pa.Table) -> list[pa.Table]:
    """The two tables with each carried column whose types disagree (a number in one
    file, text in another) cast to text in both, as within one JSON Lines file."""
    for name in a.schema.names:
        ta, tb = a.schema.field(name).type, b.schema.field(name).type
        if ta.equals(tb) or pa.types.is_null(ta) or pa.types.is_null(tb):
            continue
        if pa.types.is_integer(ta) and pa.types.is_integer(tb) or pa.types.is_floating(ta) and pa.types.is_floating(tb):
            continue  # promoted by concat_tables
        a = a.set_column(a.schema.get_field_index(name), name, a.column(name).cast(pa.string()))
        b = b.set_column(b.schema.get_field_index(name), name, b.column(name).cast(pa.string()))
    return [a, b]


def _source(path: Path | str, random_access: bool = False) -> Any:
    """What pyarrow's readers take for ``path``: the local path itself (pyarrow
    decompresses ``.gz`` by extension), or a fresh stream from the storage layer."""
    if not storage.is_remote(path):
        return path
    raw = storage.open_read(path)
    if random_access:
        return raw
    return pa.CompressedInputStream(raw, "gzip") if str(path).lower().endswith(".gz") else raw


def read_input_file(path: Path | str, spec: InputSpec) -> pa.Table:
    """Read one input file (format from `spec.format` or its extension) into the
    normalised table of `read_inputs`."""
    path = path if storage.is_remote(path) else Path(path)
    fmt = spec.format if spec.format != "auto" else _file_format(Path(path), "auto")
    if fmt is None:
        raise InputError(f"input {path}: unknown file type; set the input format")
    wanted = [c for c in (spec.url_col, spec.caption_col, *spec.extra_cols) if c is not None]
    try:
        if fmt == "parquet":
            _require(path, pq.read_schema(_source(path, random_access=True)).names, wanted)
            table = pq.read_table(_source(path, random_access=True), columns=wanted)
        elif fmt in ("csv", "tsv"):
            table = _read_delimited(path, fmt, wanted)
        else:
            table = _read_jsonl(path)
            _require(path, table.schema.names, wanted)
    except InputError:
        raise
    except (pa.ArrowException, OSError, ValueError, EOFError) as e:
        raise InputError(f"input {path}: cannot read as {fmt}: {_one_line(e)}") from None
    return _normalise(path, table, spec)


def _read_delimited(path: Path | str, fmt: str, wanted: list[str]) -> pa.Table:
    if fmt == "tsv":
        # TSV proper: no quoting, values cannot contain tabs or newlines. Web
        # captions often start with a stray '"', which quote handling would turn
        # into one giant field swallowing the following rows.
        parse = pa_csv.ParseOptions(delimiter="\t", quote_char=False)
    else:
        # Quoted CSV captions may contain newlines.
        parse = pa_csv.ParseOptions(newlines_in_values=True)
    try:
        # The header first, to name the missing column instead of pyarrow's message.
        with pa_csv.open_csv(_source(path), parse_options=parse) as reader:
            _require(path, reader.schema.names, wanted)
        # Every requested column as text: no per-file type guessing, so files agree.
        convert = pa_csv.ConvertOptions(include_columns=wanted,
                                        column_types={c: pa.string() for c in wanted})
        return pa_csv.read_csv(_source(path), parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid:
        pass
    # Parse again on one thread, where Arrow numbers the bad row, to name its line.
    try:
        pa_csv.read_csv(_source(path), read_options=pa_csv.ReadOptions(use_threads=False), parse_options=parse)
    except pa.ArrowInvalid as e:
        text = re.sub(r"Row #(\d+): ", r"line \1: ", re.sub(r"^CSV parse error: ", "", _one_line(e)))
        raise InputError(f"input {path}: cannot read as {fmt}: {text}") from None
    raise InputError(f"input {path}: cannot read as {fmt}")  # pragma: no cover - parses on one thread only


def _read_jsonl(path: Path | str) -> pa.Table:
    """Arrow's reader (types inferred over the whole file); when it fails, the file is
    read line by line to name the first bad line, or, when every line is valid JSON,
    with the columns whose values disagree in type (a number among strings) as text."""
    try:
        table = pa_json.read_json(_source(path))
        table.validate(full=True)  # Arrow's reader lets invalid UTF-8 through into strings
        return table
    except pa.ArrowInvalid:
        pass
    source = _source(path)
    with source if storage.is_remote(path) else pa.input_stream(str(path), compression="detect") as stream:
        data = stream.read()
    rows = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise InputError(f"input {path}: line {number}: not UTF-8 text") from None
        except json.JSONDecodeError as e:
            raise InputError(f"input {path}: line {number}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise InputError(f"input {path}: line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    names = list(dict.fromkeys(name for row in rows for name in row))
    return pa.table({name: _json_column([row.get(name) for row in rows]) for name in names})


def _json_column(values: list) -> pa.Array:
    kinds = {"number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__
             for v in values if v is not None}
    if len(kinds) <= 1:
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
    # Types disagree: every value as text (JSON text for lists and objects).
    return pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values],
                    pa.string())


def _require(path: Path | str, names: list[str], wanted: list[str]) -> None:
    for column in wanted:
        if column not in names:
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise InputError(f"input {path}: no column {column!r} (columns: {shown})")


def _normalise(path: Path | str, table: pa.Table, spec: InputSpec) -> pa.Table:
    def text(column: str) -> pa.ChunkedArray:
        values = table.column(column)
        try:
            return values.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise InputError(f"input {path}: column {column!r} has type {values.type}, "
                             f"expected text") from None

    columns = {"url": text(spec.url_col)}
    columns["caption"] = (text(spec.caption_col) if spec.caption_col is not None
                          else pa.chunked_array([pa.nulls(table.num_rows, pa.string())]))
    for column in spec.extra_cols:
        columns[column] = table.column(column)
    return pa.table(columns)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__
