"""Time the two region-selection procedures of vlcurate.extractors.regions.boxes on CPU.

usage: python benchmarks/box_selection.py [--proposals 300 1000] [--classes 1601]
                                          [--objects 8] [--repeat 7] [--threads N]

For each proposal count P, one synthetic image: P boxes jittered around ``--objects``
object boxes in a 800 x 600 image (so NMS has real clusters to suppress; fewer objects
make ``maxnms`` loosen its threshold further) and softmax probabilities over
``--classes`` outputs, the last one dropped as background, as the bottom-up-attention
ResNet-101 detector (1600 objects + background) gives them. Prints the median over
``--repeat`` runs, in ms per image, of:

* ``lxmert``: ``select_lxmert(proposals, probs)`` (per-class NMS over P x 1600);
* ``maxnms``: ``select_maxnms(boxes, scores)``, the scores being each box's best class
  (the class-agnostic NMS, loosened until 36 boxes survive);
* ``max``: that best-class reduction ``probs.max(dim=1)``, which ``maxnms`` mode runs
  before selecting, shown on its own so ``maxnms`` is the selector alone;

and the IoU threshold at which ``maxnms`` stopped. Times one image at a time, as the
extractor calls the selectors.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from vlcurate.extractors.regions.boxes import select_lxmert, select_maxnms


def synthetic_image(num_proposals: int, num_classes: int, num_objects: int, seed: int = 0):
    """``(boxes [P, 4], fg_probs [P, C-1])`` for one made-up image."""
    g = torch.Generator().manual_seed(seed)
    width, height = 800.0, 600.0
    centres = torch.rand(num_objects, 2, generator=g) * torch.tensor([width, height])
    sizes = 30 + torch.rand(num_objects, 2, generator=g) * 300
    obj = torch.randint(num_objects, (num_proposals,), generator=g)
    ctr = centres[obj] + torch.randn(num_proposals, 2, generator=g) * sizes[obj] * 0.15
    wh = sizes[obj] * (1 + 0.2 * torch.randn(num_proposals, 2, generator=g)).clamp(min=0.2)
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    probs = (torch.randn(num_proposals, num_classes, generator=g) * 3).softmax(dim=1)[:, :-1]
    return boxes, probs


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proposals", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--classes", type=int, default=1601, help="detector outputs incl. background")
    parser.add_argument("--objects", type=int, default=8, help="object clusters the boxes gather around")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per figure (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.objects} objects, "
          f"median of {args.repeat} runs, ms per image")
    print(f"{'P x C':>12} {'lxmert':>10} {'maxnms':>10} {'max':>8}  maxnms stopped at")
    for num_proposals in args.proposals:
        boxes, probs = synthetic_image(num_proposals, args.classes, args.objects)
        scores = probs.max(dim=1).values
        lxmert = median_ms(lambda: select_lxmert(boxes, probs), args.repeat)
        maxnms = median_ms(lambda: select_maxnms(boxes, scores), args.repeat)
        reduce = median_ms(lambda: probs.max(dim=1), args.repeat)
        sel = select_maxnms(boxes, scores)
        print(f"{num_proposals:>6} x {args.classes:<4} {lxmert:>10.2f} {maxnms:>10.3f} {reduce:>8.3f}  "
              f"IoU {sel.nms_thresh} ({len(sel)} boxes)")


if __name__ == "__main__":
    main()
