"""The ``region_features`` stage: bottom-up-attention regions for every alive sample.

Runs :class:`~vlcurate.extractors.regions.RegionFeatureExtractor` (the BUTD Faster
R-CNN) over a shard through :class:`~vlcurate.extractors.stage.FeatureStage` (decoding
on background threads, batched forward passes, per-sample failures)
and writes ``region_features/<shard>.parquet`` (record kind ``region_features``,
layout in :mod:`vlcurate.schemas.regions`): per sample ``img_h``, ``img_w``,
``num_boxes``, ``boxes`` (original pixels), ``objects_id/conf``, ``attrs_id/conf`` and
``features`` ``[num_boxes, D]``, fp16 by default. ``vlcurate export lxmert-tsv`` turns
the sidecars into LXMERT's TSV.

Recipe block (every key optional)::

    - region_features: {config: butd-r101, weights: /models/faster_rcnn_from_caffe_attr.pkl,
                        selection: lxmert, min_boxes: 36, max_boxes: 36, conf_thresh: 0.2,
                        batch_size: 1, storage: fp16, device: auto, decode_threads: 0}

* ``config``: a named :class:`~vlcurate.extractors.regions.RegionConfig` (``butd-r101``,
  ``butd-tiny`` for tests and demos) or a path to a JSON config.
* ``weights``: a local detectron2 ``.pkl`` (read without executing code) or torch
  ``.pth``; ``null`` keeps the seeded random init and the manifest says
  ``random_weights``.
* ``selection``: ``lxmert`` (the Caffe procedure behind LXMERT's released features:
  per-class NMS 0.3 over proposals, confidence >= ``conf_thresh``, then
  ``min_boxes..max_boxes`` by score) or ``maxnms`` (py-bottom-up-attention's script).
  36/36 gives LXMERT's fixed 36 boxes, e.g. 10/100 UNITER's variable count.
* ``batch_size``: images per forward pass. 1 (default) reproduces the original
  one-image-at-a-time features; larger batches are zero-padded to their largest image,
  which changes features near the bottom/right border (see ``pad_batch``) for more
  throughput on a GPU. Batches follow the shard's order, so batching does not make a
  rebuild differ (GPU kernels may, in the last bits).
* ``device``: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``. The
  detector runs in fp32 (convolutions use TF32 on Ampere and later, PyTorch's
  default): no fp16 autocast, because its box arithmetic would then run in fp16,
  which cannot place a box on a 1000-pixel image to better than half a pixel.

Failures beyond the base's: ``no_regions`` (the detector proposed nothing),
``non_finite`` (features overflow fp16; use ``storage: fp32``).

This module imports no torch at import time (recipes are parsed where no model runs);
``load`` does.
"""

from __future__ import annotations

import contextlib

import json
import os
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal

import numpy as np
import pyarrow as pa

from vlcurate.extractors.encoding import Encoded, SampleFailure
from vlcurate.extractors.stage import FeatureStage
from vlcurate.extractors.devices import resolve_device
from vlcurate.io import storage
from vlcurate.pipelines.stage import StageInfo, register_stage
from vlcurate.schemas.features import FEATURE_BASE_FIELDS, MODEL_META
from vlcurate.schemas.regions import REGION_FEATURES, region_metadata, region_schema
from vlcurate.typed import FieldError, bounded, check_bounds, local_path

if TYPE_CHECKING:
    from vlcurate.extractors.regions import RegionConfig, RegionFeatureExtractor

STORAGE_DTYPES = {"fp16": "float16", "fp32": "float32"}
BASE_COLUMNS = {f.name for f in FEATURE_BASE_FIELDS}
# The sidecar's columns after the base ones: each is a RegionFeatures attribute.
COLUMNS = tuple(f.name for f in region_schema(1, "float16") if f.name not in BASE_COLUMNS)
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_region_config(name: str) -> "RegionConfig":
    """A named config or a JSON file (no torch import; raises ConfigError/ValueError)."""
    from vlcurate.extractors.regions.config import RegionConfig, get_config

    if name.endswith(".json"):
        if not storage.exists(os.path.expanduser(name)):
            raise ValueError(f"config {name}: no such file")
        return RegionConfig.from_json(Path(name).expanduser())
    return get_config(name)


@dataclass(frozen=True)
class RegionFeaturesConfig:
    """Settings of the ``region_features`` stage (see the module docstring)."""

    config: str = "butd-r101"
    weights: str | None = local_path(None)
    selection: Literal["lxmert", "maxnms"] = "lxmert"
    min_boxes: int = bounded(36, ge=0)
    max_boxes: int = bounded(36, ge=1)
    conf_thresh: float = bounded(0.2, ge=0.0, le=1.0)
    batch_size: int = bounded(1, ge=1)
    storage: Literal["fp16", "fp32"] = "fp16"
    device: str = "auto"
    decode_threads: int = bounded(0, ge=0)  # threads decoding images; 0 = one per core, at most 8
    # torch threads for the detector on a CPU. Fixed, because the CPU kernels' results
    # depend on how many threads split the work: a build must give the same bytes on
    # every runner and machine (scale with more worker processes instead).
    cpu_threads: int = bounded(1, ge=1)

    def __post_init__(self) -> None:
        # Checked while the recipe is parsed, not in a worker mid-build.
        resolve_region_config(self.config)
        if self.weights is not None and not storage.exists(os.path.expanduser(self.weights)):
            raise ValueError(f"weights {self.weights}: no such file (a local detectron2 .pkl or torch .pth)")
        check_bounds(self)
        if self.min_boxes > self.max_boxes:
            raise FieldError("min_boxes", f"must be <= max_boxes ({self.max_boxes}), got {self.min_boxes}")
        if not _DEVICE.match(self.device):
            raise ValueError(f"device {self.device!r}: use auto, cpu, cuda or cuda:N")


