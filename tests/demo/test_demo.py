"""The demo: shards readable by webdataset and polars, counts that match the corpus's
faults, and `vlcurate demo` end to end (twice: the second version is byte-identical)."""

import collections
import json
import subprocess
import sys

import polars as pl
import pytest
import webdataset as wds

from vlcurate.demo.corpus import FAULTS


def manifest(v):
    return json.loads((v / "manifest.json").read_text())


def test_shards_load_with_webdataset_and_polars(demo_version):
    tars = sorted(str(p) for p in (demo_version / "samples").glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False).decode("pil"))
    rows = pl.read_parquet(str(demo_version / "samples" / "*.parquet"))
    ok = rows.filter(pl.col("status") == "ok")
    assert len(samples) == ok.height > 200
    first = samples[0]
    assert first["jpg"].size[0] >= 128 or first["jpg"].size[1] >= 128
    meta = first["json"]
    assert meta["key"] == first["__key__"] and first["txt"] == meta["caption"]
    assert set(ok["key"]) == {s["__key__"] for s in samples}
    assert rows.height == 240 and rows["key"].n_unique() == 240


def test_outcomes_match_the_corpus_faults(demo_version):
    rows = pl.read_parquet(str(demo_version / "samples" / "*.parquet"))
    by_kind = collections.Counter(zip(rows["kind"], rows["status"], rows["error_kind"].fill_null("-")))
    assert by_kind[("404", "failed", "http_error")] == FAULTS["404"]
    assert by_kind[("500", "failed", "http_error")] == FAULTS["500"]
    assert by_kind[("html", "failed", "not_an_image")] == FAULTS["html"]
    assert by_kind[("truncated", "failed", "decode_error")] == FAULTS["truncated"]
    stages = {s["name"]: s["counts"] for s in manifest(demo_version)["stages"]}
    assert stages["caption_filter"]["dropped.no_caption"] == FAULTS["empty_caption"]
    assert stages["caption_filter"]["dropped.caption_too_short"] == FAULTS["short_caption"]
    assert stages["exact_dedup"]["dropped.duplicate"] == FAULTS["duplicate"]
    dedup = pl.read_parquet(str(demo_version / "exact_dedup" / "*.parquet")).join(
        rows.select("key", "kind"), on="key")
    assert set(dedup.filter(~pl.col("keep"))["kind"]) == {"duplicate"}


@pytest.mark.slow
def test_demo_command_end_to_end_is_reproducible(tmp_path):
    cmd = [sys.executable, "-m", "vlcurate.cli", "demo", "--out", str(tmp_path)]
    for version in ("v1", "v2"):
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert f"validate {tmp_path / 'demo' / version}: OK" in run.stdout
        assert "=> kept" in run.stdout and "dropped.duplicate" in run.stdout
        report = tmp_path / "demo" / f"{version}.report.html"  # beside the immutable version
        assert f"report: {report}" in run.stdout.splitlines() and report.stat().st_size > 10_000
    files = [{f["path"]: f["sha256"] for f in manifest(tmp_path / "demo" / v)["files"]} for v in ("v1", "v2")]
    assert files[0] == files[1]
    listing = subprocess.run([sys.executable, "-m", "vlcurate.cli", "versions", "list", str(tmp_path)],
                             capture_output=True, text=True, check=True).stdout
    assert "v1" in listing and "v2" in listing
