"""CLIP image/text embeddings and BLIP-2-style ViT tokens from one open_clip model.

``ClipModel.encode_images`` runs the image tower ONCE per batch and returns both

* ``tokens``: the raw output of transformer block ``layer`` (default ``-2``, the
  penultimate block, as BLIP-2 consumed EVA ViT-g / CLIP ViT-L), taken *before* the
  tower's final norm, CLS/prefix tokens first when ``include_cls``;
* ``embedding``: the L2-normalised pooled CLIP image embedding (``encode_image``).

Single pass: open_clip's ``visual.forward_intermediates(..., intermediates_only=False)``
keeps running the remaining blocks after collecting the requested intermediate and then
applies the tower's own pooling/norm/projection, so the intermediate tokens and the
final embedding come out of the same forward (``stop_early`` stays False on purpose).
Both tower kinds implement it: open_clip ``VisionTransformer`` (ViT-B-32, ViT-L-14)
and ``TimmModel`` (EVA01-g-14 = timm ``eva_giant_patch14_224``, whose
``forward_intermediates`` takes the same arguments through open_clip's adapter).
A timm convolutional trunk behind ``TimmModel`` (``vlc-tiny-resnet``: timm
``test_resnet``) counts its feature stages (stem, then each stage) as the blocks; its
tokens are the ``H*W`` positions of that stage's feature map, and it has no CLS or
other prefix token, so ``include_cls`` adds none. Other towers (ModifiedResNet, ...)
expose no intermediates and are rejected at load.

Scores are plain cosine similarities in [-1, 1] (LAION's convention, e.g. keep
>= 0.28 for ViT-B/32). Papers that print CLIP scores x100 (CLIPScore-style tables)
are on the same scale multiplied by 100.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vlcurate.errors import UserError
from vlcurate.io import storage
from vlcurate.extractors.devices import resolve_device

try:  # open_clip is only needed to build models; keep import errors for load time.
    import open_clip
except ImportError:  # pragma: no cover - exercised only without the dependency
    open_clip = None

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY_MODELS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STORAGE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
_SCHEMAS = ("local-dir:", "hf-hub:")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz")


def register_model_configs() -> None:
    """Make our tiny architectures (``vlc-tiny-*``) known to open_clip; idempotent."""
    if open_clip is None:
        return
    if not set(TINY_MODELS) <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)


register_model_configs()


@dataclass(frozen=True)
class ClipConfig:
    """Which open_clip model to load and which tokens to extract.

    ``weights``: ``None`` (random init, reported by ``ClipModel.weights_are_random``),
    a local ``.safetensors/.bin/.pt/.pth`` file, a local directory or
    ``local-dir:/dir`` holding ``open_clip_config.json`` + checkpoint (the directory's
    config then defines the architecture and ``model`` is only a label), an open_clip
    pretrained tag such as ``"laion2b_s34b_b79k"`` or ``hf-hub:org/repo`` (both need
    network or a warm Hugging Face cache).
    ``layer``: index into the tower's blocks (``-2`` = penultimate, BLIP-2).
    ``quick_gelu``: ``None`` = take it from the pretrained tag, else the model config;
    set ``True`` for OpenAI weights loaded from a file.
    ``precision``: autocast dtype on CUDA; CPU always computes in fp32.
    """

    model: str
    weights: str | None = None
    layer: int = -2
    include_cls: bool = True
    device: str = "auto"
    precision: str = "fp16"
    quick_gelu: bool | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"ClipConfig.precision: {self.precision!r} is not one of {sorted(PRECISIONS)}")
        if not self.model:
            raise UserError("ClipConfig.model: empty model name")


@dataclass(frozen=True)
class ImageFeatures:
    """Outputs of one image-tower pass, float32 on the model's device.

    ``tokens``: ``[B, T, D]`` block outputs (``T = prefix + patches`` with CLS,
    else patches only); ``embedding``: ``[B, E]`` L2-normalised CLIP image embedding.
    """

    tokens: torch.Tensor
    embedding: torch.Tensor


def _resolve_source(config: ClipConfig) -> tuple[str, str | None, bool | None]:
    """Map ``config`` to open_clip's ``(model_name, pretrained, quick_gelu)``.

    Every failure a user can fix raises a one-line ``UserError`` naming the input,
    before anything is built or downloaded.
    """
    weights, quick_gelu = config.weights, config.quick_gelu
    if weights is None:
        _check_model_name(config.model)
        return config.model, None, quick_gelu
    if weights.startswith(_SCHEMAS[1]):
        # open_clip goes on with random weights (a log line) when only the hub config is
        # reachable; fetching the checkpoint first makes that case an error instead.
        try:
            open_clip.pretrained.download_pretrained_from_hf(weights[len(_SCHEMAS[1]):])
        except Exception as err:  # hub/network errors come in many types
            raise UserError(f"cannot fetch weights {weights!r} (needs network or a warm HF cache): "
                            f"{type(err).__name__}") from err
        return weights, None, quick_gelu
    raw = weights[len(_SCHEMAS[0]):] if weights.startswith(_SCHEMAS[0]) else weights
    path = raw if storage.is_remote(raw) else os.path.expanduser(raw)
    is_pathlike = weights.startswith(_SCHEMAS[0]) or os.sep in weights or Path(path).suffix in _WEIGHT_SUFFIXES
    if storage.is_dir(path):
        names = [f.path for f in storage.list_files(path)]
        if "open_clip_config.json" not in names:
            raise UserError(f"weights directory {path} has no open_clip_config.json")
        # open_clip only warns when the directory holds no checkpoint; we refuse, so
        # a typo can never silently produce random weights.
        if not any(n.endswith(s) for n in names for s in (".safetensors", ".bin", ".pth")):
            raise UserError(f"weights directory {path} has no .safetensors/.bin/.pth checkpoint")
        return f"local-dir:{storage.local_copy(path)}", None, quick_gelu
    if storage.exists(path):
        _check_model_name(config.model)
        return config.model, str(storage.local_copy(path)), quick_gelu
    if is_pathlike:
        kind = "directory" if weights.startswith(_SCHEMAS[0]) else "file"
        raise UserError(f"weights {kind} not found: {path}")
    # Otherwise a pretrained tag of this architecture.
    _check_model_name(config.model)
    tags = open_clip.list_pretrained_tags_by_model(config.model)
    if weights not in tags:
        raise UserError(f"weights {weights!r}: no such file and not a pretrained tag of "
                        f"{config.model} (tags: {', '.join(tags) or 'none'})")
    if quick_gelu is None:
        # open_clip only warns on a QuickGELU mismatch; OpenAI-trained tags need it on.
        quick_gelu = bool(open_clip.get_pretrained_cfg(config.model, weights).get("quick_gelu", False))
    return config.model, weights, quick_gelu


def _check_model_name(name: str) -> None:
    known = open_clip.list_models()
    if name not in known:
        raise UserError(f"unknown open_clip model {name!r}; available: {', '.join(known)}")


def _vision_blocks(visual: torch.nn.Module) -> tuple[Sequence[torch.nn.Module], bool]:
    """The image tower's blocks, whose outputs ``layer`` indexes, and whether the tower
    is convolutional: transformer blocks, or a timm CNN trunk's feature stages."""
    if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
        return visual.transformer.resblocks, False  # open_clip VisionTransformer
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "blocks") and hasattr(trunk, "forward_intermediates"):
        return trunk.blocks, False  # timm ViT/EVA behind open_clip's TimmModel
    if trunk is not None and hasattr(trunk, "forward_intermediates") and getattr(trunk, "feature_info", None):
        # timm CNN: forward_intermediates indexes these stages (stem first)
        return [trunk.get_submodule(info["module"]) for info in trunk.feature_info], True
    raise UserError(f"image tower {type(visual).__name__} exposes no intermediate blocks; "
                    "token extraction needs a ViT/EVA tower or a timm CNN trunk")


