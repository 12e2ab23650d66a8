"""CLIP score filter (LAION / DataComp): keep a sample when the cosine between its
caption's and its image's CLIP embeddings is at least ``min_score``.

LAION-5B kept ViT-B/32 scores >= 0.28 (English; 0.26 multilingual, 0.3 for
LAION-400M); DataComp's B/32 baseline is 0.25. Scores are plain cosines in [-1, 1].
Every scored sample's score is in the decision row's ``score`` column, kept or not;
a sample without a caption is dropped as ``no_caption`` and one whose image cannot be
decoded or encoded as ``image_error`` (the failure in ``detail``), both unscored.

No image is encoded twice by the same model: before encoding, the filter asks the
layout for this shard's ``vit_features`` sidecars (feature stages that ran earlier in
the recipe; stages run on a shard in recipe order) and takes one whose ``vlcurate.model`` metadata has
the same identity (model, weights, quick_gelu, and seed when the weights are random;
see :meth:`ClipModelConfig.identity`). The ``embedding`` of its ``ok`` rows is reused;
only samples it lacks or failed on are encoded here (and no images at all when it
covers the shard). The stats count ``embedding.reused`` and ``embedding.encoded``.
Image embeddings are rounded to fp16 (the sidecar's default storage) before scoring
either way, so a score does not depend on whether its embedding was reused (up to
the batch composition's float rounding). The text tower always runs here.

When it encoded images itself (no matching ``vit_features`` stage ran before it), it
stores the embeddings of the shard's scored samples in
``clip_score.embeddings/<shard>.parquet`` (a directory no stage can be named, and not
mixed with the decision files; a ``vit_features`` record with only the
``embedding`` column, fp16, and the model's identity in its metadata; failures as
rows with a reason), so that later stages (``embedding_clusters`` and
``semantic_dedup`` with ``embeddings_from: clip_score``) never encode an image twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlcurate.extractors.encoding import Encoded, SampleFailure, encode_images
from vlcurate.extractors.clip_models import ClipImageInput, ClipModelConfig, load_clip
from vlcurate.filters.base import Decision, FilterConfig, FilterStage
from vlcurate.io.parquet import read_parquet, read_parquet_schema, write_parquet
from vlcurate.pipelines.samples import SampleRow
from vlcurate.pipelines.stage import Layout, StageInfo, register_stage
from vlcurate.schemas.features import FEATURE_BASE_FIELDS, MODEL_META, TENSOR_TYPE, feature_metadata, stacked_features
from vlcurate.typed import bounded, check_bounds


@dataclass(frozen=True)
class ClipScoreConfig(ClipModelConfig, FilterConfig):
    min_score: float = 0.28  # LAION-5B's threshold for ViT-B/32; depends on the model
    batch_size: int = bounded(64, ge=1)  # images (when not reused) and captions per forward pass
    decode_threads: int = bounded(0, ge=0)  # as for vit_features: 0 = one per core, at most 8

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bounds(self)


def stored_embeddings(layout: Layout, shard: int, identity: dict[str, Any],
                      before: str | None = None) -> dict[str, np.ndarray]:
    """``{key: embedding}`` of the ok rows of this shard's ``vit_features`` sidecars
    (of stages before ``before``) written by a model with ``identity`` (empty when
    there is none)."""
    found: dict[str, np.ndarray] = {}
    for loc in layout.sidecars(shard, "vit_features", before=before):
        meta = read_parquet_schema(loc).metadata or {}
        if MODEL_META not in meta:
            continue
        model = json.loads(meta[MODEL_META])
        if {k: model.get(k) for k in identity} != identity:
            continue
        table = read_parquet(loc, columns=["key", "status", "embedding"])
        table = table.filter(pc.equal(table.column("status"), "ok"))
        if table.num_rows == 0:
            continue
        found.update(zip(table.column("key").to_pylist(), stacked_features(table, "embedding")))
    return found


def embedding_file(layout: Layout, stage: str, shard: int) -> str:
    """Where stage ``stage`` keeps the shard's image embeddings: a ``vit_features``
    stage's sidecar, or the ``<stage>.embeddings/`` file a ``clip_score`` stage writes."""
    kinds = {entry.name: entry.record_kind for entry in layout.stages}
    if kinds.get(stage) == "vit_features":
        return layout.sidecar(stage, shard)
    return layout.sidecar(f"{stage}.embeddings", shard)


