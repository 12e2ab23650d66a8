"""The Beam side of a build: one generic DoFn that runs any stage, and the graph.

The graph does not know which runner executes it:

    Create(shard ids) -> Reshuffle -> RunStage(stage 1) -> RunStage(stage 2) -> ...

A keyed stage (:class:`~vlcurate.pipelines.keyed.KeyedStage`) inserts its
corpus-wide step before its run:

    shards -> Signatures -> GroupByKey -> Resolve -> GroupByKey -> RunStage

where the records go through the storage layer (:class:`~vlcurate.pipelines.keyed.KeyedFiles`)
and the runner carries only shard and bucket ids: each GroupByKey holds a phase back
until the one before it is done everywhere. Each shard gets back only the findings
about its own samples, and no worker holds more than one shard's rows plus one
bucket. Every file goes through the storage layer (:mod:`vlcurate.io.storage`), so
workers need no shared disk beyond what the version's root location gives them.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Iterator


class _NoBigQueryWarning(logging.Filter):
    """Importing Beam warns on the root logger that its BigQuery client is missing
    (``apitools not found``); no vlcurate job uses BigQuery."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("apitools not found")


_quiet = _NoBigQueryWarning()
logging.getLogger().addFilter(_quiet)
try:
    import apache_beam as beam
    from apache_beam.metrics import Metrics
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.utils.shared import Shared
    from apache_beam.utils.windowed_value import WindowedValue
finally:
    logging.getLogger().removeFilter(_quiet)

from vlcurate.errors import UserError
from vlcurate.io import storage
from vlcurate.io.stats import ShardStats, write_stats
from vlcurate.pipelines.keyed import KeyedFiles, KeyedStage
from vlcurate.pipelines.stage import Layout, Stage, stage_class

METRICS_NAMESPACE = "vlcurate"
LOCAL = "local"
MALLOC_ARENAS = 2  # glibc malloc arenas per local worker process (MALLOC_ARENA_MAX), see make_pipeline

# A process that imported Beam (the launcher, each local worker) ends holding several
# hundred thousand objects, and the garbage collections of interpreter shutdown walk
# them all: measured ~0.4 s per process after a build, and the local runner stops its
# workers one after the other. Frozen at exit they are skipped (the atexit handlers
# registered after this one, which run before it, still see a normal collector).
atexit.register(gc.freeze)


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


class _StageFn(beam.DoFn):
    """A DoFn that builds its stage from the class itself (looked up when the graph is
    built and pickled with the DoFn), so a worker needs no registry lookup: a stage
    registered by a third-party package or a script runs wherever its class unpickles."""

    def __init__(self, run: StageRun, cls: type[Stage], layout: Layout):
        self.run, self.cls, self.layout, self.name = run, cls, layout, run.name

    def make_stage(self) -> Stage:
        return self.cls(self.run.config, self.layout, self.run.name)


def run_stage_on_shard(stage: Stage, shard: int, keyed: KeyedFiles | None = None) -> ShardStats | None:
    """Run ``stage`` on ``shard`` unless its stats marker exists (resume: None); then
    commit the marker, with the records of the files the stage wrote made relative to
    the version. A keyed stage reads its findings from ``keyed`` here, only when it runs."""
    marker = stage.layout.stats(stage.name, shard)
    if storage.exists(marker):
        return None
    if isinstance(stage, KeyedStage):
        if keyed is None:
            raise TypeError(f"stage {stage.name}: a keyed stage runs after its keyed step (stage_step)")
        stats = stage.run_shard(shard, keyed.findings(shard))
    else:
        stats = stage.run_shard(shard)
    stats.files = [f.relative_to(stage.layout.root) for f in stats.files]
    write_stats(stats, marker)
    return stats


