"""A build killed with SIGKILL part way resumes: finished shards are skipped (no new
requests for their URLs) and the result equals an uninterrupted build byte for byte."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_recipe
from vlcurate.demo.server import serve
from vlcurate.pipelines.build import build
from vlcurate.recipe import load_recipe


def checksums(version_dir):
    return {f["path"]: f["sha256"] for f in json.loads((version_dir / "manifest.json").read_text())["files"]}


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path, demo_corpus):
    with serve(demo_corpus.files, port=0, delay=0.15) as server:
        urls = tmp_path / "urls.parquet"
        rows = [{**r, "url": server.base_url + r["url"]} for r in demo_corpus.rows]
        pq.write_table(pa.Table.from_pylist(rows), urls)
        recipe = make_recipe(tmp_path, urls, root="killed")
        cmd = [sys.executable, "-m", "vlcurate.cli", "build", str(recipe)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        stats_dir = tmp_path / "killed" / "demo" / ".v1.building" / "stats"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(stats_dir.glob("download-*.json")):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        done_before = sorted(p.name for p in stats_dir.glob("*.json"))
        assert done_before and len(done_before) < 3 * 6, done_before
        finished = {int(n.split("-")[1][:5]) for n in done_before if n.startswith("download-")}
        finished_paths = [r["url"] for i, r in enumerate(demo_corpus.rows) if i // 40 in finished]
        requests_before = {p: server.requests.get(p, 0) for p in finished_paths}

        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert "resuming" in rerun.stderr
        assert {p: server.requests.get(p, 0) for p in finished_paths} == requests_before

        clean = build(load_recipe(make_recipe(tmp_path, urls, root="clean")), log=lambda s: None)

    resumed = tmp_path / "killed" / "demo" / "v1"
    assert not (tmp_path / "killed" / "demo" / ".v1.building").exists()
    assert checksums(resumed) == checksums(clean.version_dir)
