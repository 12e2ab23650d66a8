"""Tag-only mode, given to every filter by the base class: nothing is dropped, and the
would-be decisions equal the dropping run's decisions (README: Tag-only mode)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.extractors.test_vit_stage import TINY, jpeg
from vlcurate.io.parquet import write_parquet
from vlcurate.io.tar import TarSample, write_tar
from vlcurate.pipelines.keyed import KeyedStage, findings_by_shard
from vlcurate.pipelines.stage import Layout, stage_class
from vlcurate.schemas import get_schema

# caption, sha256, phash, original (w, h)
ROWS = [
    ("a red square on a white wall", "h1", "ffff0000ffff0000", (640, 480)),
    ("", "h2", "0f0f0f0f0f0f0f0f", (640, 480)),
    ("x", "h3", "ffff0000ffff0001", (100, 80)),
    ("a red square on a white wall", "h1", "ffff0000ffff0000", (640, 480)),
    ("ein roter Hund läuft über die grüne Wiese", "h5", "123456789abcdef0", (900, 200)),
    ("un chat noir dort sur le canapé rouge", "h6", "fedcba9876543210", (300, 300)),
    ("two cats sleeping on a sofa", "h7", "0000000000000000", (1000, 250)),
    ("a bridge at night over the river", "h8", "00000000000000ff", (150, 400)),
]

CASES = {
    "caption_filter": {"min_chars": 5},
    "exact_dedup": {"column": "sha256"},
    "near_dedup": {"distance": 4},
    "caption_language": {"languages": ("en",)},
    "datacomp_basic": {},
    "top_fraction": {"fraction": 0.3},  # ranks the scores of a hand-written clip_score file
    "clip_score": {"model": TINY, "device": "cpu", "min_score": 0.0, "batch_size": 4},
}


def write_samples(layout: Layout, shard: int = 0) -> None:
    keys = [f"{shard:05d}_{i:06d}" for i in range(len(ROWS))]
    rows = [{"key": k, "url": f"http://h/{k}.jpg", "caption": c, "status": "ok", "error_kind": None,
             "error_message": None, "http_status": 200, "width": 64, "height": 48, "original_width": w,
             "original_height": h, "sha256": sha, "phash": ph} for k, (c, sha, ph, (w, h)) in zip(keys, ROWS)]
    write_parquet(pa.Table.from_pylist(rows, schema=get_schema("sample").schema), layout.samples_parquet(shard), "sample")
    write_tar(layout.samples_tar(shard), [TarSample(k, {"jpg": jpeg(i, (64, 48)), "txt": r[0].encode(), "json": b"{}"})
                                          for i, (k, r) in enumerate(zip(keys, ROWS))])


def write_scores(layout: Layout, shard: int = 0) -> None:
    rows = [{"key": f"{shard:05d}_{i:06d}", "stage": "clip_score", "keep": True, "reason": None,
             "score": 0.1 + (i % 5) / 10, "detail": None} for i in range(len(ROWS))]
    write_parquet(pa.Table.from_pylist(rows, schema=get_schema("decision").schema),
                  layout.sidecar("clip_score", shard), "decision")


def run_filter(tmp_path, kind: str, settings: dict, tag_only: bool):
    earlier = ["clip_score"] if kind == "top_fraction" else []
    layout = Layout.for_stages(tmp_path / f"{kind}-{tag_only}", ["download", *earlier, kind])
    write_samples(layout)
    if earlier:
        write_scores(layout)
    cls = stage_class(kind)
    stage = cls(cls.Config(**settings, tag_only=tag_only), layout)
    findings = findings_by_shard(stage, [0])[0] if isinstance(stage, KeyedStage) else None
    stats = stage.run_shard(0, findings)
    return stats.counts, pq.read_table(layout.sidecar(kind, 0)).to_pylist()


def tag_only_cases() -> dict[str, dict]:
    return CASES


@pytest.mark.parametrize("kind", sorted(tag_only_cases()))
def test_tag_only_drops_nothing_and_records_the_dropping_runs_decisions(tmp_path, kind):
    settings = tag_only_cases()[kind]
    drop_counts, dropping = run_filter(tmp_path, kind, settings, tag_only=False)
    tag_counts, tagged = run_filter(tmp_path, kind, settings, tag_only=True)
    dropped = [r for r in dropping if not r["keep"]]
    assert dropped, f"{kind}: the case must drop something to compare"
    assert all(r["keep"] for r in tagged)
    assert [r["key"] for r in tagged] == [r["key"] for r in dropping]
    for d, t in zip(dropping, tagged):
        assert (t["score"], t["detail"]) == (d["score"], d["detail"]), d["key"]
        assert t["reason"] == (d["reason"] if d["keep"] else f"would_drop:{d['reason']}"), d["key"]
    # the funnel counts would-be drops apart, and every sample as kept
    assert tag_counts["kept"] == len(tagged)
    would = {k.removeprefix("would_drop."): v for k, v in tag_counts.items() if k.startswith("would_drop.")}
    assert would == {k.removeprefix("dropped."): v for k, v in drop_counts.items() if k.startswith("dropped.")}
    assert not any(k.startswith("dropped.") for k in tag_counts)


def test_every_filter_takes_tag_only_even_when_its_config_does_not_declare_it():
    from dataclasses import dataclass

    from vlcurate.filters.base import KEEP, FilterStage
    from vlcurate.typed import from_dict

    @dataclass(frozen=True)
    class PlainConfig:
        needed: int  # no default: tag_only must not break the field order
        min_words: int = 3

    class Plain(FilterStage):
        name = "plain"
        Config = PlainConfig

        def decide(self, row):
            return KEEP

    config = from_dict(Plain.Config, {"needed": 1, "tag_only": True}, "stages[1].plain")
    assert config.tag_only is True and config.needed == 1 and Plain.Config.__name__ == "PlainConfig"
    assert from_dict(Plain.Config, {"needed": 1}).tag_only is False


def test_the_summary_lists_would_be_drops_apart_from_drops():
    from vlcurate.report import funnel, summary_table

    manifest = {"name": "n", "version": "v1", "stages": [
        {"name": "download", "rows": 10, "counts": {"ok": 9, "failed.http_error": 1}},
        {"name": "caption_filter", "rows": 9, "counts": {"kept": 7, "dropped.no_caption": 2}},
        {"name": "clip_score", "rows": 7, "counts": {"kept": 7, "would_drop.low_clip_score": 3}}]}
    rows = funnel(manifest)
    assert ("clip_score", "would_drop.low_clip_score", 3) in rows and ("clip_score", "kept", 7) in rows
    assert summary_table(manifest).splitlines()[-1].split() == ["=>", "kept", "7"]


def test_a_tag_only_build_drops_nothing_and_validates(tmp_path, demo_urls, demo_version):
    """The demo corpus with its caption filter in tag-only mode: every downloaded sample
    survives to the end, and the would-be drops are the demo build's drops."""
    import json
    from pathlib import Path

    from tests.conftest import make_recipe
    from vlcurate.pipelines.build import build
    from vlcurate.recipe import load_recipe
    from vlcurate.validate import validate_version

    stages = [{"download": {"image_size": 64, "allow_networks": ["127.0.0.0/8"]}},
              {"caption_filter": {"min_chars": 5, "tag_only": True}}]
    result = build(load_recipe(make_recipe(tmp_path, demo_urls, stages=stages)), log=lambda s: None)
    assert validate_version(result.version_dir) == []
    download, caption = result.manifest["stages"]
    assert caption["counts"]["kept"] == download["counts"]["ok"]
    demo = {s["name"]: s for s in json.loads((Path(demo_version) / "manifest.json").read_text())["stages"]}
    dropped = {k.removeprefix("dropped."): v for k, v in demo["caption_filter"]["counts"].items() if k.startswith("dropped.")}
    assert dropped and {k.removeprefix("would_drop."): v for k, v in caption["counts"].items()
                        if k.startswith("would_drop.")} == dropped
    rows = [r for p in sorted((Path(result.version_dir) / "caption_filter").glob("*.parquet"))
            for r in pq.read_table(p).to_pylist()]
    demo_rows = {r["key"]: r for p in sorted((Path(demo_version) / "caption_filter").glob("*.parquet"))
                 for r in pq.read_table(p).to_pylist()}
    assert all(r["keep"] for r in rows) and len(rows) == len(demo_rows)
    for r in rows:
        d = demo_rows[r["key"]]
        assert r["reason"] == (None if d["keep"] else f"would_drop:{d['reason']}"), r["key"]
