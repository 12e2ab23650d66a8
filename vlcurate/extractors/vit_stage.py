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

import importlib.util
import json
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from vlcurate.extractors.encoding import Encoded, SampleFailure
from vlcurate.extractors.stage import FeatureStage
from vlcurate.pipelines.stage import StageInfo, register_stage
from vlcurate.schemas.features import MODEL_META, TENSOR_TYPE, feature_metadata
from vlcurate.typed import local_path

if TYPE_CHECKING:
    from vlcurate.extractors.clip import ClipConfig, ClipModel

PRECISIONS = ("fp32", "fp16", "bf16")
_STORAGE_ARROW = {"fp16": "float16", "fp32": "float32"}
_TINY_CONFIGS = Path(__file__).parent / "model_configs"


def _known_models() -> set[str] | None:
    """open_clip's architecture names, read from its config files without importing
    it (that takes seconds); None when open_clip is not installed here."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    configs = Path(list(spec.submodule_search_locations)[0]) / "model_configs"
    return {p.stem for p in configs.glob("*.json")} | {p.stem for p in _TINY_CONFIGS.glob("*.json")}


def weights_source(weights: str | None) -> str:
    """What kind of weights a config names, decided without loading anything."""
    if weights is None:
        return "random"
    if weights.startswith("hf-hub:"):
        return "hf-hub"
    if weights.startswith("local-dir:") or Path(weights).expanduser().is_dir():
        return "local-dir"
    if "/" in weights or Path(weights).suffix:
        return "file"
    return "pretrained-tag"


def local_weights(weights: str) -> tuple[str, str] | None:
    """``(prefix, path)`` when ``weights`` names a local file or directory (a recipe
    reads a relative one relative to itself), None for a hub id or pretrained tag."""
    if weights.startswith("local-dir:"):
        return "local-dir:", weights[len("local-dir:"):]
    return ("", weights) if weights_source(weights) in ("file", "local-dir") else None


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size/mtime: a changed file is hashed again
    from vlcurate.io import storage

    return storage.sha256(path)


def weights_file_info(weights: str | None) -> dict[str, Any]:
    """For a local weights file: its SHA-256 (the manifest's checksum of what ran) and,
    for the package's demo-domain weights, their label; else nothing."""
    if weights is None or weights_source(weights) != "file":
        return {}
    path = Path(weights).expanduser()
    if not path.is_file():
        return {}  # the model load reports it
    from vlcurate.demo.shipped import label_for

    stat = path.stat()
    return {"weights_sha256": _sha256(str(path), stat.st_size, stat.st_mtime_ns), **(label_for(path) or {})}


@dataclass(frozen=True)
class ClipModelConfig:
    """Which open_clip model to run; fields as in :class:`~vlcurate.extractors.clip.ClipConfig`.

    ``weights: null`` means random init (seeded by ``seed``; the manifest says so).
    ``device: auto`` picks CUDA when available; ``precision`` is the CUDA autocast
    dtype (CPU always computes in fp32).
    """

    model: str
    weights: str | None = local_path(None, split=local_weights)
    quick_gelu: bool | None = None
    device: str = "auto"
    precision: str = "fp16"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        # Caught here, while the recipe is parsed, rather than in a worker mid-build. A
        # weights directory defines its own architecture, so the name is a label then.
        known = _known_models()
        if known is not None and self.model not in known and weights_source(self.weights) not in ("local-dir", "hf-hub"):
            raise ValueError(f"unknown open_clip model {self.model!r} (e.g. ViT-B-32, ViT-L-14, EVA01-g-14, vlc-tiny-vit)")

    def clip_config(self, layer: int = -2, include_cls: bool = True) -> "ClipConfig":
        from vlcurate.extractors.clip import ClipConfig

        return ClipConfig(model=self.model, weights=self.weights, layer=layer, include_cls=include_cls,
                          device=self.device, precision=self.precision, quick_gelu=self.quick_gelu,
                          seed=self.seed)

    def identity(self) -> dict[str, Any]:
        """What decides the image embedding: equal identities give equal embeddings
        (up to precision), so a later stage may reuse stored ones."""
        ident = {"model": self.model, "weights": self.weights, "quick_gelu": self.quick_gelu}
        if self.weights is None:
            ident["seed"] = self.seed  # random init: the seed is the weights
        return ident

    def provenance(self) -> dict[str, Any]:
        """The manifest's ``weights`` entry (``random`` drives ``random_weights``)."""
        return {**self.identity(), "source": weights_source(self.weights), "random": self.weights is None,
                "seed": self.seed, "precision": self.precision, **weights_file_info(self.weights)}


@dataclass(frozen=True)
class VitFeaturesConfig(ClipModelConfig):
    layer: int = -2  # block whose outputs are stored; -2 = penultimate (BLIP-2)
    include_cls: bool = True
    batch_size: int = 32
    storage: Literal["fp16", "fp32"] = "fp16"
    decode_threads: int = 0  # threads decoding/resizing images; 0 = one per core, at most 8
    # processes decoding/resizing instead of threads; null = auto (on CUDA with >= 4 cores:
    # half the cores, at most 8; else 0 = threads)
    decode_processes: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1 or self.decode_threads < 0 or (self.decode_processes or 0) < 0:
            raise ValueError(f"batch_size must be >= 1 and decode_threads, decode_processes >= 0, got "
                             f"{self.batch_size}, {self.decode_threads} and {self.decode_processes}")


_MODELS: dict[Any, "ClipModel"] = {}
_MODELS_LOCK = threading.Lock()


def load_clip(config: "ClipConfig") -> "ClipModel":
    """One :class:`ClipModel` per process and config, shared by every stage that asks
    for it (``vit_features`` and ``clip_score`` on the same model load it once)."""
    with _MODELS_LOCK:
        if config not in _MODELS:
            from vlcurate.extractors.clip import ClipModel

            _MODELS[config] = ClipModel(config)
        return _MODELS[config]


class PilSteps:
    """A picklable per-image transform: ``steps`` in order, then (``to_array``) the
    ``[H, W, 3]`` uint8 array. Decode processes receive it pickled."""

    def __init__(self, steps: list[Any], to_array: bool):
        self.steps, self.to_array = steps, to_array

    def __call__(self, image: Any) -> Any:
        for step in self.steps:
            image = step(image)
        if not self.to_array:
            return image
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 image after resizing, got {arr.dtype} {arr.shape}")
        return arr


class ClipImageInput:
    """The model's eval transform, split where it leaves PIL.

    ``prepare`` (a picklable :class:`PilSteps`, run where images are decoded) runs the PIL steps (resize, crop, RGB) and
    returns the ``[H, W, 3]`` uint8 array; ``batch`` (in ``encode_batch``) turns a list
    of them into the model's input with one vectorised scale-and-normalise over the
    whole batch, on the model's device. Why: open_clip's ``ToTensor``/``Normalize`` on
    one image are torch ops that start torch's intra-op threads on the decode thread,
    where they fight the forward pass for the cores (measured: several times slower
    than the PIL work itself on a 2-core machine); uint8 also crosses to a GPU at a
    quarter of the bytes. The result equals ``torch.stack([preprocess(im), ...])``
    exactly (same float32 operations). A transform of another shape is run whole
    where images are decoded instead.
    """

    def __init__(self, clip: "ClipModel") -> None:
        import torch

        self._torch, self._clip = torch, clip
        steps = list(getattr(clip.preprocess, "transforms", []))
        names = [type(s).__name__ for s in steps]
        self.split = len(steps) >= 2 and names[-2] in ("ToTensor", "MaybeToTensor") and names[-1] == "Normalize"
        if self.split:
            norm = steps[-1]
            self._mean = torch.as_tensor(norm.mean, dtype=torch.float32, device=clip.device).view(1, -1, 1, 1)
            self._std = torch.as_tensor(norm.std, dtype=torch.float32, device=clip.device).view(1, -1, 1, 1)
        self.prepare = PilSteps(steps[:-2] if self.split else [clip.preprocess], to_array=self.split)

    def batch(self, items: list[Any]) -> Any:
        torch = self._torch
        if not self.split:
            return torch.stack(items)
        x = torch.from_numpy(np.stack(items))
        device = self._clip.device
        if device.type == "cuda":
            x = x.pin_memory()  # lets the copy below run asynchronously
        x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous()
        return x.float().div(255).sub(self._mean).div(self._std)


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
