"""The dataset card of a training export: ``README.md`` in the Hugging Face layout.

A YAML header (``configs`` naming the shards as the ``train`` split, ``dataset_info``
with the features, so ``datasets.load_dataset(OUT)`` loads it as described), then
the provenance (source version, recipe hash, code version, models), the export's
settings, the funnel of the source version and of the export, how to read it, and
the licence and source fields a person must fill in.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from vlcurate.io.stats import ShardStats

TO_FILL = "<!-- fill in -->"


def _yaml_value(dtype: str) -> dict:
    return {"dtype": dtype}


def _feature_yaml(name: str, spec: dict) -> dict:
    """A ``[T, D]`` / ``[None, D]`` array as the card's nested-list feature."""
    inner = {"list": spec["dtype"], "length": int(spec["shape"][-1])}
    outer: dict[str, Any] = {"name": name, "list": inner}
    if spec["shape"][0] is not None:
        outer["length"] = int(spec["shape"][0])
    return outer


def card_features(fmt: str, specs: dict[str, dict], image_ext: str = "jpg") -> list[dict]:
    """The ``dataset_info.features`` list of the card (the YAML form of ``datasets.Features``)."""
    if fmt == "parquet":
        features = [{"name": "key", "dtype": "string"}, {"name": "image", "dtype": "image"},
                    {"name": "text", "dtype": "string"}, {"name": "texts", "list": "string"},
                    {"name": "url", "dtype": "string"}, {"name": "width", "dtype": "int32"},
                    {"name": "height", "dtype": "int32"}]
        features += [_feature_yaml(name, spec) for name, spec in specs.items()]
        if "regions" in specs:
            features.append({"name": "num_boxes", "dtype": "int32"})
        return features
    # webdataset: one column per member extension, as the webdataset builder names them
    features = [{"name": image_ext, "dtype": "image"}, {"name": "txt", "dtype": "string"}]
    features.append({"name": "json", "dtype": "string"})  # placeholder replaced below
    features += [_feature_yaml(f"{name}.npy", spec) for name, spec in specs.items()]
    features += [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"}]
    return features


def _funnel(manifest: dict) -> list[str]:
    lines = ["| stage | outcome | samples |", "| --- | --- | ---: |"]
    for stage in manifest["stages"]:
        for name, value in stage["counts"].items():
            if name == "ok" or name == "kept" or name.startswith(("failed.", "dropped.", "would_drop.")):
                lines.append(f"| {stage['name']} | {name} | {value} |")
    return lines


def dataset_card(recipe, source_manifest: dict, stats: dict[str, list[ShardStats]], specs: dict[str, dict],
                 sample_schema=None) -> str:
    """The README.md of an export. ``recipe``: its ExportRecipe; ``stats``: its markers;
    ``sample_schema``: the source's sample rows (the types of a tar's ``.json``)."""
    fmt = recipe.format
    ext = "tar" if fmt == "webdataset" else "parquet"
    counts: dict[str, int] = {}
    for s in stats.get("select", []):
        for k, v in s.counts.items():
            counts[k] = counts.get(k, 0) + v
    features = card_features(fmt, specs, image_ext(source_manifest))
    if fmt == "webdataset":
        features = [f if f["name"] != "json" else {"name": "json", "struct": json_struct(sample_schema)}
                    for f in features]
    header = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": f"train/*.{ext}"}]}],
        "dataset_info": {"features": features},
        "license": "other",
        "task_categories": ["image-to-text", "text-to-image"],
        "tags": ["vlcurate", fmt],
    }
    src = source_manifest
    models = [f"- `{s['name']}`: {json.dumps(s['weights'], sort_keys=True)}" for s in src["stages"] if s.get("weights")]
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "",
        f"# {recipe.output.name}/{recipe.output.version}: training export of {src['name']}/{src['version']}", "",
        f"The samples every filter of `{src['name']}/{src['version']}` kept, as {fmt} shards "
        f"(`train/*.{ext}`), written by `vlcurate export {fmt}`.", "",
        "## Provenance", "",
        f"- source version: `{recipe.source}` (recipe hash `{src['recipe_hash']}`, code `{src['code_version']}`, "
        f"created {src['created_at']})",
        f"- schema version: {src['schema_version']}",
        *(["- models:", *models] if models else []),
        *(["- **some stages ran with random weights: their scores and features are not meaningful**"]
          if src.get("random_weights") else []),
        "", "## Source recipe", "",
        *[f"- `{kind}`: `{json.dumps(settings, sort_keys=True)}`" for item in src["recipe"].get("stages", [])
          for kind, settings in item.items()],
        "", "## Export recipe", "",
        f"- format: {fmt}; {recipe.samples_per_shard} samples per shard; "
        + (f"shuffled with seed {recipe.shuffle_seed}" if recipe.shuffle_seed is not None else "not shuffled "
           "(source shard, then key order)"),
        f"- features: {', '.join(recipe.features) or 'none'}",
        "- text: " + ("the selected captions of the source's caption filter, best first"
                      if _has_captions(src) else "the original caption"),
        "", "## Funnel", "",
        "Source version:", "", *_funnel(src), "",
        f"Export: {counts.get('kept', 0)} kept by every filter, {counts.get('exported', 0)} exported"
        + "".join(f", {v} left out ({k.removeprefix('left_out.').replace('_', ' ')})"
                  for k, v in sorted(counts.items()) if k.startswith("left_out.")) + ".",
        "", "## Reading it", "",
        "```python",
        *(["import webdataset as wds",
           f"ds = wds.WebDataset('train/{{00000..{max(0, len(stats.get(fmt, [])) - 1):05d}}}.tar', "
           "shardshuffle=False).decode('pil')"] if fmt == "webdataset" else
          ["import polars as pl", "rows = pl.read_parquet('train/*.parquet')"]),
        "import datasets",
        "ds = datasets.load_dataset('.', split='train').with_format('numpy')  # from this directory",
        "```", "",
        "## Licence", "",
        f"License: {TO_FILL} (the images and captions keep their owners' terms; say which apply)", "",
        "## Sources and intended use", "",
        f"- where the URL list came from: {TO_FILL}",
        f"- intended use and known limitations: {TO_FILL}",
        f"- contact: {TO_FILL}", "",
    ]
    return "\n".join(lines)


def image_ext(manifest: dict) -> str:
    """The tar member extension of the images: the download stage's ``encode_format``."""
    for item in manifest["recipe"].get("stages", []):
        for settings in item.values():
            fmt = (settings or {}).get("encode_format")
            if fmt:
                return "jpg" if fmt == "jpeg" else fmt
    return "jpg"


def _has_captions(manifest: dict) -> bool:
    return any(f.get("kind") == "caption_scores" for f in manifest["files"])


_NOT_IN_JSON = {"status", "error_kind", "error_message", "http_status"}
_HF_DTYPES = {"double": "float64", "float": "float32", "halffloat": "float16"}


def json_struct(sample_schema) -> list[dict]:
    """The ``.json`` member's fields: the source's sample columns the download stage
    stores there (with their types), and ``texts``."""
    fields = [{"name": "texts", "list": "string"}]
    for f in sample_schema:
        if f.name in _NOT_IN_JSON or f.name.startswith("first_"):
            continue
        dtype = str(f.type)
        fields.append({"name": f.name, "dtype": _HF_DTYPES.get(dtype, dtype)})
    return sorted(fields, key=lambda f: f["name"])