_WEIGHTS_SHA: dict[tuple[str, int], str] = {}


def weights_sha256(path: str) -> str:
    """sha256 of a weights file, computed once per process per (path, size)."""
    key = (path if storage.is_remote(path) else str(Path(path).resolve()), storage.size(path))
    if key not in _WEIGHTS_SHA:
        _WEIGHTS_SHA[key] = storage.sha256(path)
    return _WEIGHTS_SHA[key]


_EXTRACTORS: dict[tuple[RegionFeaturesConfig, str], "RegionFeatureExtractor"] = {}
_EXTRACTORS_LOCK = threading.Lock()


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run torch's CPU ops on ``n`` threads for the block (None: leave as is)."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_extractor(cfg: RegionFeaturesConfig, device: str) -> "RegionFeatureExtractor":
    """One extractor per process, config and device (Beam may run several DoFn instances
    of the stage in one process; they share the model)."""
    with _EXTRACTORS_LOCK:
        key = (replace(cfg, batch_size=1, decode_threads=0, cpu_threads=1), device)  # what the model depends on
        if key not in _EXTRACTORS:
            from vlcurate.extractors.regions import RegionFeatureExtractor

            _EXTRACTORS[key] = RegionFeatureExtractor(
                resolve_region_config(cfg.config), cfg.weights, device=device, selection=cfg.selection,
                min_boxes=cfg.min_boxes, max_boxes=cfg.max_boxes, conf_thresh=cfg.conf_thresh,
                feature_dtype=STORAGE_DTYPES[cfg.storage])
        return _EXTRACTORS[key]


@register_stage
class RegionFeatureStage(FeatureStage):
    """Stores bottom-up-attention regions for every alive sample of a shard."""

    name = "region_features"
    Config = RegionFeaturesConfig
    record_kind = REGION_FEATURES

    # ------------------------------------------------------------------ provenance
    def provenance(self) -> dict[str, Any]:
        """The manifest's ``weights`` entry (``random`` drives ``random_weights``)."""
        cfg = self.config
        rcfg = resolve_region_config(cfg.config)
        return {
            "model": "butd-regions", "config": rcfg.name, "config_fingerprint": rcfg.fingerprint(),
            "weights": cfg.weights, "source": "random" if cfg.weights is None else "file",
            "random": cfg.weights is None, "seed": rcfg.seed if cfg.weights is None else None,
            "weights_sha256": None if cfg.weights is None else weights_sha256(cfg.weights),
            "selection": cfg.selection, "min_boxes": cfg.min_boxes, "max_boxes": cfg.max_boxes,
            "conf_thresh": cfg.conf_thresh, "batch_size": cfg.batch_size, "storage": cfg.storage,
        }

    def info(self) -> StageInfo:
        return StageInfo(weights=self.provenance())

    def feature_dim(self) -> int:
        return resolve_region_config(self.config.config).feature_dim

    def feature_fields(self) -> list[pa.Field]:
        """Every column after the base ones, in the order of the record kind."""
        schema = region_schema(self.feature_dim(), STORAGE_DTYPES[self.config.storage])
        return [f for f in schema if f.name not in BASE_COLUMNS]

    def sidecar_metadata(self) -> dict[str, str]:
        meta = region_metadata(self.feature_dim(), STORAGE_DTYPES[self.config.storage])
        return {**meta, MODEL_META.decode(): json.dumps(self.provenance(), sort_keys=True)}

    # ------------------------------------------------------------------ model
    def load(self) -> None:
        self.device = resolve_device(self.config.device)
        self.extractor = load_extractor(self.config, self.device)

    def encode_batch(self, images: list[Any]) -> list[Encoded]:
        """``images``: decoded PIL images (``prepare`` is the base's identity: the decode
        threads do only PIL work). The float conversion and resize run here, on the
        model's device: on a GPU only the uint8 image crosses the bus, and on a CPU
        torch ops on the decode threads would compete with the forward pass for cores."""
        from vlcurate.extractors.regions.extractor import prepare_image

        out: list[Encoded] = []
        with _torch_threads(self.config.cpu_threads if self.device == "cpu" else None):
            prepared = [prepare_image(im, self.extractor.config, self.device) for im in images]
            results = self.extractor.extract_prepared(prepared)
        for r in results:
            if r.num_boxes == 0:
                out.append(SampleFailure("no_regions", "the detector proposed no regions for this image"))
            elif not np.isfinite(r.features).all():
                out.append(SampleFailure("non_finite", f"region features not finite in {self.config.storage}; "
                                         "use storage: fp32"))
            else:
                out.append({name: getattr(r, name) for name in COLUMNS})
        return out
