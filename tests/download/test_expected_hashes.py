"""Expected hashes against a loopback server: a sha256 or pHash that no longer matches
is a failed row with ``hash_mismatch`` and the reason, never silently kept."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.download.conftest import write_recipe
from tests.download.faults import serve_faults
from vlcurate.cli import main
from vlcurate.download.expected import phash_problem, sha256_problem
from vlcurate.download.images import ImageConfig, ImageProcessor
from vlcurate.download.stage import DownloadConfig


def _flip(hex_hash: str, bits: int) -> str:
    return f"{int(hex_hash, 16) ^ ((1 << bits) - 1):016x}"


def test_build_records_hash_mismatches_with_reasons(fault_corpus, tmp_path, capsys):
    ok = [r for r in fault_corpus.rows if r["kind"] == "ok"][:6]
    data = [fault_corpus.files[r["path"].rsplit("/", 1)[1]] for r in ok]
    sha = [hashlib.sha256(d).hexdigest() for d in data]
    stored = [ImageProcessor(ImageConfig(image_size=64))(d).phash for d in data]
    cases = [  # (kind, expected sha256, expected pHash, status)
        ("sha-match", sha[0].upper(), None, "ok"),  # hex case does not matter
        ("sha-changed", sha[0], None, "failed"),  # the bytes behind the URL changed
        ("sha-malformed", "not-a-hash", None, "failed"),
        ("no-expectation", None, "", "ok"),
        ("phash-close", None, _flip(stored[4], 3), "ok"),  # re-encoded: 3 bits off, within 8
        ("phash-far", None, _flip(stored[5], 20), "failed"),
    ]
    with serve_faults(fault_corpus.files) as server:
        table = pa.table({"url": [server.base_url + r["path"] for r in ok], "caption": ["c"] * 6,
                          "kind": [c[0] for c in cases], "sha": [c[1] for c in cases],
                          "ph": [c[2] for c in cases]})
        pq.write_table(table, tmp_path / "urls.parquet")
        recipe = write_recipe(tmp_path, [str(tmp_path / "urls.parquet")],
                              {"allow_networks": ["127.0.0.0/8"], "expected_sha256_col": "sha",
                               "expected_phash_col": "ph", "max_phash_distance": 8},
                              input_extra={"extra_cols": ["kind", "sha", "ph"]})
        assert main(["build", str(recipe)]) == 0, capsys.readouterr().err
    rows = {r["kind"]: r for r in pq.read_table(tmp_path / "out/faults/v1/samples/00000.parquet").to_pylist()}
    for kind, _, _, status in cases:
        assert rows[kind]["status"] == status, (kind, rows[kind]["error_message"])
        assert rows[kind]["error_kind"] == (None if status == "ok" else "hash_mismatch"), kind
    assert f"expected {sha[0]}" in rows["sha-changed"]["error_message"] and sha[1] in rows["sha-changed"]["error_message"]
    assert "'not-a-hash' is not 64 hex digits" in rows["sha-malformed"]["error_message"]
    assert "20 bits from expected" in rows["phash-far"]["error_message"]
    assert rows["phash-far"]["original_width"] is not None  # decoded, then judged
    assert rows["sha-changed"]["original_width"] is None  # judged before any decode
    assert [rows[c[0]]["sha"] for c in cases] == [c[1] for c in cases]  # carried unchanged
    manifest = json.loads((tmp_path / "out/faults/v1/manifest.json").read_text())
    download = next(s for s in manifest["stages"] if s["name"] == "download")
    assert download["counts"]["failed.hash_mismatch"] == 3
    assert download["libraries"]["image_path"] == 3  # which image path wrote the bytes (and hashed them)
    assert download["libraries"]["decoder"].startswith("pillow") and download["libraries"]["opencv"]


def test_hash_column_must_be_an_extra_column(tmp_path, capsys):
    (tmp_path / "urls.csv").write_text("url,caption,kind,sha\nhttp://127.0.0.1:9/a.jpg,a,ok,x\n")
    recipe = write_recipe(tmp_path, [str(tmp_path / "urls.csv")],
                          {"allow_networks": ["127.0.0.0/8"], "expected_sha256_col": "sha"})  # extra_cols: [kind]
    assert main(["build", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expected_sha256_col" in err and "'sha'" in err
    assert not (tmp_path / "out").exists()


def test_checks_alone():
    digest = hashlib.sha256(b"abc").hexdigest()
    assert sha256_problem(b"abc", digest) is None and sha256_problem(b"abc", None) is None
    assert sha256_problem(b"abd", digest).startswith("sha256 ")
    assert phash_problem("0" * 16, "0" * 15 + "f", 4) is None
    assert "5 bits" in phash_problem("0" * 16, "0" * 14 + "1f", 4)
    with pytest.raises(ValueError):
        DownloadConfig(max_phash_distance=65)
