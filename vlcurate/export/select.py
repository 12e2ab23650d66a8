"""What a training export takes from one shard of its source version.

A sample is exported when every filter kept it (:func:`alive_samples`, the rule the
stages and the LXMERT export use) and, for each requested feature, the feature stage
stored its features (a sample whose feature extraction failed is left out and
counted as ``left_out.no_<feature>``: a trainer reading ``vit`` needs a ``vit`` for
every sample). Its training text is CapFilt's selected captions, best first, from the
last caption-scoring filter of the version (``<stage>/<shard>.captions.parquet``),
or the original caption where the version has no such filter (or the filter
selected none for the sample).

Only the files the layout names are read; the decision files say which samples are
kept, the tar supplies the image bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlcurate.errors import UserError
from vlcurate.io.parquet import read_parquet
from vlcurate.io.tar import iter_tar_files
from vlcurate.pipelines.samples import alive_samples
from vlcurate.pipelines.stage import Layout
from vlcurate.schemas.features import declared_features, feature_arrays

# --features names -> the record kind of the sidecar that holds them.
FEATURE_KINDS = {"vit": "vit_features", "regions": "region_features"}
CAPTIONS_EXT = "captions.parquet"  # a caption filter's caption_scores file beside its decisions
IMAGE_EXTS = ("jpg", "png", "webp")


@dataclass(frozen=True)
class Sources:
    """Where a version keeps what an export reads: the sidecar stage of each requested
    feature, and the caption filter whose selected captions are the training text."""

    features: dict[str, str] = field(default_factory=dict)  # feature name -> stage name
    captions_stage: str | None = None


@dataclass
class ExportSample:
    """One sample as exported: image bytes, training captions, metadata, features."""

    key: str
    image: bytes
    image_ext: str
    texts: list[str]
    meta: dict
    features: dict[str, np.ndarray] = field(default_factory=dict)  # vit [T,D]; regions [N,D]; boxes [N,4]


def find_sources(manifest: dict, features: tuple[str, ...], where: str) -> Sources:
    """The stages holding ``features`` and the training captions; UserError naming an
    unknown feature, or one the version has no sidecar for."""
    kinds: dict[str, list[str]] = {}
    for f in manifest["files"]:
        top, _, name = f["path"].partition("/")
        if name and f.get("kind"):
            kinds.setdefault(f["kind"], [])
            if top not in kinds[f["kind"]]:
                kinds[f["kind"]].append(top)
    order = [s["name"] for s in manifest["stages"]]
    stages: dict[str, str] = {}
    for name in features:
        if name not in FEATURE_KINDS:
            raise UserError(f"--features {name}: unknown feature (known: {', '.join(sorted(FEATURE_KINDS))})")
        # stages only: a filter's side files of the same kind (clip_score.embeddings) hold no tokens
        found = [s for s in kinds.get(FEATURE_KINDS[name], []) if s in order]
        if not found:
            raise UserError(f"version {where}: no {FEATURE_KINDS[name]} sidecars, so no '{name}' features to "
                            f"export (its stages: {', '.join(order)})")
        stages[name] = sorted(found, key=order.index)[-1]  # the last such stage in the recipe
    scored = sorted((s for s in kinds.get("caption_scores", []) if s in order), key=order.index)
    return Sources(stages, scored[-1] if scored else None)


def _ok_keys(layout: Layout, stage: str, shard: int) -> set[str]:
    t = read_parquet(layout.sidecar(stage, shard), columns=["key", "status"])
    return set(t.filter(pc.equal(t.column("status"), "ok")).column("key").to_pylist())


def exported_keys(layout: Layout, shard: int, sources: Sources) -> tuple[list[str], dict[str, int]]:
    """The keys of the shard to export, in key order, and the shard's counts:
    ``kept`` (by every filter), ``left_out.no_<feature>``, ``exported``."""
    keys = sorted(alive_samples(layout, shard, ["key"]).column("key").to_pylist())
    counts = {"kept": len(keys)}
    for name, stage in sorted(sources.features.items()):
        have = _ok_keys(layout, stage, shard)
        missing = [k for k in keys if k not in have]
        if missing:
            counts[f"left_out.no_{name}"] = len(missing)
            keys = [k for k in keys if k in have]
    counts["exported"] = len(keys)
    return keys, counts


def _captions(layout: Layout, stage: str | None, shard: int) -> dict[str, list[str]]:
    if stage is None:
        return {}
    t = read_parquet(layout.sidecar(stage, shard, CAPTIONS_EXT), "caption_scores", columns=None)
    return {k: s for k, s in zip(t.column("key").to_pylist(), t.column("selected").to_pylist()) if s}


def _feature_rows(layout: Layout, stage: str, shard: int, column: str, keys: set[str]) -> tuple[pa.Table, list]:
    table = read_parquet(layout.sidecar(stage, shard))
    table = table.filter(pc.is_in(table.column("key"), value_set=pa.array(sorted(keys), pa.string())))
    return table, feature_arrays(table, column)


def _features(layout: Layout, shard: int, sources: Sources, keys: set[str]) -> dict[str, dict[str, np.ndarray]]:
    """``{key: {member name: array}}``: ``vit`` [T, D] tokens; ``regions`` [N, D] and
    ``boxes`` [N, 4] float32. Arrays keep the sidecar's dtype."""
    out: dict[str, dict[str, np.ndarray]] = {k: {} for k in keys}
    if "vit" in sources.features:
        table, arrays = _feature_rows(layout, sources.features["vit"], shard, "tokens", keys)
        for k, a in zip(table.column("key").to_pylist(), arrays):
            out[k]["vit"] = np.array(a)
    if "regions" in sources.features:
        table, arrays = _feature_rows(layout, sources.features["regions"], shard, "features", keys)
        for k, a, boxes in zip(table.column("key").to_pylist(), arrays, table.column("boxes").to_pylist()):
            out[k]["regions"] = np.array(a)
            out[k]["boxes"] = np.asarray(boxes, np.float32).reshape(-1, 4)
    return out


