"""WebDataset tar shards: ``<key>.jpg``, ``<key>.txt``, ``<key>.json`` plus feature files.

Written in exactly the layout of webdataset's ``TarWriter`` (members sorted by
extension, mode 0444, owner ``bigdata``, a fixed mtime, PAX format) with the standard
library's ``tarfile``, so rebuilds give the same bytes; read back either with
webdataset or with the key scan below. Writing does not import webdataset: it
imports torch, which costs a download worker ~700 MB of memory and seconds of start-up.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from typing import Any, Collection, Iterable, Iterator

from vlcurate.io import storage
from vlcurate.io.stats import FileRecord

# Reproducible tar members: every byte of the archive depends only on the samples.
_FIXED_MTIME = 0.0
_MODE = 0o444
_OWNER = "bigdata"  # webdataset's default user and group names


@dataclass(frozen=True)
class TarSample:
    """One sample to store: key (no dots), then one payload per file extension."""

    key: str
    files: dict[str, bytes]


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def write_tar(path: str | os.PathLike, samples: Iterable[TarSample]) -> FileRecord:
    """Write samples to a tar shard atomically; return its record (``rows``: samples).

    Byte for byte what ``webdataset.TarWriter(f, encoder=False, mtime=0)`` writes."""
    n = 0
    with storage.open_write(path) as raw:
        f = storage.HashingWriter(raw)
        with tarfile.open(fileobj=f, mode="w|") as sink:
            for sample in samples:
                if "." in sample.key or "/" in sample.key:
                    raise ValueError(f"sample key {sample.key!r} contains '.' or '/'")
                for ext in sorted(sample.files):
                    payload = sample.files[ext]
                    info = tarfile.TarInfo(f"{sample.key}.{ext}")
                    info.size, info.mtime, info.mode = len(payload), _FIXED_MTIME, _MODE
                    info.uname = info.gname = _OWNER
                    sink.addfile(info, io.BytesIO(payload))
                n += 1
    return FileRecord(os.fspath(path), "webdataset", f.sha256, f.bytes, n)


def tar_keys(path: str | os.PathLike) -> dict[str, list[str]]:
    """Map each sample key in a tar shard to its file extensions, in archive order.

    Raises ``tarfile.TarError`` (or ``EOFError``) on a damaged archive.
    """
    keys: dict[str, list[str]] = {}
    with storage.open_read(path) as raw, tarfile.open(fileobj=raw, mode="r|") as tf:
        for member in tf:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            keys.setdefault(key, []).append(ext)
            # Read through the payload so truncation inside a member is detected too.
            data = tf.extractfile(member)
            if data is not None and len(data.read()) != member.size:
                raise tarfile.ReadError(f"member {member.name} is truncated")
    return keys


def read_tar(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All samples of a shard as webdataset dicts (``__key__`` + raw bytes per extension)."""
    samples: dict[str, dict[str, Any]] = {}
    for key, ext, payload in iter_tar_files(path, exts=None):
        samples.setdefault(key, {"__key__": key})[ext] = payload
    return list(samples.values())


def iter_tar_files(path: str | os.PathLike, exts: Collection[str] | None,
                   keys: Collection[str] | None = None) -> Iterator[tuple[str, str, bytes]]:
    """Stream ``(key, ext, payload)`` for the members of a tar shard whose extension is
    in ``exts`` (and whose key is in ``keys``, when given), in archive order.

    One sequential pass that holds one payload at a time, so a feature stage can read
    a shard of thousands of images without loading it whole. Raises
    ``tarfile.TarError`` (or ``EOFError``) on a damaged archive.
    """
    wanted = None if exts is None else set(exts)
    with storage.open_read(path) as raw, tarfile.open(fileobj=raw, mode="r|") as tf:
        for member in tf:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if (wanted is not None and ext not in wanted) or (keys is not None and key not in keys):
                continue
            data = tf.extractfile(member)
            payload = data.read() if data is not None else b""
            if len(payload) != member.size:
                raise tarfile.ReadError(f"member {member.name} is truncated")
            yield key, ext, payload
