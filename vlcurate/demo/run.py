"""``vlcurate demo``: build a version end to end from the embedded sample corpus."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import yaml

from vlcurate.demo.corpus import make_corpus
from vlcurate.demo.server import serve
from vlcurate.demo.shipped import card, model_path
from vlcurate.export.html_report import write_report
from vlcurate.io import storage
from vlcurate.io.parquet import write_work_parquet
from vlcurate.pipelines.build import BuildResult, build
from vlcurate.recipe import load_recipe
from vlcurate.report import summary_table
from vlcurate.validate import validate_version

DEMO_NAME = "demo"


def demo_recipe(input_path: Path, out: Path, version: str, workers: int) -> dict:
    # The shipped demo-domain CLIP (a small CNN tower, 64 px: fast on CPU), loaded from
    # its file like any user's weights, and the threshold chosen on its held-out images.
    clip = card()["clip"]
    clip_model = {"model": clip["model"], "weights": str(model_path("clip"))}
    return {
        "input": {"paths": [str(input_path)], "url_col": "url", "caption_col": "caption", "extra_cols": ["kind"]},
        "output": {"root": str(out), "name": DEMO_NAME, "version": version},
        "samples_per_shard": 40,
        "stages": [
            # the demo's server is on loopback, which the SSRF guard refuses by default
            {"download": {"image_size": 128, "resize_mode": "keep_ratio", "allow_networks": ["127.0.0.0/8"],
                          "retries": 1, "timeout": 5.0, "threads": 16}},
            {"caption_filter": {"min_chars": 5}},
            {"exact_dedup": {"column": "sha256"}},
            # Trained on the demo's own synthetic shapes only: the manifest and summary
            # say "demo-domain weights". A CNN tower has no CLS token.
            {"vit_features": {**clip_model, "include_cls": False, "batch_size": 32}},
            # clip_score reuses vit_features' embeddings (same model) instead of re-encoding.
            {"clip_score": {**clip_model, "min_score": clip["threshold"]}},
            # LXMERT-style region features from the tiny bottom-up-attention config
            # (random weights); `vlcurate export lxmert-tsv` turns them into LXMERT's TSV.
            {"region_features": {"config": "butd-tiny", "weights": None, "min_boxes": 10, "max_boxes": 36}},
        ],
        "runner": {"name": "local", "workers": workers},
    }


def next_version(out: Path, name: str = DEMO_NAME) -> str:
    """The first ``vN`` that ``out/name`` does not hold yet."""
    n = 1
    while storage.exists(storage.join(out, name, f"v{n}")):
        n += 1
    return f"v{n}"


def run_demo(out: Path, workers: int = 2, version: str | None = None) -> BuildResult:
    out = out.resolve()
    corpus = make_corpus()
    version = version or next_version(out)
    with serve(corpus.files) as server:
        work = out / f".{DEMO_NAME}-input"
        rows = [{**r, "url": server.base_url + r["url"]} for r in corpus.rows]
        input_path = work / "urls.parquet"
        write_work_parquet(pa.Table.from_pylist(rows), input_path)
        recipe_path = work / f"recipe-{version}.yaml"
        recipe = yaml.safe_dump(demo_recipe(input_path, out, version, workers), sort_keys=False)
        storage.write_bytes(recipe_path, recipe.encode())
        print(f"demo: serving {len(corpus.files)} files on {server.base_url}; recipe {recipe_path}", file=sys.stderr)
        result = build(load_recipe(recipe_path))
    problems = validate_version(result.version_dir)
    print(summary_table(result.manifest, result.seconds))
    print(f"validate {result.version_dir}: {'OK' if not problems else f'{len(problems)} problems'}")
    for p in problems:
        print(f"  {p}")
    if problems:
        raise RuntimeError(f"demo version {result.version_dir} failed validation")
    print(f"report: {write_report(result.version_dir)}")
    return result
