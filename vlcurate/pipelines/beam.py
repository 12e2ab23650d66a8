"""The Beam side of a build: one generic DoFn that runs any stage, and the graph.

The graph does not know which runner executes it:

    Create(shard ids) -> Reshuffle -> RunStage(stage 1) -> RunStage(stage 2) -> ...

A keyed stage (:class:`~vlcurate.pipelines.keyed.KeyedStage`) inserts its
corpus-wide step before its run:

    shards -> Signatures -> GroupByKey -> Resolve -> (shard, finding)
           \\______________________ CoGroupByKey by shard ______/ -> RunStage

so each shard gets back only the findings about its own samples, and no worker holds
more than one shard's rows plus one group. Every file goes through the storage layer
(:mod:`vlcurate.io.storage`), so workers need no shared disk beyond what the
version's root location gives them.
"""

from __future__ import annotations

from typing import Any, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.shared import Shared

from vlcurate.io import storage
from vlcurate.io.stats import ShardStats, read_stats, write_stats
from vlcurate.pipelines.keyed import KeyedStage
from vlcurate.pipelines.stage import Layout, Stage, stage_class

METRICS_NAMESPACE = "vlcurate"
LOCAL = "local"


class _Holder:
    """Weak-referenceable box, as ``Shared`` requires."""

    def __init__(self, stage: Stage):
        self.stage = stage


class _StageFn(beam.DoFn):
    """A DoFn that builds its stage from the class itself (pickled with the DoFn), so
    a worker needs no registry lookup: a stage registered by a third-party package or
    a script runs wherever its class can be unpickled."""

    def __init__(self, name: str, cls: type[Stage], config: Any, layout: Layout):
        self.name, self.cls, self.config, self.layout = name, cls, config, layout

    def make_stage(self) -> Stage:
        return self.cls(self.config, self.layout)


def run_stage_on_shard(stage: Stage, shard: int, findings: list | None = None) -> ShardStats | None:
    """Run ``stage`` on ``shard`` unless its stats marker exists (resume: None); then
    commit the marker, with the records of the files the stage wrote made relative to
    the version."""
    marker = stage.layout.stats(stage.name, shard)
    if storage.exists(marker):
        return None
    stats = stage.run_shard(shard, findings) if isinstance(stage, KeyedStage) else stage.run_shard(shard)
    stats.files = [f.relative_to(stage.layout.root) for f in stats.files]
    write_stats(stats, marker)
    return stats


class RunStage(_StageFn):
    """Run ``stage`` on each incoming shard id (or ``(shard, findings)`` for a keyed
    stage); pass the id on when the shard is done.

    - resume: a shard whose stats marker exists is skipped;
    - atomic: stages commit each file whole, the stats marker last;
    - one stage object (and model) per process, shared across DoFn instances.
    """

    def __init__(self, name: str, cls: type[Stage], config: Any, layout: Layout):
        super().__init__(name, cls, config, layout)
        self._shared = Shared()
        self.stage: Stage | None = None

    def setup(self) -> None:
        def load() -> _Holder:
            stage = self.make_stage()
            stage.setup()
            return _Holder(stage)

        self._holder = self._shared.acquire(load, tag=f"{self.name}:{self.layout.root}")
        self.stage = self._holder.stage

    def process(self, element) -> Iterator[int]:
        assert self.stage is not None
        shard, findings = element if isinstance(element, tuple) else (element, None)
        stats = run_stage_on_shard(self.stage, shard, findings)
        if stats is None:
            Metrics.counter(METRICS_NAMESPACE, f"{self.name}.shards_skipped").inc()
        else:
            Metrics.counter(METRICS_NAMESPACE, f"{self.name}.shards_done").inc()
            Metrics.counter(METRICS_NAMESPACE, f"{self.name}.rows").inc(stats.rows)
            for key, value in stats.counts.items():
                Metrics.counter(METRICS_NAMESPACE, f"{self.name}.{key}").inc(value)
        yield shard


class _Signatures(_StageFn):
    def setup(self) -> None:
        self.stage = self.make_stage()  # no model needed

    def process(self, shard: int):
        yield from self.stage.signatures(shard)


class _Resolve(_StageFn):
    def setup(self) -> None:
        self.stage = self.make_stage()

    def process(self, group):
        key, values = group
        yield from self.stage.resolve(key, values)


def _with_findings(joined) -> tuple[int, list]:
    shard, parts = joined
    # Sorted: the order findings arrive in depends on the runner, the stage's input must not.
    return shard, sorted(parts["findings"])


def keyed_step(shards, name: str, cls: type[KeyedStage], config: Any, layout: Layout):
    """``shards`` -> ``(shard, its findings)`` for the keyed stage ``cls`` named ``name``."""
    findings = (
        shards
        | f"{name}/Signatures" >> beam.ParDo(_Signatures(name, cls, config, layout))
        | f"{name}/Group" >> beam.GroupByKey()
        | f"{name}/Resolve" >> beam.ParDo(_Resolve(name, cls, config, layout))
    )
    return (
        {"shard": shards | f"{name}/ByShard" >> beam.Map(lambda s: (s, None)), "findings": findings}
        | f"{name}/Join" >> beam.CoGroupByKey()
        | f"{name}/Findings" >> beam.Map(_with_findings)
    )


def build_graph(p: beam.Pipeline, stages: list[tuple[str, Any]], layout: Layout, num_shards: int):
    shards = (
        p
        | "Shards" >> beam.Create(list(range(num_shards)))
        | "Distribute" >> beam.Reshuffle()
    )
    for name, config in stages:
        cls = stage_class(name)
        work = keyed_step(shards, name, cls, config, layout) if issubclass(cls, KeyedStage) else shards
        shards = work | f"{name}/Run" >> beam.ParDo(RunStage(name, cls, config, layout))
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


def runner_defaults(runner: str, options: tuple[str, ...]) -> list[str]:
    """Options a runner needs so that a shard is its unit of work, unless the user set
    them. Beam's DaskRunner puts 128 elements in a partition by default, so a build of
    fewer than 128 shards ran in one task on one worker, and that task held every
    shard's keyed records at once: one shard per partition keeps a worker's memory to
    one shard (measured: benchmarks/README.md, Corpus-wide steps)."""
    if _RUNNER_ALIASES.get(runner.lower(), runner).endswith("DaskRunner") and not any(
            o.startswith(("--dask_npartitions", "--dask_partition_size")) for o in options):
        return ["--dask_partition_size=1"]
    return []


def make_pipeline(runner: str, workers: int, options: tuple[str, ...]) -> beam.Pipeline:
    """A pipeline on the named runner. ``local`` pins the FnApiRunner (never Prism, which
    downloads a binary at run time); everything else is Beam's own runner lookup."""
    if runner == LOCAL:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        flags = ["--default_sdk_harness_log_level=WARNING", *options]
        if workers > 1:
            flags += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
        return beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(flags))
    flags = [f"--runner={resolve_runner(runner)}", *runner_defaults(runner, options), *options]
    return beam.Pipeline(options=PipelineOptions(flags))


def run_stats(layout: Layout, stages: list[str], num_shards: int) -> dict[str, list]:
    """Every stage's shard stats markers, read back from the version."""
    return {name: [read_stats(layout.stats(name, s)) for s in range(num_shards)] for name in stages}
