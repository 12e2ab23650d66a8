"""``vlcurate query VERSION_DIR "SQL"``: DuckDB over a version's Parquet files.

Views, from the files the manifest lists:

- ``samples``: every input row (``samples/*.parquet``: status, error, sizes, hashes);
- ``decisions``: every filter's decision rows (``key, stage, keep, reason, score, detail``);
- ``kept``: the samples every filter kept;
- one view per sidecar directory, named after it (``caption_filter``, ``vit_features``,
  ``region_features``, ``clip_score_embeddings`` ...; a filter's caption scores are
  ``<stage>_captions``; a training export's shards are ``train``). Feature tensor
  columns are BLOBs of the little-endian array bytes (shapes in the sidecar's metadata).

On local disk DuckDB scans the files itself (only the columns and row groups a query
needs); a version on an object store is read whole through the storage layer into
memory first (float16 arrays widened to float32), so query big remote versions from
a machine with the memory, or a local copy.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass

import pyarrow as pa

from vlcurate.errors import UserError
from vlcurate.io import storage
from vlcurate.io.parquet import read_parquet, write_plain_parquet
from vlcurate.versions import load_manifest

OUT_FORMATS = (".csv", ".parquet")
_CELL = 40


@dataclass(frozen=True)
class View:
    name: str
    files: tuple[str, ...]  # relative paths
    kind: str | None


def version_views(manifest: dict) -> list[View]:
    """One view per group of Parquet files: ``DIR/NNNNN.parquet`` -> DIR,
    ``DIR/NNNNN.SUFFIX.parquet`` -> DIR_SUFFIX (non-identifier characters become ``_``)."""
    groups: dict[str, list[dict]] = {}
    for f in manifest["files"]:
        path = f["path"]
        if not path.endswith(".parquet") or "/" not in path:
            continue
        top, name = path.rsplit("/", 1)
        suffix = name[: -len(".parquet")].split(".", 1)[1:]
        view = re.sub(r"\W", "_", top + ("_" + suffix[0] if suffix else ""))
        groups.setdefault(view, []).append(f)
    return [View(name, tuple(sorted(f["path"] for f in fs)), fs[0].get("kind")) for name, fs in sorted(groups.items())]


def _widen_half(t: pa.DataType) -> pa.DataType:
    """``t`` with float16 (which DuckDB's Arrow import lacks; its Parquet reader has it)
    as float32, inside lists and structs too."""
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_fixed_size_list(t):
        return pa.list_(_widen_half(t.value_type), t.list_size)
    if pa.types.is_list(t):
        return pa.list_(_widen_half(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_widen_half(f.type)) for f in t])
    return t


def _register(con, version_dir: str, view: View) -> None:
    local = [storage.local_path(storage.join(version_dir, p)) for p in view.files]
    if all(p is not None for p in local):
        listing = ", ".join("'" + str(p).replace("'", "''") + "'" for p in local)
        con.execute(f'CREATE VIEW "{view.name}" AS SELECT * FROM read_parquet([{listing}], union_by_name=true)')
        return
    tables = [read_parquet(storage.join(version_dir, p)) for p in view.files]
    table = pa.concat_tables(tables, promote_options="permissive")
    table = table.cast(pa.schema([f.with_type(_widen_half(f.type)) for f in table.schema]))
    con.register(f"{view.name}_arrow", table)
    con.execute(f'CREATE VIEW "{view.name}" AS SELECT * FROM "{view.name}_arrow"')


def connect(version_dir: str | os.PathLike):
    """A DuckDB connection with the version's views (see the module docstring)."""
    import duckdb

    version_dir = os.fspath(version_dir)
    manifest = load_manifest(version_dir)
    con = duckdb.connect()
    views = version_views(manifest)
    for view in views:
        _register(con, version_dir, view)
    decisions = [v.name for v in views if v.kind == "decision"]
    if decisions:
        cols = "key, stage, keep, reason, score, detail"
        con.execute("CREATE VIEW decisions AS " + " UNION ALL ".join(f'SELECT {cols} FROM "{d}"' for d in decisions))
    else:
        con.execute("CREATE VIEW decisions AS SELECT NULL::VARCHAR AS key, NULL::VARCHAR AS stage, "
                    "NULL::BOOLEAN AS keep, NULL::VARCHAR AS reason, NULL::DOUBLE AS score, "
                    "NULL::VARCHAR AS detail WHERE false")
    if any(v.name == "samples" for v in views):
        con.execute("CREATE VIEW kept AS SELECT * FROM samples WHERE status = 'ok' "
                    "AND key NOT IN (SELECT key FROM decisions WHERE NOT keep)")
    return con


def run_query(version_dir: str | os.PathLike, sql: str, out: str | None = None) -> pa.Table:
    """The result of ``sql`` over the version's views; written to ``out`` (.csv or
    .parquet, atomically) when given. UserError for bad SQL or a bad ``out``."""
    import duckdb

    if out is not None and not out.endswith(OUT_FORMATS):
        raise UserError(f"output {out}: unknown format (name a {' or '.join(OUT_FORMATS)} file)")
    if out is not None:
        problem = storage.write_problem(out)
        if problem:
            raise UserError(f"output {out}: {problem}")
    con = connect(version_dir)
    try:
        relation = con.sql(sql)
        table = None if relation is None else relation.to_arrow_table()
    except duckdb.Error as e:
        raise UserError(f"query: {str(e).splitlines()[0]}") from None
    if table is None:
        raise UserError("query: the statement returns no rows (use SELECT ...)")
    if out is not None:
        if out.endswith(".csv"):
            import pyarrow.csv as pacsv

            buf = io.BytesIO()
            pacsv.write_csv(table, buf)
            storage.write_bytes(out, buf.getvalue())
        else:
            write_plain_parquet(table, out)
    return table


def _cell(value) -> str:
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    text = "NULL" if value is None else str(value)
    return text if len(text) <= _CELL else text[: _CELL - 3] + "..."


def format_table(table: pa.Table, max_rows: int) -> str:
    """A plain text table of the first ``max_rows`` rows, and how many rows there are."""
    rows = table.slice(0, max_rows).to_pylist()
    cells = [[_cell(r[c]) for c in table.column_names] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(table.column_names)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(table.column_names, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    more = table.num_rows - len(rows)
    lines.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''}"
                 + (f"; first {len(rows)} shown, --out writes all" if more else "") + ")")
    return "\n".join(lines)
