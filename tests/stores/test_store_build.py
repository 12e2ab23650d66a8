"""A small build (download, caption_filter, exact_dedup of the demo corpus) with its
root and its input on each object store: it validates reading from the store, and
every file equals the same build on local disk byte for byte. Broken stores stop the
build with one line and exit 2 before any work; no secret reaches a manifest or log."""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_recipe
from tests.stores.conftest import SECRET
from vlcurate import cli
from vlcurate.io import storage
from vlcurate.pipelines.build import build
from vlcurate.recipe import load_recipe

STAGES = [
    {"download": {"image_size": 64, "resize_mode": "keep_ratio", "allow_private": True, "retries": 0,
                  "timeout": 5.0, "threads": 16}},
    {"caption_filter": {"min_chars": 5}},
    {"exact_dedup": {"column": "sha256"}},
]


def small_recipe(tmp_path, urls, root: str, input_path: str, version: str = "v1", **runner):
    return make_recipe(tmp_path, urls, version=version, root=root.replace("/", "_").replace(":", ""),
                       output={"root": root, "name": "demo", "version": version},
                       input={"paths": [input_path], "url_col": "url", "caption_col": "caption",
                              "extra_cols": ["kind"]},
                       samples_per_shard=80, stages=STAGES,
                       runner={"name": "local", "workers": 1, **runner})


def version_files(version_dir: str) -> dict[str, str]:
    """Every file of a version but its manifest (which names where the input was) ->
    sha256, read through the storage layer."""
    return {f.path: storage.sha256(storage.join(version_dir, f.path))
            for f in storage.list_files(version_dir) if f.path != "manifest.json"}


@pytest.fixture(scope="module")
def local_build(demo_urls, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local-build")
    recipe = small_recipe(tmp, demo_urls, str(tmp / "out"), str(demo_urls))
    return build(load_recipe(recipe), log=lambda s: None)


def test_build_on_a_store_equals_the_local_build(store, local_build, demo_urls, tmp_path, capsys):
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
