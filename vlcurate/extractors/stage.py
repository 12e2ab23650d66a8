"""Batched frozen-model inference over a shard: the base of every feature stage.

A :class:`FeatureStage` reads the shard's surviving samples (:func:`alive_samples`),
streams their image bytes from the samples tar in archive order on a background
thread, which decodes (and ``prepare``\\ s) them with ``decode_threads`` helpers and
fills a bounded queue, so decoding the next batches overlaps the model's forward pass
on the current one. Batches hold exactly ``config.batch_size`` images in archive
order whatever the thread timing (the outputs, and so the bytes written, depend on
batch composition). Each batch goes to ``encode_batch``; the stage writes ONE sidecar,
``<stage name>/<shard>.parquet``, with one row per sample it saw: ``key``,
``status`` (ok/failed), ``error_kind``, ``error_message`` and the feature columns
(null on failure).

Per-sample failures never fail the shard; each is a row and a ``failed.<kind>`` count:

* ``decode_error``: the stored bytes are not a decodable image;
* ``preprocess_error``: ``prepare`` raised on the image;
* ``model_error``: the model raised on this image (a failing batch is retried one
  image at a time, so one bad image does not take its batch-mates down);
* ``missing_image``: the sample is alive in the samples parquet but has no image in
  the tar;
* any kind the subclass returns as a :class:`SampleFailure` (e.g. ``non_finite``).

Subclasses implement ``load`` (called once per process by ``setup``),
``feature_fields``, ``encode_batch`` and optionally ``prepare`` and
``sidecar_metadata``. The same machinery is available without a sidecar through
:func:`encode_images` (the CLIP score filter encodes images with it).
"""

from __future__ import annotations

import io
import logging
import os
import queue
import threading
import time
from abc import abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

from vlcurate.filters.base import alive_samples
from vlcurate.io.parquet import write_parquet
from vlcurate.io.stats import ShardStats
from vlcurate.io.tar import iter_tar_files
from vlcurate.pipelines.stage import Stage

logger = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "png", "webp")
PREFETCH_BATCHES = 2  # decoded batches waiting in the queue: enough to hide decode jitter
# Rows per Parquet row group: readers can stream a shard of large token arrays, and
# no nested column chunk of a row group comes near 2 GiB.
SIDECAR_ROW_GROUP = 256


@dataclass(frozen=True)
class SampleFailure:
    """Why one sample has no features; becomes its row's error_kind/error_message."""

    kind: str
    message: str


Encoded = dict[str, Any] | SampleFailure  # one sample's feature values, or why there are none


@dataclass
class EncodeTimings:
    """Where a shard's wall time went (not deterministic, so never in stats files)."""

    samples: int = 0
    wait_s: float = 0.0  # main thread waiting for decoded batches (decode not hidden)
    encode_s: float = 0.0  # inside encode_batch
    total_s: float = 0.0


@dataclass
class _Chunk:
    ready: list[tuple[str, Any]] = field(default_factory=list)  # (key, prepared image)
    failed: list[tuple[str, SampleFailure]] = field(default_factory=list)


class _Crash:
    """The decode thread died of something that is not a per-sample failure."""

    def __init__(self, error: BaseException):
        self.error = error


_END = object()


def decode_image(data: bytes) -> Image.Image:
    """Bytes -> fully loaded RGB image (raises on anything undecodable or truncated)."""
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")  # convert() loads every pixel, so truncation raises here


def _decode_one(data: bytes, prepare: Callable[[Image.Image], Any]) -> Any:
    """Decode + prepare one image; a failure is returned as a :class:`SampleFailure`."""
    try:
        image = decode_image(data)
    except Exception as err:  # PIL raises many types; the sample records it
        return SampleFailure("decode_error", f"{type(err).__name__}: {err}")
    try:
        return prepare(image)
    except Exception as err:  # recorded per sample, like decode errors
        return SampleFailure("preprocess_error", f"{type(err).__name__}: {err}")


