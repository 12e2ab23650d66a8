"""Feature-extraction throughput: a feature stage on a whole shard vs its model alone.

    python benchmarks/features.py --model vit --model-name ViT-B-32 --images 256 --batch-size 32

Builds a synthetic shard of ``--images`` JPEGs (``--image-size`` px on the long side,
like the download stage's output) in a temporary version directory, then measures

* ``stage``: images/s of ``run_shard`` end to end: tar read, JPEG decode and the
  model's preprocessing on the decode thread, batched forward passes, storage cast,
  building and validating the Arrow table, writing the Parquet sidecar;
* ``forward only``: images/s of the model's forward pass alone on one preprocessed
  batch of the same size, repeated as many times as the stage needs batches;
* ``decode+preprocess``: images/s of the decode thread's work alone (one thread);

and prints pipeline efficiency = stage img/s / forward-only img/s (goal >= 0.8) with
where the stage's time went. Weights are random (speed does not depend on them; no
download happens).

``--model regions --model-name butd-tiny|butd-r101`` times the ``region_features``
stage the same way, with the RPN's box deltas zeroed so that random weights still give
the ROI head its full 300 proposals (see ``full_proposals``), and adds (b): detector +
box selection over every image one at a time vs in batches of ``--batch-size``
(batches are zero-padded to their largest image).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network for a benchmark

import numpy as np
import pyarrow as pa
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vlcurate.io.parquet import write_parquet  # noqa: E402
from vlcurate.io.tar import TarSample, write_tar  # noqa: E402
from vlcurate.pipelines.stage import Layout  # noqa: E402
from vlcurate.schemas import get_schema  # noqa: E402


def synthetic_jpeg(rng: np.random.Generator, size: int) -> bytes:
    """A photo-like JPEG (smooth gradients + mild noise: decodes like a real photo,
    unlike white noise, which makes JPEG decoding several times slower)."""
    w, h = size, int(size * rng.uniform(0.6, 1.0))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3)
    freq = rng.uniform(0.005, 0.05, 3)
    img = np.stack([base[c] * (0.5 + 0.5 * np.sin(freq[c] * (x + 2 * y))) for c in range(3)], axis=-1)
    img += rng.normal(0, 8, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_shard(root: Path, n: int, size: int, seed: int = 0) -> Layout:
    """A one-shard version directory: samples parquet (all ok) + tar of ``n`` JPEGs."""
    layout, rng = Layout(root), np.random.default_rng(seed)
    keys = [f"00000_{i:06d}" for i in range(n)]
    rows = [{"key": k, "url": f"http://bench/{k}.jpg", "caption": f"image {i}", "status": "ok",
             "error_kind": None, "error_message": None, "http_status": 200, "width": size, "height": size,
             "original_width": size, "original_height": size, "sha256": k, "phash": None}
            for i, k in enumerate(keys)]
    write_parquet(pa.Table.from_pylist(rows, schema=get_schema("sample").schema), layout.samples_parquet(0), "sample")
    write_tar(layout.samples_tar(0), [TarSample(k, {"jpg": synthetic_jpeg(rng, size), "txt": b"x", "json": b"{}"})
                                      for k in keys])
    return layout


def alternate(stage, args: argparse.Namespace, forward: Callable[[], float]) -> tuple[list[float], list[float]]:
    """Seconds of ``--repeat`` whole-shard stage runs and as many ``forward()`` runs,
    alternating, so both see the same machine load (on shared machines other jobs and
    CPU steal move absolute figures more than the ratio)."""
    stage_s, fwd_s = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        stats = stage.run_shard(0)
        stage_s.append(time.perf_counter() - t0)
        assert stats.counts == {"ok": args.images}, stats.counts
        fwd_s.append(forward())
    return stage_s, fwd_s


def bench_vit(args: argparse.Namespace, layout: Layout) -> dict:
    import torch

    from vlcurate.extractors.encoding import EncodeTimings, decode_image, default_decode_threads
    from vlcurate.extractors.vit_stage import VitFeaturesConfig, VitFeatureStage
    from vlcurate.io.tar import iter_tar_files

    cfg = VitFeaturesConfig(model=args.model_name, weights=None, device=args.device, batch_size=args.batch_size,
                            storage=args.storage, decode_threads=args.decode_threads,
                            decode_processes=args.decode_processes)
    stage = VitFeatureStage(cfg, layout)
    stage.setup()
    clip = stage.clip

    # Warm-up: first calls allocate buffers / pick kernels; not part of any figure.
    stage.run_shard(0)  # also starts the decode processes, if any

    # Forward only: one preprocessed batch of the same size, as many batches as the stage runs.
    payloads = [data for _, _, data in iter_tar_files(layout.samples_tar(0), ("jpg",))]
    batch = stage.input.batch([stage.prepare(decode_image(b)) for b in payloads[: args.batch_size]])
    n_batches = -(-args.images // args.batch_size)
    sync = torch.cuda.synchronize if clip.device.type == "cuda" else (lambda: None)

    def forward() -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(n_batches):
            clip.encode_images(batch)
        sync()
        return time.perf_counter() - t0

    stage_s, fwd_s = alternate(stage, args, forward)
    timings: EncodeTimings = stage.last_timings

    t0 = time.perf_counter()
    for b in payloads:
        stage.prepare(decode_image(b))  # what the decode thread does per image
    decode_s = time.perf_counter() - t0

    stage_ips = args.images / statistics.median(stage_s)
    fwd_ips = n_batches * args.batch_size / statistics.median(fwd_s)
    return {
        "model": args.model_name, "weights": "random", "device": str(clip.device),
        "image_size": list(clip.image_size), "token_shape": list(clip.token_shape), "storage": args.storage,
        "images": args.images, "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
        "decode_threads": args.decode_threads or default_decode_threads(), "cpus": os.cpu_count(),
        "decode_processes": stage.decode_processes(),
        "stage_img_s": round(stage_ips, 1), "forward_img_s": round(fwd_ips, 1),
        "decode_preprocess_img_s": round(len(payloads) / decode_s, 1),
        "efficiency": round(stage_ips / fwd_ips, 3),
        "efficiency_per_run": [round(f / s_, 3) for s_, f in zip(stage_s, fwd_s)],
        "last_run": _last_run(timings, stage_s[-1]),
    }


def _last_run(t, stage_s: float) -> dict:
    """Where the last stage run's time went (see EncodeTimings)."""
    return {"total_s": round(stage_s, 3), "wait_for_decode_s": round(t.wait_s, 3), "start_s": round(t.start_s, 3),
            "wait_for_output_s": round(t.handoff_s, 3), "output_thread_busy_s": round(t.output_s, 3)}


