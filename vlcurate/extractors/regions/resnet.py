"""ResNet pieces of the C4 detector, with detectron2's module names.

Module attribute names follow detectron2 (``stem.conv1``, ``res2.0.conv1.norm``,
``res2.0.shortcut`` ...) so a detectron2 checkpoint's keys map onto
``state_dict()`` one to one (see ``checkpoint.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (all buffers, no grads).

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``; the four
    tensors carry detectron2's names so checkpoints load without renaming.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class ConvNorm(nn.Conv2d):
    """A bias-free conv followed by a frozen norm held as ``.norm`` (detectron2's Conv2d)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, dilation: int = 1, eps: float = 1e-5) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, bias=False)
        self.norm = FrozenBatchNorm2d(out_channels, eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(super().forward(x))


class BasicStem(nn.Module):
    """7x7/2 conv + frozen norm + ReLU + 3x3/2 max-pool.

    ``caffe_maxpool`` pools with pad 0 and ceil mode, as Caffe's ResNet did and the BUTD
    weights expect; torchvision/detectron2 otherwise pad 1 and floor. Both give the same
    size for even inputs but sample different windows, which shifts every feature.
    """

    def __init__(self, out_channels: int, caffe_maxpool: bool, eps: float) -> None:
        super().__init__()
        self.caffe_maxpool = caffe_maxpool
        self.conv1 = ConvNorm(3, out_channels, 7, stride=2, padding=3, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu_(self.conv1(x))
        if self.caffe_maxpool:
            return F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block; ``shortcut`` projects when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck_channels: int, *, stride: int,
                 stride_in_1x1: bool, dilation: int, eps: float) -> None:
        super().__init__()
        self.shortcut = (ConvNorm(in_channels, out_channels, 1, stride=stride, eps=eps)
                         if in_channels != out_channels else None)
        # MSRA/Caffe ResNets downsample in the first 1x1 conv; torchvision in the 3x3.
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = ConvNorm(in_channels, bottleneck_channels, 1, stride=stride_1x1, eps=eps)
        self.conv2 = ConvNorm(bottleneck_channels, bottleneck_channels, 3, stride=stride_3x3,
                              padding=dilation, dilation=dilation, eps=eps)
        self.conv3 = ConvNorm(bottleneck_channels, out_channels, 1, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out = out + (self.shortcut(x) if self.shortcut is not None else x)
        return F.relu_(out)


def make_stage(num_blocks: int, in_channels: int, out_channels: int, bottleneck_channels: int, *,
               first_stride: int, stride_in_1x1: bool, dilation: int, eps: float) -> nn.Sequential:
    """``num_blocks`` bottlenecks; only the first one strides (and changes width)."""
    blocks = []
    for i in range(num_blocks):
        blocks.append(BottleneckBlock(
            in_channels if i == 0 else out_channels, out_channels, bottleneck_channels,
            stride=first_stride if i == 0 else 1, stride_in_1x1=stride_in_1x1, dilation=dilation, eps=eps,
        ))
    return nn.Sequential(*blocks)


class ResNetC4Backbone(nn.Module):
    """Stem + res2..res4; returns res4 (stride 16), which feeds both the RPN and ROI pooling."""

    def __init__(self, *, blocks: tuple[int, int, int], stem_out_channels: int, res2_out_channels: int,
                 width_per_group: int, stride_in_1x1: bool, caffe_maxpool: bool, eps: float) -> None:
        super().__init__()
        self.stem = BasicStem(stem_out_channels, caffe_maxpool, eps)
        in_ch, out_ch, width = stem_out_channels, res2_out_channels, width_per_group
        for stage, num_blocks in enumerate(blocks):
            # res2 keeps the stem's stride 4; res3 and res4 halve the resolution.
            self.add_module(f"res{stage + 2}", make_stage(
                num_blocks, in_ch, out_ch, width, first_stride=1 if stage == 0 else 2,
                stride_in_1x1=stride_in_1x1, dilation=1, eps=eps,
            ))
            in_ch, out_ch, width = out_ch, out_ch * 2, width * 2
        self.out_channels = in_ch

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.res2(x)
        x = self.res3(x)
        return self.res4(x)
