"""What the report shows per sample: a seeded draw of shards, and from them score
lists, kept and dropped samples per reason, duplicate pairs, eval-contamination
matches and failed rows; then a
bounded choice of those and their thumbnails (``data:`` URIs).

At most ``max_shards`` shards are read, whatever the version's size; the same
version, options and seed give the same choice.
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass, field, replace
from typing import Callable

import pyarrow.compute as pc

from vlcurate.evalset_store import eval_thumbnails, make_thumbnail
from vlcurate.io import storage
from vlcurate.io.parquet import parquet_rows, read_parquet
from vlcurate.io.tar import iter_tar_files
from vlcurate.pipelines.keyed import shard_of
from vlcurate.pipelines.progress import Ticker
from vlcurate.pipelines.samples import DECISION
from vlcurate.pipelines.stage import Layout

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
MATCH_REPORT = "matches.parquet"  # a decontaminate stage's per-shard match report (record eval_match)
DUPLICATE_SUFFIX = "duplicate"  # reasons of dedup filters: duplicate, near_duplicate, semantic_duplicate


@dataclass(frozen=True)
class ReportOptions:
    """What the page samples; every limit bounds its size."""

    seed: int = 0
    max_shards: int = 64  # shards read for histograms, thumbnails and examples
    kept: int = 24  # thumbnails of kept samples
    per_reason: int = 8  # thumbnails per drop reason
    pairs: int = 6  # duplicate pairs
    matches: int = 8  # eval-contamination matches (dropped sample beside the eval image), per stage
    urls_per_kind: int = 3  # example URLs per download error kind
    thumb_px: int = 112
    bins: int = 30


@dataclass
class Sampled:
    """What the sampled shards hold, before images are read."""

    shards: list[int] = field(default_factory=list)
    scores: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)  # stage -> (score, kept)
    kept: list[tuple[int, str]] = field(default_factory=list)  # (shard, key)
    dropped: dict[tuple[str, str], list[tuple[int, str, str | None]]] = field(default_factory=dict)
    pairs: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)  # stage -> (shard, key, representative)
    errors: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # kind -> (url, message)
    # decontaminate stage -> (shard, key, its match report row: evalset, eval_id, hash_distance, similarity...)
    matches: dict[str, list[tuple[int, str, dict]]] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)


def num_shards(manifest: dict) -> int:
    """The version's shards (its first stage's: every stage runs on every shard)."""
    return manifest["stages"][0]["shards"] if manifest["stages"] else 0


def sample(layout: Layout, manifest: dict, options: ReportOptions,
           log: Callable[[str], None] | None) -> Sampled:
    """Read a seeded draw of at most ``options.max_shards`` shards."""
    rng = random.Random(options.seed)
    order = list(range(num_shards(manifest)))
    rng.shuffle(order)
    sampled = Sampled(shards=sorted(order[: options.max_shards]))
    sampled.matches = {stage: [] for stage in decontaminate_stages(manifest)}
    rows = {shard: parquet_rows(layout.samples_parquet(shard)) for shard in sampled.shards}  # footers only
    with Ticker("report: samples read", sum(rows.values()), log=log, unit="samples") as ticker:
        for shard in sampled.shards:
            _read_shard(layout, shard, sampled, options)
            ticker.advance(rows[shard])
    return sampled


def _read_shard(layout: Layout, shard: int, sampled: Sampled, options: ReportOptions) -> None:
    rows = read_parquet(layout.samples_parquet(shard),
                        columns=["key", "url", "caption", "status", "error_kind", "error_message"]).to_pylist()
    for r in rows:
        if r["status"] != "ok":
            examples = sampled.errors.setdefault(r["error_kind"] or "unknown", [])
            if len(examples) < options.urls_per_kind:
                examples.append((r["url"] or "", r["error_message"] or ""))
    dropped: set[str] = set()
    for loc in layout.sidecars(shard, DECISION):
        d = read_parquet(loc, columns=["key", "stage", "keep", "reason", "score", "detail"])
        scored = d.filter(pc.is_valid(d.column("score")))
        if scored.num_rows:
            sampled.scores.setdefault(d.column("stage")[0].as_py(), []).extend(
                zip(scored.column("score").to_pylist(), scored.column("keep").to_pylist()))
        for r in d.filter(pc.invert(d.column("keep"))).to_pylist():
            dropped.add(r["key"])
            sampled.dropped.setdefault((r["stage"], r["reason"]), []).append((shard, r["key"], r["detail"]))
            if r["reason"].endswith(DUPLICATE_SUFFIX) and r["detail"]:
                sampled.pairs.setdefault(r["stage"], []).append((shard, r["key"], r["detail"]))
    for stage, found in sampled.matches.items():
        loc = layout.sidecar(stage, shard, MATCH_REPORT)
        if storage.exists(loc):
            found += [(shard, r["key"], r) for r in read_parquet(loc).to_pylist()]
    ok = [r for r in rows if r["status"] == "ok"]
    sampled.kept += [(shard, r["key"]) for r in ok if r["key"] not in dropped]
    sampled.captions.update((r["key"], r["caption"] or "") for r in ok)


def choose(sampled: Sampled, manifest: dict, options: ReportOptions) -> Sampled:
    """The samples the page shows: a seeded draw of ``options``' size from each group,
    groups in pipeline order."""
    rng = random.Random(options.seed + 1)
    order = {s["name"]: i for i, s in enumerate(manifest["stages"])}

    def pick(items: list, n: int) -> list:
        return sorted(rng.sample(items, n)) if len(items) > n else sorted(items)

    return replace(
        sampled, kept=pick(sampled.kept, options.kept),
        dropped={g: pick(v, options.per_reason)
                 for g, v in sorted(sampled.dropped.items(), key=lambda kv: (order.get(kv[0][0], -1), kv[0]))},
        pairs={s: pick(v, options.pairs)
               for s, v in sorted(sampled.pairs.items(), key=lambda kv: (order.get(kv[0], -1), kv[0]))},
        matches={s: pick(v, options.matches)
                 for s, v in sorted(sampled.matches.items(), key=lambda kv: (order.get(kv[0], -1), kv[0]))})


def thumbnails(layout: Layout, sampled: Sampled, options: ReportOptions) -> dict[str, str]:
    """key -> data URI of its thumbnail, for every sample the page shows (a
    representative from an unsampled shard included)."""
    wanted: dict[int, set[str]] = {}
    for shard, key in sampled.kept:
        wanted.setdefault(shard, set()).add(key)
    for items in sampled.dropped.values():
        for shard, key, _ in items:
            wanted.setdefault(shard, set()).add(key)
    for items in sampled.matches.values():
        for shard, key, _ in items:
            wanted.setdefault(shard, set()).add(key)
    for items in sampled.pairs.values():
        for shard, key, representative in items:
            wanted.setdefault(shard, set()).add(key)
            try:
                wanted.setdefault(shard_of(representative), set()).add(representative)
            except ValueError:
                pass  # not a <shard>_<row> key: shown without its image
    thumbs: dict[str, str] = {}
    for shard, keys in sorted(wanted.items()):
        tar = layout.samples_tar(shard)
        if not storage.exists(tar):
            continue
        for key, _, payload in iter_tar_files(tar, IMAGE_EXTS, keys):
            uri = _thumbnail(payload, options.thumb_px)
            if uri:
                thumbs[key] = uri
    return thumbs


def _thumbnail(payload: bytes, px: int) -> str | None:
    jpeg = make_thumbnail(payload, px)
    return None if jpeg is None else jpeg_uri(jpeg)


def jpeg_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def decontaminate_stages(manifest: dict) -> dict[str, str]:
    """Each ``decontaminate`` stage of the recipe -> the root holding its eval sets."""
    out = {}
    for item in manifest["recipe"]["stages"]:
        (kind, settings), = item.items()
        settings = settings or {}
        if kind == "decontaminate":
            out[settings.get("name", kind)] = settings.get("root")
    return out


def eval_thumbnail_uris(manifest: dict, sampled: Sampled) -> dict[tuple[str, str, str], str]:
    """(stage, eval set, eval id) -> data URI of the eval item's stored thumbnail, for
    every match the page shows that has one (an eval set that is gone or predates
    thumbnails has none)."""
    roots = decontaminate_stages(manifest)
    out = {}
    for stage, items in sampled.matches.items():
        wanted: dict[str, set[str]] = {}
        for _, _, row in items:
            wanted.setdefault(row["evalset"], set()).add(row["eval_id"])
        for name, ids in sorted(wanted.items()):
            if roots.get(stage) is None:
                continue
            for eval_id, jpeg in eval_thumbnails(roots[stage], name, ids).items():
                out[(stage, name, eval_id)] = jpeg_uri(jpeg)
    return out
