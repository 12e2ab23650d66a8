"""Read URL lists (Parquet, CSV, TSV, JSON Lines; text formats optionally gzipped)
into one Arrow table: `url`, `caption`, then the requested extra columns.

Every problem with an input file raises `InputError` whose message is one line
naming the file, e.g. "input urls.csv: no column 'url' (columns: a, b)".
Row order is deterministic: paths in the order given, files inside a directory
sorted by relative path, rows in file order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from vlcurate.typed import local_path

FORMATS = ("auto", "parquet", "csv", "tsv", "jsonl")
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


def list_input_files(spec: InputSpec) -> list[Path]:
    """Expand `spec.paths` into the input files, in reading order.

    A directory contributes its files (recursively, sorted by relative path)
    whose extension matches `spec.format` (any known one for "auto"); dot and
    underscore files are skipped, other files ignored. An explicitly named file
    must have a known extension unless `spec.format` says what it is.
    Raises InputError for a missing path, a directory without inputs, or a
    file of unknown format.
    """
    files: list[Path] = []
    wanted = ", ".join(e for e, f in _EXTENSIONS.items() if spec.format in ("auto", f))
    for raw in spec.paths:
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
    unique: dict[Path, Path] = {}
    for f in files:  # the same file named twice (or via a directory) is read once
        unique.setdefault(f.resolve(), f)
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
            result = pa.concat_tables([result, table], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise InputError(f"input {path}: columns incompatible with earlier files: "
                             f"{_one_line(e)}") from None
    assert result is not None  # list_input_files never returns an empty list
    return result


def read_input_file(path: Path, spec: InputSpec) -> pa.Table:
    """Read one input file (format from `spec.format` or its extension) into the
    normalised table of `read_inputs`."""
    path = Path(path)
    fmt = spec.format if spec.format != "auto" else _file_format(path, "auto")
    if fmt is None:
        raise InputError(f"input {path}: unknown file type; set the input format")
    wanted = [c for c in (spec.url_col, spec.caption_col, *spec.extra_cols) if c is not None]
    try:
        if fmt == "parquet":
            _require(path, pq.read_schema(path).names, wanted)
            table = pq.read_table(path, columns=wanted)
        elif fmt in ("csv", "tsv"):
            table = _read_delimited(path, fmt, wanted)
        else:
            # Type inference over the whole file; then pick the columns we need.
            table = pa_json.read_json(path)
            _require(path, table.schema.names, wanted)
    except InputError:
        raise
    except (pa.ArrowException, OSError, ValueError, EOFError) as e:
        raise InputError(f"input {path}: cannot read as {fmt}: {_one_line(e)}") from None
    return _normalise(path, table, spec)


def _read_delimited(path: Path, fmt: str, wanted: list[str]) -> pa.Table:
    if fmt == "tsv":
        # TSV proper: no quoting, values cannot contain tabs or newlines. Web
        # captions often start with a stray '"', which quote handling would turn
        # into one giant field swallowing the following rows.
        parse = pa_csv.ParseOptions(delimiter="\t", quote_char=False)
    else:
        # Quoted CSV captions may contain newlines.
        parse = pa_csv.ParseOptions(newlines_in_values=True)
    # The header first, to name the missing column instead of pyarrow's message.
    with pa_csv.open_csv(path, parse_options=parse) as reader:
        _require(path, reader.schema.names, wanted)
    # Every requested column as text: no per-file type guessing, so files agree.
    convert = pa_csv.ConvertOptions(include_columns=wanted,
                                    column_types={c: pa.string() for c in wanted})
    return pa_csv.read_csv(path, parse_options=parse, convert_options=convert)


def _require(path: Path, names: list[str], wanted: list[str]) -> None:
    for column in wanted:
        if column not in names:
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise InputError(f"input {path}: no column {column!r} (columns: {shown})")


def _normalise(path: Path, table: pa.Table, spec: InputSpec) -> pa.Table:
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
