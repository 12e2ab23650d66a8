"""Schema registry and the one validation entry point."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

# Bumped whenever any registered schema changes incompatibly; recorded in every manifest.
# 2: sample rows gained first_error_kind / first_error_message / first_http_status, and
#    sample.url is nullable (a null input URL is carried as null, no longer as "").
SCHEMA_VERSION = "2"

# A row check looks at a whole table and returns (row index, column, problem) triples.
RowCheck = Callable[[pa.Table], list[tuple[int, str, str]]]


class SchemaError(ValueError):
    """A table does not match its record schema. ``problems`` holds every finding."""

    def __init__(self, kind: str, problems: list[str]):
        self.kind = kind
        self.problems = problems
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{kind}: {problems[0]}{more}")


@dataclass(frozen=True)
class RecordSchema:
    """One record kind: its Arrow schema plus checks Arrow types cannot express.

    ``open_columns``: extra columns (e.g. source columns carried through from the
    input list) are allowed after the fixed ones.
    """

    name: str
    version: str
    schema: pa.Schema
    open_columns: bool = False
    row_checks: tuple[RowCheck, ...] = field(default=())

    def with_extra(self, extra: pa.Schema | list[pa.Field]) -> pa.Schema:
        """The fixed schema followed by ``extra`` fields (for open record kinds)."""
        fields = list(self.schema) + [f for f in extra if f.name not in self.schema.names]
        meta = {b"vlcurate.record": self.name.encode(), b"vlcurate.schema_version": self.version.encode()}
        return pa.schema(fields, metadata=meta)


_REGISTRY: dict[str, RecordSchema] = {}


def register(record: RecordSchema) -> RecordSchema:
    if record.name in _REGISTRY:
        raise ValueError(f"record kind {record.name!r} is already registered")
    _REGISTRY[record.name] = record
    return record


def registered() -> list[str]:
    return sorted(_REGISTRY)


def get_schema(name: str) -> RecordSchema:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown record kind {name!r}; known: {', '.join(registered())}") from None


def _first_null(col: pa.ChunkedArray) -> int:
    return int(pc.index(pc.is_null(col), True).as_py())


def validate(table: pa.Table, kind: str, raise_error: bool = True) -> list[str]:
    """Check ``table`` against record kind ``kind``.

    Returns the list of problems (empty when valid); each names the column, the row
    where it applies, and what is wrong. Raises :class:`SchemaError` when
    ``raise_error`` and anything is wrong.
    """
    record = get_schema(kind)
    problems: list[str] = []
    names = table.schema.names
    for expected in record.schema:
        if expected.name not in names:
            problems.append(f"column {expected.name!r}: missing")
            continue
        actual = table.schema.field(expected.name).type
        if not actual.equals(expected.type):
            problems.append(f"column {expected.name!r}: type {actual}, expected {expected.type}")
            continue
        if not expected.nullable and table.column(expected.name).null_count:
            row = _first_null(table.column(expected.name))
            problems.append(f"column {expected.name!r}, row {row}: null in a non-nullable column")
    if not record.open_columns:
        for name in names:
            if name not in record.schema.names:
                problems.append(f"column {name!r}: not part of {kind}")
    fixed = [n for n in names if n in record.schema.names]
    if fixed != [n for n in record.schema.names if n in names]:
        problems.append(f"columns out of order: {fixed}")
    if not problems:  # row checks assume the types are right
        for check in record.row_checks:
            problems += [f"column {col!r}, row {row}: {what}" for row, col, what in check(table)]
    if problems and raise_error:
        raise SchemaError(kind, problems)
    return problems
