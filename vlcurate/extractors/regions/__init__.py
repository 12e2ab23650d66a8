"""Bottom-up-attention (BUTD / LXMERT) region features in plain torch + torchvision.ops.

The Visual Genome Faster R-CNN (ResNet-101 C4, 1600 classes, 400 attributes) whose
36 x 2048 region features LXMERT, UNITER and VisualBERT consume, re-implemented
without detectron2 so it runs in the pipeline's workers; detectron2 checkpoints
load by key name, through an unpickler that cannot execute code.

    extractor = RegionFeatureExtractor("butd-r101", weights="faster_rcnn_from_caffe_attr.pkl")
    [regions] = extractor.extract([pil_image])   # regions.features: (36, 2048) float16

The names below are imported on first use (PEP 562), so that ``regions.config`` (plain
dataclasses) can be imported where recipes are parsed without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> submodule that defines it
_EXPORTS = {
    "BoxSelection": "boxes", "select_lxmert": "boxes", "select_maxnms": "boxes",
    "CheckpointError": "checkpoint", "LoadReport": "checkpoint", "load_checkpoint": "checkpoint",
    "read_checkpoint": "checkpoint", "save_detectron2_checkpoint": "checkpoint",
    "RegionConfig": "config", "config_names": "config", "get_config": "config",
    "RegionFeatureExtractor": "extractor", "RegionFeatures": "extractor",
    "BottomUpAttentionDetector": "model", "build_detector": "model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
