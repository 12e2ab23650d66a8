"""Running a model over the images of a samples tar on three threads.

:func:`run_encoder` is the engine under every feature stage
(:mod:`vlcurate.extractors.stage`) and the CLIP score filter: a reader thread
streams image bytes from the tar in archive order and decodes (and ``prepare``\\ s)
them on threads or in processes; the calling thread launches the model on each batch
(``BatchEncoder.start``); an output thread finishes it (``BatchEncoder.finish``) and
hands the rows to a sink. Batches hold exactly ``batch_size`` images and cover
contiguous ranges of the archive whatever the thread timing, so results depend only
on the shard. Per-sample failures (``decode_error``, ``preprocess_error``,
``model_error`` after retrying a failing batch image by image, ``missing_image``)
are results, never exceptions.
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
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from PIL import Image

from vlcurate.io.tar import iter_tar_files

logger = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "png", "webp")
PREFETCH_BATCHES = 2  # batches waiting between threads: enough to hide jitter, little memory


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

    def inputs(self, keyed: bool) -> list[Any]:
        """What the encoder gets: the ready values, or ``(key, value)`` pairs when ``keyed``."""
        return [(k, v) for k, v in self.rows if not isinstance(v, SampleFailure)] if keyed else self.ready()


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
    the identity as ``finish``. A ``keyed`` encoder gets ``(key, image)`` pairs instead
    of images (e.g. to seed sampling per sample, or to look up the sample's captions)."""

    def __init__(self, start: Callable[[list[Any]], Any],
                 finish: Callable[[Any], list[Encoded]] = lambda started: started, keyed: bool = False):
        self.start, self.finish, self.keyed = start, finish, keyed

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
    values = chunk.inputs(encoder.keyed)
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
    finished = False
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                item = decoded.get(timeout=0.1)
            except queue.Empty:
                timings.wait_s += time.perf_counter() - t0
                # the reader ends with _End or _Crash, or quietly once ``stop`` is set (the output
                # thread failed: that failure is raised below); it is read after is_alive, so a
                # reader that stopped for that reason is never taken for a dead one
                if not reader.is_alive() and decoded.empty() and not stop.is_set():
                    raise RuntimeError("the image reader thread ended without finishing the shard")
                continue
            timings.wait_s += time.perf_counter() - t0
            if isinstance(item, _Crash):
                raise item.error
            if isinstance(item, _Chunk):
                t0 = time.perf_counter()
                values = item.inputs(encoder.keyed)
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
                finished = True
                break
    finally:
        stop.set()  # unblocks the other threads if we leave early
        reader.join()
        writer.join()
    if failure:
        raise failure[0]
    if not finished:  # a bug: only a failure sets ``stop`` before the end
        raise RuntimeError("the shard's encoding stopped before its end without an error")
    timings.total_s += time.perf_counter() - started_at


def encode_images(tar_path: Any, keys: Sequence[str], prepare: Callable[[Image.Image], Any],
                  encode: Callable[[list[Any]], list[Encoded]], batch_size: int,
                  timings: EncodeTimings | None = None, decode_threads: int = 0,
                  keyed: bool = False) -> list[tuple[str, Encoded]]:
    """:func:`run_encoder` with a synchronous ``encode``, collecting the results: one
    ``(key, Encoded)`` per key (``keyed``: ``encode`` gets ``(key, image)`` pairs)."""
    out: list[tuple[str, Encoded]] = []
    run_encoder(tar_path, keys, prepare, BatchEncoder(encode, keyed=keyed), batch_size, out.extend, timings,
                decode_threads)
    return out