class RunStage(_StageFn):
    """Run ``stage`` on each incoming shard id; pass the id on when the shard is done.

    - resume: a shard whose stats marker exists is skipped;
    - atomic: stages commit each file whole, the stats marker last;
    - one stage object (and model) per process, shared across DoFn instances;
    - a keyed stage reads its shard's findings from ``keyed``, its keyed step's files;
    - overlap (``overlap=True``, for runners that hand a process many shards in one
      bundle: the local runner): up to the stage's ``shards_at_once`` shards of a bundle
      run at once, each on a thread of this DoFn, so a shard's slow end does not leave
      the process idle; a shard is passed on when it is done (in the order they finish;
      the rest when the bundle ends). The stage's own pool is what bounds the work in
      flight (the download's fetch threads).
    """

    def __init__(self, run: StageRun, cls: type[Stage], layout: Layout, keyed: KeyedFiles | None = None,
                 overlap: bool = False):
        super().__init__(run, cls, layout)
        self._shared = Shared()
        self.stage: Stage | None = None
        self.keyed = keyed
        self.at_once = max(1, cls.shards_at_once) if overlap else 1
        self._shard_threads: ThreadPoolExecutor | None = None
        self._running: dict[Future, WindowedValue] = {}

    def setup(self) -> None:
        def load() -> _Holder:
            stage = self.make_stage()
            stage.setup()
            return _Holder(stage)

        self._holder = self._shared.acquire(load, tag=f"{self.name}:{self.layout.root}")
        self.stage = self._holder.stage
        if self.at_once > 1:
            self._shard_threads = ThreadPoolExecutor(self.at_once, thread_name_prefix=f"vlcurate-{self.name}")

    def start_bundle(self) -> None:
        self._running = {}

    def process(self, shard: int, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        assert self.stage is not None
        if self._shard_threads is None:
            self._count(run_stage_on_shard(self.stage, shard, self.keyed))
            yield shard
            return
        future = self._shard_threads.submit(run_stage_on_shard, self.stage, shard, self.keyed)
        self._running[future] = WindowedValue(shard, timestamp, [window])
        if len(self._running) >= self.at_once:
            yield from self._pass_on(FIRST_COMPLETED)

    def finish_bundle(self):
        if self._running:
            yield from self._pass_on(ALL_COMPLETED)

    def teardown(self) -> None:
        if self._shard_threads is not None:
            self._shard_threads.shutdown(wait=True, cancel_futures=True)
            self._shard_threads = None

    def _pass_on(self, return_when: str) -> Iterator[WindowedValue]:
        """The ids of the running shards that are done (waiting as ``return_when`` says);
        a shard that failed raises here, in the bundle's thread."""
        done, _ = wait(self._running, return_when=return_when)
        for future in done:
            out = self._running.pop(future)
            self._count(future.result())
            yield out

    def _count(self, stats: ShardStats | None) -> None:
        """Beam metrics of a finished shard (on the bundle's thread: Beam's metrics
        belong to it)."""
        if stats is None:
            Metrics.counter(METRICS_NAMESPACE, f"{self.name}.shards_skipped").inc()
            return
        Metrics.counter(METRICS_NAMESPACE, f"{self.name}.shards_done").inc()
        Metrics.counter(METRICS_NAMESPACE, f"{self.name}.rows").inc(stats.rows)
        for key, value in stats.counts.items():
            Metrics.counter(METRICS_NAMESPACE, f"{self.name}.{key}").inc(value)


class _KeyedPhase(_StageFn):
    """One phase of a keyed step for each incoming id (a shard, or a bucket: the same
    numbers, as a build has as many buckets as shards); passes ``(id, id)`` on, for the
    GroupByKey that holds the next phase back."""

    def __init__(self, run: StageRun, cls: type[Stage], layout: Layout, files: KeyedFiles, phase: str):
        super().__init__(run, cls, layout)
        self.files, self.phase = files, phase

    def setup(self) -> None:
        self.stage = self.make_stage()  # no model needed

    def process(self, element):
        number = element[0] if isinstance(element, tuple) else element
        getattr(self.files, self.phase)(self.stage, number)
        yield number, number


def stage_step(shards, run: StageRun, layout: Layout, num_shards: int, cls: type[Stage] | None = None,
               overlap: bool = False):
    """``shards`` (ids) -> the same ids, once stage ``run`` (of class ``cls``, by default
    the registered class of its kind) has run on each (``overlap``: :class:`RunStage`). A keyed stage
    first runs its keyed step, its records through the storage layer
    (:class:`~vlcurate.pipelines.keyed.KeyedFiles`), the runner carrying ids only:

        Signatures -> GroupByKey -> Resolve -> GroupByKey -> RunStage

    Both GroupByKeys are barriers in a batch pipeline (nothing comes out of one before
    every element has gone in), so every signatures file is written before any bucket
    is resolved, and every bucket before any shard reads its findings."""
    cls, name = cls or stage_class(run.kind), run.name
    if not issubclass(cls, KeyedStage):
        return shards | f"{name}/Run" >> beam.ParDo(RunStage(run, cls, layout, overlap=overlap))
    files = KeyedFiles(layout, name, num_shards)
    return (
        shards
        | f"{name}/Signatures" >> beam.ParDo(_KeyedPhase(run, cls, layout, files, "write_signatures"))
        | f"{name}/AllSignatures" >> beam.GroupByKey()
        | f"{name}/Resolve" >> beam.ParDo(_KeyedPhase(run, cls, layout, files, "resolve"))
        | f"{name}/AllResolved" >> beam.GroupByKey()
        | f"{name}/Shards" >> beam.Keys()
        | f"{name}/Run" >> beam.ParDo(RunStage(run, cls, layout, files, overlap))
    )


def build_graph(p: beam.Pipeline, stages: list[StageRun], layout: Layout, num_shards: int,
                overlap: bool = False):
    """The build's graph. ``overlap``: the runner hands a process many shards per bundle
    and keeps what a DoFn emits when its bundle ends (the local runner; Beam's DaskRunner
    drops that), so stages with ``shards_at_once`` > 1 overlap their shards (RunStage)."""
    shards = (
        p
        | "Shards" >> beam.Create(list(range(num_shards)))
        | "Distribute" >> beam.Reshuffle()
    )
    for run in stages:
        shards = stage_step(shards, run, layout, num_shards, overlap=overlap)
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


PARTITIONS_PER_THREAD = 4
SCHEDULER_TIMEOUT_S = 30


def dask_threads(options: tuple[str, ...]) -> int:
    """The threads of the Dask cluster the options name (``--dask_client_address``), or
    of this machine, where Beam's DaskRunner starts a local cluster when none is named."""
    address = next((o.split("=", 1)[1] for o in options if o.startswith("--dask_client_address=")), None)
    if address is None:
        return os.cpu_count() or 1
    from distributed import Client

    try:
        with Client(address, timeout=SCHEDULER_TIMEOUT_S, set_as_default=False) as client:
            return max(1, sum(w["nthreads"] for w in client.scheduler_info()["workers"].values()))
    except (OSError, TimeoutError) as e:
        raise UserError(f"pipeline option --dask_client_address={address}: no Dask scheduler answers "
                        f"({type(e).__name__})") from None


def runner_defaults(runner: str, options: tuple[str, ...], id_shards: int | None = None) -> list[str]:
    """Options a runner needs to spread the shards well, unless the user set them.

    Beam's DaskRunner makes each partition of elements one task, 128 elements to a
    partition by default, so a build of fewer than 128 shards ran as one task on one
    worker. A graph whose elements carry data (the export's samples) gets one shard per
    partition, so that a task holds one shard's. A graph that passes only shard ids
    between its transforms (a build: ``id_shards`` is its shard count) spreads them over
    ``PARTITIONS_PER_THREAD`` partitions per thread of the cluster instead: a worker
    pays the runner's cost per task, ~0.6 MB of memory for every task it runs, which
    with a task per shard grew with the corpus (benchmarks/README.md, Corpus-wide
    steps); a few partitions per thread keep every thread busy while slower ones finish,
    and a partition runs its shards one after another, one shard in memory at a time."""
    if not _RUNNER_ALIASES.get(runner.lower(), runner).endswith("DaskRunner") or any(
            o.startswith(("--dask_npartitions", "--dask_partition_size")) for o in options):
        return []
    if id_shards is None:
        return ["--dask_partition_size=1"]
    return [f"--dask_npartitions={max(1, min(id_shards, PARTITIONS_PER_THREAD * dask_threads(options)))}"]


def make_pipeline(runner: str, workers: int, options: tuple[str, ...], id_shards: int | None = None) -> beam.Pipeline:
    """A pipeline on the named runner. ``local`` pins the FnApiRunner (never Prism, which
    downloads a binary at run time); everything else is Beam's own runner lookup.
    ``id_shards``: the shard count of a graph that passes only shard ids between its
    transforms (:func:`runner_defaults`)."""
    if runner == LOCAL:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        flags = ["--default_sdk_harness_log_level=WARNING", *options]
        if workers > 1:
            flags += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
            # The worker processes inherit this (a user's own value wins). glibc gives each
            # thread that allocates its own malloc arena (up to 8 per core), and every arena
            # keeps image buffers it freed: a download worker's 32 fetch threads took it to
            # 650-950 MB peak RSS on the download benchmark, 390-480 MB with 2 arenas, for
            # the same CPU (benchmarks/README.md, Download).
            os.environ.setdefault("MALLOC_ARENA_MAX", str(MALLOC_ARENAS))
        return beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(flags))
    flags = [f"--runner={resolve_runner(runner)}", *runner_defaults(runner, options, id_shards), *options]
    return beam.Pipeline(options=PipelineOptions(flags))


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
