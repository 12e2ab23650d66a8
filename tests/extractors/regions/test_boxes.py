"""Region selection on hand-made boxes and scores, with the expected answers worked out."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou, nms

from vlcurate.extractors.regions.boxes import (
    _greedy_keep_fixed_point, _greedy_keep_sequential, clip_boxes, decode_deltas, nms_thresholds, nonempty, per_class_nms_best_score, select_lxmert, select_maxnms,
)


# Two pairs of heavily overlapping boxes, far apart:
#   IoU(A, B) = 9*10 / (100 + 100 - 90) = 90/110 = 0.818;  same for C, D;  A/B vs C/D: 0.
A, B, C, D = [0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [21, 20, 31, 30]
PAIRS = torch.tensor([A, B, C, D], dtype=torch.float32)
#                         class 0  class 1
PAIR_PROBS = torch.tensor([[0.50, 0.10],   # A
                           [0.40, 0.45],   # B
                           [0.10, 0.25],   # C
                           [0.05, 0.15]])  # D
# Per-class NMS at 0.3:
#   class 0 visits A .5, B .4, C .1, D .05: keeps A (suppresses B), keeps C (suppresses D).
#   class 1 visits B .45, C .25, D .15, A .1: keeps B (suppresses A), keeps C (suppresses D).
# Best surviving score: A .5 (class 0), B .45 (class 1), C max(.1, .25) = .25, D never kept: 0.
# B survives although it overlaps A: it is the best box of another class. A class-agnostic
# NMS would have dropped it; that is the difference between the two procedures.
PAIR_BEST = [0.5, 0.45, 0.25, 0.0]


def test_per_class_best_score_by_hand():
    best = per_class_nms_best_score(PAIRS, PAIR_PROBS, 0.3)
    assert best.tolist() == pytest.approx(PAIR_BEST)


@pytest.mark.parametrize("thresh", [0.3, 0.7])
def test_per_class_nms_equals_one_torchvision_nms_per_class(thresh):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(60, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(60, 2, generator=g) * 30], dim=1)
    probs = torch.rand(60, 7, generator=g)
    expected_kept = torch.zeros(7, 60, dtype=torch.bool)
    expected = torch.zeros(60)
    for c in range(7):
        keep = nms(boxes, probs[:, c], thresh)
        expected_kept[c, keep] = True
        expected[keep] = torch.maximum(expected[keep], probs[keep, c])
    assert torch.equal(per_class_nms_best_score(boxes, probs, thresh), expected)
    # Both greedy forms (sequential on CPU, fixed point on CUDA), the latter in odd chunks.
    overlaps = box_iou(boxes, boxes) > thresh
    order = torch.argsort(probs.t(), dim=1, descending=True, stable=True)
    assert torch.equal(_greedy_keep_sequential(overlaps, order), expected_kept)
    assert torch.equal(_greedy_keep_fixed_point(overlaps, order, max_elements=3 * 60 * 60), expected_kept)


def test_lxmert_fixed_36_takes_every_proposal_when_fewer_exist():
    # 3 proposals pass conf 0.2 (A, B, C), below min_boxes=36, so the 36 best are taken
    # anyway: only 4 exist, so all 4, best first; D keeps its score 0.
    sel = select_lxmert(PAIRS, PAIR_PROBS, min_boxes=36, max_boxes=36, nms_thresh=0.3, conf_thresh=0.2)
    assert sel.indices.tolist() == [0, 1, 2, 3]
    assert sel.scores.tolist() == pytest.approx(PAIR_BEST)
    assert sel.nms_thresh == 0.3


def test_lxmert_exactly_num_boxes_when_enough():
    # max_boxes=min_boxes=2 with 3 confident proposals: the 2 best, A then B.
    sel = select_lxmert(PAIRS, PAIR_PROBS, min_boxes=2, max_boxes=2)
    assert sel.indices.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("min_boxes", "max_boxes", "conf", "expected"),
    [
        (1, 10, 0.3, [0, 1]),  # A .5 and B .45 pass 0.3; 2 is within [1, 10]
        (3, 10, 0.3, [0, 1, 2]),  # only 2 pass, fewer than 3: the 3 best (C .25 joins)
        (1, 1, 0.3, [0]),  # 2 pass, more than 1: the best
        (0, 10, 0.6, []),  # none passes and nothing is required
        (1, 10, 0.0, [0, 1, 2, 3]),  # everything passes (D's 0 >= 0)
    ],
)
def test_lxmert_variable_count(min_boxes, max_boxes, conf, expected):
    sel = select_lxmert(PAIRS, PAIR_PROBS, min_boxes=min_boxes, max_boxes=max_boxes, conf_thresh=conf)
    assert sel.indices.tolist() == expected


def test_lxmert_no_proposals():
    sel = select_lxmert(torch.zeros(0, 4), torch.zeros(0, 5))
    assert len(sel) == 0


# A nested stack of boxes plus a far one:
#   IoU(A, B) = 100/120 = 0.833, IoU(A, C) = 100/160 = 0.625, IoU(B, C) = 120/160 = 0.75, D far away.
STACK = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 12], [0, 0, 10, 16], [50, 50, 60, 60]], dtype=torch.float32)
STACK_SCORES = torch.tensor([0.9, 0.8, 0.7, 0.6])
# Class-agnostic NMS visiting A, B, C, D:
#   t = 0.3 .. 0.6: A kept; B (0.833) and C (0.625) suppressed by A; D kept      -> [A, D]
#   t = 0.7, 0.8:   A kept; B (0.833 > t) suppressed; C (0.625 <= t vs A) kept; D -> [A, C, D]
#   t = 0.9:        all kept (B 0.833, C 0.75 vs B)                               -> [A, B, C, D]


@pytest.mark.parametrize(
    ("min_boxes", "max_boxes", "expected", "thresh"),
    [
        (2, 2, [0, 3], 0.3),  # 0.3 already leaves 2
        (3, 3, [0, 2, 3], 0.7),  # 0.3..0.6 leave 2 < 3; 0.7 leaves 3
        (4, 4, [0, 1, 2, 3], 0.9),  # 0.7 and 0.8 leave 3; 0.9 leaves 4
        (5, 5, [0, 1, 2, 3], 0.9),  # never 5: the last threshold's result
        (1, 1, [0], 0.3),  # 0.3 leaves 2, capped at max_boxes 1
        (3, 10, [0, 2, 3], 0.7),  # variable: stop at the first threshold giving >= 3
    ],
)
def test_maxnms_raises_threshold_until_enough(min_boxes, max_boxes, expected, thresh):
    sel = select_maxnms(STACK, STACK_SCORES, min_boxes=min_boxes, max_boxes=max_boxes)
    assert sel.indices.tolist() == expected
    assert sel.scores.tolist() == pytest.approx(STACK_SCORES[expected].tolist())
    assert sel.nms_thresh == pytest.approx(thresh)


def test_nms_thresholds_have_no_float_drift():
    assert nms_thresholds(0.3, 0.1, 0.9) == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def test_decode_deltas_by_hand():
    box = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), w 10, h 20
    weights = (10.0, 10.0, 5.0, 5.0)
    assert torch.allclose(decode_deltas(torch.zeros(1, 8), box, weights, 4.0), box.repeat(1, 2))
    # dx = 0.5 (times weight 10) moves the centre by half a width: x 5 -> 10; dw = log 2
    # (times weight 5) doubles the width: 10 -> 20. So x1 = 10 - 10 = 0, x2 = 20.
    deltas = torch.tensor([[5.0, 0.0, 5 * math.log(2.0), 0.0]])
    assert decode_deltas(deltas, box, weights, 4.0)[0].tolist() == pytest.approx([0.0, 0.0, 20.0, 20.0])
    # Huge dw is clamped: width grows by exp(clamp) at most.
    huge = decode_deltas(torch.tensor([[0.0, 0.0, 1e4, 0.0]]), box, weights, 1.0)
    assert (huge[0, 2] - huge[0, 0]).item() == pytest.approx(10 * math.e, rel=1e-5)


def test_clip_and_nonempty():
    boxes = torch.tensor([[-5.0, -5.0, 50.0, 8.0], [3.0, 3.0, 3.0, 9.0]])
    assert clip_boxes(boxes, 6, 40).tolist() == [[0.0, 0.0, 40.0, 6.0], [3.0, 3.0, 3.0, 6.0]]
    assert nonempty(boxes).tolist() == [True, False]
    assert nonempty(boxes, min_size=12.0).tolist() == [True, False]  # 13 tall > 12, 55 wide


@pytest.mark.gpu
def test_per_class_nms_on_cuda_matches_cpu():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(300, 2, generator=g) * 500
    boxes = torch.cat([xy, xy + 10 + torch.rand(300, 2, generator=g) * 200], dim=1)
    probs = torch.rand(300, 1601, generator=g).softmax(dim=1)[:, :1600]
    cpu = per_class_nms_best_score(boxes, probs, 0.3)
    assert torch.equal(per_class_nms_best_score(boxes.cuda(), probs.cuda(), 0.3).cpu(), cpu)


def _reference_nms(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> list[int]:
    """Greedy NMS as plainly as possible: visit boxes best first (ties: lower index first),
    keep one unless an already kept box overlaps it by more than ``thresh``.

    IoU is computed in float32 in torchvision's order of operations, then compared with
    the threshold as a Python (double) float, as torchvision's CPU kernel does: for a
    float32 IoU of 0.3, ``iou > 0.3`` is true in double but false once 0.3 is rounded to
    float32 (which is what ``tensor > 0.3`` would do).
    """
    b = boxes.float()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = (torch.minimum(b[:, None, 2], b[None, :, 2]) - torch.maximum(b[:, None, 0], b[None, :, 0])).clamp(min=0)
    h = (torch.minimum(b[:, None, 3], b[None, :, 3]) - torch.maximum(b[:, None, 1], b[None, :, 1])).clamp(min=0)
    inter = w * h
    iou = (inter / (area[:, None] + area[None, :] - inter)).tolist()  # NaN (0/0) never suppresses
    s = scores.float().tolist()
    keep: list[int] = []
    for i in sorted(range(len(s)), key=lambda i: -s[i]):
        if not any(iou[k][i] > thresh for k in keep):
            keep.append(i)
    return keep


def _random_boxes_and_scores(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Small-integer boxes (exact IoUs such as 0.5 and 0.3, duplicates, zero-width and
    inverted boxes) or real-valued ones; scores from a few values (ties) or continuous."""
    if torch.rand(1, generator=g).item() < 0.6:
        xy = torch.randint(0, 6, (n, 2), generator=g).float()
        boxes = torch.cat([xy, xy + torch.randint(-1, 6, (n, 2), generator=g).float()], dim=1)
    else:
        xy = torch.rand(n, 2, generator=g) * 100
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 60], dim=1)
    if torch.rand(1, generator=g).item() < 0.5:
        scores = torch.randint(1, 4, (n,), generator=g).float() / 4
    else:
        scores = torch.rand(n, generator=g)
    return boxes, scores


