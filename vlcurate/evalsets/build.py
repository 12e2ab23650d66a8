"""``vlcurate evalsets add NAME SOURCE``: turn a folder of images, a URL list or an
existing version into a named, immutable eval index beside the datasets
(``ROOT/_evalsets/NAME/``, layout in :mod:`vlcurate.filters.eval_index`).

- a **folder**: every image file under it (``.jpg .jpeg .png .webp .gif .bmp``, sorted;
  ids are the relative paths) goes through the download stage's own decoding and
  resizing (:class:`~vlcurate.download.images.ImageProcessor`, ``image_size`` 256),
  so its pHash is computed exactly as a training sample's is; an image that cannot be
  decoded is an item row with ``status: failed`` and the reason;
- a **URL list** (any input the download stage reads) is fetched through the download
  stage (same guards, politeness and status rows; settings with ``--download``) into a
  temporary version that is removed afterwards; ids are the sample keys, ``source``
  the URL; failed fetches are failed items;
- a **version** (a directory with ``manifest.json``): its samples, ids = keys.

Every ok item also gets a 64-px JPEG thumbnail in ``items.parquet`` (manifest format 2),
which ``vlcurate report`` shows beside the training samples that matched it.

With ``--model`` the ok images are also encoded by that CLIP model (fp16-rounded, unit
norm, as the ``decontaminate`` stage rounds the training side) and an embedding index
is built; otherwise the set has the hash index only.

Nothing is visible until it is whole: on local disk the set is written into
``_evalsets/.NAME.building`` and renamed; on an object store the manifest, written
last, commits it. A failure removes what was written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlcurate.download.images import ImageConfig, ImageProcessor
from vlcurate.errors import UserError
from vlcurate.extractors.clip_models import ClipModelConfig
from vlcurate.evalset_store import (FORMAT, ITEMS, MANIFEST, THUMB_PX, evalset_dir, evalset_exists, evalsets_root,
                                    make_thumbnail)
from vlcurate.filters.eval_index import (EMBEDDING_INDEX, HASH_INDEX, VECTORS, EmbeddingIndexInfo,
                                         build_embedding_index, build_hash_index, model_fingerprint, serialize)
from vlcurate.io import storage
from vlcurate.io.parquet import read_parquet, write_parquet
from vlcurate.io.tar import iter_tar_files
from vlcurate.schemas import get_schema
from vlcurate.versions import MANIFEST as VERSION_MANIFEST
from vlcurate.versions import code_version, load_manifest, manifest_files

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
FOLDER_IMAGES = ImageConfig(image_size=256, resize_mode="keep_ratio")  # the download stage's defaults
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclass(frozen=True)
class EvalItem:
    """One source image: ``data`` (stored image bytes) and ``phash`` exactly when ok."""

    id: str
    source: str | None
    data: bytes | None
    phash: str | None
    error_message: str | None = None
    thumbnail: bytes | None = None  # kept (small) once ``data`` is dropped


@dataclass(frozen=True)
class AddResult:
    path: str
    manifest: dict


def _folder_items(source: str) -> Iterator[EvalItem]:
    process = ImageProcessor(FOLDER_IMAGES)
    for f in storage.list_files(source):
        name = f.path.rsplit("/", 1)[-1]
        if name.startswith((".", "_")) or not name.lower().endswith(IMAGE_SUFFIXES):
            continue
        loc = storage.join(source, f.path)
        image = process(storage.read_bytes(loc))
        if image.data is None:
            yield EvalItem(f.path, loc, None, None, f"{image.error_kind}: {image.error_message}")
        else:
            yield EvalItem(f.path, loc, image.data, image.phash)


def _version_items(version_dir: str) -> Iterator[EvalItem]:
    manifest = load_manifest(version_dir)
    for rel in manifest_files(manifest, "samples", ".parquet"):
        table = read_parquet(storage.join(version_dir, rel), columns=["key", "url", "status", "error_kind",
                                                                      "error_message", "phash"])
        ok = table.filter(pc.equal(table.column("status"), "ok"))
        images = {}
        if ok.num_rows:
            tar = storage.join(version_dir, rel[: -len(".parquet")] + ".tar")
            images = {k: data for k, _, data in iter_tar_files(tar, ("jpg", "png", "webp"))}
        for row in table.to_pylist():
            if row["status"] == "ok" and row["key"] in images:
                yield EvalItem(row["key"], row["url"], images[row["key"]], row["phash"])
            else:
                why = f"{row['error_kind']}: {row['error_message']}" if row["status"] != "ok" else "image missing from tar"
                yield EvalItem(row["key"], row["url"], None, None, why)


def _url_list_items(source: str, work: str, download: dict[str, Any], workers: int) -> Iterator[EvalItem]:
    from vlcurate.pipelines.build import build
    from vlcurate.recipe import recipe_from_dict

    settings = {"caption_col": None, **download.pop("input", {})}
    recipe = recipe_from_dict({"input": {"paths": [source], **settings},
                               "output": {"root": work, "name": "download", "version": "v1"},
                               "stages": [{"download": download}], "runner": {"workers": workers}},
                              base_dir=Path.cwd(), where=f"evalset source {source}")
    result = build(recipe, log=lambda s: None)
    yield from _version_items(os.fspath(result.version_dir))


def source_kind(source: str) -> str:
    if storage.is_dir(source):
        return "version" if storage.exists(storage.join(source, VERSION_MANIFEST)) else "folder"
    if storage.exists(source):
        return "url_list"
    raise UserError(f"source {source}: no such file or directory")


class _Embedder:
    """Unit, fp16-rounded CLIP image embeddings of the ok items (as the stage rounds
    the training side), encoded ``batch_size`` at a time as items stream by, so a
    large eval set's image bytes are never all in memory."""

    def __init__(self, config: ClipModelConfig, batch_size: int = 64):
        from vlcurate.extractors.clip_models import ClipImageInput, load_clip

        self.clip = load_clip(config.clip_config())
        self.input = ClipImageInput(self.clip)
        self.batch_size, self.pending, self.done = batch_size, [], []

    def add(self, data: bytes) -> None:
        from PIL import Image

        self.pending.append(self.input.prepare(Image.open(io.BytesIO(data)).convert("RGB")))
        if len(self.pending) == self.batch_size:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.done.append(self.clip.encode_images(self.input.batch(self.pending)).embedding.cpu().numpy())
            self.pending = []

    def result(self) -> np.ndarray:
        self._flush()
        emb = np.concatenate(self.done).astype(np.float16).astype(np.float64)
        return (emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _write(loc: str, data: bytes) -> dict[str, Any]:
    storage.write_bytes(loc, data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def add_evalset(root: str, name: str, source: str, model: ClipModelConfig | None = None,
                download: dict[str, Any] | None = None, workers: int = 1, exact_max: int | None = None,
                log: Callable[[str], None] = lambda s: None) -> AddResult:
    """Build eval set ``name`` under ``root`` from ``source``; UserError (nothing
    written) for a name that exists or is not a plain name, a missing or empty source."""
    root, source = os.fspath(root), os.fspath(source)
    if not name or set(name) - _NAME_OK or name.startswith("."):
        raise UserError(f"eval set name {name!r}: use letters, digits, '_', '-', '.' (not first)")
    if evalset_exists(root, name):
        raise UserError(f"eval set {name}: already exists under {root} (eval sets are immutable; "
                        "choose another name)")
    kind = source_kind(source)
    final = evalset_dir(root, name)
    remote = storage.is_remote(root)
    where = final if remote else storage.join(evalsets_root(root), f".{name}.building")
    storage.delete_tree(where)  # a build killed earlier left it; it was never visible
    try:
        if kind == "folder":
            stream = _folder_items(source)
        elif kind == "version":
            stream = _version_items(source)
        else:
            stream = _url_list_items(source, storage.join(where, "_download"), dict(download or {}), workers)
        embedder = _Embedder(model) if model is not None else None
        items, ok = [], []
        for it in stream:  # kept without their image bytes
            if it.data is not None and it.phash is None:  # a version's row from before pHashes were stored
                it = EvalItem(it.id, it.source, None, None, "no pHash stored for it")
            items.append(EvalItem(it.id, it.source, None, it.phash, it.error_message,
                                  make_thumbnail(it.data) if it.data is not None else None))
            if it.data is not None:
                ok.append(it.phash)
                if embedder is not None:
                    embedder.add(it.data)
        storage.delete_tree(storage.join(where, "_download"))
        if not ok:
            raise UserError(f"source {source}: no images" + (f" ({len(items)} failed: {items[0].error_message})"
                                                             if items else " found"))
        log(f"eval set {name}: {len(ok)} of {len(items)} images ok")
        files = []
        table = pa.table({"id": [it.id for it in items], "source": [it.source for it in items],
                          "status": ["ok" if it.phash is not None else "failed" for it in items],
                          "error_message": [it.error_message for it in items],
                          "phash": [it.phash for it in items],
                          "thumbnail": [it.thumbnail for it in items]}, schema=get_schema("eval_item").schema)
        rec = write_parquet(table, storage.join(where, ITEMS), "eval_item")
        files.append({"path": ITEMS, "sha256": rec.sha256, "bytes": rec.bytes, "rows": rec.rows})
        files.append({"path": HASH_INDEX, "rows": len(ok),
                      **_write(storage.join(where, HASH_INDEX), serialize(build_hash_index(ok)))})
        info: EmbeddingIndexInfo | None = None
        if embedder is not None:
            emb = embedder.result()
            index, info = build_embedding_index(emb, **({"exact_max": exact_max} if exact_max is not None else {}))
            buf = io.BytesIO()
            np.save(buf, emb, allow_pickle=False)
            files.append({"path": VECTORS, "rows": len(ok), **_write(storage.join(where, VECTORS), buf.getvalue())})
            files.append({"path": EMBEDDING_INDEX, "rows": len(ok),
                          **_write(storage.join(where, EMBEDDING_INDEX), serialize(index))})
        manifest = {
            "format": FORMAT, "name": name,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "code_version": code_version(),
            "source": {"kind": kind, "location": source},
            "counts": {"items": len(items), "ok": len(ok), "failed": len(items) - len(ok)},
            "model": model_fingerprint(model) if model is not None else None,
            "model_provenance": model.provenance() if model is not None else None,
            "hash_index": {"kind": "binary_flat", "bits": 64},
            "thumbnails": {"column": "thumbnail", "format": "jpeg", "max_px": THUMB_PX},
            "embedding_index": None if info is None else {k: v for k, v in info.__dict__.items() if v is not None},
            "files": sorted(files, key=lambda f: f["path"]),
        }
        for f in files:
            storage.make_read_only(storage.join(where, f["path"]))
        storage.write_bytes(storage.join(where, MANIFEST), (json.dumps(manifest, indent=1) + "\n").encode())
        storage.make_read_only(storage.join(where, MANIFEST))
        if not remote:
            storage.move_tree(where, final)
    except BaseException:
        storage.delete_tree(where)
        raise
    return AddResult(final, manifest)


def evalset_rows(root: str) -> list[dict[str, Any]]:
    """One row per eval set under ``root``: name, items, ok, model, index kinds."""
    from vlcurate.evalset_store import list_names, read_manifest

    if not storage.is_dir(root):
        raise UserError(f"root {root}: no such directory")
    rows = []
    for name in list_names(root):
        m = read_manifest(root, name)
        emb = m.get("embedding_index") or {}
        rows.append({"name": name, "items": m["counts"]["items"], "ok": m["counts"]["ok"],
                     "model": (m.get("model") or {}).get("model"), "embedding_index": emb.get("kind"),
                     "created_at": m["created_at"], "path": evalset_dir(root, name)})
    return rows


def show_evalset(root: str, name: str) -> str:
    from vlcurate.evalset_store import read_manifest

    m = read_manifest(root, name)
    emb = m.get("embedding_index")
    lines = [f"{name}  ({evalset_dir(root, name)})",
             f"  created      {m['created_at']}",
             f"  code         {m['code_version']}",
             f"  source       {m['source']['kind']}: {m['source']['location']}",
             f"  items        {m['counts']['items']} ({m['counts']['ok']} ok, {m['counts']['failed']} failed)",
             f"  hash index   {m['hash_index']['kind']} ({m['hash_index']['bits']}-bit pHash, exact)"]
    thumbs = m.get("thumbnails")
    lines.append(f"  thumbnails   {thumbs['format']}, at most {thumbs['max_px']} px (shown by `vlcurate report`)"
                 if thumbs else "  thumbnails   none (added before eval sets stored them)")
    if m.get("model"):
        lines.append(f"  model        {json.dumps(m['model'], sort_keys=True)}")
    if emb:
        extra = "" if emb["kind"] == "flat" else (f", nlist {emb['nlist']}, nprobe {emb['nprobe']}: recall@1 "
                                                  f"{emb['recall_at_1']} on {emb['calibration_queries']} "
                                                  "held-out perturbed queries")
        lines.append(f"  embeddings   {emb['kind']} index, {emb['dim']}-d{extra}")
    else:
        lines.append("  embeddings   none (hash index only)")
    for f in m["files"]:
        lines.append(f"  file         {f['path']}  {f['bytes']:,} bytes  sha256 {f['sha256'][:16]}")
    return "\n".join(lines)
