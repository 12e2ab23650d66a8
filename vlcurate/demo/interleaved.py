"""``vlcurate demo --interleaved``: an interleaved version from the embedded sample crawl.

A loopback server serves the crawl's WARC, its pages and their images; the demo
fetches the WARC from it (as one fetches a crawl segment), then builds
``interleave -> download (document images) -> attach_images (MMC4 assignment with
the shipped demo-domain CLIP) -> flamingo_chunks``, validates the version and prints
the funnel, two documents and a training chunk.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import yaml

from vlcurate.demo.pages import crawl, served_files, write_warc
from vlcurate.demo.run import next_version
from vlcurate.demo.corpus import Served
from vlcurate.demo.server import DEFAULT_PORT, serve
from vlcurate.demo.shipped import card, model_path
from vlcurate.io import storage
from vlcurate.io.parquet import read_parquet
from vlcurate.pipelines.build import BuildResult, build
from vlcurate.recipe import load_recipe
from vlcurate.report import weights_notes
from vlcurate.validate import validate_version

NAME = "interleaved-demo"
PORT = DEFAULT_PORT + 1  # fixed when free, so the pages' URLs (and the version's bytes) repeat


def interleaved_recipe(warc: Path, out: Path, version: str, workers: int) -> dict:
    clip = card()["clip"]
    return {
        "input": {"paths": [str(warc)], "format": "warc"},
        "output": {"root": str(out), "name": NAME, "version": version},
        "stages": [
            {"interleave": {}},  # the first stage reads pages instead of a URL list
            {"download": {"document_images": True, "image_size": 128, "allow_networks": ["127.0.0.0/8"],
                          "retries": 1, "timeout": 5.0, "threads": 16}},
            # MMC4's assignment (and its 0.15 threshold) with the shipped demo-domain CLIP
            {"attach_images": {"assign": True, "model": clip["model"], "weights": str(model_path("clip"))}},
            {"flamingo_chunks": {"chunks_per_doc": 1, "seed": 0}},
        ],
        "runner": {"name": "local", "workers": workers},
    }


def show_document(row: dict) -> str:
    general = json.loads(row["general_metadata"])
    parts = [f"  {general['url']}  ({row['key']})"]
    for text, image in zip(row["texts"], row["images"]):
        text = (text or "").replace("\n\n", " / ")
        parts.append(f"    <image {image}>" if image else "    " + (text if len(text) < 110 else text[:107] + "..."))
    return "\n".join(parts)


def run_interleaved_demo(out: Path, workers: int = 2, version: str | None = None) -> BuildResult:
    out = out.resolve()
    sample = crawl()
    version = version or next_version(out, NAME)
    files = served_files(sample)
    with serve(files, port=PORT) as server:
        files["/crawl.warc.gz"] = Served(200, "application/warc", write_warc(sample.records, server.base_url,
                                                                           truncate_last=True))
        work = out / f".{NAME}-input"
        warc = work / "crawl.warc.gz"
        with urllib.request.urlopen(server.base_url + "/crawl.warc.gz", timeout=10) as response:  # noqa: S310
            storage.write_bytes(warc, response.read())
        recipe_path = work / f"recipe-{version}.yaml"
        storage.write_bytes(recipe_path, yaml.safe_dump(interleaved_recipe(warc, out, version, workers),
                                                        sort_keys=False).encode())
        print(f"demo: serving the sample crawl ({len(sample.records)} records, {len(sample.images)} images) on "
              f"{server.base_url}; recipe {recipe_path}", file=sys.stderr)
        result = build(load_recipe(recipe_path))
    problems = validate_version(result.version_dir)
    print(summary(result))
    print(f"validate {result.version_dir}: {'OK' if not problems else f'{len(problems)} problems'}")
    for p in problems:
        print(f"  {p}")
    if problems:
        raise RuntimeError(f"demo version {result.version_dir} failed validation")
    return result


def summary(result: BuildResult) -> str:
    lines = [f"{NAME}/{result.manifest['version']} in {result.seconds:.1f}s"]
    for stage in result.manifest["stages"]:
        shown = {k: v for k, v in stage["counts"].items() if not k.startswith("records.")}
        lines.append(f"  {stage['name']:<16}" + ", ".join(f"{k} {v}" for k, v in shown.items()))
    lines += [f"  note: {note}" for note in weights_notes(result.manifest)]
    root = Path(result.version_dir)
    docs = read_parquet(root / "attach_images" / "00000.parquet").to_pylist()
    lines.append(f"documents ({len(docs)}, OBELICS layout: attach_images/*.parquet; MMC4-like WebDataset: "
                 f"attach_images/*.tar), the first two:")
    lines += [show_document(d) for d in docs[:2]]
    chunk = read_parquet(root / "flamingo_chunks" / "00000.parquet").to_pylist()[0]
    lines.append(f"a Flamingo chunk ({len(chunk['token_ids'])} tokens, {len(chunk['images'])} images): "
                 f"{chunk['text'][:300]}")
    return "\n".join(lines)
