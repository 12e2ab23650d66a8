"""The CapFilt record kinds reject what their readers must never see."""

from __future__ import annotations

import pyarrow as pa

from vlcurate.schemas import get_schema, validate


def scores_table(**row) -> pa.Table:
    base = {"key": "k1", "stage": "caption_itm", "captions": ["a dog", "a cat", "a car"],
            "sources": ["web", "synthetic", "synthetic"], "scores": [0.2, 0.9, 0.6], "selected": ["a cat", "a car"]}
    return pa.Table.from_pylist([{**base, **row}], schema=get_schema("caption_scores").schema)


def test_caption_scores_checks():
    assert validate(scores_table(), "caption_scores", raise_error=False) == []
    assert validate(scores_table(scores=[], selected=[]), "caption_scores", raise_error=False) == []  # unscored
    problems = {
        "order": scores_table(selected=["a car", "a cat"]),
        "unknown": scores_table(selected=["a bird"]),
        "lengths": scores_table(scores=[0.1, 0.2]),
        "source": scores_table(sources=["web", "synthetic", "alt"]),
        "unscored": scores_table(scores=[], selected=["a cat"]),
    }
    found = {name: validate(t, "caption_scores", raise_error=False) for name, t in problems.items()}
    assert "not in score order" in found["order"][0]
    assert "not among the scored captions" in found["unknown"][0]
    assert "3 captions, 3 sources and 2 scores" in found["lengths"][0]
    assert "sources" in found["source"][0]
    assert "selected without scores" in found["unscored"][0]


def test_synthetic_captions_present_exactly_on_ok_rows():
    schema = get_schema("synthetic_captions").schema
    ok = {"key": "a", "status": "ok", "error_kind": None, "error_message": None, "captions": ["x", "y"]}
    failed = {"key": "b", "status": "failed", "error_kind": "decode_error", "error_message": "m", "captions": None}
    assert validate(pa.Table.from_pylist([ok, failed], schema=schema), "synthetic_captions", raise_error=False) == []
    bad = pa.Table.from_pylist([{**ok, "captions": None}, {**failed, "captions": ["z"]}], schema=schema)
    problems = validate(bad, "synthetic_captions", raise_error=False)
    assert len(problems) == 2 and all("present exactly when status is ok" in p for p in problems)
