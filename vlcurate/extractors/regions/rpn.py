"""Region proposal network on res4, test-time only, with detectron2's names and order.

The order of anchors matters for loading weights: the objectness conv has one output
channel per cell anchor, and detectron2 enumerates cell anchors size-major
(``for size in sizes: for ratio in ratios``), then tiles them over the feature map
row by row, giving a flat ``(H, W, A)`` order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import nms

from vlcurate.extractors.regions.boxes import clip_boxes, decode_deltas, nonempty
from vlcurate.extractors.regions.config import BOX_SCALE_CLAMP, FEATURE_STRIDE, RegionConfig


def cell_anchors(sizes: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """``[len(sizes)*len(ratios), 4]`` anchors centred on 0: area ``size**2``, ``h/w = ratio``."""
    anchors = []
    for size in sizes:
        for ratio in ratios:
            w = math.sqrt(size * size / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors, dtype=torch.float32)


def grid_anchors(cells: Tensor, height: int, width: int, stride: int, offset: float) -> Tensor:
    """All anchors of an ``height x width`` feature map, flat in ``(H, W, A)`` order."""
    xs = torch.arange(width, dtype=torch.float32, device=cells.device) * stride + offset * stride
    ys = torch.arange(height, dtype=torch.float32, device=cells.device) * stride + offset * stride
    shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)
    return (shifts + cells.view(1, -1, 4)).reshape(-1, 4)


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 convs for objectness (A) and box deltas (A*4)."""

    def __init__(self, in_channels: int, hidden_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden_channels, kernel_size=3, padding=1)
        self.objectness_logits = nn.Conv2d(hidden_channels, num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(hidden_channels, num_anchors * 4, kernel_size=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.relu(self.conv(x))
        return self.objectness_logits(t), self.anchor_deltas(t)


@dataclass(frozen=True)
class Proposals:
    """One image's proposals, best objectness first, in resized-image pixels."""

    boxes: Tensor  # [P, 4]
    objectness_logits: Tensor  # [P]


class RegionProposalNetwork(nn.Module):
    """Anchors + :class:`RPNHead` + decode/clip/filter/NMS/top-k per image."""

    def __init__(self, config: RegionConfig, in_channels: int) -> None:
        super().__init__()
        self.config = config
        self.rpn_head = RPNHead(in_channels, config.rpn_hidden_channels, config.num_anchors)
        # Not persistent: detectron2 checkpoints may carry them; the loader checks them
        # against these instead of loading them.
        self.register_buffer("cell_anchors", cell_anchors(config.anchor_sizes, config.anchor_ratios),
                             persistent=False)

    def forward(self, features: Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[Proposals]:
        """Proposals for each image of the padded batch; ``image_sizes`` are ``(h, w)``."""
        cfg = self.config
        logits, deltas = self.rpn_head(features)
        n, a, fh, fw = logits.shape
        logits = logits.permute(0, 2, 3, 1).reshape(n, -1)  # [N, H*W*A]
        deltas = deltas.view(n, a, 4, fh, fw).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
        anchors = grid_anchors(self.cell_anchors, fh, fw, FEATURE_STRIDE, cfg.anchor_offset)
        k = min(cfg.rpn_pre_nms_topk, logits.shape[1])
        results = []
        for i, (h, w) in enumerate(image_sizes):
            # Stable sort so equal logits (common with random weights) order the same
            # on every device.
            top = torch.argsort(logits[i], descending=True, stable=True)[:k]
            scores = logits[i, top]
            boxes = decode_deltas(deltas[i, top], anchors[top], cfg.rpn_box_weights, BOX_SCALE_CLAMP)
            boxes = clip_boxes(boxes, h, w)
            ok = nonempty(boxes, cfg.rpn_min_box_size)
            boxes, scores = boxes[ok], scores[ok]
            keep = nms(boxes.float(), scores.float(), cfg.rpn_nms_thresh)[: cfg.rpn_post_nms_topk]
            results.append(Proposals(boxes=boxes[keep], objectness_logits=scores[keep]))
        return results
