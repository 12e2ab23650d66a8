"""The stage contract: plain Python that maps one shard to its output files.

A stage reads what earlier stages wrote for a shard and writes its own files there,
each atomically through the storage layer; it returns a :class:`ShardStats` that
records the counts and every file it wrote. It knows nothing about Beam: the generic
DoFn in :mod:`vlcurate.pipelines.beam` runs any stage, and tests call ``run_shard``
directly.

A stage whose decisions depend on other shards (exact or near-duplicate removal, a
global score quantile) is a :class:`~vlcurate.pipelines.keyed.KeyedStage`: it emits
small keyed records per shard, each key is resolved on its own, and ``run_shard``
receives only the findings about the shard's own samples.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

from vlcurate.io import storage
from vlcurate.io.stats import ShardStats
from vlcurate.pipelines.progress import ShardProgress

WORK_DIR = "_work"
STAGES_ENTRY_POINTS = "vlcurate.stages"  # third-party packages register stages here


@dataclass(frozen=True)
class StageEntry:
    """A stage of a build as the layout knows it: its name (the directory of its
    sidecars) and the record kind of those sidecars (None: it writes none)."""

    name: str
    record_kind: str | None


@dataclass(frozen=True)
class Layout:
    """Where each file of a version lives. ``root`` is a location (local path or URL);
    every method returns a location. ``stages`` are the build's stages in recipe order,
    so a stage finds earlier stages' files by asking, never by listing the version."""

    root: str
    stages: tuple[StageEntry, ...] = ()
    track_progress: bool = False  # stages write per-shard progress files (a build sets it)
    num_shards: int = 0  # the build's shard count (0: not known, outside a build)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", os.fspath(self.root))

    @classmethod
    def for_stages(cls, root: str | os.PathLike, stages: Iterable[str | tuple[str, str]],
                   track_progress: bool = False, num_shards: int = 0) -> "Layout":
        """A layout for stages given as ``(name, kind)`` pairs, or as a kind alone
        (the stage's name is then its kind, as in most recipes)."""
        pairs = [(s, s) if isinstance(s, str) else s for s in stages]
        return cls(os.fspath(root), tuple(StageEntry(name, stage_class(kind).record_kind) for name, kind in pairs),
                   track_progress, num_shards)

    def input_shard(self, shard: int) -> str:
        return storage.join(self.root, WORK_DIR, f"input-{shard:05d}.parquet")

    def samples_tar(self, shard: int) -> str:
        return storage.join(self.root, "samples", f"{shard:05d}.tar")

    def samples_parquet(self, shard: int) -> str:
        return storage.join(self.root, "samples", f"{shard:05d}.parquet")

    def sidecar(self, stage: str, shard: int, ext: str = "parquet") -> str:
        return storage.join(self.root, stage, f"{shard:05d}.{ext}")

    def progress_dir(self) -> str:
        return storage.join(self.root, WORK_DIR, "progress")

    def progress_file(self, stage: str, shard: int) -> str:
        return storage.join(self.progress_dir(), f"{stage}-{shard:05d}.json")

    def stats(self, stage: str, shard: int) -> str:
        return storage.join(self.root, "stats", f"{stage}-{shard:05d}.json")

    def sidecars(self, shard: int, record_kind: str, before: str | None = None) -> list[str]:
        """The shard's sidecars of ``record_kind``, in recipe order, from the stages that
        run before stage ``before`` (all stages when None)."""
        found = []
        for entry in self.stages:
            if entry.name == before:
                break
            if entry.record_kind == record_kind:
                found.append(self.sidecar(entry.name, shard))
        return found


@dataclass(frozen=True)
class StageInfo:
    """What the manifest records about a configured stage beyond its settings."""

    weights: dict[str, Any] | None = None  # model, weights source, random or not
    libraries: dict[str, Any] | None = None  # code outside vlcurate that decides the bytes written


class Stage(ABC):
    """One job of a build. Subclasses set ``name`` and ``Config`` (a frozen dataclass),
    and ``record_kind`` when they write a sidecar per shard (``<name>/<shard>.parquet``)."""

    name: ClassVar[str]
    Config: ClassVar[type]
    record_kind: ClassVar[str | None] = None
    reads_input: ClassVar[bool] = False  # True only for a first stage (it reads the input list)
    # Shards one process may have in progress at once where the runner hands a process
    # many shards in one bundle (the local runner). A stage whose shards end waiting on a
    # few slow items (the download's last slow URLs) sets 2: the next shard then starts on
    # the threads the current one no longer uses. Such a stage's run_shard must be safe to
    # call from several threads at once; each shard still commits on its own.
    shards_at_once: ClassVar[int] = 1

    def __init__(self, config: Any, layout: Layout, name: str | None = None):
        self.config = config
        self.layout = layout
        self._current = threading.local()
        if name is not None:  # a recipe that runs this kind twice names each one
            self.name = name

    def setup(self) -> None:
        """Load models and other per-process resources (called once per process)."""

    def info(self) -> StageInfo:
        """Provenance for the manifest, known without running the stage."""
        return StageInfo()

    @abstractmethod
    def run_shard(self, shard: int, findings: list | None = None) -> ShardStats:
        """Process one shard; write every output file atomically; return its stats
        (counts, and the record of every file written). ``findings``: only for a
        :class:`~vlcurate.pipelines.keyed.KeyedStage`, what its groups found about
        this shard's samples."""

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name`` of the shard being processed on this thread
        (it ends up in the shard's stats, Beam's metrics and the manifest's funnel)."""
        stats: ShardStats | None = getattr(self._current, "stats", None)
        if stats is None:
            raise RuntimeError(f"{type(self).__name__}.count called outside a shard")
        stats.add(name, n)

    def new_stats(self, shard: int, rows: int) -> ShardStats:
        """The shard's stats object; :meth:`count` adds to it until the next call.
        Also starts the shard's progress count (:meth:`advance`) of ``rows`` samples."""
        stats = ShardStats(self.name, shard, rows)
        self._current.stats = stats
        self.start_progress(shard, rows)
        return stats

    def start_progress(self, shard: int, rows: int) -> ShardProgress | None:
        """Start counting the shard's finished samples on this thread (done by
        :meth:`new_stats`; a stage that makes its stats otherwise calls it). Returns the
        counter, which the stage's own worker threads may also ``add`` to."""
        progress = (ShardProgress(self.layout.progress_file(self.name, shard), rows)
                    if self.layout.track_progress else None)
        self._current.progress = progress
        return progress

    def advance(self, n: int = 1) -> None:
        """``n`` more samples of the shard being processed on this thread are done: the
        build's progress display counts them (cheap; written at most once a second)."""
        progress: ShardProgress | None = getattr(self._current, "progress", None)
        if progress is not None:
            progress.add(n)


_STAGES: dict[str, type[Stage]] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"stage {cls.__name__}.Config must be a dataclass")
    _STAGES[cls.name] = cls
    return cls


def stage_class(name: str) -> type[Stage]:
    _load_stages()
    try:
        return _STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; known: {', '.join(sorted(_STAGES))}") from None


def known_stages() -> list[str]:
    _load_stages()
    return sorted(_STAGES)


_LOADED = False


def _load_stages() -> None:
    """The built-in stages, then any registered by other packages under the
    ``vlcurate.stages`` entry point group (each entry names a module whose import
    registers its stages). Imported lazily so that importing the contract never pulls
    in torch."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from importlib.metadata import entry_points

    from vlcurate.pipelines import stages  # noqa: F401

    for ep in entry_points(group=STAGES_ENTRY_POINTS):
        ep.load()
