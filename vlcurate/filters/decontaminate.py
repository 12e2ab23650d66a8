"""Eval-set decontamination (DataComp removes training images that duplicate eval
images): drop every sample whose image is a near-copy of an item of a named eval set.

For each sample and each eval set the stage finds the nearest eval item by pHash
distance (the sample row's ``phash`` against the set's FAISS binary index) and, when
the set's ``min_similarity`` is given, by CLIP image-embedding cosine (the set's
embedding index, built with the same model as the stage names). A sample is dropped as
``eval_contamination`` when the distance is at most ``max_hash_distance`` or the
similarity at least ``min_similarity``, for any set. Every decision row records the
nearest matches in ``detail`` (JSON: per set ``{"hash": [id, distance], "embedding":
[id, similarity]}``) and the highest similarity in ``score``; the match report
``<stage>/<shard>.matches.parquet`` (record ``eval_match``) has one row per dropped
sample: the first set, in the configured order, that it matched, the eval id, the
distance and similarity to it.

The default ``max_hash_distance`` (14) is measured in
``tests/filters/test_decontaminate.py`` (transformed copies of generated eval images
against hard negatives from the same generator): precision 0.996, recall 0.960.

Image embeddings are reused from an earlier ``vit_features`` or ``clip_score`` stage of
the same model when there is one (as ``clip_score`` does), else encoded here. They are
rounded to fp16 (the sidecars' storage) either way, and the similarity is computed in
float64, so a decision does not depend on which stage encoded the image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from vlcurate.errors import UserError
from vlcurate.extractors.clip_models import PRECISIONS, ClipModelConfig, local_weights
from vlcurate.filters.base import Decision, FilterConfig, FilterStage
from vlcurate.filters.eval_index import Match, check_model, load_evalset, model_fingerprint, read_manifest
from vlcurate.io.parquet import write_parquet
from vlcurate.pipelines.samples import SampleRow
from vlcurate.pipelines.stage import StageInfo, register_stage
from vlcurate.schemas import get_schema
from vlcurate.typed import FieldError, bounded, check_bounds, local_path

REASON = "eval_contamination"
MATCH = "eval_match"


@dataclass(frozen=True)
class EvalSetSettings:
    """One eval set to decontaminate against, with its thresholds."""

    name: str
    max_hash_distance: int | None = bounded(14, ge=0, le=63)  # None: no hash path for this set
    min_similarity: float | None = bounded(None, ge=-1.0, le=1.0)  # None: no embedding path

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.max_hash_distance is None and self.min_similarity is None:
            raise FieldError("max_hash_distance", f"eval set {self.name}: neither max_hash_distance nor "
                                                  "min_similarity is set, so nothing could match")


@dataclass(frozen=True)
class DecontaminateConfig(FilterConfig):
    root: str = local_path()  # the root holding _evalsets/ (usually the datasets root)
    evalsets: tuple[EvalSetSettings, ...] = ()
    model: str | None = None  # the CLIP model of the embedding path (as the eval sets were built)
    weights: str | None = local_path(None, split=local_weights)
    quick_gelu: bool | None = None
    device: str = "auto"
    precision: str = "fp16"
    seed: int = 0
    batch_size: int = bounded(64, ge=1)
    decode_threads: int = bounded(0, ge=0)

    def __post_init__(self) -> None:
        check_bounds(self)
        if not self.evalsets:
            raise FieldError("evalsets", "name at least one eval set")
        if self.precision not in PRECISIONS:
            raise FieldError("precision", f"{self.precision!r} is not one of {', '.join(PRECISIONS)}")
        names = [e.name for e in self.evalsets]
        if len(set(names)) != len(names):
            raise FieldError("evalsets", f"an eval set is named twice: {names}")
        fingerprint = model_fingerprint(self.clip_model()) if self.model else None
        for s in self.evalsets:
            if s.min_similarity is not None and self.model is None:
                raise FieldError("model", f"eval set {s.name} has min_similarity, which needs the CLIP model "
                                          "its index was built with")
            try:
                manifest = read_manifest(self.root, s.name)
                if s.min_similarity is not None:
                    check_model(s.name, manifest, fingerprint)
            except UserError as e:
                raise FieldError("evalsets", str(e)) from None

    def clip_model(self) -> ClipModelConfig:
        if self.model is None:
            raise ValueError("no model configured")
        return ClipModelConfig(model=self.model, weights=self.weights, quick_gelu=self.quick_gelu,
                               device=self.device, precision=self.precision, seed=self.seed)

    @property
    def uses_embeddings(self) -> bool:
        return any(s.min_similarity is not None for s in self.evalsets)


@dataclass(frozen=True)
class SampleMatches:
    """One sample's nearest items per eval set, and the first set it matched."""

    hash: dict[str, Match | None]
    embedding: dict[str, Match | None]
    matched: str | None  # the eval set that drops it

    def detail(self) -> str:
        out: dict[str, Any] = {}
        for name in dict.fromkeys([*self.hash, *self.embedding]):
            entry = {}
            if (h := self.hash.get(name)) is not None:
                entry["hash"] = [h.eval_id, int(h.value)]
            if (e := self.embedding.get(name)) is not None:
                entry["embedding"] = [e.eval_id, round(e.value, 6)]
            out[name] = entry
        return json.dumps(out, separators=(",", ":"))


