"""The ``vit_features`` stage: BLIP-2-style ViT tokens + the CLIP image embedding.

One forward pass of a frozen open_clip image tower per batch
(:meth:`vlcurate.extractors.clip.ClipModel.encode_images`) gives both the tokens of
block ``layer`` (default ``-2``, the penultimate; CLS first when ``include_cls``) and
the normalised CLIP embedding. They go to ``vit_features/<shard>.parquet`` (record
kind ``vit_features``, layout in :mod:`vlcurate.schemas.features`) as ``tokens``
``[T, D]`` and ``embedding`` ``[E]`` (tensor columns: each row one array's bytes),
fp16 by default (``storage: fp32`` to keep full precision; a sample whose values
overflow fp16 fails as ``non_finite``).

Recipe block (every key but ``model`` optional)::

    - vit_features: {model: ViT-B-32, weights: /models/vit-b-32.safetensors,
                     layer: -2, include_cls: true, batch_size: 32, storage: fp16,
                     device: auto, precision: fp16, decode_threads: 0,
                     decode_processes: null}   # null: processes on CUDA, threads on a CPU

This module imports no torch/open_clip at import time (recipes are parsed on
machines and in processes that never run a model); ``load`` does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from vlcurate.extractors.clip_models import ClipImageInput, ClipModelConfig, PilSteps, load_clip
from vlcurate.extractors.encoding import Encoded, SampleFailure
from vlcurate.extractors.stage import FeatureStage
from vlcurate.pipelines.stage import StageInfo, register_stage
from vlcurate.schemas.features import MODEL_META, TENSOR_TYPE, feature_metadata
from vlcurate.typed import bounded, check_bounds

_STORAGE_ARROW = {"fp16": "float16", "fp32": "float32"}

__all__ = ["ClipModelConfig", "VitFeatureStage", "VitFeaturesConfig", "load_clip"]


@dataclass(frozen=True)
class VitFeaturesConfig(ClipModelConfig):
    layer: int = -2  # block whose outputs are stored; -2 = penultimate (BLIP-2)
    include_cls: bool = True
    batch_size: int = bounded(32, ge=1)
    storage: Literal["fp16", "fp32"] = "fp16"
    decode_threads: int = bounded(0, ge=0)  # threads decoding/resizing images; 0 = one per core, at most 8
    # processes decoding/resizing instead of threads; null = auto (on CUDA with >= 4 cores:
    # half the cores, at most 8; else 0 = threads)
    decode_processes: int | None = bounded(None, ge=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bounds(self)


@register_stage
class VitFeatureStage(FeatureStage):
    """Stores ``tokens`` ``[T, D]`` and ``embedding`` ``[E]`` for every alive sample."""

    name = "vit_features"
    Config = VitFeaturesConfig
    record_kind = "vit_features"

    def info(self) -> StageInfo:
        return StageInfo(weights=self.config.provenance())

    def load(self) -> None:
        import torch

        self._torch = torch
        cfg = self.config
        self.clip = load_clip(cfg.clip_config(cfg.layer, cfg.include_cls))
        self.input = ClipImageInput(self.clip)

    def prepare(self, image: Any) -> Any:
        return self.input.prepare(image)

    def image_prepare(self) -> PilSteps:
        return self.input.prepare

    def decode_processes(self) -> int:
        if self.config.decode_processes is not None:
            return self.config.decode_processes
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return min(8, cores // 2) if self.clip.device.type == "cuda" and cores >= 4 else 0

    def _declared(self) -> dict[str, tuple[list[int], str]]:
        dtype = _STORAGE_ARROW[self.config.storage]
        return {"tokens": (list(self.clip.token_shape), dtype), "embedding": ([self.clip.embed_dim], dtype)}

    def feature_fields(self) -> list[pa.Field]:
        return [pa.field(name, TENSOR_TYPE) for name in self._declared()]

    def sidecar_metadata(self) -> dict[str, str]:
        cfg = self.config
        model = {**cfg.provenance(), "layer": cfg.layer, "layer_index": self.clip.layer_index,
                 "include_cls": cfg.include_cls, "storage": cfg.storage}
        return {**feature_metadata(self._declared()), MODEL_META.decode(): json.dumps(model, sort_keys=True)}

    def encode_batch(self, images: list[Any]) -> list[Encoded]:
        return self.finish_batch(self.start_batch(images))

    def start_batch(self, images: list[Any]) -> "_Launched":
        """Queue the forward pass, the storage cast and the copies to the host; on a GPU
        this returns before the device is done (``finish_batch`` waits for it)."""
        torch = self._torch
        feats = self.clip.encode_images(self.input.batch(images))
        dtype = {"fp16": torch.float16, "fp32": torch.float32}[self.config.storage]
        # Cast on the device so only the storage-sized arrays cross to the host; the
        # per-image peak (in fp32) explains a non-finite sample without keeping feats.
        device = {"tokens": feats.tokens.to(dtype), "embedding": feats.embedding.to(dtype),
                  "peak": feats.tokens.detach().abs().flatten(1).amax(1).float()}
        if self.clip.device.type != "cuda":
            return _Launched({k: v.numpy() for k, v in device.items()}, None)
        host = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in device.items()}
        for k, v in device.items():
            host[k].copy_(v, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return _Launched({k: v.numpy() for k, v in host.items()}, done)

    def finish_batch(self, started: "_Launched") -> list[Encoded]:
        if started.done is not None:
            started.done.synchronize()  # releases the GIL while the device finishes
        tokens, emb, peak = started.arrays["tokens"], started.arrays["embedding"], started.arrays["peak"]
        finite = _finite_rows(tokens) & _finite_rows(emb)
        out: list[Encoded] = []
        for i, ok in enumerate(finite):
            if ok:
                out.append({"tokens": tokens[i], "embedding": emb[i]})
            else:
                hint = "; use storage: fp32" if np.isfinite(peak[i]) else ""
                out.append(SampleFailure("non_finite", f"features not finite in {self.config.storage} "
                                         f"(max |token| {peak[i]:g} in fp32){hint}"))
        return out


@dataclass
class _Launched:
    """A batch in flight: host arrays that are complete once ``done`` (a CUDA event) is."""

    arrays: dict[str, np.ndarray]
    done: Any


def _finite_rows(values: np.ndarray) -> np.ndarray:
    """Per row (first axis): are all values finite? On float16, from the exponent bits
    (all ones = inf/nan), several times faster than ``np.isfinite``."""
    flat = values.reshape(len(values), -1)
    if flat.dtype == np.float16:
        return ~((flat.view(np.uint16) & 0x7C00) == 0x7C00).any(1)
    return np.isfinite(flat).all(1)