def _sig4(x: float) -> float:
    """4 significant digits (butd-r101 on a CPU runs at a few hundredths of an image/s)."""
    return float(f"{x:.4g}")


def full_proposals(extractor) -> None:
    """Random weights make a ResNet-101's activations large, so the RPN's box deltas
    explode, its proposals collapse onto the image borders and NMS leaves a dozen: the
    ROI head (res5 per region) and the per-class NMS would do ~1/20 of their real work.
    Zeroing the delta layer makes the proposals the anchors themselves, so the head sees
    the full ``rpn_post_nms_topk`` (300 for butd-r101), as with trained weights."""
    head = extractor.model.proposal_generator.rpn_head.anchor_deltas
    head.weight.data.zero_()
    head.bias.data.zero_()


def bench_regions(args: argparse.Namespace, layout: Layout) -> dict:
    """The region_features stage vs the detector alone, and (b) batched vs one image at
    a time. "Forward only" is ``extract_prepared`` on images already converted and
    resized on the device: backbone, RPN, ROI head, box selection and the copy of the
    selected regions to the host, i.e. everything but decoding and resizing."""
    import torch

    from vlcurate.extractors.region_stage import RegionFeaturesConfig, RegionFeatureStage, _torch_threads
    from vlcurate.extractors.regions.extractor import prepare_image
    from vlcurate.extractors.encoding import EncodeTimings, decode_image, default_decode_threads, encode_images
    from vlcurate.io.tar import iter_tar_files

    cfg = RegionFeaturesConfig(config=args.model_name, weights=None, device=args.device, batch_size=args.batch_size,
                               storage=args.storage, decode_threads=args.decode_threads,
                               cpu_threads=args.threads or 1)
    stage = RegionFeatureStage(cfg, layout)
    stage.setup()
    ex = stage.extractor
    full_proposals(ex)
    sync = torch.cuda.synchronize if ex.device.type == "cuda" else (lambda: None)
    keys = [f"00000_{i:06d}" for i in range(args.images)]

    # Warm-up: first calls allocate buffers / pick kernels; not part of any figure.
    encode_images(layout.samples_tar(0), keys[: args.batch_size], stage.prepare, stage.encode_batch, args.batch_size)

    payloads = [data for _, _, data in iter_tar_files(layout.samples_tar(0), ("jpg",))]
    prepared = [prepare_image(decode_image(b), ex.config, ex.device) for b in payloads]
    batch = prepared[: args.batch_size]
    n_batches = -(-args.images // args.batch_size)

    def timed(fn: Callable[[], object]) -> float:
        # on a CPU the model alone runs on the stage's cpu_threads, as inside the stage
        with _torch_threads(cfg.cpu_threads if ex.device.type == "cpu" else None):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            return time.perf_counter() - t0

    stage_s, fwd_s = alternate(stage, args, lambda: timed(lambda: [ex.extract_prepared(batch)
                                                                    for _ in range(n_batches)]))
    timings: EncodeTimings = stage.last_timings

    # (b) every image once, one at a time vs in batches of --batch-size (alternating).
    chunks = [prepared[i:i + args.batch_size] for i in range(0, len(prepared), args.batch_size)]
    single_s, batched_s = [], []
    for _ in range(args.repeat):
        single_s.append(timed(lambda: [ex.extract_prepared([p]) for p in prepared]))
        batched_s.append(timed(lambda: [ex.extract_prepared(c) for c in chunks]))

    t0 = time.perf_counter()
    for b in payloads:
        stage.prepare(decode_image(b))  # what a decode thread does per image
    decode_s = time.perf_counter() - t0

    med = statistics.median
    stage_ips = args.images / med(stage_s)
    fwd_ips = n_batches * len(batch) / med(fwd_s)
    rc = ex.config
    return {
        "model": args.model_name, "weights": "random, RPN deltas zeroed (full proposals)", "device": str(ex.device),
        "image_size": [rc.min_size, rc.max_size], "token_shape": [cfg.max_boxes, rc.feature_dim],
        "proposals": rc.rpn_post_nms_topk, "storage": args.storage,
        "images": args.images, "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
        "decode_threads": args.decode_threads or default_decode_threads(), "cpus": os.cpu_count(),
        "stage_img_s": _sig4(stage_ips), "forward_img_s": _sig4(fwd_ips),
        "decode_preprocess_img_s": round(len(payloads) / decode_s, 1),
        "efficiency": round(stage_ips / fwd_ips, 3),
        "efficiency_per_run": [round(f / s_, 3) for s_, f in zip(stage_s, fwd_s)],
        "one_at_a_time_img_s": _sig4(len(prepared) / med(single_s)),
        "batched_img_s": _sig4(len(prepared) / med(batched_s)),
        "last_run": _last_run(timings, stage_s[-1]),
    }


BENCHES: dict[str, Callable[[argparse.Namespace, Layout], dict]] = {"vit": bench_vit, "regions": bench_regions}


def print_table(r: dict) -> None:
    print(f"{r['model']} (weights: {r['weights']}, speed only), device {r['device']}, "
          f"{r['images']} images, batch {r['batch_size']}, {r['cpus']} CPUs, torch threads {r['torch_threads']}, "
          f"decode threads {r['decode_threads']}, decode processes {r.get('decode_processes', 0)}, "
          f"tokens {r['token_shape']} {r['storage']}")
    rows = [("stage (run_shard, end to end)", r["stage_img_s"]), ("forward only", r["forward_img_s"]),
            ("decode+preprocess only (1 thread)", r["decode_preprocess_img_s"])]
    if "batched_img_s" in r:  # regions: (b) batched vs one image at a time
        rows += [("extraction, one image at a time", r["one_at_a_time_img_s"]),
                 (f"extraction, batches of {r['batch_size']}", r["batched_img_s"])]
    for name, ips in rows:
        print(f"  {name:<36}{ips:>9.2f} img/s" if ips >= 1 else f"  {name:<36}{ips:>9.4f} img/s  ({1 / ips:.1f} s/img)")
    print(f"  {'pipeline efficiency (stage/forward)':<36}{r['efficiency']:>9.2f}   (goal >= 0.8; "
          f"per run {', '.join(f'{e:.2f}' for e in r['efficiency_per_run'])})")
    lr = r["last_run"]
    print(f"  last run {lr['total_s']:.2f}s: calling thread {lr['start_s']:.2f}s launching batches, "
          f"{lr['wait_for_decode_s']:.2f}s waiting for decoded images, {lr['wait_for_output_s']:.2f}s waiting for "
          f"the output thread (busy {lr['output_thread_busy_s']:.2f}s: finish, table, validate, write)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(BENCHES), default="vit")
    p.add_argument("--model-name", default="vlc-tiny-vit", help="open_clip model (vit) or region config (regions)")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--image-size", type=int, default=256, help="long side of the stored JPEGs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--storage", choices=["fp16", "fp32"], default="fp16")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--decode-threads", type=int, default=0, help="the stage's decode_threads (0: one per core, <= 8)")
    p.add_argument("--decode-processes", type=int, default=None,
                   help="vit: the stage's decode_processes (default: auto, processes on CUDA)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs; the median is reported")
    p.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vlcurate-bench-") as tmp:
        layout = make_shard(Path(tmp), args.images, args.image_size)
        result = BENCHES[args.model](args, layout)
    print_table(result)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
