"""Shared fixtures: the demo corpus served on loopback, and recipe helpers."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_corpus():
    from vlcurate.demo.corpus import make_corpus

    return make_corpus()


@pytest.fixture(scope="session")
def demo_server(demo_corpus):
    from vlcurate.demo.server import serve

    with serve(demo_corpus.files, port=0) as server:
        yield server


@pytest.fixture(scope="session")
def demo_urls(demo_corpus, demo_server, tmp_path_factory) -> Path:
    """The demo corpus's URL list (url, caption, kind) as Parquet."""
    path = tmp_path_factory.mktemp("inputs") / "urls.parquet"
    rows = [{**r, "url": demo_server.base_url + r["url"]} for r in demo_corpus.rows]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def tree(root: Path) -> list[str]:
    """Every path under ``root``, hidden ones included (``.v1.building``), with a
    trailing '/' on directories: what "nothing written" compares."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) + ("/" if p.is_dir() else "") for p in root.rglob("*"))


def make_recipe(tmp_path: Path, urls: Path, version: str = "v1", root: str = "out", **overrides) -> Path:
    """Write a small demo-like recipe to tmp_path and return its path."""
    from vlcurate.demo.run import demo_recipe

    body = demo_recipe(urls, tmp_path / root, version, workers=1)
    for key, value in overrides.items():
        body[key] = value
    path = tmp_path / f"recipe-{root}-{version}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def demo_version(demo_urls, tmp_path_factory) -> Path:
    """One built demo version, shared by read-only tests (copy it before damaging it)."""
    from vlcurate.pipelines.build import build
    from vlcurate.recipe import load_recipe

    tmp = tmp_path_factory.mktemp("demo-build")
    return build(load_recipe(make_recipe(tmp, demo_urls)), log=lambda s: None).version_dir


@pytest.fixture
def damaged(demo_version, tmp_path) -> Path:
    """A writable copy of the shared demo version, for tests that damage it."""
    copy = tmp_path / "v"
    shutil.copytree(demo_version, copy)
    for p in copy.rglob("*"):
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    return copy


@contextlib.contextmanager
def local_dask_cluster():
    """A 2-process dask.distributed cluster on loopback and a client of it, both closed
    at the end; yields both. Quiet: the scheduler's HTTP server takes any free
    port (8787 may be taken, which distributed warns about), each worker preloads
    vlcurate's Beam module (which drops Beam's import warning, that a worker would
    print when it first unpickles a Beam task), and the nanny's notice that a worker
    took longer than its 4 s to exit at teardown, and the warning that making scratch
    directories was slow (both happen on a loaded machine), are not printed."""
    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        # a loaded machine: making the workers' scratch directories took over a second
        warnings.filterwarnings("ignore", message="Creating scratch directories is taking a surprisingly long time",
                                category=UserWarning)
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                           host="127.0.0.1", preload=["vlcurate.pipelines.beam"])
    client = distributed.Client(cluster)
    try:
        yield cluster, client
    finally:
        client.close()
        nanny = logging.getLogger("distributed.nanny")
        level = nanny.level
        nanny.setLevel(logging.ERROR)
        try:
            cluster.close()
        finally:
            nanny.setLevel(level)
# Training exports of the shared demo version, read by tests/export and tests/stores.
@pytest.fixture(scope="session")
def wds_export(demo_version, tmp_path_factory) -> Path:
    """The demo's kept samples as webdataset shards of 50, shuffled (seed 3), with features."""
    out = tmp_path_factory.mktemp("exports") / "demo" / "v1-wds"
    from vlcurate.cli import main

    assert main(["export", "webdataset", str(demo_version), str(out), "--samples-per-shard", "50",
                 "--shuffle-seed", "3", "--features", "vit,regions"]) == 0
    return out


@pytest.fixture(scope="session")
def parquet_export(demo_version, tmp_path_factory) -> Path:
    """The same as Parquet shards of 64, not shuffled, with features."""
    out = tmp_path_factory.mktemp("exports") / "demo" / "v1-parquet"
    from vlcurate.cli import main

    assert main(["export", "parquet", str(demo_version), str(out), "--samples-per-shard", "64",
                 "--features", "vit,regions"]) == 0
    return out
