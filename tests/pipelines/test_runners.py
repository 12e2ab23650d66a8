"""The same recipe on the FnApiRunner (2 processes) and on Beam's DaskRunner against a
local 2-worker dask.distributed cluster gives byte-identical versions."""

import pytest

from tests.conftest import make_recipe
from vlcurate.pipelines.build import build
from vlcurate.recipe import load_recipe


def checksums(manifest):
    return {f["path"]: f["sha256"] for f in manifest["files"]}


@pytest.mark.slow
def test_dask_runner_matches_fnapi_runner(tmp_path, demo_urls, demo_version):
    distributed = pytest.importorskip("distributed")
    local = build(load_recipe(make_recipe(tmp_path, demo_urls, root="local",
                                          runner={"name": "local", "workers": 2})), log=lambda s: None)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", host="127.0.0.1")  # any free port
    client = distributed.Client(cluster)
    try:
        recipe = make_recipe(tmp_path, demo_urls, root="dask", runner={
            "name": "DaskRunner", "options": [f"--dask_client_address={cluster.scheduler_address}"]})
        dask = build(load_recipe(recipe), log=lambda s: None)
    finally:
        client.close()
        cluster.close()
    assert checksums(dask.manifest) == checksums(local.manifest)
    assert checksums(local.manifest) == checksums({"files": __import__("json").loads(
        (demo_version / "manifest.json").read_text())["files"]})
    assert dask.manifest["recipe_hash"] == local.manifest["recipe_hash"]
