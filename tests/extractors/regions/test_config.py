"""Region configs: strict loading, named configs, and the detectron2 key layout they build."""

from __future__ import annotations

import json

import pytest
import torch

from vlcurate.extractors.regions import RegionConfig, build_detector, config_names, get_config
from vlcurate.extractors.regions.config import resolve_config
from vlcurate.extractors.regions.rpn import cell_anchors
from vlcurate.typed import ConfigError


def test_named_configs():
    assert config_names() == ["butd-r101", "butd-tiny"]
    r101 = get_config("butd-r101")
    assert r101.blocks_per_stage == (3, 4, 23, 3)
    assert (r101.num_classes, r101.num_attributes, r101.feature_dim) == (1600, 400, 2048)
    assert (r101.rpn_pre_nms_topk, r101.rpn_post_nms_topk, r101.rpn_nms_thresh) == (6000, 300, 0.7)
    assert r101.background == "last" and r101.num_anchors == 12
    assert get_config("butd-tiny").feature_dim == 64


def test_unknown_name_lists_known():
    with pytest.raises(ConfigError, match="butd-r101, butd-tiny"):
        get_config("butd-r50")


def test_from_dict_rejects_unknown_key_naming_it():
    data = get_config("butd-tiny").to_dict() | {"anchor_szes": [32]}
    with pytest.raises(ConfigError, match="anchor_szes: unknown key"):
        RegionConfig.from_dict(data)


def test_from_dict_rejects_bad_values():
    with pytest.raises(ConfigError, match="background"):
        RegionConfig.from_dict({"name": "x", "background": "middle"})
    with pytest.raises(ConfigError, match="blocks_per_stage"):
        RegionConfig.from_dict({"name": "x", "blocks_per_stage": [1, 1, 1]})


def test_json_round_trip_and_fingerprint(tmp_path):
    tiny = get_config("butd-tiny")
    path = tmp_path / "tiny.json"
    tiny.to_json(path)
    assert json.loads(path.read_text())["anchor_sizes"] == [64.0, 128.0, 256.0, 512.0]
    assert RegionConfig.from_json(path) == tiny
    assert resolve_config(str(path)) == tiny
    assert tiny.fingerprint() == RegionConfig.from_json(path).fingerprint()
    assert tiny.replace(rpn_nms_thresh=0.6).fingerprint() != tiny.fingerprint()


def test_cell_anchor_order_is_size_major():
    # detectron2: for size in sizes: for ratio in ratios; ratio = h / w, area = size**2.
    a = cell_anchors([64.0, 128.0], [0.5, 1.0, 2.0])
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    assert torch.allclose(w * h, torch.tensor([64.0**2] * 3 + [128.0**2] * 3))
    assert torch.allclose(h / w, torch.tensor([0.5, 1.0, 2.0] * 2))


def test_r101_state_dict_follows_detectron2_layout():
    # Built on the meta device: shapes without allocating 260 MB.
    with torch.device("meta"):
        model = build_detector(get_config("butd-r101"))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {
        "backbone.stem.conv1.weight": (64, 3, 7, 7),
        "backbone.stem.conv1.norm.running_var": (64,),
        "backbone.res2.0.shortcut.weight": (256, 64, 1, 1),
        "backbone.res2.0.conv1.weight": (64, 64, 1, 1),
        "backbone.res3.0.conv1.weight": (128, 256, 1, 1),  # stride lives in this 1x1
        "backbone.res4.22.conv3.norm.bias": (1024,),
        "proposal_generator.rpn_head.conv.weight": (512, 1024, 3, 3),
        "proposal_generator.rpn_head.objectness_logits.weight": (12, 512, 1, 1),
        "proposal_generator.rpn_head.anchor_deltas.weight": (48, 512, 1, 1),
        "roi_heads.res5.0.shortcut.weight": (2048, 1024, 1, 1),
        "roi_heads.res5.2.conv2.weight": (512, 512, 3, 3),
        "roi_heads.box_predictor.cls_score.weight": (1601, 2048),
        "roi_heads.box_predictor.bbox_pred.weight": (6400, 2048),
        "roi_heads.box_predictor.cls_embedding.weight": (1601, 256),
        "roi_heads.box_predictor.fc_attr.weight": (512, 2304),
        "roi_heads.box_predictor.attr_score.weight": (401, 512),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    assert "backbone.res5.0.conv1.weight" not in shapes  # C4: res5 belongs to the ROI head
    assert len([k for k in shapes if k.startswith("backbone.res4.") and k.endswith("conv1.weight")]) == 23
    res5 = model.roi_heads.res5
    assert res5[0].conv1.stride == (1, 1) and res5[0].shortcut.stride == (1, 1)
    assert all(b.conv2.dilation == (2, 2) and b.conv2.padding == (2, 2) for b in res5)
    assert model.backbone.res3[0].conv1.stride == (2, 2) and model.backbone.res3[0].conv2.stride == (1, 1)


def test_caffe_background_first_layout():
    with torch.device("meta"):
        model = build_detector(get_config("butd-tiny").replace(background="first"))
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 11 * 4  # background regressed too
