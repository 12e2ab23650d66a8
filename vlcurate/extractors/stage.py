"""Batched frozen-model inference over a shard: the base of every feature stage.

A :class:`FeatureStage` reads the shard's surviving samples (:func:`alive_samples`)
and runs three things at once, joined by bounded queues:

1. a reader thread streams image bytes from the samples tar in archive order and
   decodes (and ``prepare``\\ s) them with ``decode_threads`` helpers;
2. the calling thread hands each batch to ``start_batch``, which launches the model
   (on a GPU it returns as soon as the work is queued on the device);
3. an output thread calls ``finish_batch`` (waits for the device, copies results to
   the host, checks them) and appends finished rows to the sidecar, one validated
   Parquet row group of :data:`SIDECAR_ROW_GROUP` rows at a time.

So decoding the next batches, the forward pass of this one, and converting and
writing the previous one overlap. Batches hold exactly ``config.batch_size`` images
and every batch covers a contiguous range of the archive, whatever the thread
timing: the outputs, and so the bytes written, depend only on the shard. The stage
writes ONE sidecar, ``<stage name>/<shard>.parquet``, with one row per sample it
saw, in archive order (then keys without an image): ``key``, ``status``
(ok/failed), ``error_kind``, ``error_message`` and the feature columns (null on
failure). The file is committed only when complete.

Per-sample failures never fail the shard; each is a row and a ``failed.<kind>`` count:

* ``decode_error``: the stored bytes are not a decodable image;
* ``preprocess_error``: ``prepare`` raised on the image;
* ``model_error``: the model raised on this image (a failing batch is retried one
  image at a time, so one bad image does not take its batch-mates down);
* ``missing_image``: the sample is alive in the samples parquet but has no image in
  the tar;
* any kind the subclass returns as a :class:`SampleFailure` (e.g. ``non_finite``).

Subclasses implement ``load`` (called once per process by ``setup``),
``feature_fields``, ``encode_batch`` (or the ``start_batch``/``finish_batch`` pair
it is made of) and optionally ``prepare`` and ``sidecar_metadata``. The same
machinery is available without a sidecar through :func:`encode_images` (the CLIP
score filter encodes images with it).
"""

from __future__ import annotations

import atexit
import io
import logging
import multiprocessing
import os
import queue
import threading
import time
from abc import abstractmethod
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

from vlcurate.filters.base import alive_samples
from vlcurate.io.parquet import ParquetStreamWriter
from vlcurate.io.stats import ShardStats
from vlcurate.io.tar import iter_tar_files
from vlcurate.pipelines.stage import Stage
from vlcurate.schemas.features import declared_features, tensor_array

logger = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "png", "webp")
PREFETCH_BATCHES = 2  # batches waiting between threads: enough to hide jitter, little memory
# Rows per Parquet row group: readers can stream a shard of large token arrays, the
# writer appends while the model runs, and no column chunk comes near 2 GiB.
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
    wait_s: float = 0.0  # calling thread waiting for decoded batches (decode not hidden)
    start_s: float = 0.0  # calling thread inside start_batch (launching the model)
    handoff_s: float = 0.0  # calling thread waiting for the output thread (output not hidden)
    output_s: float = 0.0  # output thread busy: finish_batch + building + writing rows
    total_s: float = 0.0


@dataclass
class _Chunk:
    """A contiguous range of the archive: ``(key, prepared image or SampleFailure)``."""

    rows: list[tuple[str, Any]] = field(default_factory=list)

    def ready(self) -> list[Any]:
        return [v for _, v in self.rows if not isinstance(v, SampleFailure)]


class _Crash:
    """A thread died of something that is not a per-sample failure."""

    def __init__(self, error: BaseException):
        self.error = error


@dataclass
class _End:
    seen: set[str]  # keys that had an image in the tar


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


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put unless ``stop`` is set first (then the consumer is gone); True if put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


