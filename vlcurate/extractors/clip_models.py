"""The open_clip models the stages share: which model to run (:class:`ClipModelConfig`,
part of a stage's recipe block), one loaded model per process and config
(:func:`load_clip`), and its image input split where it leaves PIL
(:class:`ClipImageInput`). ``vit_features``, ``clip_score`` and later stages that
reuse CLIP take them from here.

This module imports no torch/open_clip at import time (recipes are parsed on
machines and in processes that never run a model); loading does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlcurate.io import storage
from vlcurate.typed import local_path

if TYPE_CHECKING:
    from vlcurate.extractors.clip import ClipConfig, ClipModel

PRECISIONS = ("fp32", "fp16", "bf16")
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
    if weights.startswith("local-dir:") or storage.is_dir(os.path.expanduser(weights)):
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


WEIGHTS_CARD = "weights_card.json"  # beside weights files: what they were trained on, checksums


@lru_cache(maxsize=64)
def _sha256(path: str, size: int) -> str:  # size: a replaced file is hashed again
    return storage.sha256(path)


def weights_file_info(weights: str | None) -> dict[str, Any]:
    """For a weights file: its SHA-256 (the manifest's checksum of what ran) and, when a
    ``weights_card.json`` beside it lists the file, the card's ``label`` and
    ``trained_on`` (the shipped demo-domain weights say so; so can anyone's)."""
    if weights is None or weights_source(weights) != "file":
        return {}
    path = weights if storage.is_remote(weights) else os.path.expanduser(weights)
    if not storage.exists(path):
        return {}  # the model load reports it
    return {"weights_sha256": _sha256(path, storage.size(path)), **card_label(path)}


def card_label(path: str) -> dict[str, Any]:
    """The ``label`` and ``trained_on`` of the ``weights_card.json`` beside ``path`` (a
    weights file or directory) when the card lists it; else nothing."""
    card_loc = storage.join(storage.parent(path), WEIGHTS_CARD)
    if not storage.exists(card_loc):
        return {}
    card = json.loads(storage.read_bytes(card_loc))
    if any(isinstance(e, dict) and e.get("path") == storage.basename(path) for e in card.values()):
        return {k: card[k] for k in ("label", "trained_on") if k in card}
    return {}


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


