"""The download stage: one input shard of URLs -> a samples tar + a status row per input row.

Fetching and image processing run together in a thread pool (network waits and
PIL's decoders/resizers release the GIL), so a process keeps its cores busy while
requests are in flight. Every input row gets exactly one output row, ``ok`` or
``failed`` with an error kind; a bad sample never fails the shard.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vlcurate.download.fetch import Fetcher, FetchConfig
from vlcurate.download.images import ImageConfig, ImageProcessor, ProcessedImage
from vlcurate.io.parquet import write_parquet
from vlcurate.io.stats import ShardStats
from vlcurate.io.tar import TarSample, encode_json, write_tar
from vlcurate.pipelines.stage import Stage, register_stage
from vlcurate.schemas import get_schema

IMAGE_EXT = {"jpg": "jpg", "jpeg": "jpg", "png": "png", "webp": "webp"}


@dataclass(frozen=True)
class DownloadConfig(FetchConfig, ImageConfig):
    """Fetch settings (timeouts, retries, SSRF guard, opt-outs) and image settings
    (size, resize mode, bomb limit, encoding) in one recipe block."""


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

    def setup(self) -> None:
        fetch_cfg, image_cfg = split_config(self.config)
        self.fetcher = Fetcher(fetch_cfg)
        self.processor = ImageProcessor(image_cfg)
        self.pool = ThreadPoolExecutor(max(1, fetch_cfg.threads), thread_name_prefix="vlcurate-dl")

    def _one(self, url: str | None) -> _Outcome:
        if not url:
            return _Outcome("invalid_url", "empty url", None)
        fetched = self.fetcher.fetch(url)
        if fetched.error_kind is not None:
            return _Outcome(fetched.error_kind, fetched.error_message, None, fetched.http_status)
        image = self.processor(fetched.data)
        return _Outcome(image.error_kind, image.error_message, image, fetched.http_status)

    def run_shard(self, shard: int, corpus: Any = None) -> ShardStats:
        if not hasattr(self, "pool"):
            self.setup()
        source = pq.read_table(self.layout.input_shard(shard))
        urls = source.column("url").to_pylist()
        captions = source.column("caption").to_pylist()
        extra_names = [n for n in source.schema.names if n not in ("url", "caption")]
        extras = {n: source.column(n).to_pylist() for n in extra_names}
        outcomes = list(self.pool.map(self._one, urls))

        stats = ShardStats(self.name, shard, len(urls))
        ext = IMAGE_EXT[self.config.encode_format]
        rows: dict[str, list] = {f.name: [] for f in get_schema("sample").schema}
        samples = []
        for i, (url, caption, out) in enumerate(zip(urls, captions, outcomes)):
            key = sample_key(shard, i)
            img = out.image if out.error_kind is None else None
            status = "ok" if img is not None else "failed"
            stats.add(status)
            if status == "failed":
                stats.add(f"failed.{out.error_kind}")
            meta = {
                "key": key, "url": url or "", "caption": caption, "status": status,
                "error_kind": out.error_kind, "error_message": out.error_message,
                "http_status": out.http_status,
                "width": img.width if img else None, "height": img.height if img else None,
                "original_width": out.image.original_width if out.image else None,
                "original_height": out.image.original_height if out.image else None,
                "sha256": img.sha256 if img else None, "phash": img.phash if img else None,
            }
            for name, col in rows.items():
                col.append(meta[name])
            if img is not None:
                extra = {n: extras[n][i] for n in extra_names}
                body = {k: v for k, v in meta.items()
                        if k not in ("status", "error_kind", "error_message", "http_status")}
                samples.append(TarSample(key, {ext: img.data, "txt": (caption or "").encode(),
                                               "json": encode_json({**body, **_jsonable(extra)})}))
        table = pa.table(rows, schema=get_schema("sample").schema)
        for name in extra_names:
            table = table.append_column(source.schema.field(name), source.column(name))
        write_tar(self.layout.samples_tar(shard), samples)
        write_parquet(table, self.layout.samples_parquet(shard), "sample")
        return stats


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in values.items():
        try:
            json.dumps(v)
            out[k] = v
        except TypeError:
            out[k] = str(v)
    return out