_PROCESS_POOLS: dict[int, ProcessPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def decode_process_pool(workers: int) -> ProcessPoolExecutor:
    """This process's pool of ``workers`` decode processes, started on first use and
    kept for every later shard (starting one costs a second or two per process).
    ``spawn``: the parent holds CUDA state and threads that must not be forked."""
    with _POOLS_LOCK:
        if workers not in _PROCESS_POOLS:
            _PROCESS_POOLS[workers] = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        return _PROCESS_POOLS[workers]


@atexit.register
def _shutdown_pools() -> None:
    for pool in _PROCESS_POOLS.values():
        pool.shutdown(wait=False, cancel_futures=True)


def _decode_worker(tar_path: Any, keys: Sequence[str], prepare: Callable[[Image.Image], Any],
                   batch_size: int, decode_threads: int, out: queue.Queue, stop: threading.Event,
                   decode_processes: int = 0) -> None:
    """Read the tar in order, decode ``batch_size`` payloads at a time, and queue
    chunks that end at every ``batch_size``-th ready image (failures met on the way
    ride along), so batch composition depends only on the shard.

    Decoding runs on ``decode_threads`` threads (PIL's decoders and resizers release
    the GIL, but its Python parts do not), or, when ``decode_processes`` > 0, in this
    process's :func:`decode_process_pool`, ``prepare`` pickled to it: a GPU can outrun what one process's GIL
    lets threads decode, and the threads then slow the thread launching the model."""
    threads: ThreadPoolExecutor | None = None
    processes: ProcessPoolExecutor | None = None
    chunk, ready = _Chunk(), 0

    def decode(pending: list[tuple[str, bytes]], last: bool) -> bool:
        nonlocal chunk, ready
        payloads = [data for _, data in pending]
        if processes is not None:
            per_task = -(-len(payloads) // decode_processes)  # one task per process
            outs: Iterable[Any] = processes.map(_decode_one, payloads, [prepare] * len(payloads),
                                                chunksize=max(1, per_task))
        elif threads is not None:
            outs = threads.map(_decode_one, payloads, [prepare] * len(payloads))
        else:
            outs = (_decode_one(d, prepare) for d in payloads)
        for (key, _), result in zip(pending, outs):
            chunk.rows.append((key, result))
            if not isinstance(result, SampleFailure):
                ready += 1
                if ready == batch_size:
                    if not _put(out, chunk, stop):
                        return False
                    chunk, ready = _Chunk(), 0
        if last and chunk.rows:
            return _put(out, chunk, stop)
        return True

    try:
        processes = decode_process_pool(decode_processes) if decode_processes > 0 else None
        if processes is None and decode_threads > 1:
            threads = ThreadPoolExecutor(decode_threads, thread_name_prefix="vlcurate-decode")
        wanted, seen, pending = set(keys), set(), []
        for key, _ext, data in iter_tar_files(tar_path, IMAGE_EXTS, wanted):
            if key in seen:  # two image files for one key: the first one counts
                continue
            seen.add(key)
            pending.append((key, data))
            if len(pending) >= batch_size:
                if not decode(pending, last=False):
                    return
                pending = []
        if decode(pending, last=True):
            _put(out, _End(seen), stop)
    except BaseException as err:  # a damaged tar, no decode pool: re-raised in the calling thread
        _put(out, _Crash(err), stop)
    finally:
        if threads is not None:
            threads.shutdown(wait=True, cancel_futures=True)


class BatchEncoder:
    """How a stage runs its model on a batch: ``start`` on the calling thread (launch;
    may return before the device is done), ``finish`` on the output thread (results
    as one :data:`Encoded` per image). A synchronous encoder is ``start=encode`` with
    the identity as ``finish``."""

    def __init__(self, start: Callable[[list[Any]], Any],
                 finish: Callable[[Any], list[Encoded]] = lambda started: started):
        self.start, self.finish = start, finish

    def encode(self, values: list[Any]) -> list[Encoded]:
        return self.finish(self.start(values))


def _isolate(encoder: BatchEncoder, values: list[Any], err: Exception) -> list[Encoded]:
    """A batch raised: retry its images one at a time, so only the culprits fail."""
    if len(values) == 1:
        return [SampleFailure("model_error", f"{type(err).__name__}: {err}")]
    logger.warning("batch of %d failed (%s: %s); retrying one image at a time", len(values), type(err).__name__, err)
    out: list[Encoded] = []
    for v in values:
        try:
            out += encoder.encode([v])
        except Exception as one:  # model errors are per-sample data after isolation
            out.append(SampleFailure("model_error", f"{type(one).__name__}: {one}"))
    return out


def _finish(encoder: BatchEncoder, chunk: _Chunk, started: Any) -> list[tuple[str, Encoded]]:
    """The chunk's rows in archive order, its batch finished (or isolated on error)."""
    values = chunk.ready()
    results: list[Encoded] = []
    if values:
        try:
            if isinstance(started, Exception):
                raise started
            results = encoder.finish(started)
        except Exception as err:  # the model raised (at launch or when finishing)
            results = _isolate(encoder, values, err)
        if len(results) != len(values):  # a bug in the encoder, not a sample problem
            raise RuntimeError(f"the encoder returned {len(results)} results for {len(values)} images")
    it = iter(results)
    return [(key, v if isinstance(v, SampleFailure) else next(it)) for key, v in chunk.rows]


def default_decode_threads() -> int:
    """Threads that decode and prepare images for one stage: enough to feed a GPU
    (a thread manages roughly 500-1000 small JPEGs/s), never more than the cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


def run_encoder(tar_path: Any, keys: Sequence[str], prepare: Callable[[Image.Image], Any],
                encoder: BatchEncoder, batch_size: int, sink: Callable[[list[tuple[str, Encoded]]], None],
                timings: EncodeTimings | None = None, decode_threads: int = 0,
                decode_processes: int = 0) -> None:
    """Encode the images of ``keys`` from a samples tar, passing ``sink`` the results
    (``(key, Encoded)`` rows) batch by batch, in archive order, then the keys without
    an image (``missing_image``). ``sink`` and ``encoder.finish`` run on an output
    thread, ``encoder.start`` on the calling thread, decoding on a reader thread with
    ``decode_threads`` helpers (0 = :func:`default_decode_threads`) or, when
    ``decode_processes`` > 0, in that many processes (``prepare`` must pickle); each at most
    :data:`PREFETCH_BATCHES` batches ahead of the next. An exception in any of them
    stops all three and is raised here.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    timings = timings or EncodeTimings()
    if decode_processes and multiprocessing.current_process().daemon:
        # e.g. a Dask worker: daemonic processes may not start children
        logger.warning("decode_processes=%d ignored: this is a daemonic process, which cannot start "
                       "child processes; decoding on threads", decode_processes)
        decode_processes = 0
    started_at = time.perf_counter()
    decoded: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
    launched: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
    stop = threading.Event()
    failure: list[BaseException] = []

    def output() -> None:
        try:
            while True:
                try:
                    item = launched.get(timeout=0.1)
                except queue.Empty:
                    if stop.is_set():  # the calling thread gave up
                        return
                    continue
                if isinstance(item, _End):
                    break
                t0 = time.perf_counter()
                rows = _finish(encoder, *item)
                sink(rows)
                timings.samples += len(rows)
                timings.output_s += time.perf_counter() - t0
            missing = SampleFailure("missing_image", "no image file for this key in the samples tar")
            rows = [(k, missing) for k in keys if k not in item.seen]
            if rows:
                sink(rows)
                timings.samples += len(rows)
        except BaseException as err:  # re-raised in the calling thread
            failure.append(err)
            stop.set()

    reader = threading.Thread(target=_decode_worker, name="vlcurate-reader", daemon=True,
                              args=(tar_path, keys, prepare, batch_size, decode_threads or default_decode_threads(),
                                    decoded, stop, decode_processes))
    writer = threading.Thread(target=output, name="vlcurate-output", daemon=True)
    reader.start()
    writer.start()
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                item = decoded.get(timeout=0.1)
            except queue.Empty:
                timings.wait_s += time.perf_counter() - t0
                if not reader.is_alive() and decoded.empty():  # a bug: it always ends with _End or _Crash
                    raise RuntimeError("the image reader thread ended without finishing the shard")
                continue
            timings.wait_s += time.perf_counter() - t0
            if isinstance(item, _Crash):
                raise item.error
            if isinstance(item, _Chunk):
                t0 = time.perf_counter()
                values = item.ready()
                try:
                    started: Any = encoder.start(values) if values else None
                except Exception as err:  # isolated image by image on the output thread
                    started = err
                timings.start_s += time.perf_counter() - t0
                item = (item, started)
            t0 = time.perf_counter()
            _put(launched, item, stop)
            timings.handoff_s += time.perf_counter() - t0
            if isinstance(item, _End):
                writer.join()
                break
    finally:
        stop.set()  # unblocks the other threads if we leave early
        reader.join()
        writer.join()
    if failure:
        raise failure[0]
    timings.total_s += time.perf_counter() - started_at


def encode_images(tar_path: Any, keys: Sequence[str], prepare: Callable[[Image.Image], Any],
                  encode: Callable[[list[Any]], list[Encoded]] | BatchEncoder, batch_size: int,
                  timings: EncodeTimings | None = None, decode_threads: int = 0) -> list[tuple[str, Encoded]]:
    """:func:`run_encoder` collecting the results: one ``(key, Encoded)`` per key."""
    encoder = encode if isinstance(encode, BatchEncoder) else BatchEncoder(encode)
    out: list[tuple[str, Encoded]] = []
    run_encoder(tar_path, keys, prepare, encoder, batch_size, out.extend, timings, decode_threads)
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


def feature_column(f: pa.Field, values: list[Any], tensors: dict[str, dict[str, Any]] | None = None) -> pa.Array:
    """One Arrow column from per-row values (numpy arrays, scalars or None).

    A declared feature column (``tensors``: the ``vlcurate.features`` declaration)
    becomes a tensor column (:func:`~vlcurate.schemas.features.tensor_array`, cast to
    the declared dtype); a nested numeric list column is built from the arrays
    directly, without Python lists; anything else goes through ``pa.array``. Callers
    build row groups (at most a few hundred rows), far from the 2 GiB an Arrow array
    can hold.
    """
    if tensors and f.name in tensors:
        return tensor_array(values, tensors[f.name]["dtype"])
    t, depth = f.type, 0
    while pa.types.is_list(t):
        t, depth = t.value_type, depth + 1
    if depth == 0 or not (pa.types.is_floating(t) or pa.types.is_integer(t)):
        return pa.array([v.tolist() if isinstance(v, np.ndarray) else v for v in values], type=f.type)
    part = [None if v is None else np.asarray(v) for v in values]
    for v in part:
        if v is not None and v.ndim != depth:  # an encoder bug, not a sample problem
            raise ValueError(f"column {f.name}: a {v.ndim}-d array for a {depth}-level list")
    return _nested_lists(part, depth, t)


class _SidecarSink:
    """Rows -> row groups of :data:`SIDECAR_ROW_GROUP` rows in a :class:`ParquetStreamWriter`,
    counting outcomes into ``stats``."""

    def __init__(self, writer: ParquetStreamWriter, fields: list[pa.Field], tensors: dict[str, dict[str, Any]],
                 stats: ShardStats):
        self.writer, self.fields, self.tensors, self.stats = writer, fields, tensors, stats
        self.pending: list[tuple[str, Encoded]] = []

    def __call__(self, rows: Iterable[tuple[str, Encoded]]) -> None:
        for _, r in rows:
            self.stats.add(f"failed.{r.kind}" if isinstance(r, SampleFailure) else "ok")
            self.pending.append((_, r))
        while len(self.pending) >= SIDECAR_ROW_GROUP:
            group, self.pending = self.pending[:SIDECAR_ROW_GROUP], self.pending[SIDECAR_ROW_GROUP:]
            self.writer.write(self.table(group))

    def table(self, rows: list[tuple[str, Encoded]]) -> pa.Table:
        fails = [r if isinstance(r, SampleFailure) else None for _, r in rows]
        columns: dict[str, pa.Array] = {
            "key": pa.array([k for k, _ in rows], pa.string()),
            "status": pa.array(["failed" if f else "ok" for f in fails], pa.string()),
            "error_kind": pa.array([f.kind if f else None for f in fails], pa.string()),
            "error_message": pa.array([f.message if f else None for f in fails], pa.string()),
        }
        for f in self.fields:
            columns[f.name] = feature_column(f, [None if isinstance(r, SampleFailure) else r[f.name]
                                                 for _, r in rows], self.tensors)
        return pa.table(columns)

    def close(self) -> None:
        if self.pending:
            self.writer.write(self.table(self.pending))
            self.pending = []


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

    def start_batch(self, images: list[Any]) -> Any:
        """Launch the model on a batch (calling thread); by default all of ``encode_batch``.
        A stage on an asynchronous device returns once the work is queued and
        completes it in :meth:`finish_batch`, which runs on the output thread."""
        return self.encode_batch(images)

    def finish_batch(self, started: Any) -> list[Encoded]:
        """What ``start_batch`` returned -> one :data:`Encoded` per image."""
        return started

    def prepare(self, image: Image.Image) -> Any:
        """Per-image CPU work run on the decode thread (e.g. the model's transform)."""
        return image

    def image_prepare(self) -> Callable[[Image.Image], Any]:
        """What decoding applies to each image: ``prepare`` by default. A stage whose
        :meth:`decode_processes` is not 0 returns a picklable equivalent (a bound
        method would pickle the stage and its model)."""
        return self.prepare

    def decode_processes(self) -> int:
        """Processes that decode images for this stage; 0 (the default): threads."""
        return 0

    def sidecar_metadata(self) -> dict[str, str]:
        """Extra schema metadata for the sidecar (declared shapes, model provenance)."""
        return {}

    def run_shard(self, shard: int, corpus: Any = None) -> ShardStats:
        if not getattr(self, "_loaded", False):
            self.setup()
        keys = alive_samples(self.layout, shard, ["key"], exclude=self.name).column("key").to_pylist()
        self.last_timings = EncodeTimings()
        stats = ShardStats(self.name, shard, len(keys))
        metadata = self.sidecar_metadata()
        tensors = declared_features(pa.schema([], metadata=metadata)) or {}
        with ParquetStreamWriter(self.layout.sidecar(self.name, shard), self.record_kind, metadata) as writer:
            sink = _SidecarSink(writer, self.feature_fields(), tensors, stats)
            run_encoder(self.layout.samples_tar(shard), keys, self.image_prepare(),
                        BatchEncoder(self.start_batch, self.finish_batch), self.config.batch_size, sink,
                        self.last_timings, getattr(self.config, "decode_threads", 0), self.decode_processes())
            sink.close()
            writer.commit(empty=sink.table([]))
        return stats
