"""A build to an object store killed with SIGKILL part way resumes from its stats
markers: shards finished before the kill are not fetched again, and the version equals
an uninterrupted build. Until its manifest exists the prefix is no version."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.stores.test_store_build import PER_SHARD, small_recipe, version_files
from vlcurate import cli
from vlcurate.io import storage


@pytest.mark.slow
def test_sigkill_then_resume_on_a_store(store, local_build, demo_corpus, demo_server, demo_urls, tmp_path, capsys):
    root = store.url("killed", tmp_path.name)
    recipe = small_recipe(tmp_path, demo_urls, root, str(demo_urls))
    cmd = [sys.executable, "-m", "vlcurate.cli", "build", str(recipe)]
    version = storage.join(root, "demo", "v1")
    stats = storage.join(version, "stats")
    demo_server.RequestHandlerClass.delay = 0.05  # slow enough to be killed part way
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(f.path.startswith("download-")
                                                      for f in storage.list_files(stats)):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        demo_server.RequestHandlerClass.delay = 0.0
    done_before = [f.path for f in storage.list_files(stats)]
    num_shards = -(-len(demo_corpus.rows) // PER_SHARD)
    assert done_before and len(done_before) < 3 * num_shards, done_before

    # the unfinished build is no version, and no other recipe may take it over
    assert cli.main(["validate", version]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert cli.main(["versions", "list", root]) == 2
    assert "no versions under it" in capsys.readouterr().err
    other = small_recipe(tmp_path, demo_urls, root, str(demo_urls), samples_per_shard=PER_SHARD + 1)
    assert cli.main(["build", str(other)]) == 2
    assert "unfinished build of a different recipe" in capsys.readouterr().err

    finished = {int(n.split("-")[1][:5]) for n in done_before if n.startswith("download-")}
    finished_paths = [r["url"] for i, r in enumerate(demo_corpus.rows) if i // PER_SHARD in finished]
    requests_before = {p: demo_server.requests.get(p, 0) for p in finished_paths}
    assert cli.main(["build", str(recipe)]) == 0
    assert "resuming" in capsys.readouterr().err
    assert {p: demo_server.requests.get(p, 0) for p in finished_paths} == requests_before

    assert version_files(version) == version_files(str(local_build.version_dir))
    manifest = json.loads(storage.read_bytes(storage.join(version, "manifest.json")))
    assert manifest["files"] == json.loads((local_build.version_dir / "manifest.json").read_text())["files"]
    assert cli.main(["validate", version]) == 0
