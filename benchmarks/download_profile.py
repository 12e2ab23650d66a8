"""Where a download worker's CPU goes: fetching, the image path, the rest of the stage.

usage: python benchmarks/download_profile.py CORPUS_DIR [--rows 1000] [--threads 32] [--port 8818]

CORPUS_DIR is a ``../shared/bench/download/make_corpus.py`` output (its URLs name a
port; they are rewritten to ``--port``, where ``serve.py`` is started here, in its own
process so its CPU is not counted). One process, no Beam, three phases on the same rows:

1. fetch only: ``Fetcher.fetch_many`` with ``--threads`` threads;
2. the image path only, one thread, on the bodies phase 1 got;
3. the whole stage (``DownloadStage.run_shard``: fetch, image path, hashes, tar and
   Parquet writing) with ``--threads`` threads.

CPU = ``time.process_time`` of this process (all its threads). Phase 3 minus 1 and 2
is what the stage adds (scheduling, threads contending for the GIL, writing).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vlcurate.download.fetch import Fetcher
from vlcurate.download.images import ImageProcessor
from vlcurate.download.stage import DownloadConfig, DownloadStage, split_config
from vlcurate.pipelines.stage import Layout

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "bench" / "download"


def serve(corpus: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, str(BENCH / "serve.py"), str(corpus), str(port),
                               "--max-seconds", "900"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit(f"serve.py did not come up on port {port}")


def timed(fn):
    cpu, wall = time.process_time(), time.monotonic()
    result = fn()
    return result, time.process_time() - cpu, time.monotonic() - wall


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--port", type=int, default=8818)
    args = ap.parse_args()
    table = pq.read_table(args.corpus / "urls.parquet").slice(0, args.rows)
    urls = [u.replace(u.split("/")[2], f"127.0.0.1:{args.port}", 1) for u in table.column("url").to_pylist()]
    config = DownloadConfig(image_size=256, resize_mode="border", threads=args.threads, timeout=10.0,
                            retries=0, allow_networks=("127.0.0.0/8",), max_connections_per_host=0)
    fetch_cfg, image_cfg = split_config(config)
    server = serve(args.corpus, args.port)
    try:
        with Fetcher(fetch_cfg) as fetcher:
            fetched, fetch_cpu, fetch_wall = timed(lambda: dict(fetcher.fetch_many(urls)))
        bodies = [r.data for r in fetched.values() if r.data is not None]
        processor = ImageProcessor(image_cfg)
        _, image_cpu, _ = timed(lambda: [processor(b) for b in bodies])
        with tempfile.TemporaryDirectory() as tmp:
            layout = Layout(tmp)
            Path(layout.input_shard(0)).parent.mkdir(parents=True)
            pq.write_table(pa.table({"url": urls, "caption": table.column("caption").to_pylist()}),
                           layout.input_shard(0))
            stage = DownloadStage(config, layout)
            stage.setup()
            _, stage_cpu, stage_wall = timed(lambda: stage.run_shard(0))
            stage.pool.shutdown()
            stage.fetcher.close()
    finally:
        server.kill()
        server.wait()
    n = len(urls)
    print(f"# {n} URLs ({len(bodies)} bodies), {args.threads} threads, {os.cpu_count()} CPUs, "
          f"loadavg {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| phase | CPU ms per URL | wall s |")
    print("| --- | --- | --- |")
    print(f"| fetch only ({args.threads} threads) | {1000 * fetch_cpu / n:.2f} | {fetch_wall:.1f} |")
    print(f"| image path only (1 thread; per URL, not per body) | {1000 * image_cpu / n:.2f} | |")
    print(f"| whole stage ({args.threads} threads) | {1000 * stage_cpu / n:.2f} | {stage_wall:.1f} |")
    print(f"| stage minus fetch and image path | {1000 * (stage_cpu - fetch_cpu - image_cpu) / n:.2f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
