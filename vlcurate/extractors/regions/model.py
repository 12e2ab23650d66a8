"""The bottom-up-attention Faster R-CNN (ResNet C4 + RPN + res5 ROI head + attributes).

Plain torch + torchvision.ops; module paths mirror detectron2 as used by
airsplay/py-bottom-up-attention, so ``state_dict()`` keys equal checkpoint keys::

    backbone.stem.conv1.{weight, norm.{weight,bias,running_mean,running_var}}
    backbone.res{2,3,4}.{i}.{conv1,conv2,conv3,shortcut}.{weight, norm.*}
    proposal_generator.rpn_head.{conv,objectness_logits,anchor_deltas}.{weight,bias}
    roi_heads.res5.{i}.{conv1,conv2,conv3,shortcut}.{weight, norm.*}
    roi_heads.box_predictor.{cls_score,bbox_pred}.{weight,bias}
    roi_heads.box_predictor.cls_embedding.weight            # attribute head
    roi_heads.box_predictor.{fc_attr,attr_score}.{weight,bias}

The attribute head lives inside ``box_predictor`` as in the port's ``FastRCNNOutputLayers``
(``use_attr=True``): embedding of the arg-max class over all ``num_classes + 1``
logits (background included), concatenated with the region feature, then
``fc_attr`` + ReLU + ``attr_score``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_pool

from vlcurate.extractors.regions.config import FEATURE_STRIDE, RegionConfig
from vlcurate.extractors.regions.resnet import BottleneckBlock, ConvNorm, ResNetC4Backbone, make_stage
from vlcurate.extractors.regions.rpn import RegionProposalNetwork


class BoxPredictor(nn.Module):
    """Class logits, per-class box deltas and attribute logits from pooled region features."""

    def __init__(self, config: RegionConfig) -> None:
        super().__init__()
        dim = config.feature_dim
        self.cls_score = nn.Linear(dim, config.num_classes + 1)
        self.bbox_pred = nn.Linear(dim, config.num_bbox_reg_classes * 4)
        self.cls_embedding = nn.Embedding(config.num_classes + 1, config.attr_embed_dim)
        self.fc_attr = nn.Linear(dim + config.attr_embed_dim, config.attr_hidden_dim)
        self.attr_score = nn.Linear(config.attr_hidden_dim, config.num_attributes + 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x``: ``[R, D]`` -> ``(class_logits [R, C+1], box_deltas [R, C'*4], attr_logits [R, A+1])``."""
        class_logits = self.cls_score(x)
        box_deltas = self.bbox_pred(x)
        # The attribute head is conditioned on the predicted class (background included).
        emb = self.cls_embedding(class_logits.argmax(dim=1))
        attr_logits = self.attr_score(F.relu(self.fc_attr(torch.cat([x, emb], dim=1))))
        return class_logits, box_deltas, attr_logits


class Res5ROIHeads(nn.Module):
    """ROIPool 14x14 at 1/16 on res4, res5 blocks, spatial mean -> one feature per box.

    res5 here is the BUTD variant when ``res5_dilation == 2``: its first block keeps
    stride 1 (conv1 and shortcut) and every 3x3 conv has dilation 2 / padding 2, so a
    14x14 ROI stays 14x14 (Caffe test.prototxt; the port's ``RES5HALVE: False``).
    With ``res5_dilation == 1`` it is detectron2's stock res5 (stride 2, 7x7).
    """

    def __init__(self, config: RegionConfig) -> None:
        super().__init__()
        self.config = config
        dilated = config.res5_dilation == 2
        self.res5 = make_stage(
            config.blocks_per_stage[3], config.res4_channels, config.feature_dim, config.width_per_group * 8,
            first_stride=1 if dilated else 2, stride_in_1x1=config.stride_in_1x1,
            dilation=config.res5_dilation, eps=config.norm_eps,
        )
        self.box_predictor = BoxPredictor(config)

    def forward(self, features: Tensor, boxes: Sequence[Tensor]) -> Tensor:
        """Region features ``[sum(P_i), D]`` for per-image box lists on a res4 batch."""
        # torchvision's roi_pool rounds box corners on the 1/16 grid and uses the
        # inclusive (+1) bin width, like Caffe's ROIPooling and detectron2's "ROIPool".
        pooled = roi_pool(features, [b.to(features.dtype) for b in boxes],
                          output_size=self.config.pooler_resolution, spatial_scale=1.0 / FEATURE_STRIDE)
        return self.res5(pooled).mean(dim=(2, 3))


