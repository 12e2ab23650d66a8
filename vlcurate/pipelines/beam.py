"""The Beam side of a build: one generic DoFn that runs any stage, and the graph.

The graph does not know which runner executes it:

    Create(shard ids) -> Reshuffle -> RunStage(stage 1) -> RunStage(stage 2) -> ...

A stage that needs the corpus first collects a small table from every shard; one
step combines them into a JSON file that the stage then reads on every shard. Shard files go to the version's directory, which every worker must
see (local disk for the local runner, a shared or mounted filesystem elsewhere).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.shared import Shared

from vlcurate.errors import UserError
from vlcurate.io.atomic import write_bytes_atomic
from vlcurate.io.stats import read_stats, write_stats
from vlcurate.pipelines.stage import WORK_DIR, Layout, Stage, stage_class

METRICS_NAMESPACE = "vlcurate"
LOCAL = "local"


class _Holder:
    """Weak-referenceable box, as ``Shared`` requires."""

    def __init__(self, stage: Stage):
        self.stage = stage


@dataclass(frozen=True)
class StageRun:
    """What a worker needs to make one stage: its kind, its name in the version, its config."""

    kind: str
    name: str
    config: Any


def make_stage(run: StageRun, layout: Layout) -> Stage:
    return stage_class(run.kind)(run.config, layout, run.name)


class RunStage(beam.DoFn):
    """Run ``stage`` on each incoming shard id; pass the id on when the shard is done.

    - resume: a shard whose stats file exists is skipped;
    - atomic: stages commit each file by rename, the stats file last;
    - one stage object (and model) per process, shared across DoFn instances;
    - a corpus-wide stage reads its combined value from ``corpus_file`` (written once
      by :class:`_CombineToFile`), so no runner-specific side-input machinery is needed.
    """

    def __init__(self, run: StageRun, layout: Layout, corpus_file: str | None = None):
        self.run, self.name, self.layout, self.corpus_file = run, run.name, layout, corpus_file
        self._shared = Shared()
        self.stage: Stage | None = None
        self._corpus: Any = None

    def setup(self) -> None:
        def load() -> _Holder:
            stage = make_stage(self.run, self.layout)
            stage.setup()
            return _Holder(stage)

        self._holder = self._shared.acquire(load, tag=f"{self.name}:{self.layout.root}")
        self.stage = self._holder.stage

    def process(self, shard: int) -> Iterator[int]:
        assert self.stage is not None
        path = self.layout.stats(self.name, shard)
        if path.exists():
            Metrics.counter(METRICS_NAMESPACE, f"{self.name}.shards_skipped").inc()
        else:
            if self.corpus_file and self._corpus is None:
                self._corpus = json.loads(Path(self.corpus_file).read_text())
            stats = self.stage.run_shard(shard, self._corpus)
            write_stats(stats, path)
            Metrics.counter(METRICS_NAMESPACE, f"{self.name}.shards_done").inc()
            Metrics.counter(METRICS_NAMESPACE, f"{self.name}.rows").inc(stats.rows)
            for key, value in stats.counts.items():
                Metrics.counter(METRICS_NAMESPACE, f"{self.name}.{key}").inc(value)
        yield shard


class _Collect(beam.DoFn):
    def __init__(self, run: StageRun, layout: Layout):
        self.run, self.layout = run, layout

    def setup(self) -> None:
        self.stage = make_stage(self.run, self.layout)  # no model needed

    def process(self, shard: int):
        yield (shard, self.stage.collect(shard))


class _CombineToFile(beam.DoFn):
    """All shards' collected tables -> the stage's combined value, as a JSON file;
    then every shard id again, for the stage to run on."""

    def __init__(self, run: StageRun, layout: Layout, num_shards: int):
        self.run, self.layout, self.num_shards = run, layout, num_shards

    def process(self, pairs: list):
        tables = [t for _, t in sorted(pairs, key=lambda p: p[0])]  # shard order: deterministic
        value = make_stage(self.run, self.layout).combine(tables)
        write_bytes_atomic(corpus_file(self.layout, self.run.name), json.dumps(value, sort_keys=True).encode())
        yield from range(self.num_shards)


def corpus_file(layout: Layout, name: str) -> Path:
    return layout.root / WORK_DIR / f"corpus-{name}.json"


def build_graph(p: beam.Pipeline, stages: list[StageRun], layout: Layout, num_shards: int):
    shards = (
        p
        | "Shards" >> beam.Create(list(range(num_shards)))
        | "Distribute" >> beam.Reshuffle()
    )
    for run in stages:
        name, corpus = run.name, None
        if stage_class(run.kind).needs_corpus:
            corpus = str(corpus_file(layout, name))
            shards = (
                shards
                | f"{name}/Collect" >> beam.ParDo(_Collect(run, layout))
                | f"{name}/Gather" >> beam.combiners.ToList()
                | f"{name}/Combine" >> beam.ParDo(_CombineToFile(run, layout, num_shards))
                | f"{name}/Redistribute" >> beam.Reshuffle()
            )
        shards = shards | f"{name}/Run" >> beam.ParDo(RunStage(run, layout, corpus))
    return shards


# Beam runners that Beam's own short-name lookup does not know.
_RUNNER_ALIASES = {"daskrunner": "apache_beam.runners.dask.dask_runner.DaskRunner"}


def resolve_runner(name: str) -> str | None:
    """The name Beam accepts for runner ``name`` (or None if no such runner loads)."""
    if name == LOCAL:
        return LOCAL
    from apache_beam.runners.runner import create_runner

    resolved = _RUNNER_ALIASES.get(name.lower(), name)
    try:
        create_runner(resolved)
    except (ValueError, ImportError, AttributeError):
        return None
    return resolved


def check_pipeline_options(options: tuple[str, ...]) -> None:
    """UserError naming the first option that no Beam options class (of Beam or of a
    runner loaded so far: call after :func:`resolve_runner`) knows, with the closest
    known one. Beam itself only logs and drops such options, so a misspelt
    ``--dask_client_address`` would quietly start a local cluster instead."""
    import difflib

    from apache_beam.options.pipeline_options import _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}  # what Beam's own parse uses
    for cls in classes.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 - Beam's documented extension point
    _, unknown = parser.parse_known_args(list(options))
    if not unknown:
        return
    arg = unknown[0]
    name = arg.split("=", 1)[0]
    if not name.startswith("--"):
        raise UserError(f"pipeline option {arg!r}: not an option (pass --name=value after '--')")
    known = [opt for action in parser._actions for opt in action.option_strings if opt.startswith("--")]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
    hint = f"did you mean {close[0]}?" if close else "not a Beam or runner option"
    raise UserError(f"pipeline option {name}: unknown ({hint})")


def make_pipeline(runner: str, workers: int, options: tuple[str, ...]) -> beam.Pipeline:
    """A pipeline on the named runner. ``local`` pins the FnApiRunner (never Prism, which
    downloads a binary at run time); everything else is Beam's own runner lookup."""
    if runner == LOCAL:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        flags = ["--default_sdk_harness_log_level=WARNING", *options]
        if workers > 1:
            flags += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
        return beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(flags))
    return beam.Pipeline(options=PipelineOptions([f"--runner={resolve_runner(runner)}", *options]))


def run_to_completion(pipeline: beam.Pipeline) -> None:
    """Run and wait. A client the runner opened and left open (Beam's DaskRunner keeps
    a ``distributed.Client`` on its result) is closed here: left open, it tries to
    reconnect once the cluster goes away and prints tracebacks at interpreter exit."""
    result = pipeline.run()
    try:
        result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)
        if callable(getattr(client, "close", None)):
            client.close()


def run_stats(layout: Layout, stages: list[str], num_shards: int) -> dict[str, list]:
    """Every stage's shard stats, read back from the version directory."""
    return {name: [read_stats(layout.stats(name, s)) for s in range(num_shards)] for name in stages}
