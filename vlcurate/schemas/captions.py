"""Record kinds of CapFilt (BLIP's captioner + filter, BLIP-2's caption ranking).

``synthetic_captions`` (``synthetic_captions/<shard>.parquet``, written by the
captioner stage): one row per sample the stage saw::

    key            string, not null      the sample's key
    status         string, not null      "ok" | "failed"
    error_kind     string                why it failed (decode_error, model_error, ...)
    error_message  string                the failure's message
    captions       list<string>          the K sampled captions in sampling order, null unless ok

``caption_scores`` (``<filter stage>/<shard>.captions.parquet``, written by the
caption filters next to their decision file): one row per sample the filter saw::

    key            string, not null      the sample's key
    stage          string, not null      the filter that scored it
    captions       list<string>, not null  every candidate: the web caption first (when
                                         the sample has one), then the synthetic ones
    sources        list<string>, not null  "web" | "synthetic", one per caption
    scores         list<double>, not null  one per caption (CLIP cosine or ITM match
                                         probability); empty when nothing was scored
    selected       list<string>, not null  the training captions, best first

A training export reads ``selected``. The schema's ``vlcurate.model`` metadata names
the model that produced the captions or scores (as for feature sidecars).
"""

from __future__ import annotations

import pyarrow as pa

from vlcurate.schemas.core import SCHEMA_VERSION, RecordSchema, register
from vlcurate.schemas.features import FEATURE_BASE_FIELDS, check_feature_status
from vlcurate.schemas.records import _check_keys

CAPTION_SOURCES = ("web", "synthetic")

Problems = list[tuple[int, str, str]]


def _check_captions_on_ok_rows(table: pa.Table) -> Problems:
    problems: Problems = []
    for row, (status, caps) in enumerate(zip(table.column("status").to_pylist(),
                                             table.column("captions").to_pylist())):
        if (status == "ok") != (caps is not None):
            problems.append((row, "captions", "captions must be present exactly when status is ok"))
        elif caps is not None and any(c is None for c in caps):
            problems.append((row, "captions", "a null caption"))
    return problems


SYNTHETIC_CAPTIONS = register(
    RecordSchema(
        name="synthetic_captions",
        version=SCHEMA_VERSION,
        schema=pa.schema(list(FEATURE_BASE_FIELDS) + [pa.field("captions", pa.list_(pa.string()))]),
        row_checks=(_check_keys, check_feature_status, _check_captions_on_ok_rows),
    )
)


def _check_scored_captions(table: pa.Table) -> Problems:
    """Parallel lists of equal length, known sources, and ``selected`` drawn from the
    scored captions in non-increasing score order."""
    problems: Problems = []
    columns = [table.column(n).to_pylist() for n in ("captions", "sources", "scores", "selected")]
    for row, (caps, sources, scores, selected) in enumerate(zip(*columns)):
        if len(sources) != len(caps) or (scores and len(scores) != len(caps)):
            problems.append((row, "scores", f"{len(caps)} captions, {len(sources)} sources and "
                                            f"{len(scores)} scores (need one each, or no scores)"))
            continue
        if any(s not in CAPTION_SOURCES for s in sources):
            problems.append((row, "sources", f"each source must be one of {CAPTION_SOURCES}"))
        if selected and not scores:
            problems.append((row, "selected", "captions selected without scores"))
            continue
        by_caption: dict[str, float] = {}
        for caption, value in zip(caps, scores):
            by_caption[caption] = max(value, by_caption.get(caption, value))
        if any(c not in by_caption for c in selected):
            problems.append((row, "selected", "a selected caption is not among the scored captions"))
        elif any(by_caption[a] < by_caption[b] for a, b in zip(selected, selected[1:])):
            problems.append((row, "selected", "selected captions are not in score order"))
    return problems


CAPTION_SCORES = register(
    RecordSchema(
        name="caption_scores",
        version=SCHEMA_VERSION,
        schema=pa.schema([
            pa.field("key", pa.string(), nullable=False),
            pa.field("stage", pa.string(), nullable=False),
            pa.field("captions", pa.list_(pa.string()), nullable=False),
            pa.field("sources", pa.list_(pa.string()), nullable=False),
            pa.field("scores", pa.list_(pa.float64()), nullable=False),
            pa.field("selected", pa.list_(pa.string()), nullable=False),
        ]),
        row_checks=(_check_keys, _check_scored_captions),
    )
)
