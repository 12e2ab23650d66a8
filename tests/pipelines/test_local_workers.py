"""The local runner's worker processes: with several workers, each runs with glibc's
malloc arenas capped (MALLOC_ARENA_MAX) unless the user set a value of their own."""

from __future__ import annotations

import json
import os

from vlcurate.pipelines.beam import MALLOC_ARENAS, beam, make_pipeline, run_to_completion


class _Report(beam.DoFn):
    def __init__(self, where: str) -> None:
        self.where = where

    def process(self, element: int):
        with open(os.path.join(self.where, f"{element}.json"), "w") as f:
            json.dump({"pid": os.getpid(), "arenas": os.environ.get("MALLOC_ARENA_MAX")}, f)
        yield element


def test_worker_processes_run_with_capped_malloc_arenas(tmp_path, monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "x")  # restored (unset) after the test
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    pipeline = make_pipeline("local", 2, ())
    _ = pipeline | beam.Create(list(range(4))) | beam.Reshuffle() | beam.ParDo(_Report(str(tmp_path)))
    run_to_completion(pipeline)
    seen = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(4)]
    assert all(s["pid"] != os.getpid() for s in seen)  # really in the worker processes
    assert {s["arenas"] for s in seen} == {str(MALLOC_ARENAS)}


def test_a_users_own_arena_setting_is_kept(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "6")
    make_pipeline("local", 2, ())
    assert os.environ["MALLOC_ARENA_MAX"] == "6"
