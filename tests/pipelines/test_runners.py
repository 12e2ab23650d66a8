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


def _captions_by_url(version_dir) -> dict[str, list[str]]:
    """``{url: captions}`` of every ok synthetic_captions row (keys change with the
    shard size, URLs do not)."""
    import pyarrow.parquet as pq

    urls = {}
    for path in sorted((version_dir / "samples").glob("*.parquet")):
        urls.update({r["key"]: r["url"] for r in pq.read_table(path, columns=["key", "url"]).to_pylist()})
    out = {}
    for path in sorted((version_dir / "synthetic_captions").glob("*.parquet")):
        for r in pq.read_table(path).to_pylist():
            if r["status"] == "ok":
                out[urls[r["key"]]] = r["captions"]
    return out


@pytest.mark.slow
def test_captions_are_the_same_on_every_runner_worker_count_and_shard_size(tmp_path, demo_urls):
    """CapFilt's captioner with batch size 1: a sample's K captions do not depend on the
    shard size, the number of worker processes or the runner (each worker process loads
    the saved model itself and seeds each sample from its own identity)."""
    import pyarrow.parquet as pq

    from vlcurate.extractors.hf_models import HfModelConfig, load_hf_model

    distributed = pytest.importorskip("distributed")
    urls = tmp_path / "urls.parquet"
    pq.write_table(pq.read_table(demo_urls).slice(0, 24), urls)
    base = load_hf_model(HfModelConfig(device="cpu", seed=3), "captioner")
    saved = tmp_path / "blip"
    base.model.save_pretrained(saved)
    base.processor.save_pretrained(saved)

    def recipe(root, samples_per_shard, runner):
        body = {"input": {"paths": [str(urls)], "url_col": "url", "caption_col": "caption"},
                "output": {"root": str(tmp_path / root), "name": "caps", "version": "v1"},
                "samples_per_shard": samples_per_shard,
                "stages": [{"download": {"image_size": 64, "allow_networks": ["127.0.0.0/8"], "retries": 0,
                                         "timeout": 5.0}},
                           {"synthetic_captions": {"model": "my-blip", "weights": str(saved), "device": "cpu",
                                                   "captions_per_image": 3, "batch_size": 1, "seed": 5}}],
                "runner": runner}
        path = tmp_path / f"{root}.yaml"
        path.write_text(__import__("yaml").safe_dump(body))
        return build(load_recipe(path), log=lambda s: None).version_dir

    one = _captions_by_url(recipe("one", 24, {"name": "local", "workers": 1}))
    two = _captions_by_url(recipe("two", 5, {"name": "local", "workers": 2}))
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", host="127.0.0.1")
    client = distributed.Client(cluster)
    try:
        dask = _captions_by_url(recipe("dask", 8, {"name": "DaskRunner", "options": [
            f"--dask_client_address={cluster.scheduler_address}"]}))
    finally:
        client.close()
        cluster.close()
    assert len(one) >= 20 and all(len(c) == 3 for c in one.values())
    assert len({tuple(c) for c in one.values()}) > len(one) // 2  # captions differ between samples
    assert two == one
    assert dask == one


def test_dask_partitions_follow_the_cluster_not_the_corpus(monkeypatch):
    """A build (only shard ids between its transforms) is spread over a few partitions
    per thread of the cluster, at most one per shard; a graph whose elements carry data
    keeps one shard per partition; the user's own partition option wins; a scheduler
    that does not answer is a one-line error naming the option."""
    import socket

    import vlcurate.pipelines.beam as beam_module
    from vlcurate.errors import UserError
    from vlcurate.pipelines.beam import runner_defaults

    assert runner_defaults("local", (), 500) == []
    with local_dask_cluster() as (cluster, client):
        address = (f"--dask_client_address={cluster.scheduler_address}",)
        assert runner_defaults("DaskRunner", address, 500) == ["--dask_npartitions=8"]  # 2 workers x 1 thread x 4
        assert runner_defaults("DaskRunner", address, 3) == ["--dask_npartitions=3"]
    assert runner_defaults("DaskRunner", address, None) == ["--dask_partition_size=1"]
    assert runner_defaults("DaskRunner", (*address, "--dask_npartitions=2"), 500) == []
    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(beam_module, "SCHEDULER_TIMEOUT_S", 1)
    with pytest.raises(UserError, match=rf"^pipeline option --dask_client_address=127\.0\.0\.1:{port}: "
                                        "no Dask scheduler answers"):
        runner_defaults("DaskRunner", (f"--dask_client_address=127.0.0.1:{port}",), 500)
