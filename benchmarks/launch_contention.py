"""How much busy decode workers slow the thread that launches the model.

    python benchmarks/launch_contention.py --model-name ViT-L-14 --batch-size 128 --workers 8

Times ``vit_features``' calling-thread work per batch (``start_batch``: stack and copy
the uint8 batch, normalise, launch the forward pass, cast and queue the copies back)
on one prepared batch, then waits for the device, in three conditions: nothing else
running; ``--workers`` threads decoding and resizing JPEGs in this process, as the
stage's ``decode_threads`` do; the same work in ``--workers`` processes, as its
``decode_processes`` do. On a GPU the launch should take a fraction of the forward
pass; decode threads hold the GIL for PIL's Python parts and stretch it. Weights are
random (speed only).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.features import make_shard  # noqa: E402


def _churn(payloads: list[bytes], prepare, stop) -> None:
    from vlcurate.extractors.encoding import decode_image

    while not stop.is_set():
        for b in payloads:
            prepare(decode_image(b))


def main(argv: list[str] | None = None) -> int:
    import torch

    from vlcurate.extractors.encoding import decode_image
    from vlcurate.extractors.vit_stage import VitFeaturesConfig, VitFeatureStage
    from vlcurate.io.tar import iter_tar_files

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-name", default="vlc-tiny-vit")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="vlcurate-bench-") as tmp:
        layout = make_shard(Path(tmp), max(args.batch_size, 64), 256)
        stage = VitFeatureStage(VitFeaturesConfig(model=args.model_name, batch_size=args.batch_size,
                                                  device=args.device), layout)
        stage.setup()
        payloads = [d for _, _, d in iter_tar_files(layout.samples_tar(0), ("jpg",))]
        prepare = stage.image_prepare()
        items = [prepare(decode_image(b)) for b in payloads[:args.batch_size]]
        cuda = stage.clip.device.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)

        def measure(label: str) -> None:
            launch, wall = [], []
            for _ in range(args.batches):
                sync()
                t0 = time.perf_counter()
                started = stage.start_batch(items)
                launch.append(time.perf_counter() - t0)
                stage.finish_batch(started)
                wall.append(time.perf_counter() - t0)
            print(f"  {label:<34} launch {statistics.median(launch) * 1e3:8.1f} ms/batch, "
                  f"launch + finish {statistics.median(wall) * 1e3:8.1f} ms/batch")

        print(f"{args.model_name} (random weights), device {stage.clip.device}, batch {args.batch_size}, "
              f"{os.cpu_count()} CPUs, {args.workers} decode workers")
        measure("warm-up")
        measure("quiet")
        for kind in ("threads", "processes"):
            if kind == "threads":
                stop = threading.Event()
                workers = [threading.Thread(target=_churn, args=(payloads, prepare, stop), daemon=True)
                           for _ in range(args.workers)]
            else:
                ctx = multiprocessing.get_context("spawn")
                stop = ctx.Event()
                workers = [ctx.Process(target=_churn, args=(payloads, prepare, stop), daemon=True)
                           for _ in range(args.workers)]
            for w in workers:
                w.start()
            time.sleep(3.0 if kind == "processes" else 0.5)  # spawned processes import first
            measure(f"{args.workers} decode {kind} busy")
            stop.set()
            for w in workers:
                w.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