def _decode_worker(tar_path: Any, keys: Sequence[str], prepare: Callable[[Image.Image], Any],
                   batch_size: int, decode_threads: int, out: queue.Queue, stop: threading.Event,
                   order: list[str]) -> None:
    """Read the tar in order, decode ``batch_size`` payloads at a time on
    ``decode_threads`` threads (PIL's decoders and resizers release the GIL), and
    queue chunks of exactly ``batch_size`` ready images (plus the failures met on the
    way), so batch composition depends only on the shard, never on thread timing."""
    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="vlcurate-decode") if decode_threads > 1 else None
    chunk = _Chunk()

    def decode(pending: list[tuple[str, bytes]], last: bool) -> bool:
        nonlocal chunk
        payloads = [data for _, data in pending]
        outs = pool.map(_decode_one, payloads, [prepare] * len(payloads)) if pool else (
            _decode_one(d, prepare) for d in payloads)
        for (key, _), result in zip(pending, outs):
            (chunk.failed if isinstance(result, SampleFailure) else chunk.ready).append((key, result))
        while len(chunk.ready) >= batch_size or (last and (chunk.ready or chunk.failed)):
            full, rest = chunk.ready[:batch_size], chunk.ready[batch_size:]
            if not put(_Chunk(full, chunk.failed)):
                return False
            chunk = _Chunk(rest)
        return True

    try:
        wanted, seen, pending = set(keys), set(), []
        for key, _ext, data in iter_tar_files(tar_path, IMAGE_EXTS, wanted):
            if key in seen:  # two image files for one key: the first one counts
                continue
            seen.add(key)
            order.append(key)
            pending.append((key, data))
            if len(pending) >= batch_size:
                if not decode(pending, last=False):
                    return
                pending = []
        if decode(pending, last=True):
            put(_END)
    except BaseException as err:  # a damaged tar: re-raised in the main thread
        put(_Crash(err))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _encode_isolating(encode: Callable[[list[Any]], list[Encoded]],
                      items: list[tuple[str, Any]]) -> dict[str, Encoded]:
    """``encode`` a batch; if it raises, retry image by image to find the culprit(s)."""
    values = [v for _, v in items]
    try:
        out = encode(values)
    except Exception as err:  # model errors are per-sample data after isolation
        if len(items) == 1:
            return {items[0][0]: SampleFailure("model_error", f"{type(err).__name__}: {err}")}
        logger.warning("batch of %d failed (%s: %s); retrying one image at a time",
                       len(items), type(err).__name__, err)
        result: dict[str, Encoded] = {}
        for item in items:
            result.update(_encode_isolating(encode, [item]))
        return result
    if len(out) != len(items):  # a bug in the encoder, not a sample problem
        raise RuntimeError(f"encode_batch returned {len(out)} results for {len(items)} images")
    return {key: o for (key, _), o in zip(items, out)}


def default_decode_threads() -> int:
    """Threads that decode and prepare images for one stage: enough to feed a GPU
    (a thread manages roughly 500-1000 small JPEGs/s), never more than the cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


def encode_images(tar_path: Any, keys: Sequence[str], prepare: Callable[[Image.Image], Any],
                  encode: Callable[[list[Any]], list[Encoded]], batch_size: int,
                  timings: EncodeTimings | None = None, decode_threads: int = 0) -> list[tuple[str, Encoded]]:
    """Encode the images of ``keys`` from a samples tar; one result per key.

    Results come in archive order, then keys without an image (``missing_image``).
    Decoding + ``prepare`` run on a background thread (with ``decode_threads``
    helpers; 0 = :func:`default_decode_threads`), at most :data:`PREFETCH_BATCHES`
    batches ahead of ``encode``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    timings = timings or EncodeTimings()
    started = time.perf_counter()
    q: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
    stop, order = threading.Event(), []
    results: dict[str, Encoded] = {}
    threads = decode_threads or default_decode_threads()
    worker = threading.Thread(target=_decode_worker, name="vlcurate-reader", daemon=True,
                              args=(tar_path, keys, prepare, batch_size, threads, q, stop, order))
    worker.start()
    try:
        while True:
            t0 = time.perf_counter()
            item = q.get()
            timings.wait_s += time.perf_counter() - t0
            if item is _END:
                break
            if isinstance(item, _Crash):
                raise item.error
            results.update(item.failed)
            if item.ready:
                t0 = time.perf_counter()
                results.update(_encode_isolating(encode, item.ready))
                timings.encode_s += time.perf_counter() - t0
    finally:
        stop.set()  # unblocks the worker if we leave early (an exception)
        worker.join()
    missing = SampleFailure("missing_image", "no image file for this key in the samples tar")
    out = [(k, results[k]) for k in order] + [(k, missing) for k in keys if k not in results]
    timings.samples += len(out)
    timings.total_s += time.perf_counter() - started
    return out


