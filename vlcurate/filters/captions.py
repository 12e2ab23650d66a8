"""What the caption filters share: each sample's candidate captions, and the
``caption_scores`` record they write next to their decisions.

A caption filter (``caption_rank``, ``caption_itm``) scores every candidate caption of
a sample, its web caption (unless ``include_web`` is off) followed by the synthetic
captions a captioner stage (``captions_from``, default ``synthetic_captions``) wrote for
it, and selects the sample's training captions. Besides its ``decision`` file it
writes ``<stage>/<shard>.captions.parquet`` (record kind ``caption_scores``, layout in
:mod:`vlcurate.schemas.captions`): per sample every candidate, its source and score,
and the selected captions best first. :func:`selected_captions` reads them back for a
training export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from vlcurate.errors import UserError
from vlcurate.extractors.encoding import SampleFailure
from vlcurate.filters.base import Decision
from vlcurate.io import storage
from vlcurate.io.parquet import read_parquet, write_parquet
from vlcurate.io.stats import FileRecord
from vlcurate.pipelines.samples import SampleRow
from vlcurate.pipelines.stage import Layout
from vlcurate.schemas import get_schema
from vlcurate.schemas.features import MODEL_META

CAPTIONS_EXT = "captions.parquet"


@dataclass
class Candidates:
    """One sample's captions to score, web first, and (once scored) their scores."""

    captions: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    selected: list[str] = field(default_factory=list)

    def ranked(self) -> list[int]:
        """Caption indices by score, best first (ties keep candidate order: web first)."""
        return sorted(range(len(self.scores)), key=lambda i: -self.scores[i])


def candidate_captions(layout: Layout, shard: int, rows: list[SampleRow], captions_from: str,
                       include_web: bool) -> dict[str, Candidates]:
    """Every row's candidates: its stripped web caption (when present and ``include_web``),
    then the captions of its ``ok`` row in stage ``captions_from``'s sidecar."""
    path = layout.sidecar(captions_from, shard)
    if not storage.exists(str(path)):
        raise UserError(f"{path}: no synthetic captions for shard {shard}; a caption filter needs the "
                        f"{captions_from!r} stage earlier in the recipe")
    table = read_parquet(path, "synthetic_captions")
    table = table.filter(pc.equal(table.column("status"), "ok"))
    synthetic = dict(zip(table.column("key").to_pylist(), table.column("captions").to_pylist()))
    out: dict[str, Candidates] = {}
    for row in rows:
        c = Candidates()
        web = (row.get("caption") or "").strip()
        if include_web and web:
            c.captions.append(web)
            c.sources.append("web")
        for text in synthetic.get(row["key"], []):
            if text.strip():
                c.captions.append(text.strip())
                c.sources.append("synthetic")
        out[row["key"]] = c
    return out


def caption_decision(c: Candidates, failure: SampleFailure | None, unmatched: str = "") -> Decision:
    """A scored sample is kept when it has selected captions (score: its best caption's);
    else dropped as ``no_caption`` (no candidates), ``image_error`` (``failure``: its
    image could not be decoded or scored) or ``no_matching_caption`` (``unmatched`` says why)."""
    if not c.captions:
        return Decision(False, "no_caption")
    if failure is not None or not c.scores:
        return Decision(False, "image_error", detail=f"{failure.kind}: {failure.message}" if failure else None)
    if not c.selected:
        return Decision(False, "no_matching_caption", score=max(c.scores), detail=unmatched or None)
    return Decision(True, score=max(c.scores), detail=f"{len(c.selected)} of {len(c.captions)} captions selected")


def write_caption_scores(layout: Layout, stage: str, shard: int, keys: list[str],
                         scored: dict[str, Candidates], model: dict[str, Any]) -> FileRecord:
    """The ``caption_scores`` file of ``keys`` (in that order), committed atomically;
    returns its record for the shard's stats marker."""
    rows = [scored.get(k, Candidates()) for k in keys]
    table = pa.table({
        "key": keys,
        "stage": [stage] * len(keys),
        "captions": [c.captions for c in rows],
        "sources": [c.sources for c in rows],
        "scores": [c.scores for c in rows],
        "selected": [c.selected for c in rows],
    }, schema=get_schema("caption_scores").schema)
    return write_parquet(table, layout.sidecar(stage, shard, CAPTIONS_EXT), "caption_scores",
                  metadata={MODEL_META.decode(): json.dumps(model, sort_keys=True)})


def selected_captions(layout: Layout, stage: str, shard: int) -> dict[str, list[str]]:
    """``{key: training captions, best first}`` from a caption filter's record of a shard
    (samples it dropped have none)."""
    table = read_parquet(layout.sidecar(stage, shard, CAPTIONS_EXT), "caption_scores")
    return dict(zip(table.column("key").to_pylist(), table.column("selected").to_pylist()))