def feature_specs(layout: Layout, sources: Sources, shard: int) -> dict[str, dict]:
    """``{member: {"shape": [...], "dtype": ...}}`` of the exported feature arrays, as
    the source sidecars of ``shard`` declare them (None: variable first dimension)."""
    from vlcurate.io.parquet import read_parquet_schema

    specs: dict[str, dict] = {}
    for name, column in (("vit", "tokens"), ("regions", "features")):
        if name in sources.features:
            declared = declared_features(read_parquet_schema(layout.sidecar(sources.features[name], shard)))
            specs[name] = dict((declared or {})[column])
    if "regions" in specs:
        specs["regions"]["shape"] = [None, specs["regions"]["shape"][-1]]
        specs["boxes"] = {"shape": [None, 4], "dtype": "float32"}
    return specs


def export_samples(layout: Layout, shard: int, sources: Sources, keys: list[str]) -> list[ExportSample]:
    """The samples ``keys`` of ``shard`` (from :func:`exported_keys`), in that order."""
    wanted = set(keys)
    captions = _captions(layout, sources.captions_stage, shard)
    features = _features(layout, shard, sources, wanted) if sources.features else {}
    files: dict[str, dict[str, bytes]] = {}
    for key, ext, payload in iter_tar_files(layout.samples_tar(shard), exts=(*IMAGE_EXTS, "json"), keys=wanted):
        files.setdefault(key, {})[ext] = payload
    out = []
    for key in keys:
        got = files.get(key, {})
        ext = next((e for e in IMAGE_EXTS if e in got), None)
        if ext is None or "json" not in got:
            raise ValueError(f"{layout.samples_tar(shard)}: kept sample {key} has no image or json member")
        meta = json.loads(got["json"])
        texts = list(captions.get(key) or [meta.get("caption") or ""])
        out.append(ExportSample(key, got[ext], ext, texts, meta, features.get(key, {})))
    return out
