"""``vlcurate export webdataset|parquet VERSION_DIR OUT``: the kept samples as a
training dataset, written as a version of its own.

A Beam job on the build's runner plumbing (:mod:`vlcurate.pipelines.beam`)::

    Create(source shards) -> Reshuffle -> Count (per shard: kept, left out, exported)
                                       \\-> Select (side input: every shard's count)
       -> (output shard, (position, sample)) -> GroupByKey -> Write (one shard file + marker)

Each source shard learns its offset from the counts and places its samples itself
(:func:`vlcurate.export.shards.position`), so no worker gathers the corpus; an output
shard is gathered by one worker, which sorts it by position and writes it. Same
source, settings and seed: same bytes, on any runner.

The export is a version: built in ``.VERSION.building`` beside ``OUT`` (in place on an
object store), each source shard's counts in ``stats/select-NNNNN.json``, each output
shard vouched for by ``stats/<format>-NNNNN.json``, the dataset card by
``stats/dataset_card-00000.json``, and ``manifest.json`` (parent: the source version)
assembled from those markers. A failed export removes what it wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlcurate.errors import UserError
from vlcurate.export.card import dataset_card
from vlcurate.export.select import Sources, export_samples, exported_keys, feature_specs, find_sources
from vlcurate.export.shards import FORMATS, position, shard_name, write_parquet_shard, write_tar_shard
from vlcurate.io import storage
from vlcurate.io.parquet import read_parquet_schema
from vlcurate.io.stats import FileRecord, ShardStats, read_stats, write_stats
# Beam itself through pipelines.beam, which keeps its BigQuery import warning out of the output
from vlcurate.pipelines.beam import LOCAL, beam, check_pipeline_options, make_pipeline, resolve_runner, run_to_completion
from vlcurate.pipelines.progress import PolledProgress, ShardProgress, stderr_terminal, worker_output_to
from vlcurate.pipelines.stage import Layout, StageInfo
from vlcurate.versions import MANIFEST, load_manifest, read_markers, version_layout, write_manifest

SELECT = "select"
CARD = "dataset_card"
CARD_FILE = "README.md"
WORK = "_work"  # the job's progress files, removed before the manifest is written


@dataclass(frozen=True)
class ExportOutput:
    root: str
    name: str
    version: str
    parent: str


@dataclass(frozen=True)
class ExportRecipe:
    """What an export was asked to do (the manifest's ``recipe``, hashed)."""

    source: str
    format: str
    samples_per_shard: int = 1000
    shuffle_seed: int | None = None
    features: tuple[str, ...] = ()
    runner: str = LOCAL
    workers: int = 1
    options: tuple[str, ...] = ()
    output: ExportOutput = field(default=None)  # type: ignore[assignment]

    def resolved(self) -> dict[str, Any]:
        return {"export": {"format": self.format, "source": self.source, "samples_per_shard": self.samples_per_shard,
                           "shuffle_seed": self.shuffle_seed, "features": list(self.features)},
                "stages": [], "runner": {"name": self.runner, "workers": self.workers, "options": list(self.options)}}

    def hash(self) -> str:
        what = self.resolved()["export"]
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ExportResult:
    version_dir: str
    manifest: dict
    exported: int
    shards: int
    left_out: dict[str, int]


@dataclass(frozen=True)
class _Job:
    """What every worker needs: the source layout, what to read, how to place and write."""

    layout: Layout
    sources: Sources
    out: str  # the directory being built
    format: str
    samples_per_shard: int
    seed: int | None
    specs: dict

    def progress_file(self, step: str, shard: int) -> str:
        return storage.join(self.out, WORK, "progress", f"{step}-{shard:05d}.json")


class _Count(beam.DoFn):
    def __init__(self, job: _Job):
        self.job = job

    def process(self, shard: int):
        _, counts = exported_keys(self.job.layout, shard, self.job.sources)
        # the launcher's progress totals these (ExportProgress)
        storage.write_bytes(self.job.progress_file("count", shard), json.dumps(counts).encode())
        yield shard, counts


class _Select(beam.DoFn):
    """Read one source shard's exported samples and send each to its output shard;
    commit the shard's counts as its ``select`` marker."""

    def __init__(self, job: _Job):
        self.job = job

    def process(self, shard: int, counts: dict[int, dict[str, int]]):
        job = self.job
        total = sum(c["exported"] for c in counts.values())
        offset = sum(c["exported"] for s, c in counts.items() if s < shard)
        keys, mine = exported_keys(job.layout, shard, job.sources)
        if mine != counts[shard]:  # the offsets of every shard were computed from the counts
            raise RuntimeError(f"source shard {shard} changed during the export: {mine} != {counts[shard]}")
        progress = ShardProgress(job.progress_file(SELECT, shard), mine["exported"])
        for i, sample in enumerate(export_samples(job.layout, shard, job.sources, keys)):
            pos = position(offset + i, total, job.seed)
            progress.add()
            yield pos // job.samples_per_shard, (pos, sample)
        marker = storage.join(job.out, "stats", f"{SELECT}-{shard:05d}.json")
        write_stats(ShardStats(SELECT, shard, mine["kept"], mine), marker)


class _Write(beam.DoFn):
    def __init__(self, job: _Job):
        self.job = job

    def process(self, element):
        shard, placed = element
        job = self.job
        samples = [s for _, s in sorted(placed, key=lambda p: p[0])]
        loc = storage.join(job.out, shard_name(shard, job.format))
        if job.format == "webdataset":
            progress = ShardProgress(job.progress_file(job.format, shard), len(samples))

            def counted():
                for sample in samples:
                    yield sample
                    progress.add()

            record = write_tar_shard(loc, counted())
        else:
            record = write_parquet_shard(loc, samples, job.specs)
        stats = ShardStats(job.format, shard, len(samples), {"ok": len(samples)}, [record.relative_to(job.out)])
        write_stats(stats, storage.join(job.out, "stats", f"{job.format}-{shard:05d}.json"))
        yield shard


def _as_dict(pairs) -> dict:
    return dict(pairs)


def build_export_graph(p: beam.Pipeline, job: _Job, num_source_shards: int):
    """The export's graph (module docstring). A worker holds one source shard's exported
    samples while placing them, and one output shard's while writing it."""
    shards = p | "Shards" >> beam.Create(list(range(num_source_shards))) | "Distribute" >> beam.Reshuffle()
    counts = shards | "Count" >> beam.ParDo(_Count(job))
    side = beam.pvalue.AsSingleton(counts | "Counts" >> beam.combiners.ToList() | "AsDict" >> beam.Map(_as_dict))
    return (shards
            | "Select" >> beam.ParDo(_Select(job), side)
            | "ByOutputShard" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(_Write(job)))


def _output(out: str, source: str) -> ExportOutput:
    out = os.fspath(out).rstrip("/")
    root = storage.parent(out)
    return ExportOutput(root, storage.basename(root) if root else "", storage.basename(out), source)


def _building_dir(out: str) -> str:
    if storage.is_remote(out):
        return out
    return storage.join(storage.parent(out) or ".", f".{storage.basename(out)}.building")


def _check_target(out: str) -> None:
    if storage.exists(out) and (not storage.is_remote(out) or storage.list_files(out)):
        raise UserError(f"output {out}: already exists (an export is a new version; pick a new directory)")
    building = _building_dir(out)
    if building != out and storage.exists(building):
        raise UserError(f"output {out}: {building} is there (an unfinished export or build); remove it first")
    problem = storage.write_problem(storage.join(out, MANIFEST))
    if problem:
        raise UserError(f"output {out}: {problem}")


class ExportProgress:
    """The export's progress in samples, read from what its workers write (so on any
    runner): each sample counts once when selected (read from the source and placed)
    and once when written to its output shard, as a build counts each stage. Finished
    shards from their markers, shards in flight from their progress files; the total
    is known once every source shard has been counted."""

    def __init__(self, job: _Job, num_source: int):
        self.job, self.num_source = job, num_source
        self._finished: dict[str, int] = {}  # marker name -> samples (markers never change)

    def _marker_rows(self, name: str) -> int:
        if name not in self._finished:
            counts = read_stats(storage.join(self.job.out, "stats", name)).counts
            self._finished[name] = int(counts.get("exported", counts.get("ok", 0)))
        return self._finished[name]

    def poll(self) -> tuple[float, float | None, str]:
        job = self.job
        work = storage.join(job.out, WORK, "progress")
        files = {f.path for f in storage.list_files(work) if not storage.is_tmp(f.path)}
        markers = {f.path for f in storage.list_files(storage.join(job.out, "stats"))
                   if not storage.is_tmp(f.path)}
        done = {SELECT: 0.0, job.format: 0.0}
        for step in done:
            finished = set()
            for name in markers:
                if name.startswith(step + "-") and name.endswith(".json"):
                    try:
                        done[step] += self._marker_rows(name)
                        finished.add(name)
                    except (OSError, ValueError):  # a marker being written: counted next time
                        pass
            for name in files:
                if name.startswith(step + "-") and name not in finished:
                    try:
                        done[step] += json.loads(storage.read_bytes(storage.join(work, name)))["done"]
                    except (OSError, ValueError, KeyError, TypeError):
                        pass
        counted = [n for n in files if n.startswith("count-")]
        if len(counted) < self.num_source:
            return 0.0, None, f"{len(counted)}/{self.num_source} source shards counted"
        total = 0
        for name in counted:
            try:
                total += int(json.loads(storage.read_bytes(storage.join(work, name)))["exported"])
            except (OSError, ValueError, KeyError, TypeError):
                return 0.0, None, f"{len(counted)}/{self.num_source} source shards counted"
        detail = f"selected {done[SELECT]:.0f}/{total}, written {done[job.format]:.0f}/{total}"
        return done[SELECT] + done[job.format], 2.0 * total, detail


def export_training(recipe: ExportRecipe, out: str, log=None, progress_interval: float = 2.0) -> ExportResult:
    """Write the kept samples of ``recipe.source`` to the new version ``out``.

    Raises UserError (before writing anything) for a missing source version, an
    unknown format or feature, a feature the version lacks, an existing target, an
    unknown runner or option. ``log``: where progress lines go (every
    ``progress_interval`` seconds; a bar when it writes to stderr on a terminal)."""
    source, out = os.fspath(recipe.source), os.fspath(out)
    if not storage.is_remote(source):
        source = os.path.abspath(source)  # the parent the manifest names, wherever it is read from
    if recipe.format not in FORMATS:
        raise UserError(f"export format {recipe.format!r}: unknown (known: {', '.join(FORMATS)})")
    manifest = load_manifest(source)
    sources = find_sources(manifest, recipe.features, source)
    _check_target(out)
    if resolve_runner(recipe.runner) is None:
        raise UserError(f"runner {recipe.runner!r}: unknown (use 'local' or a Beam runner name)")
    check_pipeline_options(recipe.options)
    num_source = manifest["stages"][0]["shards"] if manifest["stages"] else 0
    if not num_source or not any(f["path"].startswith("samples/") for f in manifest["files"]):
        raise UserError(f"version {source}: no samples/ shards to export (a training export cannot be "
                        "exported again; export its source version)")
    recipe = ExportRecipe(**{**asdict(recipe), "source": source, "features": tuple(recipe.features),
                             "options": tuple(recipe.options), "output": _output(out, source)})
    layout = version_layout(source, manifest)
    specs = feature_specs(layout, sources, 0)
    root = _building_dir(out)
    parent = storage.parent(out)
    made_parent = bool(parent) and not storage.exists(parent)
    job = _Job(layout, sources, root, recipe.format, recipe.samples_per_shard, recipe.shuffle_seed, specs)
    pipeline = make_pipeline(recipe.runner, recipe.workers, recipe.options)
    build_export_graph(pipeline, job, num_source)
    log_dir = tempfile.mkdtemp(prefix="vlcurate-export-")
    log_path = Path(log_dir) / "beam.log"
    try:
        with worker_output_to(log_path):  # worker processes' INFO logs, kept only on failure
            if log is None:
                run_to_completion(pipeline)
            else:
                with PolledProgress("export", ExportProgress(job, num_source).poll, log, progress_interval,
                                    stderr_terminal(log)):
                    run_to_completion(pipeline)
        storage.delete_tree(log_dir)
        storage.delete_tree(storage.join(root, WORK))
        manifest_out = _commit(root, recipe, manifest, specs, num_source)
        if root != out:
            storage.move_tree(root, out)
    except BaseException:
        storage.delete_tree(root)
        if made_parent:
            storage.delete_empty_dir(parent)
        if storage.exists(log_path) and storage.size(log_path):
            print(f"worker logs: {log_path}", file=sys.stderr)
        else:
            storage.delete_tree(log_dir)
        raise
    select = next(s for s in manifest_out["stages"] if s["name"] == SELECT)
    fmt = next(s for s in manifest_out["stages"] if s["name"] == recipe.format)
    left = {k.removeprefix("left_out."): v for k, v in select["counts"].items() if k.startswith("left_out.")}
    return ExportResult(storage.local_path(out) and str(storage.local_path(out)) or out, manifest_out,
                        select["counts"].get("exported", 0), fmt["shards"], left)


def _commit(root: str, recipe: ExportRecipe, source_manifest: dict, specs: dict, num_source: int) -> dict:
    """Card, then manifest, from the markers the job committed."""
    stats, records = read_markers(root, [SELECT], num_source)
    exported = sum(s.counts.get("exported", 0) for s in stats[SELECT])
    spp = recipe.samples_per_shard
    out_stats, out_records = read_markers(root, [recipe.format], -(-exported // spp))
    stats.update(out_stats)
    records += out_records
    schema = read_parquet_schema(version_layout(recipe.source, source_manifest).samples_parquet(0))
    body = dataset_card(recipe, source_manifest, stats, specs, schema).encode()
    card_loc = storage.join(root, CARD_FILE)
    storage.write_bytes(card_loc, body)
    card = FileRecord(CARD_FILE, "dataset_card", hashlib.sha256(body).hexdigest(), len(body))
    write_stats(ShardStats(CARD, 0, 1, {}, [card]), storage.join(root, "stats", f"{CARD}-00000.json"))
    card_stats, card_records = read_markers(root, [CARD], 1)
    stats.update(card_stats)
    records = sorted(records + card_records, key=lambda r: r.path)
    src = storage.join(recipe.source, MANIFEST)
    inputs = [{"path": src, "sha256": storage.sha256(src), "bytes": storage.size(src)}]
    infos = {name: StageInfo() for name in stats}
    return write_manifest(root, recipe, inputs, stats, records, infos)
