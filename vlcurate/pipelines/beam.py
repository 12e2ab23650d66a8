"""The Beam side of a build: one generic DoFn that runs any stage, and the graph.

The graph does not know which runner executes it:

    Create(shard ids) -> Reshuffle -> RunStage(stage 1) -> RunStage(stage 2) -> ...

A stage that needs the corpus first collects a small table from every shard; one
step combines them into a JSON file that the stage then reads on every shard. Shard files go to the version's directory, which every worker must
see (local disk for the local runner, a shared or mounted filesystem elsewhere).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.shared import Shared

from vlcurate.io.atomic import write_bytes_atomic
from vlcurate.io.stats import read_stats, write_stats
from vlcurate.pipelines.stage import WORK_DIR, Layout, Stage, stage_class

METRICS_NAMESPACE = "vlcurate"
LOCAL = "local"


class _Holder:
    """Weak-referenceable box, as ``Shared`` requires."""

    def __init__(self, stage: Stage):
        self.stage = stage


def make_stage(name: str, config: Any, layout: Layout) -> Stage:
    return stage_class(name)(config, layout)


class RunStage(beam.DoFn):
    """Run ``stage`` on each incoming shard id; pass the id on when the shard is done.

    - resume: a shard whose stats file exists is skipped;
    - atomic: stages commit each file by rename, the stats file last;
    - one stage object (and model) per process, shared across DoFn instances;
    - a corpus-wide stage reads its combined value from ``corpus_file`` (written once
      by :class:`_CombineToFile`), so no runner-specific side-input machinery is needed.
    """

    def __init__(self, name: str, config: Any, layout: Layout, corpus_file: str | None = None):
        self.name, self.config, self.layout, self.corpus_file = name, config, layout, corpus_file
        self._shared = Shared()
        self.stage: Stage | None = None
        self._corpus: Any = None

    def setup(self) -> None:
        def load() -> _Holder:
            stage = make_stage(self.name, self.config, self.layout)
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
    def __init__(self, name: str, config: Any, layout: Layout):
        self.name, self.config, self.layout = name, config, layout

    def setup(self) -> None:
        self.stage = make_stage(self.name, self.config, self.layout)  # no model needed

    def process(self, shard: int):
        yield (shard, self.stage.collect(shard))


class _CombineToFile(beam.DoFn):
    """All shards' collected tables -> the stage's combined value, as a JSON file;
    then every shard id again, for the stage to run on."""

    def __init__(self, name: str, config: Any, layout: Layout, num_shards: int):
        self.name, self.config, self.layout, self.num_shards = name, config, layout, num_shards

    def process(self, pairs: list):
        tables = [t for _, t in sorted(pairs, key=lambda p: p[0])]  # shard order: deterministic
        value = make_stage(self.name, self.config, self.layout).combine(tables)
        write_bytes_atomic(corpus_file(self.layout, self.name), json.dumps(value, sort_keys=True).encode())
        yield from range(self.num_shards)


def corpus_file(layout: Layout, name: str) -> Path:
    return layout.root / WORK_DIR / f"corpus-{name}.json"


def build_graph(p: beam.Pipeline, stages: list[tuple[str, Any]], layout: Layout, num_shards: int):
    shards = (
        p
        | "Shards" >> beam.Create(list(range(num_shards)))
        | "Distribute" >> beam.Reshuffle()
    )
    for name, config in stages:
        corpus = None
        if stage_class(name).needs_corpus:
            corpus = str(corpus_file(layout, name))
            shards = (
                shards
                | f"{name}/Collect" >> beam.ParDo(_Collect(name, config, layout))
                | f"{name}/Gather" >> beam.combiners.ToList()
                | f"{name}/Combine" >> beam.ParDo(_CombineToFile(name, config, layout, num_shards))
                | f"{name}/Redistribute" >> beam.Reshuffle()
            )
        shards = shards | f"{name}/Run" >> beam.ParDo(RunStage(name, config, layout, corpus))
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


def run_stats(layout: Layout, stages: list[str], num_shards: int) -> dict[str, list]:
    """Every stage's shard stats, read back from the version directory."""
    return {name: [read_stats(layout.stats(name, s)) for s in range(num_shards)] for name in stages}
