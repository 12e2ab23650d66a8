"""The same recipe on the FnApiRunner (2 processes) and on Beam's DaskRunner against a
local 2-worker dask.distributed cluster gives byte-identical versions."""

import pytest

from tests.conftest import local_dask_cluster, make_recipe
from vlcurate.pipelines.build import build
from vlcurate.recipe import load_recipe


def checksums(manifest):
    return {f["path"]: f["sha256"] for f in manifest["files"]}


@pytest.mark.slow
def test_dask_runner_matches_fnapi_runner(tmp_path, demo_urls, demo_version):
    pytest.importorskip("distributed")
    local = build(load_recipe(make_recipe(tmp_path, demo_urls, root="local",
                                          runner={"name": "local", "workers": 2})), log=lambda s: None)
    with local_dask_cluster() as (cluster, client):
        recipe = make_recipe(tmp_path, demo_urls, root="dask", runner={
            "name": "DaskRunner", "options": [f"--dask_client_address={cluster.scheduler_address}"]})
        dask = build(load_recipe(recipe), log=lambda s: None)
    assert checksums(dask.manifest) == checksums(local.manifest)
    assert checksums(local.manifest) == checksums({"files": __import__("json").loads(
        (demo_version / "manifest.json").read_text())["files"]})
    assert dask.manifest["recipe_hash"] == local.manifest["recipe_hash"]
