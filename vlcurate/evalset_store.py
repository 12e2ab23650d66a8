"""Where eval sets live and what of them is read without FAISS: their layout under
``ROOT/_evalsets/NAME/``, their manifest, and the small thumbnail of each item.

Below the stage packages (beside :mod:`vlcurate.versions`) because both the
``decontaminate`` stage (:mod:`vlcurate.filters.eval_index`, which builds and searches
the indexes) and the HTML report (:mod:`vlcurate.export.html_report`, which shows a
dropped sample beside the eval image it matched) need them.

Manifest formats: ``vlcurate.evalset/1`` (no thumbnails) and ``vlcurate.evalset/2``
(``items.parquet`` has a ``thumbnail`` column: a JPEG of at most ``THUMB_PX`` pixels on
its longer side per ok item; the manifest's ``thumbnails`` says its size). Both are
read; an eval set of format 1 shows "no thumbnail" in a report.
"""

from __future__ import annotations

import io
import json

from vlcurate.errors import UserError
from vlcurate.io import storage

EVALSETS_DIR = "_evalsets"
MANIFEST = "evalset.json"
FORMAT = "vlcurate.evalset/2"  # written now
FORMATS = ("vlcurate.evalset/1", FORMAT)  # read
ITEMS = "items.parquet"
THUMB_PX = 64
THUMB_QUALITY = 80


def evalsets_root(root: str) -> str:
    return storage.join(root, EVALSETS_DIR)


def evalset_dir(root: str, name: str) -> str:
    return storage.join(root, EVALSETS_DIR, name)


def evalset_exists(root: str, name: str) -> bool:
    """Whether a finished eval set ``name`` is under ``root`` (its manifest exists)."""
    return storage.exists(storage.join(evalset_dir(root, name), MANIFEST))


def list_names(root: str) -> list[str]:
    """Names of the finished eval sets under ``root``, sorted."""
    base = evalsets_root(root)
    if not storage.is_dir(base):
        return []
    return sorted({f.path.split("/")[0] for f in storage.list_files(base)
                   if f.path.count("/") == 1 and f.path.endswith("/" + MANIFEST)})


def read_manifest(root: str, name: str) -> dict:
    """The manifest of eval set ``name`` under ``root``; UserError when there is none."""
    where = evalset_dir(root, name)
    loc = storage.join(where, MANIFEST)
    if not storage.exists(loc):
        known = list_names(root)
        raise UserError(f"eval set {name}: not found under {root} (known: {', '.join(known) or 'none'})")
    try:
        manifest = json.loads(storage.read_bytes(loc))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"eval set {where}: {MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") not in FORMATS:
        raise UserError(f"eval set {where}: {MANIFEST} is not a {' or '.join(FORMATS)} manifest")
    return manifest


def make_thumbnail(data: bytes, px: int = THUMB_PX) -> bytes | None:
    """A JPEG of ``data`` (an image file's bytes) at most ``px`` on its longer side;
    None when it does not decode."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            img.thumbnail((px, px))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=THUMB_QUALITY)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return buf.getvalue()


def eval_thumbnails(root: str, name: str, ids: set[str]) -> dict[str, bytes]:
    """id -> JPEG thumbnail for those of ``ids`` that eval set ``name`` has one for
    (none for an eval set that is missing or predates thumbnails: the caller says
    "no thumbnail")."""
    from vlcurate.io.parquet import read_parquet, read_parquet_schema

    loc = storage.join(evalset_dir(root, name), ITEMS)
    if not ids or not evalset_exists(root, name) or "thumbnail" not in read_parquet_schema(loc).names:
        return {}
    table = read_parquet(loc, columns=["id", "thumbnail"])
    return {i: t for i, t in zip(table.column("id").to_pylist(), table.column("thumbnail").to_pylist())
            if i in ids and t is not None}
