"""Build a dataset version from a recipe: validate, shard the input, run, commit.

A version is built in ``ROOT/NAME/.VERSION.building`` and becomes ``ROOT/NAME/VERSION``
once its manifest is written (see the README's commit protocol), so a version that
exists is complete. A killed build leaves the ``.building`` directory; running the
same recipe again resumes it, skipping every shard a stage already finished. A build
that fails before any stage finished a shard removes what it made.

An object store (``gs://``, ``s3://``) has no rename, so there a version is built in
place under ``ROOT/NAME/VERSION/`` and the manifest, written last, is its commit: a
prefix without a manifest is an unfinished build (resumed like ``.building``), never a
version.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa

from vlcurate.errors import UserError
from vlcurate.io import storage
from vlcurate.io.inputs import PAGE_FORMATS, InputError, list_input_files, read_inputs
from vlcurate.io.parquet import write_work_parquet
from vlcurate.pipelines.beam import (LOCAL, StageRun, build_graph, check_pipeline_options, make_pipeline,
                                     resolve_runner, run_to_completion)
from vlcurate.pipelines.progress import Progress, worker_output_to
from vlcurate.pipelines.stage import WORK_DIR, Layout, stage_class
from vlcurate.recipe import Recipe
from vlcurate.report import plural
from vlcurate.versions import MANIFEST, read_markers, write_manifest


@dataclass(frozen=True)
class BuildResult:
    version_dir: Path | str  # a local Path, or the URL of a version on an object store
    manifest: dict
    seconds: float


def building_dir(recipe: Recipe) -> str:
    out = recipe.output
    if storage.is_remote(out.root):
        return out.version_dir  # no rename there: the manifest commits in place
    return storage.join(out.root, out.name, f".{out.version}.building")


def version_exists(version_dir: str) -> bool:
    """Whether a committed version is at ``version_dir`` (on an object store: its
    manifest; an unfinished build there is no version)."""
    if storage.is_remote(version_dir):
        return storage.exists(storage.join(version_dir, MANIFEST))
    return storage.exists(version_dir)


def _check_stores(recipe: Recipe) -> None:
    """Credentials, reachability and buckets of every remote location, before work."""
    named = [("output", recipe.output.root), *(("input", p) for p in recipe.input.paths)]
    if recipe.output.parent:
        named.append(("output.parent", recipe.output.parent))
    for what, loc in named:
        if storage.is_remote(loc):
            problem = storage.write_problem(loc)
            if problem:
                raise UserError(f"{what} {loc}: {problem}")


def check_buildable(recipe: Recipe) -> None:
    """Every check that needs no work: runs before anything is written."""
    _check_stores(recipe)
    target = recipe.output.version_dir
    if version_exists(target):
        raise UserError(f"output {target}: version already exists (versions are immutable; pick a new version)")
    if resolve_runner(recipe.runner.name) is None:
        raise UserError(f"runner {recipe.runner.name!r}: unknown (use 'local' or a Beam runner name such as DataflowRunner, DaskRunner, FlinkRunner, PortableRunner)")
    if recipe.runner.workers < 1:
        raise UserError(f"runner.workers: must be >= 1, got {recipe.runner.workers}")
    check_pipeline_options(recipe.runner.options)
    if recipe.output.parent and not storage.exists(storage.join(recipe.output.parent, MANIFEST)):
        raise UserError(f"output.parent {recipe.output.parent}: not a version directory (no manifest.json)")


def _input_shards(recipe: Recipe) -> list[pa.Table]:
    """The input cut into shards: the URL list in slices of ``samples_per_shard`` rows,
    or what a first stage that reads other inputs (pages) makes of them
    (its ``split_input(config, input_spec)``)."""
    first = recipe.stages[0]
    split = getattr(stage_class(first.kind), "split_input", None)
    if split is not None:
        shards = split(first.config, recipe.input)
        if not shards or not sum(t.num_rows for t in shards):
            raise UserError(f"input {', '.join(recipe.input.paths)}: no pages")
        return shards
    table = read_inputs(recipe.input)
    if table.num_rows == 0:
        raise UserError(f"input {', '.join(recipe.input.paths)}: no rows")
    n = recipe.samples_per_shard
    return [table.slice(shard * n, n) for shard in range(max(1, -(-table.num_rows // n)))]


def _shard_inputs(shards: list[pa.Table], layout: Layout) -> int:
    for shard, table in enumerate(shards):
        loc = layout.input_shard(shard)
        if not storage.exists(loc):
            write_work_parquet(table, loc)
    return len(shards)


@dataclass(frozen=True)
class _Claim:
    root: str  # the .VERSION.building directory
    created: tuple[str, ...]  # directories this build made, deepest first (root included)


def _claim_building_dir(recipe: Recipe) -> _Claim:
    root = building_dir(recipe)
    marker = storage.join(root, WORK_DIR, "recipe.json")
    body = json.dumps({"recipe_hash": recipe.hash(), "recipe": recipe.resolved()}, indent=1, sort_keys=True)
    if storage.exists(marker):
        prior = json.loads(storage.read_bytes(marker))["recipe_hash"]
        if prior != recipe.hash():
            raise UserError(
                f"output {root}: an unfinished build of a different recipe is there (hash {prior[:12]}); "
                "remove that directory or build under another version"
            )
        # Temporary files of the killed build: never committed, so never needed.
        for f in storage.list_files(root):
            if storage.is_tmp(f.path):
                storage.delete(storage.join(root, f.path))
        return _Claim(root, ())
    if storage.is_remote(root) and storage.list_files(root) and not _started(root):
        # (stats markers without recipe.json: a build killed while committing, resumed)
        raise UserError(f"output {root}: holds files but neither a manifest nor an unfinished build's "
                        f"{WORK_DIR}/recipe.json; remove them or build under another version")
    created, d = [], root
    while d and d != storage.parent(d) and not storage.exists(d):
        created.append(d)
        d = storage.parent(d)
    storage.write_bytes(marker, body.encode())
    return _Claim(root, tuple(created))


def _started(root: str) -> bool:
    """Whether any stage finished a shard (its stats marker exists)."""
    return bool(storage.list_files(storage.join(root, "stats")))


def _release(claim: _Claim, log_path: Path, log: Callable[[str], None]) -> None:
    """Undo a claim that no stage-shard got past: the directories this build made go,
    so the same version can be built again with a fixed recipe. The worker log is
    moved out first (it says what failed)."""
    if storage.exists(log_path) and storage.size(log_path):
        with tempfile.NamedTemporaryFile(prefix="vlcurate-beam-", suffix=".log", delete=False) as kept:
            kept.write(storage.read_bytes(log_path))
        log(f"worker logs: {kept.name}")
    storage.delete_tree(claim.root)
    for directory in claim.created[1:]:  # parents it made, if still empty
        storage.delete_empty_dir(directory)


def _log_path(root: str) -> Path:
    """Where Beam's worker output goes: the build's work directory on local disk, a
    temporary directory of this machine otherwise."""
    local = storage.local_path(root)
    return (local / WORK_DIR if local else Path(tempfile.mkdtemp(prefix="vlcurate-"))) / "beam.log"


def _log_to_stderr(line: str) -> None:
    print(line, file=sys.stderr)  # looked up at call time: worker_output_to swaps it


def _terminal(log: Callable[[str], None]):
    """stderr when the build logs there and it is a terminal (a progress bar then),
    else None (plain progress lines through ``log``)."""
    return sys.stderr if log is _log_to_stderr and sys.stderr.isatty() else None


def _input_files(recipe: Recipe, shards: list[pa.Table]) -> list[Path | str]:
    """The files the input was read from (their checksums go into the manifest)."""
    if recipe.input.format not in PAGE_FORMATS:
        return list_input_files(recipe.input)
    sources = [s for t in shards for s in t.column("source").to_pylist() if s]
    listed = list(recipe.input.paths) if recipe.input.format == "html" else []
    return [f for f in dict.fromkeys([*listed, *sources]) if storage.exists(f)]  # a missing page is a row


def build(recipe: Recipe, log: Callable[[str], None] = _log_to_stderr) -> BuildResult:
    """Build ``recipe`` into a new version; raise UserError on bad input before writing."""
    check_buildable(recipe)
    try:
        shards = _input_shards(recipe)
        files = _input_files(recipe, shards)
    except InputError as e:
        raise UserError(str(e)) from None
    rows = sum(t.num_rows for t in shards)
    started = time.monotonic()
    stages = [StageRun(s.kind, s.name, s.config) for s in recipe.stages]
    names = [s.name for s in stages]
    layout = Layout.for_stages(building_dir(recipe), [(s.name, s.kind) for s in stages], track_progress=True,
                               num_shards=len(shards))
    # The graph is made before anything is written: a graph error leaves nothing behind.
    pipeline = make_pipeline(recipe.runner.name, recipe.runner.workers, recipe.runner.options, len(shards))
    build_graph(pipeline, stages, layout, len(shards), overlap=recipe.runner.name == LOCAL)
    claim = _claim_building_dir(recipe)
    root = claim.root
    log_path = _log_path(root)
    try:
        resumed = _started(root)
        if resumed:  # a killed build's counts of shards that will run again
            storage.delete_tree(layout.progress_dir())
        num_shards = _shard_inputs(shards, layout)
        log(f"{'resuming' if resumed else 'building'} {recipe.output.name}/{recipe.output.version}: "
            f"{plural(rows, 'row')} in {plural(num_shards, 'shard')}, stages {', '.join(names)}, "
            f"runner {recipe.runner.name}")
        with worker_output_to(log_path), \
                Progress(layout, names, num_shards, recipe.samples_per_shard, rows, log,
                         terminal=_terminal(log)):
            run_to_completion(pipeline)
    except BaseException:
        if claim.created and not _started(root):
            _release(claim, log_path, log)
        elif storage.exists(log_path):
            log(f"worker logs: {log_path}")
        raise
    stats, records = read_markers(root, names, num_shards)
    infos = {s.name: stage_class(s.kind)(s.config, layout, s.name).info() for s in recipe.stages}
    inputs = [{"path": str(f), "sha256": storage.sha256(f), "bytes": storage.size(f)} for f in files]
    storage.delete_tree(storage.join(root, WORK_DIR))
    manifest = write_manifest(root, recipe, inputs, stats, records, infos)
    final = recipe.output.version_dir
    if root != final:
        storage.move_tree(root, final)
    return BuildResult(storage.local_path(final) or final, manifest, time.monotonic() - started)
