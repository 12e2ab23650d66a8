"""Exports of the shared demo version (tests/conftest.py builds it once per session)."""

from __future__ import annotations

import glob
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

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


@pytest.fixture(scope="session")
def wds_export(demo_version, tmp_path_factory) -> Path:
    """The demo's kept samples as webdataset shards of 50, shuffled (seed 3), with features."""
    out = tmp_path_factory.mktemp("exports") / "demo" / "v1-wds"
    assert main(["export", "webdataset", str(demo_version), str(out), "--samples-per-shard", "50",
                 "--shuffle-seed", "3", "--features", "vit,regions"]) == 0
    return out


@pytest.fixture(scope="session")
def parquet_export(demo_version, tmp_path_factory) -> Path:
    """The same as Parquet shards of 64, not shuffled, with features."""
    out = tmp_path_factory.mktemp("exports") / "demo" / "v1-parquet"
    assert main(["export", "parquet", str(demo_version), str(out), "--samples-per-shard", "64",
                 "--features", "vit,regions"]) == 0
    return out