def match_samples(settings: tuple[EvalSetSettings, ...], indexes: dict[str, Any], hashes: list[str | None],
                  embeddings: np.ndarray | None) -> list[SampleMatches]:
    """The plain-Python core: nearest items per set for each sample (``embeddings``:
    unit rows aligned with ``hashes``, NaN rows for samples without one), and which
    set, if any, drops it."""
    n = len(hashes)
    by_hash = {s.name: indexes[s.name].nearest_hash(hashes) if s.max_hash_distance is not None else [None] * n
               for s in settings}
    by_emb: dict[str, list[Match | None]] = {}
    for s in settings:
        found: list[Match | None] = [None] * n
        if s.min_similarity is not None and embeddings is not None:
            ok = [i for i in range(n) if not np.isnan(embeddings[i, 0])]
            for i, m in zip(ok, indexes[s.name].nearest_embedding(embeddings[ok])):
                found[i] = m
        by_emb[s.name] = found
    out = []
    for i in range(n):
        matched = None
        for s in settings:
            h, e = by_hash[s.name][i], by_emb[s.name][i]
            if (h is not None and h.value <= s.max_hash_distance) or \
                    (e is not None and s.min_similarity is not None and e.value >= s.min_similarity):
                matched = s.name
                break
        out.append(SampleMatches({s.name: by_hash[s.name][i] for s in settings if s.max_hash_distance is not None},
                                 {s.name: by_emb[s.name][i] for s in settings if s.min_similarity is not None},
                                 matched))
    return out


def match_row(key: str, stage: str, m: SampleMatches, settings: dict[str, EvalSetSettings]) -> dict[str, Any]:
    """The match report's row for a dropped sample: the item of the set that matched
    (by hash when the hash matched, else by embedding), its distance and similarity."""
    s = settings[m.matched]
    h, e = m.hash.get(m.matched), m.embedding.get(m.matched)
    by_hash = h is not None and s.max_hash_distance is not None and h.value <= s.max_hash_distance
    by_emb = e is not None and s.min_similarity is not None and e.value >= s.min_similarity
    eval_id = h.eval_id if by_hash else e.eval_id
    return {"key": key, "stage": stage, "evalset": m.matched, "eval_id": eval_id,
            "hash_distance": int(h.value) if h is not None and h.eval_id == eval_id else None,
            "similarity": e.value if e is not None and e.eval_id == eval_id else None,
            "matched_by": "hash+embedding" if by_hash and by_emb and h.eval_id == e.eval_id
            else "hash" if by_hash else "embedding"}


