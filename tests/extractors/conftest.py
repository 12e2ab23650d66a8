"""Fixtures of the extractor tests: a small demo build with the region stage."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import make_recipe

REGION_ROWS = 50  # of the demo corpus: ok images, empty captions, duplicates, an HTML page
TINY_REGIONS = {"config": "butd-tiny", "device": "cpu", "min_boxes": 10, "max_boxes": 36}


@pytest.fixture(scope="session")
def region_version(demo_urls, tmp_path_factory) -> Path:
    """A built version of the first 50 demo rows (2 shards): download, exact_dedup,
    region_features (tiny BUTD, random weights, 10-36 boxes), then caption_filter, which
    drops samples that already have regions. Read-only: copy it before damaging it."""
    from vlcurate.pipelines.build import build
    from vlcurate.recipe import load_recipe

    tmp = tmp_path_factory.mktemp("region-build")
    urls = tmp / "urls.parquet"
    pq.write_table(pq.read_table(demo_urls).slice(0, REGION_ROWS), urls)
    recipe = make_recipe(tmp, urls, samples_per_shard=25, stages=[
        {"download": {"image_size": 128, "resize_mode": "keep_ratio", "allow_networks": ["127.0.0.0/8"],
                      "retries": 1, "timeout": 5.0, "threads": 16}},
        {"exact_dedup": {"column": "sha256"}},
        {"region_features": TINY_REGIONS},
        {"caption_filter": {"min_chars": 5}},
    ])
    return build(load_recipe(recipe), log=lambda s: None).version_dir