@register_stage
class ClipScoreFilter(FilterStage):
    """Drops samples whose caption-image CLIP cosine is below ``min_score``."""

    name = "clip_score"
    Config = ClipScoreConfig

    def info(self) -> StageInfo:
        return StageInfo(weights=self.config.provenance())

    def setup(self) -> None:
        import torch

        self._torch = torch
        self.clip = load_clip(self.config.clip_config())
        self.input = ClipImageInput(self.clip)

    def _encode(self, images: list[Any]) -> list[Encoded]:
        emb = self.clip.encode_images(self.input.batch(images)).embedding.cpu().numpy()
        return [{"embedding": e} for e in emb]

    def image_embeddings(self, shard: int, keys: list[str]) -> dict[str, np.ndarray | SampleFailure]:
        """Embeddings of ``keys``: reused from a matching sidecar, else encoded here."""
        stored = stored_embeddings(self.layout, shard, self.config.identity(), before=self.name)
        result: dict[str, np.ndarray | SampleFailure] = {k: stored[k] for k in keys if k in stored}
        todo = [k for k in keys if k not in result]
        if todo:
            encoded = encode_images(self.layout.samples_tar(shard), todo, self.input.prepare,
                                    self._encode, self.config.batch_size,
                                    decode_threads=self.config.decode_threads)
            result.update((k, r if isinstance(r, SampleFailure) else r["embedding"]) for k, r in encoded)
        for name, n in (("embedding.reused", len(keys) - len(todo)), ("embedding.encoded", len(todo))):
            if n:
                self.count(name, n)
        if todo:
            self._current.stats.add_file(self.store_embeddings(shard, keys, result))
        return result

    def store_embeddings(self, shard: int, keys: list[str], found: dict[str, np.ndarray | SampleFailure]):
        """Write ``<stage>.embeddings/<shard>.parquet``; return its file record."""
        failures = {k: v for k, v in found.items() if isinstance(v, SampleFailure)}
        table = pa.table({
            "key": keys,
            "status": ["failed" if k in failures else "ok" for k in keys],
            "error_kind": [failures[k].kind if k in failures else None for k in keys],
            "error_message": [failures[k].message if k in failures else None for k in keys],
            "embedding": pa.array([None if k in failures else np.asarray(found[k], "<f2").tobytes() for k in keys],
                                  TENSOR_TYPE),
        }, schema=pa.schema([*FEATURE_BASE_FIELDS, pa.field("embedding", TENSOR_TYPE)]))
        meta = {**feature_metadata({"embedding": ([self.clip.embed_dim], "float16")}),
                MODEL_META.decode(): json.dumps(self.config.provenance(), sort_keys=True)}
        return write_parquet(table, embedding_file(self.layout, self.name, shard), "vit_features", metadata=meta)

    def _text_embeddings(self, captions: list[str]) -> np.ndarray:
        n = self.config.batch_size
        parts = [self.clip.encode_texts(captions[i:i + n]).cpu().numpy() for i in range(0, len(captions), n)]
        return np.concatenate(parts) if parts else np.zeros((0, self.clip.embed_dim), np.float32)

    def decide_shard(self, shard: int, rows: list[SampleRow]) -> list[Decision]:
        if not hasattr(self, "clip"):
            self.setup()
        captions = {r["key"]: (r.get("caption") or "").strip() for r in rows}
        keys = [r["key"] for r in rows if captions[r["key"]]]
        images = self.image_embeddings(shard, keys)
        scorable = [k for k in keys if not isinstance(images[k], SampleFailure)]
        scores: dict[str, float] = {}
        if scorable:
            from vlcurate.extractors.clip import score

            torch = self._torch
            # fp16 rounding either way: reused (fp16-stored) and fresh embeddings score alike
            img = np.stack([images[k] for k in scorable]).astype(np.float16).astype(np.float32)
            txt = self._text_embeddings([captions[k] for k in scorable])
            scores = dict(zip(scorable, score(torch.from_numpy(img), torch.from_numpy(txt)).cpu().tolist()))
        decisions = []
        for r in rows:
            key = r["key"]
            if not captions[key]:
                decisions.append(Decision(False, "no_caption"))
            elif key not in scores:
                fail = images[key]
                decisions.append(Decision(False, "image_error", detail=f"{fail.kind}: {fail.message}"))
            elif scores[key] >= self.config.min_score:
                decisions.append(Decision(True, score=scores[key]))
            else:
                decisions.append(Decision(False, "low_clip_score", score=scores[key]))
        return decisions
