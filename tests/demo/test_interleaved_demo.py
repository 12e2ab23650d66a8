"""`vlcurate demo --interleaved`: a new user gets a valid interleaved version, built
from the embedded WARC served on loopback, and sees documents."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from vlcurate.cli import main


def test_interleaved_demo_builds_validates_and_shows_documents(tmp_path, capsys):
    assert main(["demo", "--interleaved", "--out", str(tmp_path), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    version = tmp_path / "interleaved-demo" / "v1"
    assert f"validate {version}: OK" in out
    assert "<image http://127.0.0.1:" in out and "a Flamingo chunk" in out
    manifest = json.loads((version / "manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == ["interleave", "download", "attach_images", "flamingo_chunks"]
    docs = pq.read_table(version / "attach_images" / "00000.parquet").to_pylist()
    assert docs and all(any(i for i in d["images"]) for d in docs)
    assert any("/shapes.html" in d["general_metadata"] for d in docs)
    assert (version / "attach_images" / "00000.tar").stat().st_size > 0
    # built again: the same bytes (fixed WARC record ids and dates, fixed port, seeded images)
    assert main(["demo", "--interleaved", "--out", str(tmp_path), "--workers", "1"]) == 0
    again = json.loads((tmp_path / "interleaved-demo" / "v2" / "manifest.json").read_text())
    assert {f["path"]: f["sha256"] for f in again["files"]} == {f["path"]: f["sha256"] for f in manifest["files"]}
