"""The download stage: one input shard of URLs -> a samples tar + a status row per input row.

Fetching and image processing run together in a thread pool (network waits and
PIL's decoders/resizers release the GIL), so a process keeps its cores busy while
requests are in flight. At most ``decode_slots`` images are decoded at once per
process (default: its CPUs), which bounds memory whatever ``threads`` is. Every input
row gets exactly one output row, ``ok`` or ``failed`` with an error kind; a bad
sample never fails the shard.

With ``reuse: PARENT_VERSION_DIR`` (what ``vlcurate download --retry-failed`` sets)
only the rows that failed in the parent with a retryable error are fetched; the
others are copied from the parent's shard (see :mod:`vlcurate.download.reuse`).
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

import pyarrow as pa

from vlcurate.download.expected import HASH_MISMATCH, ExpectedHashConfig, phash_problem, sha256_problem
from vlcurate.download.fetch import Fetcher, FetchConfig, FetchResult
from vlcurate.download.hosts import HostGate, HostScheduler, PolitenessConfig, host_key
from vlcurate.download.images import ImageConfig, ImageProcessor, ProcessedImage, image_path_info
from vlcurate.io.inputs import PAGE_FORMATS, InputSpec
from vlcurate.download.reuse import ParentShard
from vlcurate.io import storage
from vlcurate.io.parquet import read_parquet, write_parquet
from vlcurate.io.stats import ShardStats
from vlcurate.io.tar import TarSample, encode_json, write_tar
from vlcurate.pipelines.stage import Stage, StageInfo, register_stage, stage_class
from vlcurate.schemas import get_schema
from vlcurate.schemas.interleaved import DOCUMENT_KIND, document_images
from vlcurate.typed import FieldError, bounded, local_path

IMAGE_EXT = {"jpg": "jpg", "jpeg": "jpg", "png": "png", "webp": "webp"}


@dataclass(frozen=True)
class DownloadConfig(FetchConfig, ImageConfig, ExpectedHashConfig, PolitenessConfig):
    """Fetch settings (timeouts, retries, SSRF guard, opt-outs), image settings
    (size, resize mode, bomb limit, encoding), expected-hash columns and per-host
    politeness in one recipe block, plus:"""

    decode_slots: int = bounded(0, ge=0)  # images decoded at once per process; 0 = the CPUs this process may use
    # A parent version directory: copy its ok rows (stored files included) and its
    # non-retryable failures instead of fetching them; fetch only retryable failures.
    # The input must be that version's sample rows with its samples_per_shard
    # (as `vlcurate download --retry-failed` sets up); copied rows keep the parent's
    # image settings.
    reuse: str | None = local_path(None)
    # Fetch the images of the documents that the last document-writing stage before
    # this one (interleave, image_url_boilerplate) kept, instead of the input list:
    # each keeps its derived key (<document key>_<index>), its alt text as caption
    # and its document_key as an extra column.
    document_images: bool = False

    def check_earlier_stages(self, earlier: list[tuple[str, str]]) -> None:
        if self.document_images and not any(stage_class(kind).record_kind == DOCUMENT_KIND for _, kind in earlier):
            raise ValueError("document_images: needs an earlier stage that writes documents (interleave)")

    def __post_init__(self) -> None:
        if self.reuse is not None and not storage.exists(storage.join(self.reuse, "manifest.json")):
            raise FieldError("reuse", f"{self.reuse}: not a version directory (no manifest.json)")
        super().__post_init__()


def split_config(cfg: DownloadConfig) -> tuple[FetchConfig, ImageConfig]:
    def pick(cls):
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})

    return pick(FetchConfig), pick(ImageConfig)


@dataclass(frozen=True)
class _Outcome:
    error_kind: str | None
    error_message: str | None
    image: ProcessedImage | None
    http_status: int | None = None


def sample_key(shard: int, row: int) -> str:
    return f"{shard:05d}_{row:06d}"


@register_stage
class DownloadStage(Stage):
    name = "download"
    Config = DownloadConfig
    reads_input = True
    # Two shards at once per process (local runner): the next shard's rows start on the
    # fetch threads that the current shard's last slow URLs leave idle. Both share this
    # process's pool (``threads``), decode slots and per-host gate.
    shards_at_once = 2

    @staticmethod
    def input_problem(config: DownloadConfig, spec: InputSpec) -> str | None:
        """A setting naming an input column the input does not carry, or None."""
        if spec.format in PAGE_FORMATS and not config.document_images:
            return f"input.format: {spec.format} inputs are pages: the first stage reading them is interleave"
        for name, column in config.columns():
            if column not in spec.extra_cols:
                return (f"{name}: column {column!r} is not one of input.extra_cols "
                        f"({', '.join(spec.extra_cols) or 'none'})")
        return None

    def info(self) -> StageInfo:
        return StageInfo(libraries=image_path_info())

    def setup(self) -> None:
        fetch_cfg, image_cfg = split_config(self.config)
        self.gate = HostGate(self.config)  # per process: the stage object is shared by its threads
        self.fetcher = Fetcher(fetch_cfg, on_retry_after=self.gate.pause)
        self.processor = ImageProcessor(image_cfg)
        self.pool = ThreadPoolExecutor(max(1, fetch_cfg.threads), thread_name_prefix="vlcurate-dl")
        slots = self.config.decode_slots or len(os.sched_getaffinity(0))
        self._decode_slots = threading.BoundedSemaphore(slots)
        self._submitting = threading.Lock()

    def _fetch(self, url: str | None) -> FetchResult | _Outcome:
        if url is None:
            return _Outcome("invalid_url", "no url (null)", None)
        return self.fetcher.fetch(url)

    def _finish(self, fetched: FetchResult | _Outcome, sha256: object, phash: object) -> _Outcome:
        """Check a fetched body against the expected hashes (if any) and decode it."""
        if isinstance(fetched, _Outcome):
            return fetched
        status = fetched.http_status
        if fetched.error_kind is not None:
            return _Outcome(fetched.error_kind, fetched.error_message, None, status)
        if problem := sha256_problem(fetched.data, sha256):  # before paying for a decode
            return _Outcome(HASH_MISMATCH, problem, None, status)
        # Network waits need no slot; decoding does (memory ~ slots x largest image).
        with self._decode_slots:
            image = self.processor(fetched.data)
        if image.error_kind is None and (problem := phash_problem(image.phash, phash,
                                                                   self.config.max_phash_distance)):
            return _Outcome(HASH_MISMATCH, problem, image, status)
        return _Outcome(image.error_kind, image.error_message, image, status)

    def _fetch_rows(self, urls: list[str | None], expected: list[list[Any]]) -> list[_Outcome]:
        """Outcomes of ``urls`` in their order, fetched by host-spreading threads: a
        row's host slot is held for its request only, not for decoding."""
        scheduler = HostScheduler(self.gate, [host_key(u) for u in urls])
        outcomes: list[_Outcome | None] = [None] * len(urls)
        progress = getattr(self._current, "progress", None)  # the calling thread's shard

        def work() -> None:
            while (taken := scheduler.take()) is not None:
                i, key = taken
                try:
                    fetched = self._fetch(urls[i])
                finally:
                    self.gate.release(key)
                outcomes[i] = self._finish(fetched, expected[0][i], expected[1][i])
                if progress is not None:
                    progress.add()

        # All of a shard's workers queue together: with shards overlapping (shards_at_once),
        # the next shard's workers start on the threads this one's leave, one by one as it
        # runs out of rows, instead of splitting the pool with it from the start and ending
        # at the same time (two tails at once).
        with self._submitting:
            workers = [self.pool.submit(work) for _ in range(min(self.config.threads, len(urls)))]
        for worker in workers:
            worker.result()  # a bug in a worker surfaces here
        return outcomes  # type: ignore[return-value]

    def run_shard(self, shard: int, findings: list | None = None) -> ShardStats:
        if not hasattr(self, "pool"):
            self.setup()
        if self.config.document_images:
            documents = self.layout.sidecars(shard, DOCUMENT_KIND, before=self.name)
            source = document_images(read_parquet(documents[-1]))
        else:
            source = read_parquet(self.layout.input_shard(shard))
        urls = source.column("url").to_pylist()
        captions = source.column("caption").to_pylist()
        extra_names = [n for n in source.schema.names if n not in ("url", "caption", "key")]
        extras = {n: source.column(n).to_pylist() for n in extra_names}
        keys = source.column("key").to_pylist() if "key" in source.schema.names \
            else [sample_key(shard, i) for i in range(len(urls))]
        parent = ParentShard.load(self.config.reuse, shard, keys, urls) if self.config.reuse else None

        todo = [i for i in range(len(urls)) if parent is None or parent.refetch(i)]
        self.start_progress(shard, len(todo))
        expected = [[extras[c][i] for i in todo] if c else [None] * len(todo)
                    for c in (self.config.expected_sha256_col, self.config.expected_phash_col)]
        outcomes = dict(zip(todo, self._fetch_rows([urls[i] for i in todo], expected)))
        copied = parent.files([keys[i] for i in range(len(urls))
                               if i not in outcomes and parent.is_ok(i)]) if parent else {}

        stats = ShardStats(self.name, shard, len(urls))
        if parent is not None:
            stats.add("refetched", len(todo))
            stats.add("recovered", 0)  # present even when nothing comes back
            stats.add("reused", len(urls) - len(todo))
        rows: dict[str, list] = {f.name: [] for f in get_schema("sample").schema}
        samples = []
        for i, key in enumerate(keys):
            if i in outcomes:
                extra = {n: extras[n][i] for n in extra_names}
                meta, files = self._fresh_row(key, urls[i], captions[i], outcomes[i], extra)
                if parent is not None:
                    meta.update(parent.first_error(i))
                    if meta["status"] == "ok":
                        stats.add("recovered")
            else:  # a parent row kept as it was
                meta = parent.rows[i]  # type: ignore[union-attr]
                files = copied.get(key)
            stats.add(meta["status"])
            if meta["status"] == "failed":
                stats.add(f"failed.{meta['error_kind']}")
            for name, col in rows.items():
                col.append(meta.get(name))
            if files is not None:
                samples.append(TarSample(key, files))
        table = pa.table(rows, schema=get_schema("sample").schema)
        for name in extra_names:
            table = table.append_column(source.schema.field(name), source.column(name))
        stats.add_file(write_tar(self.layout.samples_tar(shard), samples))
        stats.add_file(write_parquet(table, self.layout.samples_parquet(shard), "sample"))
        return stats

    def _fresh_row(self, key: str, url: str | None, caption: str | None, out: _Outcome,
                   extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes] | None]:
        """The sample row of a fetched URL, and its tar files when it succeeded."""
        img = out.image if out.error_kind is None else None
        meta = {
            "key": key, "url": url, "caption": caption, "status": "ok" if img else "failed",
            "error_kind": out.error_kind, "error_message": out.error_message,
            "http_status": out.http_status,
            "width": img.width if img else None, "height": img.height if img else None,
            "original_width": out.image.original_width if out.image else None,
            "original_height": out.image.original_height if out.image else None,
            "sha256": img.sha256 if img else None, "phash": img.phash if img else None,
            "first_error_kind": None, "first_error_message": None, "first_http_status": None,
        }
        if img is None:
            return meta, None
        body = {k: v for k, v in meta.items()
                if k not in ("status", "error_kind", "error_message", "http_status")
                and not k.startswith("first_")}
        ext = IMAGE_EXT[self.config.encode_format]
        return meta, {ext: img.data, "txt": (caption or "").encode(),
                      "json": encode_json({**body, **_jsonable(extra)})}


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in values.items():
        try:
            json.dumps(v)
            out[k] = v
        except TypeError:
            out[k] = str(v)
    return out
