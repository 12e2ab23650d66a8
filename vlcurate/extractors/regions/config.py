"""Architecture and preprocessing of the bottom-up-attention (BUTD) region detector.

A :class:`RegionConfig` says everything needed to rebuild the network and feed it:
the weights only fit the architecture they were trained with, and the features only
mean something with the preprocessing they were trained with, so both travel together.

Named configs:

``butd-r101``
    The Visual Genome Faster R-CNN behind the LXMERT/UNITER-era region features, as
    ported to detectron2 by airsplay/py-bottom-up-attention
    (``configs/VG-Detection/faster_rcnn_R_101_C4_attr_caffemaxpool.yaml``): ResNet-101
    C4, Caffe max-pool, 1600 classes + background LAST, 400 attributes + "none" LAST,
    anchors 64/128/256/512 x 0.5/1/2, RPN hidden width 512, ROIPool 14x14 at 1/16,
    res5 with stride 1 and dilation 2, FrozenBN eps 1e-5, test-time RPN 6000/300/0.7.
``butd-tiny``
    The same architecture at toy width/depth with a handful of classes, for tests and
    demos that run in milliseconds with random weights.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from vlcurate.typed import ConfigError, from_dict, to_dict

# Box deltas are clamped before exp() so a wild prediction cannot overflow;
# detectron2's value, in log space: boxes grow at most 1000/16 times.
BOX_SCALE_CLAMP = math.log(1000.0 / 16)

# The C4 design fixes where the RPN and the ROI pooling read: res4, stride 16.
FEATURE_STRIDE = 16


@dataclass(frozen=True)
class RegionConfig:
    """Architecture, test-time detector settings and preprocessing of a BUTD model.

    Build one with :func:`get_config` (named) or :meth:`from_dict`/:meth:`from_json`
    (unknown keys and wrong types raise :class:`~vlcurate.typed.ConfigError`).
    """

    name: str
    # --- backbone (ResNet, C4 layout: stem + res2..res4 in the backbone, res5 in the ROI head)
    blocks_per_stage: tuple[int, ...] = (3, 4, 23, 3)  # res2, res3, res4, res5
    stem_out_channels: int = 64
    res2_out_channels: int = 256  # doubles per stage: res5 gives 8x this = feature dim
    width_per_group: int = 64  # bottleneck width of res2, doubles per stage
    stride_in_1x1: bool = True  # Caffe/MSRA ResNets downsample in the 1x1 conv
    caffe_maxpool: bool = True  # stem max-pool k3 s2 pad 0 ceil_mode (Caffe), not pad 1
    res5_dilation: int = 2  # 2: res5 keeps stride 1 and dilates its 3x3 convs (BUTD)
    norm_eps: float = 1e-5  # FrozenBatchNorm epsilon
    # --- region proposal network (on res4)
    rpn_hidden_channels: int = 512
    anchor_sizes: tuple[float, ...] = (64.0, 128.0, 256.0, 512.0)  # pixels of the resized image
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width
    anchor_offset: float = 0.0  # detectron2 default: anchor centres at k*stride
    rpn_box_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    rpn_pre_nms_topk: int = 6000
    rpn_post_nms_topk: int = 300
    rpn_nms_thresh: float = 0.7
    # Proposals must be wider AND taller than this (resized-image pixels). The detectron2
    # port uses 0 (drop empty boxes only); the Caffe original used 16 * image scale.
    rpn_min_box_size: float = 0.0
    # --- ROI head
    pooler_resolution: int = 14  # ROIPool output, at 1/FEATURE_STRIDE
    box_reg_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
    num_classes: int = 1600  # foreground object classes
    num_attributes: int = 400  # attribute classes, without "no attribute"
    attr_embed_dim: int = 256  # class embedding concatenated with the region feature
    attr_hidden_dim: int = 512
    # Where the extra class sits in the classifier outputs: "last" (detectron2 port:
    # background = index num_classes, "no attribute" = index num_attributes, bbox_pred
    # has num_classes*4 outputs) or "first" (Caffe original: index 0, bbox_pred has
    # (num_classes+1)*4 outputs).
    background: Literal["last", "first"] = "last"
    # --- preprocessing (Caffe: BGR float minus mean, no std; shortest side to min_size)
    pixel_mean_bgr: tuple[float, ...] = (102.9801, 115.9465, 122.7717)
    min_size: int = 600
    max_size: int = 1000
    size_divisibility: int = 0  # pad batches to a multiple of this (0: no rounding)
    # --- random initialisation (only used when no weights are loaded)
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.blocks_per_stage) != 4 or min(self.blocks_per_stage) < 1:
            raise ValueError(f"blocks_per_stage needs 4 positive counts (res2..res5), got {self.blocks_per_stage}")
        for key in ("stem_out_channels", "res2_out_channels", "width_per_group", "rpn_hidden_channels",
                    "rpn_pre_nms_topk", "rpn_post_nms_topk", "pooler_resolution", "num_classes",
                    "num_attributes", "attr_embed_dim", "attr_hidden_dim", "min_size", "max_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.res5_dilation not in (1, 2):
            raise ValueError(f"res5_dilation must be 1 or 2, got {self.res5_dilation}")
        if not self.anchor_sizes or not self.anchor_ratios:
            raise ValueError("anchor_sizes and anchor_ratios must not be empty")
        for key in ("rpn_box_weights", "box_reg_weights"):
            if len(getattr(self, key)) != 4:
                raise ValueError(f"{key} needs 4 values (x, y, w, h), got {getattr(self, key)}")
        if len(self.pixel_mean_bgr) != 3:
            raise ValueError(f"pixel_mean_bgr needs 3 values, got {self.pixel_mean_bgr}")
        if not 0.0 < self.rpn_nms_thresh <= 1.0:
            raise ValueError(f"rpn_nms_thresh must be in (0, 1], got {self.rpn_nms_thresh}")
        if self.max_size < self.min_size:
            raise ValueError(f"max_size {self.max_size} < min_size {self.min_size}")
        if self.size_divisibility < 0 or self.rpn_min_box_size < 0:
            raise ValueError("size_divisibility and rpn_min_box_size must be >= 0")

    # ------------------------------------------------------------------ derived sizes
    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map position (sizes x ratios)."""
        return len(self.anchor_sizes) * len(self.anchor_ratios)

    @property
    def feature_dim(self) -> int:
        """Width of a region feature: res5's output channels."""
        return self.res2_out_channels * 8

    @property
    def res4_channels(self) -> int:
        return self.res2_out_channels * 4

    @property
    def num_bbox_reg_classes(self) -> int:
        """Classes with box-regression outputs: the Caffe layout also regresses background."""
        return self.num_classes + (1 if self.background == "first" else 0)

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "region_config") -> RegionConfig:
        """Strictly parse a plain dict; unknown keys raise ConfigError naming the key."""
        return from_dict(cls, data, where)

    @classmethod
    def from_json(cls, path: str | Path) -> RegionConfig:
        """Load a config saved with :meth:`to_json` (or written by hand)."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), where=str(path))

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def replace(self, **changes: Any) -> RegionConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def fingerprint(self) -> str:
        """Short stable hash of every field; changes whenever outputs could change."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


