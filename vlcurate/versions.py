"""The dataset version store: ``ROOT/NAME/VERSION/manifest.json`` and what it lists.

A manifest records the resolved recipe and its hash, the parent version, the code and
schema versions, the input files' checksums, each stage's summed counts and model
provenance, and every file of the version with its sha256, size and row count. It is
assembled from the shard stats markers (each records the files it vouches for, as
their writers computed them), never by reading data files back; ``vlcurate validate``
re-reads everything on demand. A version is complete exactly when its manifest
exists; once written, a version is immutable (its files are made read-only where
the storage can).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vlcurate import __version__
from vlcurate.errors import UserError
from vlcurate.io import storage
from vlcurate.io.stats import FileRecord, ShardStats, decode_stats
from vlcurate.pipelines.stage import Layout
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


def data_files(version_dir: str | os.PathLike) -> list[str]:
    """Every file of a version except the manifest itself, sorted, relative ('/'-separated)."""
    return [f.path for f in storage.list_files(version_dir) if f.path != MANIFEST]


def _sum_counts(stats: list[ShardStats]) -> dict[str, int]:
    total: dict[str, int] = {}
    for s in stats:
        for k, v in s.counts.items():
            total[k] = total.get(k, 0) + v
    return dict(sorted(total.items()))


def read_markers(version_dir: str, stages: list[str], num_shards: int) -> tuple[dict[str, list[ShardStats]], list[FileRecord]]:
    """Every stage's shard stats markers, and the record of every file they vouch for
    (the markers themselves included), sorted by path. Reads only the markers."""
    stats: dict[str, list[ShardStats]] = {}
    records: list[FileRecord] = []
    for name in stages:
        stats[name] = []
        for shard in range(num_shards):
            rel = f"stats/{name}-{shard:05d}.json"
            data = storage.read_bytes(storage.join(version_dir, rel))
            marker = decode_stats(data, rel)
            stats[name].append(marker)
            records += marker.files
            records.append(FileRecord(rel, "shard_stats", hashlib.sha256(data).hexdigest(), len(data)))
    return stats, sorted(records, key=lambda r: r.path)


def write_manifest(version_dir: str, recipe, inputs: list[dict], stats: dict[str, list[ShardStats]],
                   records: list[FileRecord], infos: dict) -> dict:
    """Write ``manifest.json`` for a finished build from its markers' records, and make
    the version read-only. Lists the version's files (no reads) to refuse a file that
    no marker vouches for, or a temporary file a stage left behind."""
    listed = {r.path for r in records}
    present = data_files(version_dir)
    stray = [p for p in present if p not in listed]
    if stray:
        raise RuntimeError(f"{version_dir}: files no stage recorded (or temporary files left): {stray[:3]}")
    missing = sorted(listed - set(present))
    if missing:
        raise RuntimeError(f"{version_dir}: files recorded by a stage but absent: {missing[:3]}")
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
        "files": [asdict(r) for r in records],
    }
    for rel in present:
        storage.make_read_only(storage.join(version_dir, rel))
    storage.write_bytes(storage.join(version_dir, MANIFEST), (json.dumps(manifest, indent=1) + "\n").encode())
    storage.make_read_only(storage.join(version_dir, MANIFEST))
    return manifest


class ManifestError(UserError):
    """A manifest that exists but cannot be used; ``reason`` says why, without the path."""

    def __init__(self, version_dir: str, reason: str):
        self.reason = reason
        super().__init__(f"version {version_dir}: {MANIFEST} {reason}")


def load_manifest(version_dir: str | os.PathLike) -> dict:
    where = os.fspath(version_dir)
    path = storage.join(version_dir, MANIFEST)
    if not storage.is_dir(version_dir):
        raise UserError(f"version {where}: no such directory")
    if not storage.exists(path):
        raise UserError(f"version {where}: no {MANIFEST} (not a version directory)")
    try:
        manifest = json.loads(storage.read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(where, f"is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(where, f"is not a {FORMAT} manifest")
    return manifest


def version_layout(version_dir: str | os.PathLike, manifest: dict) -> Layout:
    """The layout of a built version, its stages as its recipe named them."""
    stages = []
    for item in manifest["recipe"]["stages"]:
        (kind, settings), = item.items()
        stages.append(((settings or {}).get("name", kind), kind))
    return Layout.for_stages(version_dir, stages)


def manifest_files(manifest: dict, directory: str, suffix: str = "") -> list[str]:
    """Relative paths of the manifest's files in ``directory`` ending in ``suffix``, sorted."""
    return sorted(f["path"] for f in manifest["files"]
                  if f["path"].startswith(directory.rstrip("/") + "/") and f["path"].endswith(suffix))


