"""``vlcurate validate``: re-check a whole version against its manifest.

Checks every listed file (present, size, sha256 first, so a changed file is reported
even when it still parses; then row count and, for Parquet, its record schema),
files present but not listed, that each samples tar holds exactly the parquet's
``ok`` keys and the files a sample needs, that sidecars only name keys of their
shard, and that the stats markers add up to the manifest's counts. Every problem
names the file it is about; damage of any kind is a listed problem, never a crash,
and the checks carry on to the end.
"""

from __future__ import annotations

import json
import os
from typing import Callable, TypeVar

import pyarrow as pa

from vlcurate.io import storage
from vlcurate.io.parquet import parquet_rows, read_parquet, read_parquet_schema
from vlcurate.io.tar import tar_keys
from vlcurate.schemas import get_schema, validate
from vlcurate.schemas.interleaved import DOCUMENT_KEYED
from vlcurate.versions import MANIFEST, ManifestError, data_files, load_manifest

# Files a sample needs in its tar; features may add more.
TAR_REQUIRED = ("jpg", "txt", "json")
T = TypeVar("T")


class Unreadable(Exception):
    """A file could not be read or parsed; the message says why."""


def _read(rel: str, what: Callable[[], T]) -> T:
    """``what()``, with any failure to read or parse the file turned into Unreadable.
    Damaged files raise all kinds of errors from the libraries that parse them
    (ArrowInvalid, OSError from thrift, TarError, EOFError, UnicodeDecodeError,
    KeyError from a missing column...), so this is the one place that catches them."""
    try:
        return what()
    except Exception as e:  # noqa: BLE001 - every parse failure is a finding about this file
        raise Unreadable(f"{rel}: unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})") from None


def _file_rows(loc: str) -> int | None:
    """Rows a data file holds: Parquet rows, tar samples; None for other files."""
    if loc.endswith(".parquet"):
        return parquet_rows(loc)
    if loc.endswith(".tar"):
        return len(tar_keys(loc))
    return None


def _check_file(version_dir: str, entry: dict) -> list[str]:
    rel = entry["path"]
    loc = storage.join(version_dir, rel)
    if not storage.exists(loc):
        return [f"{rel}: missing"]
    problems = []
    size = storage.size(loc)
    if size != entry.get("bytes"):
        problems.append(f"{rel}: {size} bytes, manifest says {entry.get('bytes')}")
    if storage.sha256(loc) != entry.get("sha256"):
        problems.append(f"{rel}: sha256 differs from the manifest")
    try:
        rows = _read(rel, lambda: _file_rows(loc))
        if rows != entry.get("rows"):
            problems.append(f"{rel}: {rows} rows, manifest says {entry.get('rows')}")
        if rel.endswith(".parquet"):
            problems += _check_parquet(loc, rel)
    except Unreadable as e:
        problems.append(str(e))
    return problems


def _check_parquet(loc: str, rel: str) -> list[str]:
    table = _read(rel, lambda: read_parquet(loc))
    kind = (table.schema.metadata or {}).get(b"vlcurate.record")
    if kind is None:
        return [f"{rel}: no vlcurate record kind in its schema metadata"]
    try:
        get_schema(kind.decode())
    except KeyError as e:
        return [f"{rel}: {e.args[0]}"]
    return [f"{rel}: {p}" for p in validate(table, kind.decode(), raise_error=False)]


def _keys(loc: str, rel: str, columns: list[str]) -> pa.Table:
    return _read(rel, lambda: read_parquet(loc, columns=columns))


def _check_shard(version_dir: str, rel: str, listed: set[str]) -> list[str]:
    """One samples parquet against its tar and its shard's sidecars."""
    loc = storage.join(version_dir, rel)
    try:
        if not storage.exists(loc):
            return []  # reported as missing already
        table = _keys(loc, rel, ["key", "status"])
    except Unreadable:
        return []  # reported by the file check
    ok = {k for k, s in zip(table.column("key").to_pylist(), table.column("status").to_pylist()) if s == "ok"}
    problems = []
    tar_rel = rel[: -len(".parquet")] + ".tar"
    if tar_rel not in listed:
        problems.append(f"{tar_rel}: not in the manifest, though {rel} lists {len(ok)} ok samples")
    elif storage.exists(storage.join(version_dir, tar_rel)):
        try:
            keys = _read(tar_rel, lambda: tar_keys(storage.join(version_dir, tar_rel)))
        except Unreadable:
            keys = None  # reported by the file check
        if keys is not None:
            if set(keys) != ok:
                only_tar, only_pq = sorted(set(keys) - ok), sorted(ok - set(keys))
                problems.append(f"{tar_rel}: keys disagree with {rel} "
                                f"(only in tar: {only_tar[:3]}, only ok in parquet: {only_pq[:3]})")
            for key, exts in keys.items():
                missing = [e for e in TAR_REQUIRED if e not in exts]
                if missing:
                    problems.append(f"{tar_rel}: sample {key} lacks {', '.join(missing)}")
                    break
    shard_keys = set(table.column("key").to_pylist())
    shard = rel.rsplit("/", 1)[-1].split(".")[0]
    for side in sorted(listed):
        top, _, name = side.partition("/")
        # <stage>/<shard>.parquet and a stage's other files of the shard (<shard>.captions.parquet)
        if name.split(".")[0] == shard and name.endswith(".parquet") and top not in ("samples", "stats"):
            problems += _check_sidecar(version_dir, side, shard_keys)
    return problems


