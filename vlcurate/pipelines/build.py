"""Build a dataset version from a recipe: validate, shard the input, run, commit.

A version is built in ``ROOT/NAME/.VERSION.building`` and renamed to
``ROOT/NAME/VERSION`` once its manifest is written, so a version directory that
exists is complete. A killed build leaves the ``.building`` directory; running the
same recipe again resumes it, skipping every shard a stage already finished.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa

from vlcurate.download.readers import InputError, list_input_files, read_inputs
from vlcurate.errors import UserError
import pyarrow.parquet as pq

from vlcurate.io.atomic import TMP_MARK, atomic_path, sha256_file, write_bytes_atomic
from vlcurate.pipelines.beam import build_graph, resolve_runner, make_pipeline, run_stats
from vlcurate.pipelines.progress import Progress, worker_output_to
from vlcurate.pipelines.stage import WORK_DIR, Layout, stage_class
from vlcurate.recipe import Recipe
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
        raise UserError(f"runner.workers: must be at least 1, got {recipe.runner.workers}")
    if recipe.output.parent and not (Path(recipe.output.parent) / "manifest.json").is_file():
        raise UserError(f"output.parent {recipe.output.parent}: not a version directory (no manifest.json)")
    first = recipe.stages[0].name
    if not getattr(stage_class(first), "reads_input", False):
        raise UserError(f"stages[0] {first!r}: the first stage must read the input list (e.g. download)")


def _shard_inputs(recipe: Recipe, table: pa.Table, layout: Layout) -> int:
    n = recipe.samples_per_shard
    num_shards = max(1, -(-table.num_rows // n))
    for shard in range(num_shards):
        path = layout.input_shard(shard)
        if not path.exists():
            with atomic_path(path) as tmp:
                pq.write_table(table.slice(shard * n, n), tmp)
    return num_shards


def _claim_building_dir(recipe: Recipe) -> Path:
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
    else:
        write_bytes_atomic(marker, body.encode())
    return root


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
    layout = Layout(root)
    resumed = any((root / "stats").glob("*.json"))
    num_shards = _shard_inputs(recipe, table, layout)
    stages = [(s.name, s.config) for s in recipe.stages]
    log(f"{'resuming' if resumed else 'building'} {recipe.output.name}/{recipe.output.version}: "
        f"{table.num_rows} rows in {num_shards} shards, stages {', '.join(n for n, _ in stages)}, "
        f"runner {recipe.runner.name}")
    pipeline = make_pipeline(recipe.runner.name, recipe.runner.workers, recipe.runner.options)
    build_graph(pipeline, stages, layout, num_shards)
    with worker_output_to(root / WORK_DIR / "beam.log"), \
            Progress(layout, [n for n, _ in stages], num_shards, recipe.samples_per_shard, table.num_rows, log):
        pipeline.run().wait_until_finish()
    stats = run_stats(layout, [n for n, _ in stages], num_shards)
    infos = {s.name: stage_class(s.name)(s.config, layout).info() for s in recipe.stages}
    inputs = [{"path": str(f), "sha256": sha256_file(f), "bytes": f.stat().st_size} for f in files]
    shutil.rmtree(root / WORK_DIR)
    manifest = write_manifest(root, recipe, inputs, stats, infos)
    final = recipe.output.version_dir
    root.rename(final)
    return BuildResult(final, manifest, time.monotonic() - started)
