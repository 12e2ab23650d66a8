"""Reusing a parent version's download results: the download stage's ``reuse`` setting.

A ``--retry-failed`` build (:mod:`vlcurate.download.retry`) reads its input from the
parent version's own sample rows with the parent's ``samples_per_shard``, so every row
lands in the same shard at the same index and gets the parent's key. For each row the
download stage asks :meth:`ParentShard.refetch`: only rows that failed with a
retryable error (:func:`vlcurate.download.fetch.is_retryable`) are fetched again; an
``ok`` row is copied with its stored files (image bytes, caption, JSON) from the
parent's tar, and any other failure keeps the parent's row as it was.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from vlcurate.download.fetch import is_retryable
from vlcurate.io import storage
from vlcurate.io.parquet import read_parquet
from vlcurate.io.tar import iter_tar_files
from vlcurate.pipelines.stage import Layout
from vlcurate.schemas import get_schema


class ReuseMismatch(ValueError):
    """The parent's shard does not line up with this build's input shard."""


@dataclass(frozen=True)
class ParentShard:
    """One shard of the parent version: its sample rows and where its tar is."""

    version_dir: str
    shard: int
    rows: list[dict[str, Any]]  # the fixed sample columns of every parent row, in row order

    @classmethod
    def load(cls, version_dir: str, shard: int, keys: list[str], urls: list[str]) -> ParentShard:
        """Read the parent's rows of ``shard`` and check they are this shard's rows:
        same count, and row by row the same key and URL (else :class:`ReuseMismatch`)."""
        path = Layout(version_dir).samples_parquet(shard)
        if not storage.exists(path):
            raise ReuseMismatch(f"reuse {version_dir}: no shard {storage.basename(path)} (different sharding?)")
        table = read_parquet(path)
        names = [n for n in get_schema("sample").schema.names if n in table.schema.names]
        rows = table.select(names).to_pylist()
        if len(rows) != len(keys):
            raise ReuseMismatch(f"reuse {version_dir}: shard {shard} has {len(rows)} rows, "
                                f"the input shard {len(keys)} (different input or samples_per_shard?)")
        for i, (row, key, url) in enumerate(zip(rows, keys, urls)):
            if row["key"] != key or row["url"] != url:
                raise ReuseMismatch(f"reuse {version_dir}: shard {shard} row {i} is {row['key']} "
                                    f"{row['url']!r}, the input has {key} {url!r}")
        return cls(version_dir, shard, rows)

    def refetch(self, i: int) -> bool:
        """True if row ``i`` failed with an error worth fetching again."""
        row = self.rows[i]
        return row["status"] != "ok" and is_retryable(row["error_kind"], row.get("http_status"))

    def first_error(self, i: int) -> dict[str, Any]:
        """Row ``i``'s first error, for a row fetched again: the parent's own first
        error when it was a retry too, else the parent's error."""
        row = self.rows[i]
        if row.get("first_error_kind") is not None:
            return {k: row.get(k) for k in ("first_error_kind", "first_error_message", "first_http_status")}
        return {"first_error_kind": row["error_kind"], "first_error_message": row["error_message"],
                "first_http_status": row.get("http_status")}

    def is_ok(self, i: int) -> bool:
        return self.rows[i]["status"] == "ok"

    def files(self, keys: Collection[str]) -> dict[str, dict[str, bytes]]:
        """Every stored file of the samples ``keys`` from the parent's tar, by key
        then extension, exactly as stored. A missing key is a damaged parent."""
        wanted: set[str] = set(keys)
        found: dict[str, dict[str, bytes]] = {}
        for key, ext, payload in iter_tar_files(Layout(self.version_dir).samples_tar(self.shard), None, wanted):
            found.setdefault(key, {})[ext] = payload
        missing = wanted - found.keys()
        if missing:
            raise ReuseMismatch(f"reuse {self.version_dir}: shard {self.shard} tar lacks ok samples "
                                f"{', '.join(sorted(missing)[:3])}")
        return found