def _check_sidecar(version_dir: str, rel: str, shard_keys: set[str]) -> list[str]:
    loc = storage.join(version_dir, rel)
    try:
        schema = _read(rel, lambda: read_parquet_schema(loc)) if storage.exists(loc) else None
        if schema is None or "key" not in schema.names:
            return []
        if (schema.metadata or {}).get(b"vlcurate.record", b"").decode() in DOCUMENT_KEYED:
            return []  # keyed by documents; a version's samples are their images
        keys = set(_keys(loc, rel, ["key"]).column("key").to_pylist())
    except Unreadable:
        return []  # reported by the file check
    stray = sorted(keys - shard_keys)
    return [f"{rel}: keys not in the shard's samples: {stray[:3]}"] if stray else []


def _check_export_tar(version_dir: str, rel: str) -> list[str]:
    """Every sample of a training export's tar has an image, its text and its json."""
    loc = storage.join(version_dir, rel)
    try:
        if not storage.exists(loc):
            return []
        keys = _read(rel, lambda: tar_keys(loc))
    except Unreadable:
        return []  # reported by the file check
    for key, exts in keys.items():
        missing = [e for e in ("txt", "json") if e not in exts] + \
            ([] if {"jpg", "png", "webp"} & set(exts) else ["an image"])
        if missing:
            return [f"{rel}: sample {key} lacks {', '.join(missing)}"]
    return []


def _check_counts(version_dir: str, manifest: dict, present: list[str]) -> list[str]:
    problems = []
    for stage in manifest.get("stages", []):
        total: dict[str, int] = {}
        for rel in present:
            if not (rel.startswith(f"stats/{stage['name']}-") and rel.endswith(".json")):
                continue
            try:
                counts = _read(rel, lambda: json.loads(storage.read_bytes(storage.join(version_dir, rel)))["counts"])
                for k, v in counts.items():
                    total[k] = total.get(k, 0) + int(v)
            except (Unreadable, AttributeError, TypeError, ValueError):
                problems.append(f"{rel}: not a valid stats file")
        if dict(sorted(total.items())) != stage.get("counts"):
            problems.append(f"{MANIFEST}: stage {stage['name']} counts differ from its stats files")
    return problems


def validate_version(version_dir: str | os.PathLike) -> list[str]:
    """Every problem found in a version (empty list: valid). Raises UserError when it is
    not a version at all (no such directory, no manifest)."""
    version_dir = os.fspath(version_dir)
    try:
        manifest = load_manifest(version_dir)
    except ManifestError as e:  # there is a manifest, and it is damaged: a finding
        return [f"{MANIFEST}: {e.reason}"]
    problems: list[str] = []
    try:
        entries = [f for f in manifest["files"] if isinstance(f, dict) and isinstance(f.get("path"), str)]
        if len(entries) != len(manifest["files"]):
            problems.append(f"{MANIFEST}: {len(manifest['files']) - len(entries)} file entries without a path")
    except (KeyError, TypeError):
        return [f"{MANIFEST}: no list of files"]
    listed = {f["path"] for f in entries}
    for entry in entries:
        problems += _check_file(version_dir, entry)
    present = data_files(version_dir)
    problems += [f"{rel}: present but not in the manifest" for rel in present if rel not in listed]
    for rel in sorted(listed):
        if rel.startswith("samples/") and rel.endswith(".parquet"):
            problems += _check_shard(version_dir, rel, listed)
    for rel in sorted(listed):
        if rel.endswith(".tar") and rel.startswith("train/"):  # a training export's shards
            problems += _check_export_tar(version_dir, rel)
    problems += _check_counts(version_dir, manifest, present)
    return list(dict.fromkeys(problems))  # one line per problem, in the order found
