"""Extractor: Caffe preprocessing, box mapping to original pixels, output shapes, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlcurate.extractors.regions import RegionFeatureExtractor, get_config
from vlcurate.extractors.regions.extractor import pad_batch, prepare_image, resize_plan
from vlcurate.extractors.regions.model import DetectorOutput
from vlcurate.typed import ConfigError

TINY = get_config("butd-tiny")
R101 = get_config("butd-r101")


def _image(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((480, 640), (1.25, 600, 800)),  # shortest side -> 600; longest 800 <= 1000
        ((375, 500), (1.6, 600, 800)),
        ((1000, 1000), (0.6, 600, 600)),  # shrinking works the same way
        ((500, 2000), (0.5, 250, 1000)),  # 600/500 would make the long side 2400: cap it at 1000
        ((600, 1001), (1000 / 1001, 599, 1000)),  # 1001 > 1000: the cap wins by one pixel
        ((600, 1000), (1.0, 600, 1000)),  # exactly at both limits: untouched
    ],
)
def test_resize_plan_shortest_600_longest_1000(hw, expected):
    scale, h, w = resize_plan(*hw, R101.min_size, R101.max_size)
    assert (h, w) == expected[1:] and scale == pytest.approx(expected[0])


def test_prepare_image_is_bgr_minus_mean():
    red = Image.new("RGB", (64, 80), (255, 0, 0))  # w 64, h 80: shortest side already 64
    prepared = prepare_image(red, TINY)
    assert prepared.tensor.shape == (3, 80, 64) and prepared.scale == 1.0
    b, g, r = TINY.pixel_mean_bgr
    assert prepared.tensor[:, 5, 5].tolist() == pytest.approx([-b, -g, 255 - r], abs=1e-4)
    grey = prepare_image(Image.new("L", (128, 200), 100), TINY)  # grey scale is accepted
    assert grey.tensor.shape == (3, 100, 64) and grey.scale == pytest.approx(0.5)


def test_resize_matches_caffe_cv2_on_float_bgr():
    cv2 = pytest.importorskip("cv2")
    image = _image(37, 53)
    config = R101.replace(min_size=150, max_size=400)
    prepared = prepare_image(image, config)
    bgr = np.asarray(image, np.float32)[:, :, ::-1] - np.asarray(config.pixel_mean_bgr, np.float32)
    expected = cv2.resize(bgr, None, None, fx=prepared.scale, fy=prepared.scale, interpolation=cv2.INTER_LINEAR)
    assert prepared.tensor.shape[1:] == expected.shape[:2]
    np.testing.assert_allclose(prepared.tensor.permute(1, 2, 0).numpy(), expected, atol=1e-3)


def test_pad_batch_pads_bottom_right_to_divisible_size():
    batch = pad_batch([torch.ones(3, 5, 7), torch.ones(3, 6, 4)], size_divisibility=4)
    assert batch.shape == (2, 3, 8, 8)
    assert batch[0, :, :5, :7].eq(1).all() and batch[0, :, 5:].eq(0).all() and batch[1, :, :, 4:].eq(0).all()


class _FixedDetector(torch.nn.Module):
    """Stands in for the network: known proposals and scores in resized-image pixels."""

    def __init__(self, proposals: list[list[float]], class_logits: list[list[float]], config=TINY) -> None:
        super().__init__()
        self.config = config
        self.proposals = torch.tensor(proposals).reshape(-1, 4)
        self.logits = torch.tensor(class_logits).reshape(len(self.proposals), TINY.num_classes + 1)
        self.sizes: list[tuple[int, int]] = []

    def forward(self, images, image_sizes):
        self.sizes = list(image_sizes)
        n = len(self.proposals)
        return [DetectorOutput(
            proposals=self.proposals, objectness_logits=torch.zeros(n), features=torch.arange(n * 64.0).view(n, 64),
            class_logits=self.logits, box_deltas=torch.zeros(n, self.config.num_bbox_reg_classes * 4),
            attr_logits=torch.zeros(n, TINY.num_attributes + 1),
        ) for _ in image_sizes]


@pytest.mark.parametrize("selection", ["lxmert", "maxnms"])
def test_boxes_come_back_in_original_pixels(selection):
    # 100 x 200 image: 64/100 would make the long side 128 > 100, so scale = 100/200 = 0.5
    # and the network sees 50 x 100. A proposal [10, 5, 40, 25] there is [20, 10, 80, 50]
    # in the original; [90, 40, 130, 70] runs past the resized image and clips to
    # [180, 80, 200, 100]. Background is the last logit; class 3 wins for both boxes.
    logits = [[0.0] * 11, [0.0] * 11]
    logits[0][3], logits[1][3] = 5.0, 4.0
    extractor = RegionFeatureExtractor(TINY, selection=selection, min_boxes=1, max_boxes=5)
    extractor.model = _FixedDetector([[10, 5, 40, 25], [90, 40, 130, 70]], logits)
    [regions] = extractor.extract([_image(100, 200)])
    assert extractor.model.sizes == [(50, 100)]
    assert (regions.img_h, regions.img_w, regions.num_boxes) == (100, 200, 2)
    np.testing.assert_allclose(regions.boxes, [[20, 10, 80, 50], [180, 80, 200, 100]])
    assert regions.objects_id.tolist() == [3, 3]
    p = np.exp(5.0) / (np.exp(5.0) + 10)
    assert regions.objects_conf[0] == pytest.approx(p, rel=1e-5)
    # Attributes: uniform logits over 5 + "none" -> 1/6 each, the best real one is id 0.
    assert regions.attrs_id.tolist() == [0, 0] and regions.attrs_conf.tolist() == pytest.approx([1 / 6] * 2)
    np.testing.assert_array_equal(regions.features[1], np.arange(64, 128, dtype=np.float16))


def test_caffe_layout_background_first():
    # Background at index 0: foreground class 3 is logit 4, box deltas include background.
    config = TINY.replace(background="first")
    logits = [[0.0] * 11]
    logits[0][4] = 5.0
    for selection in ("lxmert", "maxnms"):
        extractor = RegionFeatureExtractor(config, selection=selection, min_boxes=1)
        extractor.model = _FixedDetector([[10, 5, 40, 25]], logits, config)
        [regions] = extractor.extract([_image(100, 200)])
        assert regions.objects_id.tolist() == [3]
        np.testing.assert_allclose(regions.boxes, [[20, 10, 80, 50]], atol=1e-4)


def test_zero_proposals_give_empty_regions():
    for selection in ("lxmert", "maxnms"):
        extractor = RegionFeatureExtractor(TINY, selection=selection)
        extractor.model = _FixedDetector([], [])
        [regions] = extractor.extract([_image(64, 64)])
        assert regions.num_boxes == 0 and regions.features.shape == (0, 64) and regions.boxes.shape == (0, 4)


def test_tiny_random_model_returns_what_exists_below_36():
    extractor = RegionFeatureExtractor(TINY.replace(rpn_post_nms_topk=20))
    assert extractor.weights_are_random and extractor.describe()["weights_are_random"]
    for regions in extractor.extract([_image(90, 120), _image(64, 64, seed=1)]):
        assert 0 < regions.num_boxes <= 20 < 36
        assert regions.boxes.shape == (regions.num_boxes, 4) and regions.boxes.dtype == np.float32
        assert regions.features.shape == (regions.num_boxes, 64) and regions.features.dtype == np.float16
        assert regions.objects_id.dtype == np.int64 and regions.attrs_id.dtype == np.int64
        assert regions.objects_conf.dtype == np.float32 and regions.attrs_conf.dtype == np.float32
        assert (regions.objects_id < TINY.num_classes).all() and (regions.attrs_id < TINY.num_attributes).all()
        assert (regions.boxes[:, [0, 2]] <= regions.img_w).all() and (regions.boxes[:, [1, 3]] <= regions.img_h).all()
        assert (regions.boxes >= 0).all() and np.isfinite(regions.features).all()


def test_deterministic_and_batch_of_equal_sizes_matches_singles():
    images = [_image(80, 96, seed=s) for s in range(3)]
    single = RegionFeatureExtractor(TINY, feature_dtype="float32").extract(images)
    batched = RegionFeatureExtractor(TINY, feature_dtype="float32", batch_size=3).extract(images)
    again = RegionFeatureExtractor(TINY, feature_dtype="float32").extract(images)
    for a, b, c in zip(single, batched, again):
        np.testing.assert_array_equal(a.features, c.features)  # same seed, same CPU: bit-identical
        np.testing.assert_array_equal(a.boxes, c.boxes)
        assert a.num_boxes == b.num_boxes
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.features, b.features, rtol=1e-4, atol=1e-3)


def test_mixed_size_batches_keep_each_image_in_its_own_frame():
    images = [_image(60, 150), _image(130, 70, seed=2)]
    results = RegionFeatureExtractor(TINY, selection="maxnms", batch_size=2).extract(images)
    for image, regions in zip(images, results):
        assert (regions.img_w, regions.img_h) == image.size
        assert regions.num_boxes > 0
        assert (regions.boxes[:, 2] <= image.width).all() and (regions.boxes[:, 3] <= image.height).all()


def test_bad_arguments_fail_fast():
    with pytest.raises(ConfigError, match="lxmert, maxnms"):
        RegionFeatureExtractor(TINY, selection="topk")
    with pytest.raises(ConfigError, match="min_boxes"):
        RegionFeatureExtractor(TINY, min_boxes=50, max_boxes=36)
    with pytest.raises(ConfigError, match="float16, float32"):
        RegionFeatureExtractor(TINY, feature_dtype="bfloat16")


@pytest.mark.gpu
def test_cuda_runs_and_agrees_with_cpu():
    images = [_image(90, 120), _image(64, 80, seed=3)]
    cpu = RegionFeatureExtractor(TINY, feature_dtype="float32").extract(images)
    gpu = RegionFeatureExtractor(TINY, feature_dtype="float32", device="cuda").extract(images)
    for a, b in zip(cpu, gpu):
        assert a.num_boxes == b.num_boxes
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.5)
        np.testing.assert_allclose(a.features, b.features, rtol=2e-2, atol=0.5)