def test_maxnms_matches_reference_greedy_nms_on_random_inputs():
    g = torch.Generator().manual_seed(2)
    ties = 0
    for _ in range(400):
        n = int(torch.randint(0, 50, (1,), generator=g))
        boxes, scores = _random_boxes_and_scores(g, n)
        ties += len(set(scores.tolist())) < n
        min_boxes = int(torch.randint(0, 20, (1,), generator=g))
        max_boxes = min_boxes + int(torch.randint(1 if min_boxes == 0 else 0, 20, (1,), generator=g))
        expected, expected_thresh = [], 0.3
        for expected_thresh in nms_thresholds(0.3, 0.1, 0.9):
            expected = _reference_nms(boxes, scores, expected_thresh)[:max_boxes]
            if len(expected) >= min_boxes:
                break
        sel = select_maxnms(boxes, scores, min_boxes=min_boxes, max_boxes=max_boxes)
        assert sel.indices.tolist() == expected
        assert sel.nms_thresh == expected_thresh
        assert torch.equal(sel.scores, scores[expected])
    assert ties > 100


def test_reference_nms_compares_iou_with_the_threshold_in_double():
    # IoU 3/10 is 0.30000001 in float32: above the double 0.3, so suppressed at 0.3.
    boxes = torch.tensor([[0, 0, 10, 1], [0, 0, 3, 1]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8])
    assert _reference_nms(boxes, scores, 0.3) == nms(boxes, scores, 0.3).tolist() == [0]
