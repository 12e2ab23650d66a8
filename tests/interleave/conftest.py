"""The sample crawl as a WARC (generated with warcio, nothing committed), its images
on a loopback server, and one interleaved version built from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="session")
def crawl():
    from vlcurate.demo.pages import crawl as make

    return make()


@pytest.fixture(scope="session")
def crawl_server(crawl):
    from vlcurate.demo.pages import served_files
    from vlcurate.demo.server import serve

    with serve(served_files(crawl), port=0) as server:
        yield server


@pytest.fixture(scope="session")
def crawl_warc(crawl, crawl_server, tmp_path_factory) -> Path:
    from vlcurate.demo.pages import write_warc

    path = tmp_path_factory.mktemp("crawl") / "crawl.warc.gz"
    path.write_bytes(write_warc(crawl.records, crawl_server.base_url, truncate_last=True))
    return path


def interleave_recipe(tmp_path: Path, warc: Path, stages: list | None = None, version: str = "v1",
                      **overrides) -> Path:
    body = {"input": {"paths": [str(warc)], "format": "warc"},
            "output": {"root": str(tmp_path / "out"), "name": "pages", "version": version},
            "stages": stages or [{"interleave": {}}],
            "runner": {"name": "local", "workers": 1}, **overrides}
    path = tmp_path / f"recipe-{version}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def interleaved_version(crawl_warc, tmp_path_factory) -> Path:
    from vlcurate.pipelines.build import build
    from vlcurate.recipe import load_recipe

    tmp = tmp_path_factory.mktemp("interleave-build")
    return build(load_recipe(interleave_recipe(tmp, crawl_warc)), log=lambda s: None).version_dir
