"""``vlc-conv-encoder``: a small convolutional image encoder as a transformers model.

A stack of strided 3x3 convolutions whose last feature map is flattened into a token
sequence (one token per cell, plus a learned position embedding), returned as
``last_hidden_state`` ``[B, cells, hidden_size]``: what ``VisionEncoderDecoderModel``
cross-attends to. transformers' own convolutional backbones (ResNet, ConvNeXt) return
a ``[B, C, H, W]`` map there, which a text decoder cannot attend to.

The demo-domain captioner (``vlcurate demo train-models``) is a VisionEncoderDecoder of
this encoder and a small GPT-2 decoder. :func:`register` makes the architecture known
to ``AutoConfig``/``AutoModel``; the CapFilt loader (:mod:`vlcurate.extractors.hf_models`)
calls it before loading any directory, so a saved captioner loads by its
``config.json`` alone, with no remote code.

Imports torch and transformers: import this module only where a model is built or loaded.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

MODEL_TYPE = "vlc-conv-encoder"


class VlcConvEncoderConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, num_channels: int = 3, image_size: int = 64, widths: tuple[int, ...] | list[int] = (24, 48, 96, 128),
                 hidden_size: int = 128, **kwargs: Any):
        super().__init__(**kwargs)
        self.num_channels, self.image_size = num_channels, image_size
        self.widths, self.hidden_size = list(widths), hidden_size

    @property
    def grid(self) -> int:
        """Cells per side of the last feature map (one stride-2 convolution per width)."""
        size = self.image_size
        for _ in self.widths:
            size = (size + 1) // 2
        return size


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class VlcConvEncoderModel(PreTrainedModel):
    config_class = VlcConvEncoderConfig
    base_model_prefix = "vlc_conv_encoder"
    main_input_name = "pixel_values"

    def __init__(self, config: VlcConvEncoderConfig):
        super().__init__(config)
        layers: list[nn.Module] = []
        cin = config.num_channels
        for i, width in enumerate(config.widths):  # a stride-2 downsampling, then (past the first) one more
            layers += [_block(cin, width, 2)] + ([_block(width, width, 1)] if i else [])
            cin = width
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(cin, config.hidden_size)
        self.position = nn.Parameter(torch.zeros(1, config.grid * config.grid, config.hidden_size))
        self.norm = nn.LayerNorm(config.hidden_size)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, VlcConvEncoderModel):
            nn.init.normal_(module.position, std=0.02)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs: Any) -> BaseModelOutput | tuple:
        x = self.features(pixel_values)  # [B, C, g, g]
        x = self.norm(self.proj(x.flatten(2).transpose(1, 2)) + self.position)
        if return_dict is False:
            return (x,)
        return BaseModelOutput(last_hidden_state=x)


_REGISTERED = threading.Lock()
_done = False


def register() -> None:
    """Make ``vlc-conv-encoder`` known to ``AutoConfig`` and ``AutoModel`` (idempotent)."""
    global _done
    with _REGISTERED:
        if not _done:
            AutoConfig.register(MODEL_TYPE, VlcConvEncoderConfig, exist_ok=True)
            AutoModel.register(VlcConvEncoderConfig, VlcConvEncoderModel, exist_ok=True)
            _done = True