class ClipModel:
    """An open_clip model loaded once, in eval mode, for token + embedding extraction.

    Attributes: ``model`` (the open_clip module), ``preprocess`` (the model's eval
    transform, PIL image -> ``[3, H, W]`` tensor), ``tokenizer``, ``device``,
    ``image_size`` (H, W), ``weights_are_random``, ``layer_index`` (absolute block
    index), ``token_shape`` (T, D) and ``embed_dim`` (E).
    """

    def __init__(self, config: ClipConfig) -> None:
        if open_clip is None:
            raise UserError("open_clip is not installed: pip install 'open_clip_torch>=3.3'")
        self.config = config
        model_name, pretrained, quick_gelu = _resolve_source(config)
        self.weights_are_random = config.weights is None
        self.device = torch.device(resolve_device(config.device))
        kwargs: dict[str, Any] = {} if quick_gelu is None else {"quick_gelu": quick_gelu}
        # Seed a forked RNG so random init is reproducible without touching the
        # caller's global RNG state; init happens on CPU, so it is device-independent.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=pretrained, precision="fp32", device=self.device,
                    pretrained_image=False, pretrained_text=False, **kwargs)
            except RuntimeError as err:  # open_clip's multi-line load/download errors
                # Keep two lines: torch's state_dict errors say what is wrong on line 2.
                brief = " ".join(str(err).split("\n")[:2]).strip()[:300] or type(err).__name__
                raise UserError(f"cannot load {config.model} weights {config.weights!r}: {brief}") from err
        self.model = model.eval()
        self.preprocess: Callable[[Any], torch.Tensor] = preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)
        # a convolutional trunk returns NCHW maps and has no prefix (CLS) tokens
        self.vision_blocks, self.convolutional = _vision_blocks(self.model.visual)
        size = self.model.visual.image_size
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

        n = len(self.vision_blocks)
        if not -n <= config.layer < n:
            raise UserError(f"ClipConfig.layer={config.layer} out of range for {n} blocks of {config.model}")
        self.layer_index = config.layer % n
        if self.weights_are_random:
            logger.warning("%s: no weights given, using random init (seed %d)", config.model, config.seed)

        # One warm-up pass gives the exact output shapes for every tower kind and
        # proves at load time, not mid-run, that the tower yields intermediates.
        probe = self.encode_images(torch.zeros(1, 3, *self.image_size))
        self.token_shape: tuple[int, int] = (probe.tokens.shape[1], probe.tokens.shape[2])
        self.embed_dim: int = probe.embedding.shape[1]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = PRECISIONS[self.config.precision]
        if self.device.type == "cuda" and dtype is not torch.float32:
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()  # CPU: fp32 (CPU autocast is slow and lossy)

    def encode_images(self, batch: torch.Tensor) -> ImageFeatures:
        """Tokens of block ``layer`` and the normalised embedding, in one forward pass.

        ``batch`` is ``[B, 3, H, W]`` as produced by stacking ``preprocess`` outputs.
        """
        if batch.ndim != 4 or batch.shape[1] != 3 or tuple(batch.shape[-2:]) != self.image_size:
            raise ValueError(f"expected images [B, 3, {self.image_size[0]}, {self.image_size[1]}], "
                             f"got {list(batch.shape)}")
        x = batch.to(self.device, non_blocking=True)
        prefix = self.config.include_cls and not self.convolutional
        with torch.inference_mode(), self._autocast():
            out = self.model.visual.forward_intermediates(
                x,
                indices=[self.layer_index],
                stop_early=False,  # must run every block: the embedding needs them
                normalize_intermediates=False,  # BLIP-2 took the raw block output
                intermediates_only=False,
                output_fmt="NCHW" if self.convolutional else "NLC",  # timm CNNs give NCHW only
                output_extra_tokens=prefix,
            )
            tokens = out["image_intermediates"][0]
            if self.convolutional:  # [B, C, H, W] -> [B, H*W, C], row-major positions
                tokens = tokens.flatten(2).transpose(1, 2)
            if prefix:
                tokens = torch.cat([out["image_intermediates_prefix"][0], tokens], dim=1)
            embedding = F.normalize(out["image_features"].float(), dim=-1)
        return ImageFeatures(tokens=tokens.float(), embedding=embedding)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """``[B, E]`` L2-normalised text embeddings (float32); long texts are truncated
        to the model's context length by its tokenizer."""
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of strings, not a single string")
        if len(texts) == 0:
            return torch.empty(0, self.embed_dim, device=self.device)
        ids = self.tokenizer(list(texts)).to(self.device, non_blocking=True)
        with torch.inference_mode(), self._autocast():
            emb = self.model.encode_text(ids)
        return F.normalize(emb.float(), dim=-1)

    def describe(self) -> dict[str, Any]:
        """Provenance for manifests: what produced these features."""
        return {
            "model": self.config.model, "weights": self.config.weights,
            "weights_are_random": self.weights_are_random, "seed": self.config.seed,
            "layer": self.config.layer, "layer_index": self.layer_index,
            "include_cls": self.config.include_cls, "precision": self.config.precision,
            "device": str(self.device), "token_shape": list(self.token_shape),
            "embed_dim": self.embed_dim, "open_clip": open_clip.__version__,
        }


