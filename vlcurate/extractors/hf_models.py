"""transformers image-text models for CapFilt: which model a recipe names, and loading it.

A model comes from a local directory (what ``save_pretrained`` wrote: config,
processor files and weights), from the Hugging Face hub (``hf-hub:org/name``; needs
network or a warm HF cache), or, with ``weights: null``, from the config and processor
files of ``model`` (a directory, or a configuration shipped here such as
``vlc-tiny-blip``) with random weights seeded by ``seed``; the manifest then says
``random_weights``. A weights directory or hub id defines its own architecture, so
``model`` is only a label then.

The captioner loads through ``AutoModelForImageTextToText`` (which maps BLIP configs to
``BlipForConditionalGeneration``; transformers 5 has no ``AutoModelForVision2Seq``, its
models moved there), the ITM filter through ``BlipForImageTextRetrieval``. One model
per process and config (:func:`load_hf_model`).

Our own architecture ``vlc-conv-encoder`` (:mod:`vlcurate.extractors.conv_encoder`, the
encoder of the shipped demo-domain captioner, a ``VisionEncoderDecoderModel``) is
registered with ``AutoConfig``/``AutoModel`` before anything loads, so such a directory
loads by its ``config.json`` like a hub model, without remote code.

This module imports no torch/transformers at import time (recipes are parsed where no
model runs); the loaders do.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vlcurate.errors import UserError
from vlcurate.io import storage
from vlcurate.typed import local_path

HUB_PREFIX = "hf-hub:"
SHIPPED_DIR = Path(__file__).parent / "model_configs"
SHIPPED = ("vlc-tiny-blip",)  # config + processor files, no weights: tests and the demo
PRECISIONS = ("fp32", "fp16", "bf16")
ROLES = ("captioner", "itm")


def _local_dir(value: str) -> tuple[str, str] | None:
    """``("", path)`` when ``weights`` names a local directory (not a hub id or a shipped name)."""
    return None if value.startswith(HUB_PREFIX) or value in SHIPPED else ("", value)


def _model_dir(value: str) -> tuple[str, str] | None:
    """``("", path)`` when ``model`` is a path (has a ``/`` or starts with ``.``); a bare
    name is a shipped config or, next to ``weights``, a label."""
    return _local_dir(value) if "/" in value or value.startswith(".") else None


@dataclass(frozen=True)
class HfModelConfig:
    """Which transformers model to run.

    ``model``: with ``weights: null``, where the config and processor come from (a
    shipped name or a local directory), else a label. ``weights``: a local directory
    written by ``save_pretrained`` or ``hf-hub:org/name``. ``device: auto`` picks CUDA
    when available; ``precision`` is the CUDA autocast dtype (CPU computes in fp32).
    """

    model: str = local_path("vlc-tiny-blip", split=_model_dir)
    weights: str | None = local_path(None, split=_local_dir)
    device: str = "auto"
    precision: str = "fp16"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")

    def source(self) -> str:
        """Where config + processor (+ weights unless random) are read: a path or hub id."""
        name = self.model if self.weights is None else self.weights
        if name.startswith(HUB_PREFIX):
            return name[len(HUB_PREFIX):]
        return str(SHIPPED_DIR / name) if name in SHIPPED else name

    def identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {"model": self.model, "weights": self.weights}
        if self.weights is None:
            ident["seed"] = self.seed  # random init: the seed is the weights
        return ident

    def provenance(self) -> dict[str, Any]:
        """The manifest's ``weights`` entry (``random`` drives ``random_weights``)."""
        kind = "random" if self.weights is None else "hf-hub" if self.weights.startswith(HUB_PREFIX) else "local-dir"
        label = {}
        if kind == "local-dir":  # a weights_card.json beside the directory may say what it is
            from vlcurate.extractors.clip_models import card_label

            label = card_label(os.path.expanduser(str(self.weights).rstrip("/")))
        return {**self.identity(), "source": kind, "random": self.weights is None, "seed": self.seed,
                "precision": self.precision, **label}


@dataclass
class HfModel:
    """A loaded model in eval mode with its processor and device."""

    model: Any
    processor: Any
    device: Any
    config: HfModelConfig

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        if self.device.type == "cuda" and self.config.precision != "fp32":
            return torch.autocast("cuda", dtype={"fp16": torch.float16, "bf16": torch.bfloat16}[self.config.precision])
        return contextlib.nullcontext()  # CPU: fp32 (CPU autocast is slow and lossy)


def _model_class(role: str) -> Any:
    import transformers

    return transformers.AutoModelForImageTextToText if role == "captioner" else transformers.BlipForImageTextRetrieval


def _load(config: HfModelConfig, role: str) -> HfModel:
    import torch
    import transformers

    from vlcurate.extractors.conv_encoder import register

    register()  # our own encoder architecture (the demo-domain captioner's), by config.json alone
    transformers.utils.logging.disable_progress_bar()  # no third-party bars in our output
    source = config.source()
    is_local = config.weights is None or not config.weights.startswith(HUB_PREFIX)
    if is_local and not storage.exists(storage.join(source, "config.json")):
        what = "model" if config.weights is None else "weights"
        raise UserError(f"{what} {source}: not a directory with a config.json (a local save_pretrained "
                        f"directory, hf-hub:org/name, or one of {', '.join(SHIPPED)})")
    cls = _model_class(role)
    try:
        if is_local:
            source = str(storage.local_copy(source))  # transformers reads a local directory
        processor = transformers.AutoProcessor.from_pretrained(source)
        if config.weights is None:
            hf_config = transformers.AutoConfig.from_pretrained(source)
            # a forked, seeded RNG: random init is reproducible and the caller's RNG untouched
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                model = cls.from_config(hf_config) if hasattr(cls, "from_config") else cls(hf_config)
        else:
            model = cls.from_pretrained(source)
    except (OSError, ValueError, KeyError) as err:  # missing files, unknown architectures, offline hub
        brief = " ".join(str(err).split("\n")[:1]).strip()[:300] or type(err).__name__
        raise UserError(f"cannot load {role} {config.model!r} from {source}: {brief}") from err
    device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available()
                          else "cpu" if config.device == "auto" else config.device)
    return HfModel(model.to(device).eval(), processor, device, config)


_MODELS: dict[tuple[HfModelConfig, str], HfModel] = {}
_MODELS_LOCK = threading.Lock()


def load_hf_model(config: HfModelConfig, role: Literal["captioner", "itm"]) -> HfModel:
    """One model per process, config and role (a captioner and an ITM filter of the same
    directory are two models: different heads)."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {ROLES}")
    with _MODELS_LOCK:
        if (config, role) not in _MODELS:
            _MODELS[(config, role)] = _load(config, role)
        return _MODELS[(config, role)]


def pixel_values(processor: Any, image: Any) -> Any:
    """One image -> the model's ``[3, H, W]`` float32 input as numpy (run on decode threads)."""
    return processor.image_processor(images=image, return_tensors="np")["pixel_values"][0]
