"""Caption language on hand-labelled short captions (10 languages): accuracy reported
and asserted on captions of 4+ words, and the filter keeps exactly the languages
and confidences it is asked for."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlcurate.filters.language import CaptionLanguage, CaptionLanguageConfig, is_long, word_count
from vlcurate.io.parquet import write_parquet
from vlcurate.pipelines.stage import Layout
from vlcurate.schemas import get_schema
from vlcurate.typed import ConfigError, from_dict

DATA = Path(__file__).parent / "data" / "caption_languages.tsv"


def labelled() -> list[tuple[str, str]]:
    lines = DATA.read_text(encoding="utf-8").splitlines()
    return [tuple(line.split("\t", 1)) for line in lines if line and not line.startswith("#")]


def run_on_captions(tmp_path, captions: list[str], **cfg) -> list[dict]:
    layout = Layout.for_stages(tmp_path, ["download", "caption_language"])
    rows = [{"key": f"00000_{i:06d}", "url": f"http://h/{i}", "caption": c, "status": "ok", "error_kind": None,
             "error_message": None, "http_status": 200, "width": 8, "height": 8, "original_width": 8,
             "original_height": 8, "sha256": str(i), "phash": None} for i, c in enumerate(captions)]
    write_parquet(pa.Table.from_pylist(rows, schema=get_schema("sample").schema), layout.samples_parquet(0), "sample")
    CaptionLanguage(CaptionLanguageConfig(**cfg), layout).run_shard(0)
    return pq.read_table(layout.sidecar("caption_language", 0)).to_pylist()


def test_accuracy_on_hand_labelled_short_captions(tmp_path):
    data = labelled()
    assert len(data) >= 200 and len({lang for lang, _ in data}) >= 8
    decisions = run_on_captions(tmp_path, [c for _, c in data], languages=("en",), min_confidence=0.0)
    hits = [(d["detail"] == lang, is_long(c)) for (lang, c), d in zip(data, decisions)]
    long_hits = [h for h, long in hits if long]
    short_hits = [h for h, long in hits if not long]
    accuracy = {"all": sum(h for h, _ in hits) / len(hits), "4+ words": sum(long_hits) / len(long_hits),
                "1-3 words": sum(short_hits) / len(short_hits)}
    print(f"\ncaption language accuracy on {len(data)} captions: "
          + ", ".join(f"{k} {v:.3f} ({n})" for (k, v), n in zip(accuracy.items(), (len(hits), len(long_hits), len(short_hits)))))
    assert len(long_hits) >= 150
    assert accuracy["4+ words"] >= 0.9


def test_keeps_exactly_the_languages_and_confidences_asked_for(tmp_path):
    data = labelled()
    captions = [c for _, c in data] + ["", "   "]
    everything = run_on_captions(tmp_path / "all", captions, languages=("en",), min_confidence=0.0)
    found = {d["key"]: (d["detail"], d["score"]) for d in everything}
    decisions = run_on_captions(tmp_path / "some", captions, languages=("de", "fr"), min_confidence=0.6)
    for d in decisions:
        language, confidence = found[d["key"]]
        if language is None:
            assert (d["keep"], d["reason"]) == (False, "no_caption")
        elif language not in ("de", "fr"):
            assert (d["keep"], d["reason"], d["detail"]) == (False, "wrong_language", language)
        elif confidence < 0.6:
            assert (d["keep"], d["reason"]) == (False, "low_language_confidence")
        else:
            assert d["keep"] and d["detail"] == language and d["score"] == confidence
    kept = [d for d in decisions if d["keep"]]
    assert 30 <= len(kept) <= 48 and {d["detail"] for d in kept} == {"de", "fr"}
    assert any(d["reason"] == "low_language_confidence" for d in decisions)


def test_word_count_of_spaced_and_unspaced_scripts():
    assert word_count("a red car parked") == 4
    assert word_count("蓝天") == 1 and word_count("一只猫在窗台上睡觉") == 4
    assert not is_long("blue sky") and is_long("夜の街を上空から見た景色")


@pytest.mark.parametrize("settings, problem", [
    ({"languages": []}, "caption_language.languages: must name at least one language"),
    ({"languages": ["EN"]}, "caption_language.languages: expected lower-case ISO 639-1 codes like 'en', got 'EN'"),
    ({"min_confidence": 1.5}, "caption_language.min_confidence: must be <= 1.0, got 1.5"),
])
def test_bad_settings_name_their_key(settings, problem):
    with pytest.raises(ConfigError, match=problem.replace(".", r"\.").replace("(", r"\(")):
        from_dict(CaptionLanguageConfig, settings, "stages[1].caption_language")
