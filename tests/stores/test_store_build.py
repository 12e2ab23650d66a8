"""A small build (download, caption_filter, exact_dedup of the demo corpus) with its
root and its input on each object store: it validates reading from the store, and
every file equals the same build on local disk byte for byte. Broken stores stop the
build with one line and exit 2 before any work; no secret reaches a manifest or log."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile

import pytest

from tests.conftest import make_recipe
from tests.stores.conftest import SECRET
from vlcurate import cli
from vlcurate.download.retry import plan_retry
from vlcurate.io import object_store, storage

PER_SHARD = 80
STAGES = [
    {"download": {"image_size": 64, "resize_mode": "keep_ratio", "allow_networks": ["127.0.0.0/8"], "retries": 0,
                  "timeout": 5.0, "threads": 16}},
    {"caption_filter": {"min_chars": 5}},
    {"exact_dedup": {"column": "sha256"}},
]


def small_recipe(tmp_path, urls, root: str, input_path: str, version: str = "v1", samples_per_shard: int = PER_SHARD,
                 **runner):
    return make_recipe(tmp_path, urls, version=version,
                       root=f'{root.replace("/", "_").replace(":", "")}-{samples_per_shard}',
                       output={"root": root, "name": "demo", "version": version},
                       input={"paths": [input_path], "url_col": "url", "caption_col": "caption",
                              "extra_cols": ["kind"]},
                       samples_per_shard=samples_per_shard, stages=STAGES,
                       runner={"name": "local", "workers": 1, **runner})


def version_files(version_dir: str) -> dict[str, str]:
    """Every file of a version but its manifest (which names where the input was) ->
    sha256, read through the storage layer."""
    return {f.path: storage.sha256(storage.join(version_dir, f.path))
            for f in storage.list_files(version_dir) if f.path != "manifest.json"}


def test_build_on_a_store_equals_the_local_build(store, local_build, demo_urls, tmp_path, capsys, monkeypatch):
    # The launcher's temporary files (the workers' log) land where the test can read them.
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    storage.write_bytes(store.url("inputs", "urls.parquet"), demo_urls.read_bytes())
    root = store.url("builds")
    recipe = small_recipe(tmp_path, demo_urls, root, store.url("inputs", "urls.parquet"))
    assert cli.main(["build", str(recipe), "--", f"--s3_secret_access_key={SECRET}"]) == 0
    version = storage.join(root, "demo", "v1")
    assert not storage.exists(storage.join(version, "_work"))
    assert version_files(version) == version_files(str(local_build.version_dir))
    manifest = json.loads(storage.read_bytes(storage.join(version, "manifest.json")))
    local = json.loads((local_build.version_dir / "manifest.json").read_text())
    assert manifest["files"] == local["files"] and manifest["stages"] == local["stages"]
    assert manifest["inputs"][0]["path"] == store.url("inputs", "urls.parquet")
    assert manifest["inputs"][0]["sha256"] == local["inputs"][0]["sha256"]
    assert manifest["recipe"]["runner"]["options"] == ["--s3_secret_access_key=<redacted>"]

    printed = capsys.readouterr()
    assert cli.main(["validate", version]) == 0
    assert capsys.readouterr().out == f"{version}: valid\n"
    assert cli.main(["versions", "list", root]) == 0
    assert "v1" in capsys.readouterr().out

    # no secret in any object the build stored, nor in what it printed
    for f in storage.list_files(store.url()):
        assert SECRET.encode() not in storage.read_bytes(store.url(f.path)), f.path
    assert SECRET not in printed.err + printed.out
    # a retry of the stored version plans from the store and drops the redacted option
    plan = plan_retry(version, runner_options=("--s3_secret_access_key=given-again",))
    assert plan.recipe.output.parent == version and plan.recipe.input.paths == (storage.join(version, "samples"),)
    assert plan.recipe.output.version_dir == storage.join(root, "demo", "v1-retry1")
    assert plan.recipe.runner.options == ("--s3_secret_access_key=given-again",)

    logs = [p for p in (tmp_path / "tmp").rglob("*.log")]
    assert logs, "the workers' log was not kept where expected"
    for p in tmp_path.rglob("*"):
        assert not p.is_file() or SECRET.encode() not in p.read_bytes(), p


@contextlib.contextmanager
def environment(**changes: str | None):
    """The environment with ``changes`` (None: unset), clients made afresh from it."""
    saved = {k: os.environ.get(k) for k in changes}
    try:
        for k, v in changes.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        object_store.register()
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        object_store.register()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


BROKEN = {
    "unreachable": lambda store: ({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{_closed_port()}"} if store.scheme == "s3"
                                  else {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{_closed_port()}"},
                                  store.url("out"), "cannot reach the store"),
    "no credentials": lambda store: ({"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_PROFILE": None,
                                      "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
                                      "AWS_CONFIG_FILE": "/nonexistent/config"} if store.scheme == "s3"
                                     else {"STORAGE_EMULATOR_HOST": None,
                                           "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/key.json"},
                                     store.url("out"),
                                     "no AWS credentials" if store.scheme == "s3" else "GOOGLE_APPLICATION_CREDENTIALS"),
    "no bucket": lambda store: ({}, f"{store.scheme}://no-such-bucket/out", "does not exist"),
}


@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_broken_store_stops_the_build_before_work(store, broken, demo_urls, demo_server, tmp_path, capsys):
    env, root, expected = BROKEN[broken](store)
    recipe = small_recipe(tmp_path, demo_urls, root, str(demo_urls))
    requests_before = sum(demo_server.requests.values())
    with environment(**env):
        code = cli.main(["build", str(recipe), "--", f"--s3_secret_access_key={SECRET}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"vlcurate: error: output {root}: ") and expected in err, err
    assert SECRET not in err
    assert sum(demo_server.requests.values()) == requests_before  # no image was fetched
    assert not storage.list_files(store.url("out"))