@register_stage
class Decontaminate(FilterStage):
    """Drops samples that are near-copies of eval-set items (pHash and/or CLIP)."""

    name = "decontaminate"
    Config = DecontaminateConfig

    def info(self) -> StageInfo:
        import faiss

        sets = {}
        for s in self.config.evalsets:
            m = read_manifest(self.config.root, s.name)
            sets[s.name] = {"created_at": m.get("created_at"), "counts": m.get("counts"),
                            "files": {f["path"]: f["sha256"] for f in m["files"]},
                            "embedding_index": m.get("embedding_index")}
        weights = self.config.clip_model().provenance() if self.config.uses_embeddings else None
        return StageInfo(weights=weights, libraries={"faiss": faiss.__version__, "evalsets": sets})

    def setup(self) -> None:
        # once per process: the indexes are shared by every stage instance and thread here
        self.indexes = {s.name: load_evalset(self.config.root, s.name) for s in self.config.evalsets}
        if self.config.uses_embeddings:
            fingerprint = model_fingerprint(self.config.clip_model())
            for s in self.config.evalsets:
                if s.min_similarity is not None:
                    check_model(s.name, self.indexes[s.name].manifest, fingerprint)
            from vlcurate.extractors.clip_models import ClipImageInput, load_clip

            self.clip = load_clip(self.config.clip_model().clip_config())
            self.input = ClipImageInput(self.clip)

    def _encode(self, images: list[Any]) -> list[dict]:
        emb = self.clip.encode_images(self.input.batch(images)).embedding.cpu().numpy()
        return [{"embedding": e} for e in emb]

    def embeddings(self, shard: int, keys: list[str]) -> np.ndarray:
        """Unit fp16-rounded image embeddings of ``keys`` (NaN rows where there is none),
        reused from an earlier stage of the same model where stored."""
        from vlcurate.extractors.encoding import SampleFailure, encode_images
        from vlcurate.filters.clip_score import stored_embeddings

        model = self.config.clip_model()
        stored = stored_embeddings(self.layout, shard, model.identity(), before=self.name)
        todo = [k for k in keys if k not in stored]
        found: dict[str, Any] = {k: stored[k] for k in keys if k in stored}
        if todo:
            found.update(encode_images(self.layout.samples_tar(shard), todo, self.input.prepare, self._encode,
                                       self.config.batch_size, decode_threads=self.config.decode_threads))
        for name, n in (("embedding.reused", len(keys) - len(todo)), ("embedding.encoded", len(todo))):
            if n:
                self.count(name, n)
        dim = self.clip.embed_dim
        out = np.full((len(keys), dim), np.nan)
        for i, k in enumerate(keys):
            value = found.get(k)
            if value is None or isinstance(value, SampleFailure):
                continue
            v = np.asarray(value["embedding"] if isinstance(value, dict) else value, np.float16).astype(np.float64)
            out[i] = v / max(np.linalg.norm(v), 1e-12)
        failed = int(np.isnan(out[:, 0]).sum()) if len(keys) else 0
        if failed:
            self.count("decontaminate.no_embedding", failed)
        return out

    def decide_shard(self, shard: int, rows: list[SampleRow]) -> list[Decision]:
        if not hasattr(self, "indexes"):
            self.setup()
        keys = [r["key"] for r in rows]
        hashes = [r.get("phash") for r in rows]
        if unhashed := sum(h is None for h in hashes):
            self.count("decontaminate.no_phash", unhashed)
        emb = self.embeddings(shard, keys) if self.config.uses_embeddings else None
        matches = match_samples(self.config.evalsets, self.indexes, hashes, emb)
        settings = {s.name: s for s in self.config.evalsets}
        decisions, report = [], []
        for key, m in zip(keys, matches):
            sims = [e.value for e in m.embedding.values() if e is not None]
            score = max(sims) if sims else None
            if m.matched is None:
                decisions.append(Decision(True, score=score, detail=m.detail()))
            else:
                decisions.append(Decision(False, REASON, score=score, detail=m.detail()))
                report.append(match_row(key, self.name, m, settings))
                self.count(f"{REASON}.{m.matched}")
        table = pa.Table.from_pylist(report, schema=get_schema(MATCH).schema)
        self._current.stats.add_file(write_parquet(table, self.layout.sidecar(self.name, shard, "matches.parquet"),
                                                   MATCH))
        return decisions
