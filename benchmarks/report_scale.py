"""``vlcurate report`` on versions of growing size: the page's bytes and the time to
write it stay bounded (at most ``max_shards`` shards are read).

A large version is made without a build: the shards of a built one (the demo's) are
replicated ``copies`` times under new shard numbers, with only the files the report
reads (samples Parquet and tar, the filters' decision sidecars) and a manifest whose
shard numbers and counts are scaled to match.

    vlcurate demo --out /tmp/rs                       # once: the version to replicate
    python benchmarks/report_scale.py /tmp/rs/demo/v1 --copies 1 10 100
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from vlcurate.export.html_report import write_report
from vlcurate.io import storage
from vlcurate.versions import load_manifest, version_layout

DECISION_STAGES_KIND = "decision"


def replicate(source: str, copies: int, out: Path) -> Path:
    manifest = load_manifest(source)
    layout = version_layout(source, manifest)
    shards = manifest["stages"][0]["shards"]
    target = out / f"x{copies}"
    target_layout = version_layout(target, manifest)
    decision_stages = [e.name for e in layout.stages if e.record_kind == DECISION_STAGES_KIND]
    for copy in range(copies):
        for shard in range(shards):
            new = copy * shards + shard
            for src, dst in [(layout.samples_parquet(shard), target_layout.samples_parquet(new)),
                             (layout.samples_tar(shard), target_layout.samples_tar(new)),
                             *((layout.sidecar(s, shard), target_layout.sidecar(s, new)) for s in decision_stages)]:
                storage.write_bytes(dst, storage.read_bytes(src))
    scaled = dict(manifest)
    scaled["stages"] = [{**s, "shards": s["shards"] * copies, "rows": s["rows"] * copies,
                         "counts": {k: v * copies for k, v in s["counts"].items()}} for s in manifest["stages"]]
    storage.write_bytes(storage.join(target, "manifest.json"), json.dumps(scaled).encode())
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("version_dir")
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 10, 100])
    args = parser.parse_args()
    print(f"{'shards':>7} {'rows':>8} {'version MB':>11} {'report KB':>10} {'seconds':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for copies in args.copies:
            version = replicate(args.version_dir, copies, Path(tmp))
            size = sum(f.size for f in storage.list_files(version))
            started = time.perf_counter()
            out = write_report(version, Path(tmp) / f"x{copies}.html")
            seconds = time.perf_counter() - started
            m = load_manifest(version)
            print(f"{m['stages'][0]['shards']:>7} {m['stages'][0]['rows']:>8} {size / 2**20:>11.1f} "
                  f"{storage.size(out) / 1024:>10.1f} {seconds:>8.2f}")


if __name__ == "__main__":
    main()
