"""The generic runner overlaps a stage's shards within a bundle when the stage allows it
(``shards_at_once``) and the runner keeps what a DoFn emits at the end of a bundle (the
local runner): the next shard starts while the current one is still finishing, never
more than ``shards_at_once`` at a time, and every shard still commits its own marker and
is passed on exactly once."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from vlcurate.io import storage
from vlcurate.io.stats import ShardStats
from vlcurate.pipelines.beam import RunStage, StageRun, beam, make_pipeline, run_to_completion
from vlcurate.pipelines.stage import Layout, Stage


@dataclass(frozen=True)
class ProbeConfig:
    fail_shard: int = -1
    wait_s: float = 10.0  # how long the first shard waits for a second one to start


class _Probe:
    """What the probe stage saw (the local runner with one worker runs it in this process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.started: list[int] = []
        self.second_started = threading.Event()
        self.passed_on: list[int] = []


def _passed_on(shard: int) -> None:
    PROBE.passed_on.append(shard)


PROBE = _Probe()


class SlowEndStage(Stage):
    """The first shard to start waits (up to ``wait_s``) for a second one to start, as a
    download shard's end waits on its last slow URL."""

    name = "slow_end"
    Config = ProbeConfig
    shards_at_once = 2

    def run_shard(self, shard: int, findings: list | None = None) -> ShardStats:
        stats = self.new_stats(shard, 1)
        with PROBE.lock:
            PROBE.running += 1
            PROBE.peak = max(PROBE.peak, PROBE.running)
            PROBE.started.append(shard)
            first = len(PROBE.started) == 1
            if len(PROBE.started) == 2:
                PROBE.second_started.set()
        try:
            if shard == self.config.fail_shard:
                raise RuntimeError(f"probe failure in shard {shard}")
            if first:
                PROBE.second_started.wait(self.config.wait_s)
            self.count("seen")
            return stats
        finally:
            with PROBE.lock:
                PROBE.running -= 1


def _run(tmp_path, overlap: bool, shards: int = 5, config: ProbeConfig = ProbeConfig()) -> tuple[Layout, list]:
    global PROBE
    PROBE = _Probe()
    layout = Layout(str(tmp_path / "v"))
    run = StageRun("slow_end", "slow_end", config)
    pipeline = make_pipeline("local", 1, ())
    _ = (pipeline
         | beam.Create(list(range(shards)))
         | beam.Reshuffle()
         | beam.ParDo(RunStage(run, SlowEndStage, layout, overlap=overlap))
         | beam.Map(_passed_on))
    run_to_completion(pipeline)
    return layout, PROBE.passed_on


def test_shards_overlap_two_at_a_time_and_each_commits_once(tmp_path):
    layout, passed_on = _run(tmp_path, overlap=True)
    assert PROBE.second_started.is_set()  # the first shard's wait ended because a second one started
    assert PROBE.peak == 2  # never more than the stage's shards_at_once
    assert sorted(passed_on) == [0, 1, 2, 3, 4]
    for shard in range(5):
        assert storage.exists(layout.stats("slow_end", shard))


def test_without_overlap_shards_run_one_at_a_time(tmp_path):
    """What runners that drop a bundle's late outputs (Beam's DaskRunner) get."""
    _, passed_on = _run(tmp_path, overlap=False, shards=3, config=ProbeConfig(wait_s=0.2))
    assert PROBE.peak == 1
    assert sorted(passed_on) == [0, 1, 2]


def test_a_failing_shard_fails_the_run_with_its_error(tmp_path):
    with pytest.raises(Exception, match="probe failure in shard 2"):
        _run(tmp_path, overlap=True, shards=4, config=ProbeConfig(fail_shard=2))


def test_a_process_that_imported_beam_freezes_its_objects_at_exit():
    """Interpreter shutdown then skips them in its collections (~0.4 s less per
    process, and the local runner stops its workers one after the other)."""
    import subprocess
    import sys

    code = ("import atexit, gc\n"
            "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 10000))\n"
            "import vlcurate.pipelines.beam\n"
            "print('frozen before exit:', gc.get_freeze_count() > 10000)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["frozen before exit: False", "frozen at exit: True"]
