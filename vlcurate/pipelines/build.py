"""Build a dataset version from a recipe: validate, shard the input, run, commit.

A version is built in ``ROOT/NAME/.VERSION.building`` and renamed to
``ROOT/NAME/VERSION`` once its manifest is written, so a version directory that
exists is complete. A killed build leaves the ``.building`` directory; running the
same recipe again resumes it, skipping every shard a stage already finished.
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

from vlcurate.io.inputs import InputError, list_input_files, read_inputs
from vlcurate.errors import UserError
from vlcurate.io import storage
from vlcurate.io.parquet import write_work_parquet
from vlcurate.pipelines.beam import build_graph, resolve_runner, make_pipeline
from vlcurate.pipelines.progress import Progress, worker_output_to
from vlcurate.pipelines.stage import WORK_DIR, Layout, stage_class
from vlcurate.recipe import Recipe
from vlcurate.versions import MANIFEST, read_markers, write_manifest


@dataclass(frozen=True)
class BuildResult:
    version_dir: Path | str  # a local Path, or the URL of a version on an object store
    manifest: dict
    seconds: float


def building_dir(recipe: Recipe) -> str:
    out = recipe.output
    return storage.join(out.root, out.name, f".{out.version}.building")


def check_buildable(recipe: Recipe) -> None:
    """Every check that needs no work: runs before anything is written."""
    target = recipe.output.version_dir
    if storage.exists(storage.join(target, MANIFEST)) or storage.exists(target):
        raise UserError(f"output {target}: version already exists (versions are immutable; pick a new version)")
    if resolve_runner(recipe.runner.name) is None:
        raise UserError(f"runner {recipe.runner.name!r}: unknown (use 'local' or a Beam runner name such as DataflowRunner, DaskRunner, FlinkRunner, PortableRunner)")
    if recipe.runner.workers < 1:
        raise UserError(f"runner.workers: must be at least 1, got {recipe.runner.workers}")
    if recipe.output.parent and not storage.exists(storage.join(recipe.output.parent, MANIFEST)):
        raise UserError(f"output.parent {recipe.output.parent}: not a version directory (no manifest.json)")
    first = recipe.stages[0].name
    if not stage_class(first).reads_input:
        raise UserError(f"stages[0] {first!r}: the first stage must read the input list (e.g. download)")


def _shard_inputs(recipe: Recipe, table: pa.Table, layout: Layout) -> int:
    n = recipe.samples_per_shard
    num_shards = max(1, -(-table.num_rows // n))
    for shard in range(num_shards):
        loc = layout.input_shard(shard)
        if not storage.exists(loc):
            write_work_parquet(table.slice(shard * n, n), loc)
    return num_shards


def _claim_building_dir(recipe: Recipe) -> str:
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
    else:
        storage.write_bytes(marker, body.encode())
    return root


def _log_path(root: str) -> Path:
    """Where Beam's worker output goes: the build's work directory on local disk, a
    temporary directory of this machine otherwise."""
    local = storage.local_path(root)
    return (local / WORK_DIR if local else Path(tempfile.mkdtemp(prefix="vlcurate-"))) / "beam.log"


def _log_to_stderr(line: str) -> None:
    print(line, file=sys.stderr)  # looked up at call time: worker_output_to swaps it


def build(recipe: Recipe, log: Callable[[str], None] = _log_to_stderr) -> BuildResult:
    """Build ``recipe`` into a new version; raise UserError on bad input before writing."""
    check_buildable(recipe)
    try:
        files = list_input_files(recipe.input)
        table = read_inputs(recipe.input)
    except InputError as e:
        raise UserError(str(e)) from None
    if table.num_rows == 0:
        raise UserError(f"input {', '.join(recipe.input.paths)}: no rows")
    started = time.monotonic()
    root = _claim_building_dir(recipe)
    stages = [(s.name, s.config) for s in recipe.stages]
    layout = Layout.for_stages(root, [n for n, _ in stages])
    resumed = bool(storage.list_files(storage.join(root, "stats")))
    num_shards = _shard_inputs(recipe, table, layout)
    log(f"{'resuming' if resumed else 'building'} {recipe.output.name}/{recipe.output.version}: "
        f"{table.num_rows} rows in {num_shards} shards, stages {', '.join(n for n, _ in stages)}, "
        f"runner {recipe.runner.name}")
    pipeline = make_pipeline(recipe.runner.name, recipe.runner.workers, recipe.runner.options)
    build_graph(pipeline, stages, layout, num_shards)
    with worker_output_to(_log_path(root)), \
            Progress(layout, [n for n, _ in stages], num_shards, recipe.samples_per_shard, table.num_rows, log):
        pipeline.run().wait_until_finish()
    stats, records = read_markers(root, [n for n, _ in stages], num_shards)
    infos = {s.name: stage_class(s.name)(s.config, layout).info() for s in recipe.stages}
    inputs = [{"path": str(f), "sha256": storage.sha256(f), "bytes": storage.size(f)} for f in files]
    storage.delete_tree(storage.join(root, WORK_DIR))
    manifest = write_manifest(root, recipe, inputs, stats, records, infos)
    final = recipe.output.version_dir
    storage.move_tree(root, final)
    return BuildResult(storage.local_path(final) or final, manifest, time.monotonic() - started)
