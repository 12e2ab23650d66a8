"""Distributed without a shared disk: Beam's DaskRunner on a local 2-process
dask.distributed cluster, each worker in a working directory of its own, builds to
an object store (input read from there too) the same bytes as the FnApiRunner."""

import os
import tempfile

import pytest

from tests.conftest import local_dask_cluster
from tests.stores.test_store_build import small_recipe, version_files
from vlcurate.io import storage
from vlcurate.pipelines.build import build
from vlcurate.recipe import load_recipe


def _own_working_directory() -> str:
    os.chdir(tempfile.mkdtemp(prefix="dask-worker-"))
    return os.getcwd()


@pytest.mark.slow
def test_dask_runner_to_a_store_equals_fnapi_runner(stores, local_build, demo_urls, tmp_path):
    pytest.importorskip("distributed")
    store = stores["s3"]
    storage.write_bytes(store.url("dask-inputs", "urls.parquet"), demo_urls.read_bytes())
    with local_dask_cluster() as (cluster, client):
        cwds = set(client.run(_own_working_directory).values())
        assert len(cwds) == 2 and os.getcwd() not in cwds
        root = store.url("dask")
        recipe = small_recipe(tmp_path, demo_urls, root, store.url("dask-inputs", "urls.parquet"),
                              name="DaskRunner", options=[f"--dask_client_address={cluster.scheduler_address}"])
        result = build(load_recipe(recipe), log=lambda s: None)
    assert result.version_dir == storage.join(root, "demo", "v1")
    assert version_files(result.version_dir) == version_files(str(local_build.version_dir))
    assert result.manifest["files"] == local_build.manifest["files"]
    assert result.manifest["recipe_hash"] == local_build.manifest["recipe_hash"]
