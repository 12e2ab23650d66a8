"""Checkpoints: detectron2-layout round trip, refusal of code-carrying pickles, key reports."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vlcurate.extractors.regions import (
    CheckpointError, RegionFeatureExtractor, build_detector, get_config, load_checkpoint, read_checkpoint,
    save_detectron2_checkpoint,
)

TINY = get_config("butd-tiny")


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((90, 120), (70, 64))]


def _state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _write_pkl(path, obj, protocol: int = 4) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


class _Payload:
    """Unpickling this runs a shell command: what a hostile 'weights' file does."""

    def __init__(self, sentinel) -> None:
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return os.system, (f"touch '{self.sentinel}'",)


def test_round_trip_gives_identical_outputs(tmp_path):
    path = tmp_path / "model_final.pkl"
    save_detectron2_checkpoint(build_detector(TINY), path)
    with open(path, "rb") as f:
        raw = pickle.load(f)  # our own trusted file: check the layout detectron2 expects
    assert set(raw) == {"model", "__author__"}
    assert isinstance(raw["model"]["backbone.res2.0.conv1.norm.running_mean"], np.ndarray)
    assert "roi_heads.box_predictor.attr_score.weight" in raw["model"]

    original = RegionFeatureExtractor(TINY, feature_dtype="float32")
    # A different seed gives different random weights, then the checkpoint overwrites them all.
    other_seed = TINY.replace(seed=123)
    reloaded = RegionFeatureExtractor(other_seed, weights=path, feature_dtype="float32")
    unloaded = RegionFeatureExtractor(other_seed, feature_dtype="float32")
    assert reloaded.load_report.ok and reloaded.load_report.loaded == len(raw["model"])
    assert not reloaded.weights_are_random and original.weights_are_random
    images = _images()
    for a, b, c in zip(original.extract(images), reloaded.extract(images), unloaded.extract(images)):
        assert a.num_boxes == b.num_boxes > 0
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.objects_id, b.objects_id)
        np.testing.assert_array_equal(a.attrs_conf, b.attrs_conf)
        assert c.features.shape != a.features.shape or not np.array_equal(c.features, a.features)


def test_torch_state_dict_files_load(tmp_path):
    source = build_detector(TINY.replace(seed=5))
    path = tmp_path / "weights.pth"
    torch.save({"model": source.state_dict()}, path)
    target = build_detector(TINY)
    assert load_checkpoint(target, path).ok
    assert torch.equal(target.roi_heads.box_predictor.cls_score.weight, source.roi_heads.box_predictor.cls_score.weight)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_bare_dicts_and_all_pickle_protocols_load(tmp_path, protocol):
    # Protocol 2 stores bytes via _codecs.encode, protocol 5 arrays via _frombuffer.
    state = _state(build_detector(TINY))
    path = tmp_path / "bare.pkl"
    _write_pkl(path, state, protocol)
    loaded = read_checkpoint(path)
    assert set(loaded) == set(state)
    assert np.array_equal(loaded["backbone.stem.conv1.weight"].numpy(), state["backbone.stem.conv1.weight"])


def test_code_execution_payload_is_refused_and_not_run(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    _write_pkl(path, {"model": {"backbone.stem.conv1.weight": _Payload(sentinel)}})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build_detector(TINY), path)
    assert str(path) in str(err.value) and "system" in str(err.value)
    assert not sentinel.exists()
    # Control: the payload is live, plain pickle would have run it.
    with open(path, "rb") as f:
        pickle.load(f)
    assert sentinel.exists()


def test_code_execution_payload_in_torch_file_is_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": _Payload(sentinel)}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_checkpoint(path)
    assert not sentinel.exists()


def test_non_numeric_arrays_and_non_checkpoints_are_refused(tmp_path):
    path = tmp_path / "strings.pkl"
    _write_pkl(path, {"model": {"x": np.array(["a", None], dtype=object)}})
    with pytest.raises(CheckpointError, match="non-numeric"):
        read_checkpoint(path)
    _write_pkl(path, [1, 2, 3])
    with pytest.raises(CheckpointError, match="expected"):
        read_checkpoint(path)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


def test_unknown_missing_and_mismatched_keys_are_reported(tmp_path):
    state = _state(build_detector(TINY.replace(seed=9)))
    del state["roi_heads.box_predictor.fc_attr.bias"]
    state["roi_heads.attribute_predictor.obj_embed.weight"] = np.zeros((11, 8), np.float32)
    state["roi_heads.box_predictor.cls_score.weight"] = np.zeros((5, 64), np.float32)
    path = tmp_path / "partial.pkl"
    _write_pkl(path, {"model": state})

    model = build_detector(TINY)
    before = model.roi_heads.box_predictor.cls_score.weight.clone()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, path)
    message = str(err.value)
    for name in ("roi_heads.box_predictor.fc_attr.bias", "roi_heads.attribute_predictor.obj_embed.weight",
                 "roi_heads.box_predictor.cls_score.weight: (5, 64) vs (11, 64)"):
        assert name in message
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, before)  # strict: nothing loaded

    report = load_checkpoint(model, path, strict=False)
    assert report.missing == ["roi_heads.box_predictor.fc_attr.bias"]
    assert report.unexpected == ["roi_heads.attribute_predictor.obj_embed.weight"]
    assert report.mismatched == ["roi_heads.box_predictor.cls_score.weight: (5, 64) vs (11, 64)"]
    assert not report.ok
    assert np.array_equal(model.backbone.stem.conv1.weight.numpy(), state["backbone.stem.conv1.weight"])
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, before)


def test_detectron2_extras_are_checked_not_loaded(tmp_path):
    model = build_detector(TINY)
    state = _state(model)
    for key in ("running_mean", "running_var"):  # old FrozenBN files lack the statistics
        del state[f"backbone.stem.conv1.norm.{key}"]
    state["pixel_mean"] = np.array(TINY.pixel_mean_bgr, np.float32).reshape(3, 1, 1)
    state["pixel_std"] = np.ones((3, 1, 1), np.float32)
    state["proposal_generator.anchor_generator.cell_anchors.0"] = model.proposal_generator.cell_anchors.numpy()
    path = tmp_path / "d2.pkl"
    _write_pkl(path, {"model": state})
    report = load_checkpoint(build_detector(TINY), path)
    assert report.ok and len(report.checked) == 3
    assert report.defaulted == ["backbone.stem.conv1.norm.running_mean", "backbone.stem.conv1.norm.running_var"]

    state["pixel_mean"] = np.array([103.53, 116.28, 123.675], np.float32)  # detectron2's ImageNet default
    _write_pkl(path, {"model": state})
    with pytest.raises(CheckpointError, match="pixel_mean"):
        load_checkpoint(build_detector(TINY), path)
    state["pixel_mean"] = np.array(TINY.pixel_mean_bgr, np.float32)
    state["proposal_generator.anchor_generator.cell_anchors.0"] *= 0.5  # trained with other anchor sizes
    _write_pkl(path, {"model": state})
    with pytest.raises(CheckpointError, match="anchors"):
        load_checkpoint(build_detector(TINY), path)