def _nested_lists(values: list[np.ndarray | None], depth: int, leaf: pa.DataType) -> pa.Array:
    """One list level per array dimension; ``None`` rows are null."""
    ok = [v for v in values if v is not None]
    dtype = np.dtype(leaf.to_pandas_dtype())
    flat = np.concatenate([v.reshape(-1) for v in ok]).astype(dtype, copy=False) if ok else np.zeros(0, dtype)
    arr: pa.Array = pa.array(flat, type=leaf)
    for k in reversed(range(1, depth)):  # inner levels: prod(shape[:k]) lists of shape[k] per row
        lengths = np.concatenate([np.full(int(np.prod(v.shape[:k])), v.shape[k], np.int32) for v in ok] or
                                 [np.zeros(0, np.int32)])
        arr = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)), arr)
    outer = np.cumsum([0] + [v.shape[0] if v is not None else 0 for v in values]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(outer), arr, mask=pa.array([v is None for v in values], pa.bool_()))


def feature_column(f: pa.Field, values: list[Any], chunk_rows: int = 256) -> pa.ChunkedArray:
    """One Arrow column from per-row values (numpy arrays or None).

    Nested numeric lists are built from the arrays directly (no Python lists), in
    chunks of ``chunk_rows`` so that no chunk passes list offsets' 2**31 values
    (257 x 1408 EVA-g tokens are 362k values a row). Anything else goes through
    ``pa.array``.
    """
    t, depth = f.type, 0
    while pa.types.is_list(t):
        t, depth = t.value_type, depth + 1
    if depth == 0 or not (pa.types.is_floating(t) or pa.types.is_integer(t)):
        return pa.chunked_array([pa.array([v.tolist() if isinstance(v, np.ndarray) else v for v in values],
                                          type=f.type)], type=f.type)
    chunks = []
    for start in range(0, max(len(values), 1), chunk_rows):
        part = [None if v is None else np.asarray(v) for v in values[start:start + chunk_rows]]
        for v in part:
            if v is not None and v.ndim != depth:  # an encoder bug, not a sample problem
                raise ValueError(f"column {f.name}: a {v.ndim}-d array for a {depth}-level list")
        chunks.append(_nested_lists(part, depth, t))
    return pa.chunked_array(chunks, type=f.type)


class FeatureStage(Stage):
    """Base of every feature-extraction stage. ``Config`` must have ``batch_size`` and
    may have ``decode_threads`` (0 = :func:`default_decode_threads`)."""

    record_kind: ClassVar[str]

    def setup(self) -> None:
        self.load()
        self._loaded = True

    @abstractmethod
    def load(self) -> None:
        """Load the model (once per process; heavy imports go here, not at module level)."""

    @abstractmethod
    def feature_fields(self) -> list[pa.Field]:
        """The feature columns, after the key/status/error columns (model loaded)."""

    @abstractmethod
    def encode_batch(self, images: list[Any]) -> list[Encoded]:
        """Features of each image, as ``{column: value}`` (or a :class:`SampleFailure`).

        ``images`` are what ``prepare`` returned (PIL RGB images by default). Raising
        makes the stage retry the batch one image at a time; whatever still raises is
        recorded as that sample's ``model_error``.
        """

    def prepare(self, image: Image.Image) -> Any:
        """Per-image CPU work run on the decode thread (e.g. the model's transform)."""
        return image

    def sidecar_metadata(self) -> dict[str, str]:
        """Extra schema metadata for the sidecar (declared shapes, model provenance)."""
        return {}

    def run_shard(self, shard: int, corpus: Any = None) -> ShardStats:
        if not getattr(self, "_loaded", False):
            self.setup()
        keys = alive_samples(self.layout, shard, ["key"], exclude=self.name).column("key").to_pylist()
        self.last_timings = EncodeTimings()
        results = encode_images(self.layout.samples_tar(shard), keys, self.prepare, self.encode_batch,
                                self.config.batch_size, self.last_timings,
                                getattr(self.config, "decode_threads", 0))
        stats = ShardStats(self.name, shard, len(results))
        for _, r in results:
            stats.add(f"failed.{r.kind}" if isinstance(r, SampleFailure) else "ok")
        fails = [r if isinstance(r, SampleFailure) else None for _, r in results]
        columns: dict[str, pa.Array | pa.ChunkedArray] = {
            "key": pa.array([k for k, _ in results], pa.string()),
            "status": pa.array(["failed" if f else "ok" for f in fails], pa.string()),
            "error_kind": pa.array([f.kind if f else None for f in fails], pa.string()),
            "error_message": pa.array([f.message if f else None for f in fails], pa.string()),
        }
        for f in self.feature_fields():
            columns[f.name] = feature_column(f, [None if isinstance(r, SampleFailure) else r[f.name]
                                                 for _, r in results])
        write_parquet(pa.table(columns), self.layout.sidecar(self.name, shard), self.record_kind,
                      metadata=self.sidecar_metadata(), row_group_size=SIDECAR_ROW_GROUP)
        return stats
