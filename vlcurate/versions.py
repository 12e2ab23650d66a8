"""The dataset version store: ``ROOT/NAME/VERSION/manifest.json`` and what it lists.

A manifest records the resolved recipe and its hash, the parent version, the code and
schema versions, the input files' checksums, each stage's summed counts and model
provenance, and every file of the version with its sha256, size and row count.
Once written, a version is immutable: its files are made read-only.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vlcurate import __version__
from vlcurate.errors import UserError
from vlcurate.io.atomic import is_tmp, sha256_file, write_bytes_atomic
from vlcurate.io.parquet import parquet_rows, record_kind
from vlcurate.io.tar import tar_keys
from vlcurate.schemas import SCHEMA_VERSION

MANIFEST = "manifest.json"
FORMAT = "vlcurate.manifest/1"


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    here = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "vlcurate"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def file_rows(path: Path) -> int | None:
    """Rows a data file holds: Parquet rows, tar samples; None for other files."""
    if path.suffix == ".parquet":
        return parquet_rows(path)
    if path.suffix == ".tar":
        return len(tar_keys(path))
    return None


def file_kind(path: Path) -> str:
    if path.suffix == ".parquet":
        return record_kind(path) or "parquet"
    if path.suffix == ".tar":
        return "webdataset"
    if path.parent.name == "stats" and path.suffix == ".json":
        return "shard_stats"
    return path.suffix.lstrip(".") or "file"


def data_files(version_dir: Path) -> list[Path]:
    """Every file of a version except the manifest itself, sorted, relative."""
    files = []
    for dirpath, _, names in os.walk(version_dir):
        for name in names:
            p = Path(dirpath, name)
            if p.name == MANIFEST and p.parent == version_dir:
                continue
            files.append(p.relative_to(version_dir))
    return sorted(files)


def describe_file(version_dir: Path, rel: Path) -> dict[str, Any]:
    path = version_dir / rel
    return {"path": rel.as_posix(), "kind": file_kind(path), "sha256": sha256_file(path),
            "bytes": path.stat().st_size, "rows": file_rows(path)}


def _sum_counts(stats: list) -> dict[str, int]:
    total: dict[str, int] = {}
    for s in stats:
        for k, v in s.counts.items():
            total[k] = total.get(k, 0) + v
    return dict(sorted(total.items()))


def write_manifest(version_dir: Path, recipe, inputs: list[dict], stats: dict[str, list], infos: dict) -> dict:
    """Write ``manifest.json`` for a finished build and make the version read-only."""
    leftovers = [p for p in data_files(version_dir) if is_tmp(p)]
    if leftovers:
        raise RuntimeError(f"{version_dir}: temporary files left by a stage: {leftovers[:3]}")
    manifest = {
        "format": FORMAT,
        "name": recipe.output.name,
        "version": recipe.output.version,
        "parent": recipe.output.parent,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "schema_version": SCHEMA_VERSION,
        "recipe_hash": recipe.hash(),
        "recipe": recipe.resolved(),
        "inputs": inputs,
        "stages": [
            {"name": name, "shards": len(shard_stats), "rows": sum(s.rows for s in shard_stats),
             "counts": _sum_counts(shard_stats), **{k: v for k, v in asdict(infos[name]).items() if v is not None}}
            for name, shard_stats in stats.items()
        ],
        "random_weights": any((info.weights or {}).get("random") for info in infos.values()),
        "files": [describe_file(version_dir, rel) for rel in data_files(version_dir)],
    }
    write_bytes_atomic(version_dir / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    for rel in data_files(version_dir) + [Path(MANIFEST)]:
        p = version_dir / rel
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return manifest


def load_manifest(version_dir: str | os.PathLike) -> dict:
    path = Path(version_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"version {version_dir}: no {MANIFEST} (not a version directory)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"version {version_dir}: {MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"version {version_dir}: {MANIFEST} is not a {FORMAT} manifest")
    return manifest


def list_versions(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Every committed version under ``root`` (``ROOT/NAME/VERSION``), sorted by name/version."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"root {root}: no such directory")
    rows = []
    for manifest_path in sorted(root.glob(f"*/*/{MANIFEST}")):
        m = load_manifest(manifest_path.parent)
        rows.append({
            "name": m["name"], "version": m["version"], "created_at": m["created_at"],
            "samples": _kept(m), "files": len(m["files"]),
            "bytes": sum(f["bytes"] for f in m["files"]), "parent": m.get("parent"),
            "path": str(manifest_path.parent),
        })
    return rows


def _kept(manifest: dict) -> int | None:
    for stage in manifest["stages"]:
        if "ok" in stage["counts"]:
            return stage["counts"]["ok"]
    return None


def show(version_dir: str | os.PathLike) -> str:
    """Human-readable summary of one version."""
    m = load_manifest(version_dir)
    lines = [
        f"{m['name']}/{m['version']}  ({version_dir})",
        f"  created      {m['created_at']}",
        f"  code         {m['code_version']}   schema {m['schema_version']}",
        f"  recipe hash  {m['recipe_hash'][:16]}",
        f"  parent       {m.get('parent') or '-'}",
        f"  files        {len(m['files'])}, {sum(f['bytes'] for f in m['files']):,} bytes",
    ]
    from vlcurate.report import weights_notes

    lines += [f"  WEIGHTS      {note}" for note in weights_notes(m)]
    for s in m["stages"]:
        counts = ", ".join(f"{k}={v}" for k, v in s["counts"].items())
        lines.append(f"  stage {s['name']:<14} {s['rows']} rows in {s['shards']} shards: {counts}")
    return "\n".join(lines)
