"""``vlcurate validate``: re-check a whole version against its manifest.

Checks every listed file (present, size, sha256, row count), files present but not
listed, each Parquet file against its record schema, each tar for readability, that
each samples tar holds exactly the parquet's ``ok`` keys, that sidecars only name
keys of their shard, and that the stats files add up to the manifest's counts.
Every problem names the file it is about.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pyarrow.parquet as pq

from vlcurate.io.atomic import sha256_file
from vlcurate.io.tar import tar_keys
from vlcurate.schemas import get_schema, validate
from vlcurate.versions import data_files, file_rows, load_manifest

# Files a sample needs in its tar; features may add more.
TAR_REQUIRED = ("jpg", "txt", "json")


def _check_file(version_dir: Path, entry: dict) -> list[str]:
    rel = entry["path"]
    path = version_dir / rel
    if not path.is_file():
        return [f"{rel}: missing"]
    problems = []
    size = path.stat().st_size
    if size != entry["bytes"]:
        problems.append(f"{rel}: {size} bytes, manifest says {entry['bytes']}")
    if sha256_file(path) != entry["sha256"]:
        problems.append(f"{rel}: sha256 differs from the manifest")
    try:
        rows = file_rows(path)
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        return problems + [f"{rel}: unreadable ({type(e).__name__}: {e})"]
    if rows != entry.get("rows"):
        problems.append(f"{rel}: {rows} rows, manifest says {entry.get('rows')}")
    if path.suffix == ".parquet":
        problems += _check_parquet(path, rel)
    return problems


def _check_parquet(path: Path, rel: str) -> list[str]:
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:
        return [f"{rel}: unreadable parquet ({e})"]
    kind = (table.schema.metadata or {}).get(b"vlcurate.record")
    if kind is None:
        return [f"{rel}: no vlcurate record kind in its schema metadata"]
    try:
        get_schema(kind.decode())
    except KeyError as e:
        return [f"{rel}: {e.args[0]}"]
    return [f"{rel}: {p}" for p in validate(table, kind.decode(), raise_error=False)]


def _ok_keys(path: Path) -> set[str] | None:
    try:
        t = pq.read_table(path, columns=["key", "status"])
    except (OSError, ValueError, KeyError):
        return None
    return {k for k, s in zip(t.column("key").to_pylist(), t.column("status").to_pylist()) if s == "ok"}


def _check_shards(version_dir: Path, listed: set[str]) -> list[str]:
    problems = []
    for rel in sorted(listed):
        if not (rel.startswith("samples/") and rel.endswith(".parquet")):
            continue
        tar_rel = rel[: -len(".parquet")] + ".tar"
        ok = _ok_keys(version_dir / rel)
        if ok is None or not (version_dir / rel).is_file():
            continue
        if tar_rel not in listed or not (version_dir / tar_rel).is_file():
            problems.append(f"{tar_rel}: missing for {rel}")
            continue
        try:
            keys = tar_keys(version_dir / tar_rel)
        except (tarfile.TarError, EOFError, OSError) as e:
            problems.append(f"{tar_rel}: unreadable ({type(e).__name__}: {e})")
            continue
        if set(keys) != ok:
            only_tar, only_pq = sorted(set(keys) - ok), sorted(ok - set(keys))
            problems.append(f"{tar_rel}: keys disagree with {rel} (only in tar: {only_tar[:3]}, only ok in parquet: {only_pq[:3]})")
        for key, exts in keys.items():
            missing = [e for e in TAR_REQUIRED if e not in exts]
            if missing:
                problems.append(f"{tar_rel}: sample {key} lacks {', '.join(missing)}")
                break
        shard = Path(rel).stem
        for side in sorted(listed):
            p = Path(side)
            if p.stem == shard and p.suffix == ".parquet" and p.parent.name not in ("samples", "stats"):
                problems += _check_sidecar(version_dir, side, set(pq.read_table(version_dir / rel, columns=["key"]).column("key").to_pylist()))
    return problems


def _check_sidecar(version_dir: Path, rel: str, shard_keys: set[str]) -> list[str]:
    path = version_dir / rel
    if not path.is_file() or "key" not in pq.read_schema(path).names:
        return []
    keys = set(pq.read_table(path, columns=["key"]).column("key").to_pylist())
    stray = sorted(keys - shard_keys)
    return [f"{rel}: keys not in the shard's samples: {stray[:3]}"] if stray else []


def _check_counts(version_dir: Path, manifest: dict) -> list[str]:
    problems = []
    for stage in manifest["stages"]:
        total: dict[str, int] = {}
        for f in (version_dir / "stats").glob(f"{stage['name']}-*.json"):
            try:
                for k, v in json.loads(f.read_text())["counts"].items():
                    total[k] = total.get(k, 0) + v
            except (ValueError, KeyError):
                problems.append(f"stats/{f.name}: not a valid stats file")
        if dict(sorted(total.items())) != stage["counts"]:
            problems.append(f"manifest.json: stage {stage['name']} counts differ from its stats files")
    return problems


def validate_version(version_dir: str | os.PathLike) -> list[str]:
    """Every problem found in a version (empty list: valid). Raises UserError if there is no manifest."""
    version_dir = Path(version_dir)
    manifest = load_manifest(version_dir)
    problems: list[str] = []
    listed = {f["path"] for f in manifest["files"]}
    for entry in manifest["files"]:
        problems += _check_file(version_dir, entry)
    for rel in data_files(version_dir):
        if rel.as_posix() not in listed:
            problems.append(f"{rel.as_posix()}: present but not in the manifest")
    problems += _check_shards(version_dir, listed)
    problems += _check_counts(version_dir, manifest)
    return problems