def score(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Per-pair CLIP score: cosine of row i of ``image_emb`` with row i of ``text_emb``.

    Both ``[B, E]``; returns ``[B]`` float32 in [-1, 1] (not x100). Inputs are
    re-normalised, so it is a true cosine even for unnormalised embeddings.
    """
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(f"score needs two [B, E] tensors of equal shape, got "
                         f"{list(image_emb.shape)} and {list(text_emb.shape)}")
    a = F.normalize(image_emb.float(), dim=-1)
    b = F.normalize(text_emb.to(a.device).float(), dim=-1)
    return (a * b).sum(dim=-1).clamp(-1.0, 1.0)  # clamp: rounding can reach 1 + 1e-7


def to_storage(t: torch.Tensor, dtype: str = "fp16") -> np.ndarray:
    """Copy a tensor to a CPU numpy array in the storage dtype (``fp16`` or ``fp32``).

    Cast on the device first so only the smaller array crosses to the host. Raises if
    the result is not finite: fp16 overflows above 65504, and a silent ``inf`` in a
    feature file would poison every consumer.
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype {dtype!r} is not one of {sorted(STORAGE_DTYPES)}")
    out = t.detach().to(STORAGE_DTYPES[dtype])
    if not bool(torch.isfinite(out).all()):
        peak = t.detach().float().abs().max().item()
        raise ValueError(f"non-finite values after casting to {dtype} (max |x| of input = {peak:g})")
    return out.cpu().numpy()
