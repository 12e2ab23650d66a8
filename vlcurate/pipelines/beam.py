"""The Beam side of a build: one generic DoFn that runs any stage, and the graph.

The graph does not know which runner executes it:

    Create(shard ids) -> Reshuffle -> RunStage(stage 1) -> RunStage(stage 2) -> ...

A stage that needs the corpus gets a side input: every shard's ``collect`` table,
combined once. Shard files go to the version's directory, which every worker must
see (local disk for the local runner, a shared or mounted filesystem elsewhere).
"""

from __future__ import annotations

from typing import Any, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.utils.shared import Shared

from vlcurate.io.stats import read_stats, write_stats
from vlcurate.pipelines.stage import Layout, Stage, stage_class

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

    - resume: a shard whose stats file exists is skipped (its stats are re-read for metrics);
    - atomic: stages commit each file by rename, the stats file last;
    - one stage object (and model) per process, shared across DoFn instances.
    """

    def __init__(self, name: str, config: Any, layout: Layout):
        self.name, self.config, self.layout = name, config, layout
        self._shared = Shared()
        self.stage: Stage | None = None

    def setup(self) -> None:
        def load() -> _Holder:
            stage = make_stage(self.name, self.config, self.layout)
            stage.setup()
            return _Holder(stage)

        self._holder = self._shared.acquire(load, tag=f"{self.name}:{self.layout.root}")
        self.stage = self._holder.stage

    def process(self, shard: int, corpus: Any = None) -> Iterator[int]:
        assert self.stage is not None
        path = self.layout.stats(self.name, shard)
        if path.exists():
            Metrics.counter(METRICS_NAMESPACE, f"{self.name}.shards_skipped").inc()
        else:
            stats = self.stage.run_shard(shard, corpus)
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


def _combine(name: str, config: Any, layout: Layout):
    def combine(pairs: list) -> Any:
        tables = [t for _, t in sorted(pairs, key=lambda p: p[0])]  # shard order: deterministic
        return make_stage(name, config, layout).combine(tables)

    return combine


def build_graph(p: beam.Pipeline, stages: list[tuple[str, Any]], layout: Layout, num_shards: int):
    shards = (
        p
        | "Shards" >> beam.Create(list(range(num_shards)))
        | "Distribute" >> beam.Reshuffle()
    )
    for name, config in stages:
        if stage_class(name).needs_corpus:
            corpus = (
                shards
                | f"{name}/Collect" >> beam.ParDo(_Collect(name, config, layout))
                | f"{name}/Gather" >> beam.combiners.ToList()
                | f"{name}/Combine" >> beam.Map(_combine(name, config, layout))
            )
            shards = shards | f"{name}/Run" >> beam.ParDo(
                RunStage(name, config, layout), beam.pvalue.AsSingleton(corpus)
            )
        else:
            shards = shards | f"{name}/Run" >> beam.ParDo(RunStage(name, config, layout))
    return shards


def known_runner(name: str) -> bool:
    if name == LOCAL:
        return True
    known = {path.rsplit(".", 1)[-1].lower() for path in StandardOptions.ALL_KNOWN_RUNNERS}
    return name.lower() in known or f"{name.lower()}runner" in known


def make_pipeline(runner: str, workers: int, options: tuple[str, ...]) -> beam.Pipeline:
    """A pipeline on the named runner. ``local`` pins the FnApiRunner (never Prism, which
    downloads a binary at run time); everything else is Beam's own runner lookup."""
    if runner == LOCAL:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        flags = ["--default_sdk_harness_log_level=WARNING", *options]
        if workers > 1:
            flags += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
        return beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(flags))
    return beam.Pipeline(options=PipelineOptions([f"--runner={runner}", *options]))


def run_stats(layout: Layout, stages: list[str], num_shards: int) -> dict[str, list]:
    """Every stage's shard stats, read back from the version directory."""
    return {name: [read_stats(layout.stats(name, s)) for s in range(num_shards)] for name in stages}