def is_filter(counts: dict[str, int]) -> bool:
    """A filter stage's counts: ``kept`` and ``dropped.REASON`` (a filter that dropped
    every sample has no ``kept`` count at all)."""
    return "kept" in counts or any(k.startswith("dropped.") for k in counts)


def list_versions(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Every committed version under ``root`` (``ROOT/NAME/VERSION``), sorted by name/version."""
    if not storage.is_dir(root):
        raise UserError(f"root {os.fspath(root)}: no such directory")
    rows = []
    manifests = [f.path.split("/") for f in storage.list_files(root) if f.path.endswith(MANIFEST)]
    for parts in manifests:
        if len(parts) != 3:
            continue
        version_dir = storage.join(root, parts[0], parts[1])
        m = load_manifest(version_dir)
        rows.append({
            "name": m["name"], "version": m["version"], "created_at": m["created_at"],
            "samples": _downloaded(m), "kept": _kept(m), "files": len(m["files"]),
            "bytes": sum(f["bytes"] for f in m["files"]), "parent": m.get("parent"),
            "path": version_dir,
        })
    if not rows:
        depth = {len(parts) for parts in manifests}
        hint = (" (it is a version directory itself)" if 1 in depth else
                " (it is a NAME directory)" if 2 in depth else "")
        raise UserError(f"root {os.fspath(root)}: no versions under it{hint}; pass the root that holds NAME/VERSION")
    return rows


def export_info(manifest: dict) -> dict[str, Any] | None:
    """For a training export (``vlcurate export``): its settings, the samples it holds,
    and the source's kept samples it selected from (with those left out, e.g. without
    a feature); None for a build."""
    export = (manifest.get("recipe") or {}).get("export")
    if not isinstance(export, dict):
        return None
    select = next((s["counts"] for s in manifest["stages"] if s["name"] == "select"), {})
    return {**export, "exported": select.get("exported", 0), "source_kept": select.get("kept", 0),
            "left_out": {k.removeprefix("left_out."): v for k, v in select.items() if k.startswith("left_out.")}}


def _downloaded(manifest: dict) -> int | None:
    """The first stage's ok rows: samples that were fetched and stored (for an
    export: the samples it holds)."""
    if (export := export_info(manifest)) is not None:
        return export["exported"]
    for stage in manifest["stages"]:
        if "ok" in stage["counts"]:
            return stage["counts"]["ok"]
    return None


def _kept(manifest: dict) -> int | None:
    """Samples every filter kept: the last filter's ``kept`` count; with no filter,
    the downloaded samples (a feature stage's failures do not drop a sample)."""
    if (export := export_info(manifest)) is not None:
        return export["exported"]  # an export holds kept samples only
    filters = [s for s in manifest["stages"] if is_filter(s["counts"])]
    return filters[-1]["counts"].get("kept", 0) if filters else _downloaded(manifest)


def summary(version_dir: str | os.PathLike) -> dict[str, Any]:
    """What :func:`show` prints, as JSON-ready data (the manifest has the rest)."""
    m = load_manifest(version_dir)
    return {
        "name": m["name"], "version": m["version"], "path": str(version_dir),
        "created_at": m["created_at"], "code_version": m["code_version"],
        "schema_version": m["schema_version"], "recipe_hash": m["recipe_hash"], "parent": m.get("parent"),
        "files": len(m["files"]), "bytes": sum(f["bytes"] for f in m["files"]),
        "samples": _downloaded(m), "kept": _kept(m), "random_weights": bool(m.get("random_weights")),
        "export": export_info(m),
        "stages": [{"name": s["name"], "rows": s["rows"], "shards": s["shards"], "counts": s["counts"]}
                   for s in m["stages"]],
    }


def show(version_dir: str | os.PathLike) -> str:
    """Human-readable summary of one version."""
    s = summary(version_dir)
    lines = [
        f"{s['name']}/{s['version']}  ({version_dir})",
        f"  created      {s['created_at']}",
        f"  code         {s['code_version']}   schema {s['schema_version']}",
        f"  recipe hash  {s['recipe_hash'][:16]}",
        f"  parent       {s['parent'] or '-'}",
        f"  files        {s['files']}, {s['bytes']:,} bytes",
    ]
    export = s["export"]
    if export is None:
        lines.append(f"  samples      {s['samples'] if s['samples'] is not None else '-'} downloaded, "
                     f"{s['kept'] if s['kept'] is not None else '-'} kept")
    else:
        left = "".join(f", {n} left out without {name}" for name, n in sorted(export["left_out"].items()))
        shuffle = (f", shuffled (seed {export['shuffle_seed']})" if export.get("shuffle_seed") is not None
                   else ", in source order")
        lines += [f"  export       {export['format']} training export of {export['source']}",
                  f"  samples      {export['exported']} exported (of {export['source_kept']} the parent kept{left}), "
                  f"{export['samples_per_shard']} per shard{shuffle}",
                  f"  features     {', '.join(export.get('features') or []) or 'none'}"]
    from vlcurate.report import weights_notes

    lines += [f"  WEIGHTS      {note}" for note in weights_notes(load_manifest(version_dir))]
    for st in s["stages"]:
        if export is not None:
            lines.append(f"  step {st['name']:<15} {_export_step(st, export)}")
            continue
        counts = ", ".join(f"{k}={v}" for k, v in st["counts"].items())
        shards = "shard" if st["shards"] == 1 else "shards"
        lines.append(f"  stage {st['name']:<14} {st['rows']} rows in {st['shards']} {shards}: {counts}")
    return "\n".join(lines)


def _export_step(step: dict, export: dict) -> str:
    """One step of an export job, said as what it did."""
    shards = f"{step['shards']} shard" + ("" if step["shards"] == 1 else "s")
    counts = step["counts"]
    if step["name"] == "select":
        left = "".join(f", {n} left out without {name}" for name, n in sorted(export["left_out"].items()))
        return (f"read {shards} of the parent: {counts.get('kept', 0)} kept samples, "
                f"{counts.get('exported', 0)} selected{left}")
    if step["name"] == "dataset_card":
        return "README.md: the dataset card (configs, features, provenance, funnel)"
    return f"wrote {counts.get('ok', step['rows'])} samples in {shards} ({step['name']})"


# ---- diff: what changed between two versions ---------------------------------------

KEPT = "kept"


def sample_outcomes(version_dir: str | os.PathLike) -> dict[str, str]:
    """``{key: outcome}`` for every input row of a version: ``failed:<error kind>``,
    ``dropped:<filter>:<reason>`` (the first filter, in recipe order, that dropped it)
    or ``kept``. Read from the samples parquets and the filters' decision files."""
    import pyarrow.compute as pc

    from vlcurate.io.parquet import read_parquet

    version_dir = os.fspath(version_dir)
    manifest = load_manifest(version_dir)
    layout = version_layout(version_dir, manifest)
    listed = {f["path"] for f in manifest["files"]}
    outcomes: dict[str, str] = {}
    for rel in manifest_files(manifest, "samples", ".parquet"):
        t = read_parquet(storage.join(version_dir, rel), columns=["key", "status", "error_kind"])
        for key, status, kind in zip(*(t.column(c).to_pylist() for c in ("key", "status", "error_kind"))):
            outcomes[key] = KEPT if status == "ok" else f"failed:{kind}"
    shards = sorted({int(p.split("/")[1].split(".")[0]) for p in manifest_files(manifest, "samples", ".parquet")})
    for entry in layout.stages:
        if entry.record_kind != "decision":
            continue
        for shard in shards:
            loc = layout.sidecar(entry.name, shard)
            if f"{entry.name}/{shard:05d}.parquet" not in listed:
                continue
            d = read_parquet(loc, columns=["key", "keep", "reason"])
            d = d.filter(pc.invert(d.column("keep")))
            for key, reason in zip(d.column("key").to_pylist(), d.column("reason").to_pylist()):
                if outcomes.get(key) == KEPT:
                    outcomes[key] = f"dropped:{entry.name}:{reason}"
    return outcomes


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def diff_versions(a: str | os.PathLike, b: str | os.PathLike) -> dict[str, Any]:
    """What changed from version ``a`` to version ``b``: recipe settings, per-stage counts
    (every failure kind, drop reason, kept), and samples added, removed and whose
    outcome (kept, dropped by which filter and why, failed) changed."""
    ma, mb = load_manifest(a), load_manifest(b)
    ra, rb = _flatten(ma["recipe"]), _flatten(mb["recipe"])
    recipe = [{"setting": k, "a": ra.get(k), "b": rb.get(k)} for k in sorted(set(ra) | set(rb), key=_setting_order)
              if ra.get(k) != rb.get(k)]
    counts = []
    names = [s["name"] for s in ma["stages"]] + [s["name"] for s in mb["stages"] if s["name"] not in
                                                  {x["name"] for x in ma["stages"]}]
    ca = {s["name"]: s["counts"] for s in ma["stages"]}
    cb = {s["name"]: s["counts"] for s in mb["stages"]}
    for name in names:
        for key in sorted(set(ca.get(name, {})) | set(cb.get(name, {}))):
            va, vb = ca.get(name, {}).get(key, 0), cb.get(name, {}).get(key, 0)
            counts.append({"stage": name, "count": key, "a": va, "b": vb, "change": vb - va})
    oa, ob = sample_outcomes(a), sample_outcomes(b)
    return {
        "a": os.fspath(a), "b": os.fspath(b), "recipe": recipe, "counts": counts,
        "added": sorted(set(ob) - set(oa)), "removed": sorted(set(oa) - set(ob)),
        "changed": [{"key": k, "a": oa[k], "b": ob[k]} for k in sorted(set(oa) & set(ob)) if oa[k] != ob[k]],
        "kept": {"a": sum(v == KEPT for v in oa.values()), "b": sum(v == KEPT for v in ob.values())},
    }


def _setting_order(path: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in path.replace("[", ".").replace("]", "").split("."))


def show_diff(d: dict[str, Any]) -> str:
    """The diff as text: recipe, counts that changed, then the samples."""
    from vlcurate.report import plural

    lines = [f"a: {d['a']}", f"b: {d['b']}", f"recipe: {plural(len(d['recipe']), 'difference')}"]
    lines += [f"  {r['setting']}: {json.dumps(r['a'])} -> {json.dumps(r['b'])}" for r in d["recipe"]]
    changed = [c for c in d["counts"] if c["change"]]
    lines.append(f"counts: {plural(len(changed), 'change')}")
    if changed:
        lines.append(f"  {'stage':<16}{'count':<34}{'a':>8}{'b':>8}{'change':>8}")
        lines += [f"  {c['stage']:<16}{c['count']:<34}{c['a']:>8}{c['b']:>8}{c['change']:>+8}" for c in changed]
    lines.append(f"kept: {d['kept']['a']} -> {d['kept']['b']}")
    lines.append(f"samples: {len(d['added'])} added, {len(d['removed'])} removed, "
                 f"{len(d['changed'])} whose decision changed")
    lines += [f"  + {k}" for k in d["added"]] + [f"  - {k}" for k in d["removed"]]
    lines += [f"  {c['key']}: {c['a']} -> {c['b']}" for c in d["changed"]]
    return "\n".join(lines)
