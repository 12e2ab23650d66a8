"""Trace hook for benchmarks/download_timeline.py (never imported by vlcurate itself).

With VLC_TIMELINE_DIR set and this directory on PYTHONPATH, every Python process of a
build (the launcher and Beam's worker processes, which inherit the environment) appends
events to VLC_TIMELINE_DIR/<pid>.jsonl, times from CLOCK_MONOTONIC (one clock for all
processes of the machine):

- ``proc``: the interpreter started (here), with its parent pid and argv;
- ``shard_start`` / ``shard_end``: the generic runner began / committed a stage's shard
  (``vlcurate.pipelines.beam.run_stage_on_shard``);
- ``sched``: a shard's host scheduler was made (on the shard's thread);
- ``take``: that scheduler handed out a row (to a fetch thread);
- ``row_done``: a row's outcome is known (fetched and decoded);
- ``fetch_end``: a shard's fetch loop returned (all its rows done);
- ``build_start``/``build_end``, ``run_start``/``run_end`` (launcher): ``build()`` and
  the Beam pipeline's run within it;
- ``loaded`` (Beam worker): Beam's SDK worker module is imported (most of the imports); ``setup_start``/``setup_end``:
  the generic DoFn's setup (the stage's own setup inside);
- ``exit``: the interpreter is exiting.

The patches are applied when the modules are first imported, so nothing is imported
early and start-up stays as it is.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys
import threading
import time

_DIR = os.environ.get("VLC_TIMELINE_DIR")


def _writer():
    lock = threading.Lock()
    f = open(os.path.join(_DIR, f"{os.getpid()}.jsonl"), "a", buffering=1)

    def emit(kind: str, **fields) -> None:
        line = json.dumps({"t": time.monotonic(), "pid": os.getpid(), "ev": kind, **fields})
        with lock:
            f.write(line + "\n")

    return emit


def _patch_beam(module) -> None:
    original = module.run_stage_on_shard

    def traced(stage, shard, findings=None):
        _emit("shard_start", stage=stage.name, shard=shard, thread=threading.get_ident())
        try:
            return original(stage, shard, findings)
        finally:
            _emit("shard_end", stage=stage.name, shard=shard, thread=threading.get_ident())

    module.run_stage_on_shard = traced
    setup = module.RunStage.setup

    def traced_setup(self):
        _emit("setup_start", stage=self.name)
        setup(self)
        _emit("setup_end", stage=self.name)

    module.RunStage.setup = traced_setup


def _patch_hosts(module) -> None:
    init, take = module.HostScheduler.__init__, module.HostScheduler.take

    def traced_init(self, gate, keys):
        init(self, gate, keys)
        _emit("sched", sched=id(self), rows=len(keys), thread=threading.get_ident())

    def traced_take(self):
        got = take(self)
        if got is not None:
            _emit("take", sched=id(self), row=got[0])
        return got

    module.HostScheduler.__init__, module.HostScheduler.take = traced_init, traced_take


def _patch_stage(module) -> None:
    cls = module.DownloadStage
    finish, fetch_rows = cls._finish, cls._fetch_rows

    def traced_finish(self, fetched, sha256, phash):
        out = finish(self, fetched, sha256, phash)
        _emit("row_done", error=out.error_kind)
        return out

    def traced_fetch_rows(self, urls, expected):
        out = fetch_rows(self, urls, expected)
        _emit("fetch_end", rows=len(urls), thread=threading.get_ident())
        return out

    cls._finish, cls._fetch_rows = traced_finish, traced_fetch_rows


def _patch_build(module) -> None:
    def traced(name, fn):
        def wrapper(*args, **kwargs):
            _emit(f"{name}_start")
            try:
                return fn(*args, **kwargs)
            finally:
                _emit(f"{name}_end")
        return wrapper

    module.build = traced("build", module.build)
    module.run_to_completion = traced("run", module.run_to_completion)


def _mark_loaded(module) -> None:
    _emit("loaded", module=module.__name__)


_PATCHES = {"apache_beam.runners.worker.sdk_worker": _mark_loaded, "vlcurate.pipelines.build": _patch_build, "vlcurate.pipelines.beam": _patch_beam,
            "vlcurate.download.hosts": _patch_hosts, "vlcurate.download.stage": _patch_stage}


class _Loader(importlib.abc.Loader):
    def __init__(self, inner, patch):
        self.inner, self.patch = inner, patch

    def __getattr__(self, name):  # get_code, is_package, ... (runpy asks for them)
        return getattr(self.inner, name)

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        self.patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        patch = _PATCHES.get(name)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                spec.loader = _Loader(spec.loader, patch)
                return spec
        return None


if _DIR:
    _emit = _writer()
    _emit("proc", ppid=os.getppid(), argv=sys.argv[:6])
    import atexit

    atexit.register(_emit, "exit")
    sys.meta_path.insert(0, _Finder())