@dataclass(frozen=True)
class DetectorOutput:
    """Everything the head computed for one image's proposals (resized-image pixels)."""

    proposals: Tensor  # [P, 4] RPN boxes, best objectness first
    objectness_logits: Tensor  # [P]
    features: Tensor  # [P, D] mean-pooled res5 region features
    class_logits: Tensor  # [P, num_classes + 1]
    box_deltas: Tensor  # [P, num_bbox_reg_classes * 4]
    attr_logits: Tensor  # [P, num_attributes + 1]


class BottomUpAttentionDetector(nn.Module):
    """The full network; ``forward`` takes a padded, preprocessed batch (see ``extractor``)."""

    def __init__(self, config: RegionConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = ResNetC4Backbone(
            blocks=tuple(config.blocks_per_stage[:3]),  # type: ignore[arg-type]
            stem_out_channels=config.stem_out_channels, res2_out_channels=config.res2_out_channels,
            width_per_group=config.width_per_group, stride_in_1x1=config.stride_in_1x1,
            caffe_maxpool=config.caffe_maxpool, eps=config.norm_eps,
        )
        self.proposal_generator = RegionProposalNetwork(config, self.backbone.out_channels)
        self.roi_heads = Res5ROIHeads(config)

    def forward(self, images: Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[DetectorOutput]:
        """``images``: ``[N, 3, H, W]`` BGR minus mean, zero-padded; ``image_sizes``: valid ``(h, w)``."""
        res4 = self.backbone(images)
        proposals = self.proposal_generator(res4, image_sizes)
        boxes = [p.boxes for p in proposals]
        features = self.roi_heads(res4, boxes)
        class_logits, box_deltas, attr_logits = self.roi_heads.box_predictor(features)
        counts = [len(b) for b in boxes]
        outputs = []
        for p, f, c, d, a in zip(proposals, features.split(counts), class_logits.split(counts),
                                 box_deltas.split(counts), attr_logits.split(counts)):
            outputs.append(DetectorOutput(proposals=p.boxes, objectness_logits=p.objectness_logits,
                                          features=f, class_logits=c, box_deltas=d, attr_logits=a))
        return outputs


def _init_random(model: BottomUpAttentionDetector) -> None:
    """detectron2's initialisation, so an untrained model behaves like one before training.

    Convs: MSRA fill (Kaiming normal, fan-out); the last norm of each residual branch is
    scaled to 0.5 so 33 random residual blocks do not blow activations past fp16 range.
    RPN and classifier: N(0, 0.01); box regression: N(0, 0.001).
    """
    for m in model.modules():
        if isinstance(m, ConvNorm):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    for m in model.modules():
        if isinstance(m, BottleneckBlock):
            m.conv3.norm.weight.fill_(0.5)
    head = model.proposal_generator.rpn_head
    for layer in (head.conv, head.objectness_logits, head.anchor_deltas):
        nn.init.normal_(layer.weight, std=0.01)
        nn.init.zeros_(layer.bias)
    pred = model.roi_heads.box_predictor
    for layer, std in ((pred.cls_score, 0.01), (pred.bbox_pred, 0.001), (pred.attr_score, 0.01)):
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)
    nn.init.normal_(pred.cls_embedding.weight, std=0.01)


def build_detector(config: RegionConfig) -> BottomUpAttentionDetector:
    """The network in eval mode with weights drawn from ``config.seed``.

    The draw is isolated from the global RNG (``fork_rng``), so building a model neither
    depends on nor disturbs other random state: the same config gives the same weights.
    """
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(config.seed)
        model = BottomUpAttentionDetector(config)
        _init_random(model)
    return model.eval().requires_grad_(False)