BUTD_R101 = RegionConfig(name="butd-r101")

BUTD_TINY = RegionConfig(
    name="butd-tiny",
    blocks_per_stage=(1, 1, 1, 1),
    stem_out_channels=8,
    res2_out_channels=8,  # res3 16, res4 32, res5 64 = feature dim
    width_per_group=2,
    rpn_hidden_channels=16,
    rpn_pre_nms_topk=400,
    rpn_post_nms_topk=60,
    num_classes=10,
    num_attributes=5,
    attr_embed_dim=8,  # same 1/8 and 1/4 of the feature width as the real model
    attr_hidden_dim=16,
    min_size=64,
    max_size=100,
)

_NAMED: dict[str, RegionConfig] = {c.name: c for c in (BUTD_R101, BUTD_TINY)}


def config_names() -> list[str]:
    """Names accepted by :func:`get_config`."""
    return sorted(_NAMED)


def get_config(name: str) -> RegionConfig:
    """The named config; an unknown name raises ConfigError listing the known ones."""
    try:
        return _NAMED[name]
    except KeyError:
        raise ConfigError(f"unknown region config {name!r} (known: {', '.join(config_names())})") from None


def resolve_config(config: RegionConfig | str) -> RegionConfig:
    """Accept a config, a registered name or a path to a JSON config."""
    if isinstance(config, RegionConfig):
        return config
    if config in _NAMED:
        return _NAMED[config]
    if str(config).endswith(".json") and Path(config).is_file():
        return RegionConfig.from_json(config)
    return get_config(config)
