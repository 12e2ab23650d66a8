"""Read and write detectron2-format checkpoints without trusting them.

Formats read:

* ``.pkl`` (detectron2 / py-bottom-up-attention): a pickle of ``{"model": {name: ndarray},
  ...}`` or a bare ``{name: ndarray}``. Plain ``pickle.load`` runs whatever code the file
  names, so it is read with :class:`_ArrayOnlyUnpickler`, which can only rebuild numpy
  arrays, dtypes, scalars and (ordered) dicts; any other global is refused with a
  :class:`CheckpointError` naming the file and the global, before anything runs.
* ``.pth`` / ``.pt`` / ``.bin`` (or any zip-format torch file): ``torch.load(weights_only=True)``,
  a state dict or ``{"model"|"state_dict": state_dict}``.

Keys are detectron2 module paths, which are also our ``state_dict()`` keys (see
``model.py``), so mapping is by name. Besides weights, detectron2 files may carry
``pixel_mean``/``pixel_std`` and ``proposal_generator.anchor_generator.cell_anchors.0``;
these are not loaded but *checked* against the config, since a mismatch means the
weights were trained with other preprocessing or anchors.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlcurate.errors import UserError
from vlcurate.io import storage

_TORCH_SUFFIXES = {".pth", ".pt", ".bin"}
_ZIP_MAGIC = b"PK\x03\x04"
# Extra entries detectron2 may store next to the weights.
_PIXEL_MEAN, _PIXEL_STD = "pixel_mean", "pixel_std"
_CELL_ANCHORS = "proposal_generator.anchor_generator.cell_anchors.0"


class CheckpointError(UserError):
    """A checkpoint cannot be read safely or does not fit the model."""


def _numpy_internal(name: str) -> Any:
    """numpy >= 2 moved ``numpy.core`` to ``numpy._core``; pickles may name either."""
    module, attr = name.rsplit(".", 1)
    try:
        mod = __import__(f"numpy._core.{module}", fromlist=[attr])
    except ImportError:  # numpy 1.x
        mod = __import__(f"numpy.core.{module}", fromlist=[attr])
    return getattr(mod, attr)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): OrderedDict,
        # Protocol-2 pickles written by Python 3 encode bytes as _codecs.encode(str, "latin1").
        ("_codecs", "encode"): __import__("_codecs").encode,
    }
    for pkg in ("numpy.core", "numpy._core"):
        allowed[(f"{pkg}.multiarray", "_reconstruct")] = _numpy_internal("multiarray._reconstruct")
        allowed[(f"{pkg}.multiarray", "scalar")] = _numpy_internal("multiarray.scalar")
        allowed[(f"{pkg}.numeric", "_frombuffer")] = _numpy_internal("numeric._frombuffer")  # protocol 5
    return allowed


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler whose only reachable callables rebuild arrays and dicts.

    Every way a pickle can call code (REDUCE, INST, OBJ, NEWOBJ, extension codes)
    first resolves a global through ``find_class``, so refusing there is sufficient.
    """

    _ALLOWED = _allowed_globals()

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # latin1: Python 2 era detectron/Caffe2 pickles
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"{self._path}: refusing to unpickle global '{module}.{name}': a weights file may only "
                "contain numpy arrays and dicts (the file may be malicious or not a detectron2 checkpoint)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"{self._path}: refusing persistent id {pid!r} (torch legacy format? use .pth)")


