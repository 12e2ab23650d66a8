"""The download stage through a whole build, on a fault-injecting loopback corpus with
every fault kind of shared/bench/download (tests/download/faults.py is our own copy):
one status row per input row, outcomes that match each row's kind, bombs rejected
without being decoded, the SSRF guard refusing loopback, the user agent token and the
opt-out headers on by default."""

from __future__ import annotations

import collections
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from PIL import Image, ImageFile

from tests.download.conftest import write_recipe, write_urls
from tests.download.faults import BOMB_SIDES, EXPECTED, KINDS, bomb_png, serve_faults
from vlcurate.cli import main
from vlcurate.download.images import ImageConfig, ImageProcessor
from vlcurate.pipelines.build import build
from vlcurate.recipe import load_recipe
from vlcurate.validate import validate_version

TOKEN = "vlcurate-tests"


def rows_of(version_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(str(version_dir / "samples" / "*.parquet"))


@pytest.fixture(scope="module")
def fault_build(fault_corpus, tmp_path_factory):
    """One build of the 150-row fault corpus, with every image decode recorded."""
    tmp = tmp_path_factory.mktemp("fault-build")
    decoded: list[tuple[int, int]] = []
    original_load = ImageFile.ImageFile.load

    def spy_load(self):  # every pixel decode of every PIL plugin goes through here
        decoded.append(self.size)
        return original_load(self)

    with pytest.MonkeyPatch.context() as mp, serve_faults(fault_corpus.files) as server:
        mp.setattr(ImageFile.ImageFile, "load", spy_load)
        urls = write_urls(tmp / "urls.parquet", server.base_url, fault_corpus.rows)
        recipe = write_recipe(tmp, [str(urls)], {"allow_networks": ["127.0.0.0/8"], "retries": 0,
                                                 "user_agent_token": TOKEN})
        result = build(load_recipe(recipe), log=lambda s: None)
        requests = collections.Counter(server.requests)
        agents = list(server.agents)
    return {"version": result.version_dir, "manifest": result.manifest, "decoded": decoded,
            "requests": requests, "agents": agents, "urls": urls}


def test_every_input_row_has_exactly_one_status_row(fault_build, fault_corpus):
    rows = rows_of(fault_build["version"])
    assert rows.height == len(fault_corpus.rows) == sum(KINDS.values())
    assert rows["key"].n_unique() == rows.height
    assert rows["url"].to_list() == pl.read_parquet(fault_build["urls"])["url"].to_list()
    assert rows["status"].is_in(["ok", "failed"]).all()
    assert validate_version(fault_build["version"]) == []


def test_outcomes_agree_with_the_corpus_kinds(fault_build):
    rows = rows_of(fault_build["version"])
    got = collections.Counter(zip(rows["kind"], rows["status"], rows["error_kind"]))
    want = collections.Counter({(kind, *EXPECTED[kind]): n for kind, n in KINDS.items()})
    assert got == want
    statuses = dict(zip(rows["kind"], rows["http_status"]))
    assert statuses["404"] == 404 and statuses["500"] == 500 and statuses["flaky"] == 503
    counts = fault_build["manifest"]["stages"][0]["counts"]
    ok = sum(n for kind, n in KINDS.items() if EXPECTED[kind][0] == "ok")
    assert counts["ok"] == ok and counts["failed"] == sum(KINDS.values()) - ok
    assert counts["failed.bomb"] == KINDS["bomb"] + KINDS["midbomb"]
    assert counts["failed.opted_out"] == KINDS["noai"]  # the opt-out check is on by default


def test_bombs_rejected_without_being_decoded(fault_build):
    rows = rows_of(fault_build["version"]).filter(pl.col("kind").is_in(["bomb", "midbomb"]))
    assert set(rows["error_kind"]) == {"bomb"}
    decoded = fault_build["decoded"]
    assert len(decoded) >= KINDS["ok"]  # the spy saw the real decodes...
    assert max(w * h for w, h in decoded) <= ImageConfig().max_pixels  # ...and never a bomb's
    assert not {(s, s) for s in BOMB_SIDES.values()} & set(decoded)


@pytest.mark.parametrize("side", sorted(BOMB_SIDES.values()))
def test_bomb_rejection_is_fast_and_allocates_nothing(side, tmp_path):
    data = bomb_png(side)
    processor = ImageProcessor(ImageConfig())
    processor(data)  # warm up imports
    started = time.perf_counter()
    result = processor(data)
    assert result.error_kind == "bomb" and time.perf_counter() - started < 0.1
    # A decode would allocate side*side bytes (1.6 GB / 400 MB); measure a fresh process.
    (tmp_path / "bomb.png").write_bytes(data)
    code = (
        "import resource, sys\n"
        "from vlcurate.download.images import ImageConfig, ImageProcessor\n"
        "p = ImageProcessor(ImageConfig()); data = open(sys.argv[1], 'rb').read()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "kind = p(data).error_kind\n"
        "print(kind, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "bomb.png")],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "bomb" and int(out[1]) < 20 * 1024, out  # KiB: under 20 MB of growth


def test_redirects_followed_and_each_url_requested_once(fault_build, fault_corpus):
    rows = rows_of(fault_build["version"]).filter(pl.col("kind") == "redirect")
    assert set(rows["status"]) == {"ok"}
    per_path = collections.Counter(r["path"] for r in fault_corpus.rows)  # the bomb rows share a path
    requests = fault_build["requests"]
    assert {p: requests[p] for p in per_path} == per_path  # retries: 0, so once per row
    for row in fault_corpus.rows:
        if row["kind"] == "redirect":
            assert requests[row["path"].replace("/redirect/", "/ok/", 1)] == 1


def test_user_agent_carries_the_token(fault_build):
    assert fault_build["agents"] and all(a.startswith("vlcurate/") and f"(+{TOKEN})" in a
                                         for a in fault_build["agents"])


def test_extra_columns_in_parquet_and_tar_json(fault_build):
    version = fault_build["version"]
    rows = rows_of(version)
    assert "kind" in rows.columns
    import webdataset as wds

    sample = next(iter(wds.WebDataset(str(version / "samples" / "00000.tar"), shardshuffle=False)))
    meta = json.loads(sample["json"])
    assert meta["kind"] == rows.filter(pl.col("key") == sample["__key__"])["kind"][0]
    assert Image.open(io.BytesIO(sample["jpg"])).size[0] >= 64


def test_opt_out_check_can_be_disabled(fault_corpus, tmp_path):
    noai = [r for r in fault_corpus.rows if r["kind"] == "noai"][:2]
    with serve_faults(fault_corpus.files) as server:
        urls = write_urls(tmp_path / "urls.parquet", server.base_url, noai)
        recipe = write_recipe(tmp_path, [str(urls)], {"allow_networks": ["127.0.0.0/8"],
                                                      "disallowed_header_directives": []})
        result = build(load_recipe(recipe), log=lambda s: None)
    assert set(rows_of(result.version_dir)["status"]) == {"ok"}


def test_loopback_refused_with_blocked_address_through_the_build(fault_corpus, tmp_path, capsys):
    ok = [r for r in fault_corpus.rows if r["kind"] == "ok"][:3]
    with serve_faults(fault_corpus.files) as server:
        port = server.server_address[1]
        urls = write_urls(tmp_path / "urls.parquet", server.base_url, ok[:2])
        # the same server by name: the guard checks the resolved address, not the spelling
        named = write_urls(tmp_path / "more" / "named.parquet", f"http://localhost:{port}", ok[2:])
        recipe = write_recipe(tmp_path, [str(urls), str(named)], {})  # allow_networks: default (none)
        assert main(["build", str(recipe)]) == 1  # no row succeeded: the version is kept, exit 1
        assert sum(server.requests.values()) == 0
    assert "all 3 rows blocked_address" in capsys.readouterr().err
    rows = rows_of(tmp_path / "out" / "faults" / "v1")
    assert rows.height == 3 and set(rows["status"]) == {"failed"}
    assert set(rows["error_kind"]) == {"blocked_address"}
    assert all("127.0.0.1" in m or "::1" in m for m in rows["error_message"])
