"""Helpers of the export tests (the shared exports of the demo version are in tests/conftest.py)."""

from __future__ import annotations

import glob
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlcurate.cli import main


def kept_keys(version: Path) -> set[str]:
    """Keys every filter kept, read straight from the files: ok rows of samples/*.parquet
    that no decision file drops."""
    ok = set()
    for path in glob.glob(str(version / "samples" / "*.parquet")):
        t = pq.read_table(path, columns=["key", "status"])
        ok |= set(t.filter(pc.equal(t["status"], "ok"))["key"].to_pylist())
    dropped = set()
    for path in glob.glob(str(version / "*" / "*.parquet")):
        t = pq.read_table(path)
        if (t.schema.metadata or {}).get(b"vlcurate.record") == b"decision":
            dropped |= set(t.filter(pc.invert(t["keep"]))["key"].to_pylist())
    return ok - dropped


def export(capsys, fmt: str, source: Path, out: Path, *flags: str) -> str:
    code = main(["export", fmt, str(source), str(out), *flags])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out
