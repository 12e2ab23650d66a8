"""Batched frozen-model inference over a shard: the base of every feature stage.

A :class:`FeatureStage` reads the shard's surviving samples
(:func:`~vlcurate.pipelines.samples.alive_samples`)
and runs three things at once, joined by bounded queues
(:func:`~vlcurate.extractors.encoding.run_encoder`):

1. a reader thread streams image bytes from the samples tar in archive order and
   decodes (and ``prepare``\\ s) them with ``decode_threads`` helpers (or in
   ``decode_processes`` processes);
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
machinery is available without a sidecar through
:func:`~vlcurate.extractors.encoding.encode_images` (the CLIP score filter encodes
images with it).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Callable, ClassVar

import numpy as np
import pyarrow as pa
from PIL import Image

from vlcurate.extractors.encoding import BatchEncoder, EncodeTimings, Encoded, SampleFailure, run_encoder
from vlcurate.io.parquet import ParquetStreamWriter
from vlcurate.io.stats import ShardStats
from vlcurate.pipelines.samples import alive_samples
from vlcurate.pipelines.stage import Stage
from vlcurate.schemas.features import declared_features, tensor_array

# Rows per Parquet row group: readers can stream a shard of large token arrays, the
# writer appends while the model runs, and no column chunk comes near 2 GiB.
SIDECAR_ROW_GROUP = 256


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
                 stats: ShardStats, advance: Callable[[int], None] = lambda n: None):
        self.writer, self.fields, self.tensors, self.stats = writer, fields, tensors, stats
        self.advance = advance
        self.pending: list[tuple[str, Encoded]] = []

    def __call__(self, rows: list[tuple[str, Encoded]]) -> None:
        self.advance(len(rows))
        for _, r in rows:
            self.stats.add(f"failed.{r.kind}" if isinstance(r, SampleFailure) else "ok")
        self.pending.extend(rows)
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
    # True: ``encode_batch``/``start_batch`` get ``(key, image)`` pairs instead of images
    keyed_batches: ClassVar[bool] = False

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

    def run_shard(self, shard: int, findings: list | None = None) -> ShardStats:
        if not getattr(self, "_loaded", False):
            self.setup()
        keys = alive_samples(self.layout, shard, ["key"], before=self.name).column("key").to_pylist()
        self.last_timings = EncodeTimings()
        stats = self.new_stats(shard, len(keys))
        metadata = self.sidecar_metadata()
        tensors = declared_features(pa.schema([], metadata=metadata)) or {}
        with ParquetStreamWriter(self.layout.sidecar(self.name, shard), self.record_kind, metadata) as writer:
            progress = getattr(self._current, "progress", None)  # the sink may run on another thread
            sink = _SidecarSink(writer, self.feature_fields(), tensors, stats,
                                progress.add if progress is not None else lambda n: None)
            run_encoder(self.layout.samples_tar(shard), keys, self.image_prepare(),
                        BatchEncoder(self.start_batch, self.finish_batch, self.keyed_batches), self.config.batch_size, sink,
                        self.last_timings, getattr(self.config, "decode_threads", 0), self.decode_processes())
            sink.close()
            stats.add_file(writer.commit(empty=sink.table([])))
        return stats
