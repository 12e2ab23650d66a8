"""Build a dataset version from a recipe: validate, shard the input, run, commit.

A version is built in ``ROOT/NAME/.VERSION.building`` and renamed to
``ROOT/NAME/VERSION`` once its manifest is written, so a version directory that
exists is complete. A killed build leaves the ``.building`` directory; running the
same recipe again resumes it, skipping every shard a stage already finished.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa

from vlcurate.download.readers import InputError, list_input_files, read_inputs
from vlcurate.errors import UserError
import pyarrow.parquet as pq

from vlcurate.io import storage
from vlcurate.io.atomic import TMP_MARK, atomic_path, sha256_file, write_bytes_atomic
from vlcurate.pipelines.beam import (StageRun, build_graph, check_pipeline_options, make_pipeline, resolve_runner,
                                     run_stats, run_to_completion)
from vlcurate.pipelines.progress import Progress, worker_output_to
from vlcurate.pipelines.stage import WORK_DIR, Layout, stage_class
from vlcurate.recipe import Recipe
from vlcurate.report import plural
from vlcurate.versions import write_manifest

@dataclass(frozen=True)
class BuildResult:
    version_dir: Path
    manifest: dict
    seconds: float


def building_dir(recipe: Recipe) -> Path:
    out = recipe.output
    return Path(out.root) / out.name / f".{out.version}.building"


def check_buildable(recipe: Recipe) -> None:
    """Every check that needs no work: runs before anything is written."""
    target = recipe.output.version_dir
    if target.exists():
        raise UserError(f"output {target}: version already exists (versions are immutable; pick a new version)")
    if resolve_runner(recipe.runner.name) is None:
        raise UserError(f"runner {recipe.runner.name!r}: unknown (use 'local' or a Beam runner name such as DataflowRunner, DaskRunner, FlinkRunner, PortableRunner)")
    if recipe.runner.workers < 1:
        raise UserError(f"runner.workers: must be >= 1, got {recipe.runner.workers}")
    check_pipeline_options(recipe.runner.options)
    if recipe.output.parent and not (Path(recipe.output.parent) / "manifest.json").is_file():
        raise UserError(f"output.parent {recipe.output.parent}: not a version directory (no manifest.json)")


def _num_shards(recipe: Recipe, table: pa.Table) -> int:
    return max(1, -(-table.num_rows // recipe.samples_per_shard))


def _shard_inputs(recipe: Recipe, table: pa.Table, layout: Layout) -> int:
    n = recipe.samples_per_shard
    num_shards = _num_shards(recipe, table)
    for shard in range(num_shards):
        path = layout.input_shard(shard)
        if not path.exists():
            with atomic_path(path) as tmp:
                pq.write_table(table.slice(shard * n, n), tmp)
    return num_shards


@dataclass(frozen=True)
class _Claim:
    root: Path  # the .VERSION.building directory
    created: tuple[Path, ...]  # directories this build made, deepest first (root included)


def _claim_building_dir(recipe: Recipe) -> _Claim:
    root = building_dir(recipe)
    marker = root / WORK_DIR / "recipe.json"
    body = json.dumps({"recipe_hash": recipe.hash(), "recipe": recipe.resolved()}, indent=1, sort_keys=True)
    if marker.exists():
        prior = json.loads(marker.read_text())["recipe_hash"]
        if prior != recipe.hash():
            raise UserError(
                f"output {root}: an unfinished build of a different recipe is there (hash {prior[:12]}); "
                "remove that directory or build under another version"
            )
        # Temporary files of the killed build: never committed, so never needed.
        for path in list(root.rglob(f"*{TMP_MARK}*")):
            path.unlink()
        return _Claim(root, ())
    created = tuple(d for d in (root, *root.parents) if not d.exists())
    write_bytes_atomic(marker, body.encode())
    return _Claim(root, created)


def _release(claim: _Claim, log: Callable[[str], None]) -> None:
    """Undo a claim that no stage-shard got past: the directories this build made go,
    so the same version can be built again with a fixed recipe. The worker log is
    moved out first (it says what failed)."""
    beam_log = claim.root / WORK_DIR / "beam.log"
    if storage.exists(beam_log) and storage.size(beam_log):
        with tempfile.NamedTemporaryFile(prefix="vlcurate-beam-", suffix=".log", delete=False) as kept:
            kept.write(storage.read_bytes(beam_log))
        log(f"worker logs: {kept.name}")
    storage.delete_tree(claim.root)
    for directory in claim.created[1:]:  # empty parents: local directories only
        with contextlib.suppress(OSError):  # not empty: something else lives there now
            directory.rmdir()


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
    stages = [StageRun(s.kind, s.name, s.config) for s in recipe.stages]
    names = [s.name for s in stages]
    layout = Layout(building_dir(recipe))
    # The graph is made before anything is written: a graph error leaves nothing behind.
    pipeline = make_pipeline(recipe.runner.name, recipe.runner.workers, recipe.runner.options)
    build_graph(pipeline, stages, layout, _num_shards(recipe, table))
    claim = _claim_building_dir(recipe)
    root = claim.root
    try:
        resumed = any((root / "stats").glob("*.json"))
        num_shards = _shard_inputs(recipe, table, layout)
        log(f"{'resuming' if resumed else 'building'} {recipe.output.name}/{recipe.output.version}: "
            f"{plural(table.num_rows, 'row')} in {plural(num_shards, 'shard')}, stages {', '.join(names)}, "
            f"runner {recipe.runner.name}")
        with worker_output_to(root / WORK_DIR / "beam.log"), \
                Progress(layout, names, num_shards, recipe.samples_per_shard, table.num_rows, log):
            run_to_completion(pipeline)
    except BaseException:
        if claim.created and not any((root / "stats").glob("*.json")):
            _release(claim, log)
        elif (root / WORK_DIR / "beam.log").is_file():
            log(f"worker logs: {root / WORK_DIR / 'beam.log'}")
        raise
    stats = run_stats(layout, names, num_shards)
    infos = {s.name: stage_class(s.kind)(s.config, layout, s.name).info() for s in recipe.stages}
    inputs = [{"path": str(f), "sha256": sha256_file(f), "bytes": f.stat().st_size} for f in files]
    shutil.rmtree(root / WORK_DIR)
    manifest = write_manifest(root, recipe, inputs, stats, infos)
    final = recipe.output.version_dir
    root.rename(final)
    return BuildResult(final, manifest, time.monotonic() - started)
