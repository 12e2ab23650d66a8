"""The stage contract: plain Python that maps one shard to its output files.

A stage reads what earlier stages wrote for a shard and writes its own files there,
each atomically; it returns a :class:`ShardStats`. It knows nothing about Beam: the
generic DoFn in :mod:`vlcurate.pipelines.beam` runs any stage, and tests call
``run_shard`` directly.

A stage that needs the whole corpus (exact dedup across shards, a near-duplicate
index) sets ``needs_corpus`` and implements ``collect`` (a small table per shard) and
``combine`` (those tables, in shard order, into one JSON-ready value); ``run_shard``
then gets that value.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from vlcurate.io.stats import ShardStats

WORK_DIR = "_work"


@dataclass(frozen=True)
class Layout:
    """Where each file of a version lives, relative to the version directory."""

    root: Path

    def input_shard(self, shard: int) -> Path:
        return self.root / WORK_DIR / f"input-{shard:05d}.parquet"

    def samples_tar(self, shard: int) -> Path:
        return self.root / "samples" / f"{shard:05d}.tar"

    def samples_parquet(self, shard: int) -> Path:
        return self.root / "samples" / f"{shard:05d}.parquet"

    def sidecar(self, stage: str, shard: int, ext: str = "parquet") -> Path:
        return self.root / stage / f"{shard:05d}.{ext}"

    def stats(self, stage: str, shard: int) -> Path:
        return self.root / "stats" / f"{stage}-{shard:05d}.json"


@dataclass(frozen=True)
class StageInfo:
    """What the manifest records about a configured stage beyond its settings."""

    weights: dict[str, Any] | None = None  # model, weights source, random or not
    libraries: dict[str, Any] | None = None  # code outside vlcurate that decides the bytes written


class Stage(ABC):
    """One job of a build. Subclasses set ``name`` and ``Config`` (a frozen dataclass)."""

    name: ClassVar[str]
    Config: ClassVar[type]
    needs_corpus: ClassVar[bool] = False

    def __init__(self, config: Any, layout: Layout):
        self.config = config
        self.layout = layout

    def setup(self) -> None:
        """Load models and other per-process resources (called once per process)."""

    def info(self) -> StageInfo:
        """Provenance for the manifest, known without running the stage."""
        return StageInfo()

    def collect(self, shard: int) -> pa.Table:  # pragma: no cover - only for needs_corpus stages
        raise NotImplementedError

    def combine(self, tables: list[pa.Table]) -> Any:  # pragma: no cover
        raise NotImplementedError

    @abstractmethod
    def run_shard(self, shard: int, corpus: Any = None) -> ShardStats:
        """Process one shard; write every output file atomically; return its stats."""

    def is_done(self, shard: int) -> bool:
        return self.layout.stats(self.name, shard).exists()


_STAGES: dict[str, type[Stage]] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"stage {cls.__name__}.Config must be a dataclass")
    _STAGES[cls.name] = cls
    return cls


def stage_class(name: str) -> type[Stage]:
    _load_builtin_stages()
    try:
        return _STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; known: {', '.join(sorted(_STAGES))}") from None


def known_stages() -> list[str]:
    _load_builtin_stages()
    return sorted(_STAGES)


def _load_builtin_stages() -> None:
    # Imported lazily so that importing the contract never pulls in torch.
    from vlcurate.pipelines import stages  # noqa: F401
