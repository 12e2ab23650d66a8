"""Training export throughput on a synthetic version (no download, no models).

Writes a version of N samples (shards of --per-shard): samples parquet + tar (one
small JPEG per sample), a caption_filter decision file dropping ~10 %, and a
vit_features sidecar of [T, D] float16 tokens; then times
``vlcurate export webdataset|parquet`` on it with 1 and 2 local workers, side by side.

    python benchmarks/export_training.py --samples 10000 --per-shard 500 --tokens 16x192
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from PIL import Image

from vlcurate.io.parquet import write_parquet
from vlcurate.io.stats import ShardStats, write_stats
from vlcurate.io.tar import TarSample, encode_json, write_tar
from vlcurate.pipelines.stage import Layout, StageInfo
from vlcurate.schemas.features import feature_metadata, tensor_array
from vlcurate.versions import read_markers, write_manifest

STAGES = [("download", "download"), ("caption_filter", "caption_filter"), ("vit_features", "vit_features")]


@dataclass(frozen=True)
class _Output:
    name: str = "synthetic"
    version: str = "v1"
    parent: str | None = None


@dataclass(frozen=True)
class _Recipe:
    output: _Output = field(default_factory=_Output)

    def hash(self) -> str:
        return "0" * 64

    def resolved(self) -> dict:
        return {"stages": [{kind: {}} for _, kind in STAGES]}


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), ((i * 7) % 256, (i * 13) % 256, 90)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_version(root: str, samples: int, per_shard: int, tokens: tuple[int, int]) -> str:
    version = os.path.join(root, "synthetic", "v1")
    layout = Layout.for_stages(version, STAGES)
    rng = np.random.default_rng(0)
    shards = -(-samples // per_shard)
    for shard in range(shards):
        keys = [f"{shard:05d}_{i:06d}" for i in range(min(per_shard, samples - shard * per_shard))]
        n = len(keys)
        caps = [f"caption {k}" for k in keys]
        rows = pa.table({"key": keys, "url": [f"http://x/{k}.jpg" for k in keys], "caption": caps,
                         "status": ["ok"] * n, "error_kind": pa.nulls(n, pa.string()),
                         "error_message": pa.nulls(n, pa.string()), "http_status": pa.array([200] * n, pa.int32()),
                         "width": pa.array([64] * n, pa.int32()), "height": pa.array([48] * n, pa.int32()),
                         "original_width": pa.array([64] * n, pa.int32()),
                         "original_height": pa.array([48] * n, pa.int32()),
                         "sha256": keys, "phash": keys, "first_error_kind": pa.nulls(n, pa.string()),
                         "first_error_message": pa.nulls(n, pa.string()),
                         "first_http_status": pa.nulls(n, pa.int32())})
        files = [write_parquet(rows, layout.samples_parquet(shard), "sample")]
        files.append(write_tar(layout.samples_tar(shard), (
            TarSample(k, {"jpg": _jpeg(i), "txt": c.encode(),
                          "json": encode_json({"key": k, "caption": c, "url": f"http://x/{k}.jpg",
                                               "width": 64, "height": 48})})
            for i, (k, c) in enumerate(zip(keys, caps)))))
        write_stats(ShardStats("download", shard, n, {"ok": n}, [f.relative_to(version) for f in files]),
                    layout.stats("download", shard))
        keep = rng.random(n) > 0.1
        decisions = pa.table({"key": keys, "stage": ["caption_filter"] * n, "keep": keep,
                              "reason": [None if k else "caption_too_short" for k in keep],
                              "score": pa.nulls(n, pa.float64()), "detail": pa.nulls(n, pa.string())})
        rec = write_parquet(decisions, layout.sidecar("caption_filter", shard), "decision")
        write_stats(ShardStats("caption_filter", shard, n, {"kept": int(keep.sum()),
                                                            "dropped.caption_too_short": int((~keep).sum())},
                               [rec.relative_to(version)]), layout.stats("caption_filter", shard))
        arrays = [rng.standard_normal(tokens).astype(np.float16) for _ in keys]
        vit = pa.table({"key": keys, "status": ["ok"] * n, "error_kind": pa.nulls(n, pa.string()),
                        "error_message": pa.nulls(n, pa.string()), "tokens": tensor_array(arrays, "float16")})
        rec = write_parquet(vit, layout.sidecar("vit_features", shard), "vit_features",
                            metadata=feature_metadata({"tokens": (list(tokens), "float16")}))
        write_stats(ShardStats("vit_features", shard, n, {"ok": n}, [rec.relative_to(version)]),
                    layout.stats("vit_features", shard))
    stats, records = read_markers(version, [name for name, _ in STAGES], shards)
    write_manifest(version, _Recipe(), [], stats, records, {name: StageInfo() for name, _ in STAGES})
    return version


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--tokens", default="16x192")
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    tokens = tuple(int(x) for x in args.tokens.split("x"))
    root = tempfile.mkdtemp(prefix="vlcurate-export-bench-")
    try:
        started = time.monotonic()
        version = make_version(root, args.samples, args.per_shard, tokens)
        print(f"synthetic version: {args.samples} samples, {args.per_shard} per shard, tokens {tokens} "
              f"({time.monotonic() - started:.1f} s to write)")
        for fmt in ("webdataset", "parquet"):
            for workers in args.workers.split(","):
                out = os.path.join(root, "synthetic", f"{fmt}-{workers}")
                started = time.monotonic()
                subprocess.run([sys.executable, "-m", "vlcurate.cli", "export", fmt, version, out,
                                "--samples-per-shard", "1000", "--shuffle-seed", "1", "--features", "vit",
                                "--workers", workers], check=True, stdout=subprocess.DEVNULL)
                took = time.monotonic() - started
                size = sum(os.path.getsize(os.path.join(out, "train", f)) for f in os.listdir(os.path.join(out, "train")))
                kept = json.load(open(os.path.join(out, "manifest.json")))["stages"][0]["counts"]["exported"]
                print(f"{fmt:<11} workers={workers}  {took:6.1f} s  {kept / took:7.0f} samples/s  "
                      f"{size / took / 1e6:6.1f} MB/s written")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