def _unwrap(data: Any, path: Path) -> Mapping[str, Any]:
    """The name -> tensor mapping inside a loaded checkpoint object."""
    if isinstance(data, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(data.get(key), Mapping):
                return data[key]
        if data and all(isinstance(v, (np.ndarray, torch.Tensor)) for v in data.values()):
            return data
    raise CheckpointError(f"{path}: expected {{'model': {{name: array}}}} or {{name: array}}, "
                          f"got {type(data).__name__} with keys {list(data)[:5] if isinstance(data, Mapping) else '-'}")


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Every named tensor in a checkpoint file, as CPU tensors, without executing code from it."""
    path = os.fspath(path)
    try:
        with storage.open_read(path) as f:
            is_zip = f.read(4) == _ZIP_MAGIC
            f.seek(0)
            if os.path.splitext(path)[1] in _TORCH_SUFFIXES or is_zip:
                try:
                    data = torch.load(f, map_location="cpu", weights_only=True)
                except (pickle.UnpicklingError, RuntimeError) as e:
                    raise CheckpointError(f"{path}: torch.load(weights_only=True) refused it: {e}") from None
            else:
                data = _ArrayOnlyUnpickler(f, path).load()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint: {e}") from None
    state: dict[str, torch.Tensor] = {}
    for name, value in _unwrap(data, path).items():
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":  # object/str/structured arrays: not weights
                raise CheckpointError(f"{path}: entry {name!r} has non-numeric dtype {value.dtype}")
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(value).__name__}, not an array")
        state[str(name)] = value
    return state


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_checkpoint` did; the lists are sorted key names."""

    path: str
    loaded: int
    missing: list[str] = field(default_factory=list)  # model keys absent from the file
    unexpected: list[str] = field(default_factory=list)  # file keys the model lacks
    mismatched: list[str] = field(default_factory=list)  # "key: file shape vs model shape"
    checked: list[str] = field(default_factory=list)  # extras verified, not loaded
    defaulted: list[str] = field(default_factory=list)  # FrozenBN stats absent, set to 0/1

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def _listing(title: str, names: list[str], limit: int = 20) -> str:
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return f"{title} ({len(names)}): {', '.join(names[:limit])}{more}"


def _check_extras(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> list[str]:
    """Verify and remove the non-weight entries detectron2 may store."""
    checked = []
    config = getattr(model, "config", None)
    if _PIXEL_MEAN in state and config is not None:
        mean = state.pop(_PIXEL_MEAN).flatten().double()
        expect = torch.tensor(config.pixel_mean_bgr, dtype=torch.float64)
        if mean.shape != expect.shape or not torch.allclose(mean, expect, atol=1e-3):
            raise CheckpointError(f"{path}: pixel_mean {mean.tolist()} != config pixel_mean_bgr {expect.tolist()}")
        checked.append(_PIXEL_MEAN)
    if _PIXEL_STD in state:
        std = state.pop(_PIXEL_STD).flatten().double()
        if not torch.allclose(std, torch.ones_like(std), atol=1e-3):  # BUTD divides by nothing
            raise CheckpointError(f"{path}: pixel_std {std.tolist()} != 1 (this model expects no std scaling)")
        checked.append(_PIXEL_STD)
    ours = getattr(getattr(model, "proposal_generator", None), "cell_anchors", None)
    if _CELL_ANCHORS in state and ours is not None:
        theirs = state.pop(_CELL_ANCHORS).float()
        if theirs.shape != ours.shape or not torch.allclose(theirs, ours.cpu(), atol=1e-2):
            raise CheckpointError(f"{path}: the file's anchors {theirs.tolist()} differ from the config's "
                                  f"{ours.tolist()} (anchor_sizes/anchor_ratios/order)")
        checked.append(_CELL_ANCHORS)
    return checked


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str], strict: bool = True) -> LoadReport:
    """Copy a checkpoint's tensors into ``model`` by detectron2 key name.

    ``strict`` (default): any missing, unexpected or wrong-shaped key raises
    :class:`CheckpointError` listing them, and nothing is loaded. ``strict=False``
    loads what matches and returns the lists in the :class:`LoadReport`.
    FrozenBN ``running_mean``/``running_var`` absent from old files default to 0/1,
    as detectron2 does; they are reported in ``defaulted``.
    """
    path = os.fspath(path)
    state = read_checkpoint(path)
    checked = _check_extras(model, state, path)
    expected = model.state_dict()
    defaulted = []
    for key, value in expected.items():
        for stat, fill in (("running_mean", 0.0), ("running_var", 1.0)):
            prefix = key[: -len(stat)]
            if key.endswith(f".norm.{stat}") and key not in state and f"{prefix}weight" in state:
                state[key] = torch.full_like(value, fill, device="cpu")
                defaulted.append(key)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                        for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    report = LoadReport(path=str(path), loaded=0, missing=missing, unexpected=unexpected,
                        mismatched=mismatched, checked=checked, defaulted=sorted(defaulted))
    if strict and not report.ok:
        problems = [_listing(t, n) for t, n in (("missing", missing), ("unexpected", unexpected),
                                                 ("shape mismatch", mismatched)) if n]
        raise CheckpointError(f"{path}: does not fit {type(model).__name__}: " + "; ".join(problems))
    bad = {m.split(":")[0] for m in mismatched}
    usable = {k: v for k, v in state.items() if k in expected and k not in bad}
    model.load_state_dict(usable, strict=False)  # copies into the existing tensors, casting dtype
    return LoadReport(path=str(path), loaded=len(usable), missing=missing, unexpected=unexpected,
                      mismatched=mismatched, checked=checked, defaulted=sorted(defaulted))


def save_detectron2_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write ``{"model": {key: ndarray}, "__author__": ...}``, the layout detectron2 reads.

    The ``__author__`` entry makes detectron2's checkpointer take the names verbatim
    (without it, it applies Caffe2 name heuristics). Written to a temporary file and
    renamed, so a crash never leaves a truncated checkpoint under ``path``.
    """
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    with storage.open_write(path) as f:
        pickle.dump({"model": state, "__author__": "vlcurate"}, f, protocol=4)
