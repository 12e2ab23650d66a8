"""DataComp's top fraction: floor(fraction * n) kept plus the documented ties (scores in
the cut's bucket), the same samples for every shard size, worker count and runner."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_recipe
from vlcurate.filters.top_fraction import TopFraction, TopFractionConfig, bucket_of
from vlcurate.io.parquet import write_parquet
from vlcurate.pipelines.build import build
from vlcurate.pipelines.keyed import findings_by_shard
from vlcurate.pipelines.samples import DECISION
from vlcurate.pipelines.stage import Layout
from vlcurate.recipe import load_recipe
from vlcurate.schemas import get_schema
from vlcurate.typed import ConfigError, from_dict


def corpus(n: int = 1000, seed: int = 0) -> list[tuple[str, float | None, bool]]:
    """(url, clip score or None, dropped by the scoring stage): random cosines with
    exact repeats, near-ties closer than a bucket, unscored and dropped samples."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        score = round(rng.uniform(-0.1, 0.45), 6)
        if i % 7 == 0:
            score = 0.3125  # many exact ties, near a 30% cut
        elif i % 11 == 0:
            score = 0.3125 + rng.uniform(0, 5e-7)  # same bucket as 0.3125
        out.append((f"http://h/{i}", None if i % 53 == 0 else score, i % 31 == 0))
    return out


def run_sharded(tmp_path: Path, samples, shard_size: int, fraction: float) -> dict[str, dict]:
    layout = Layout.for_stages(tmp_path, ["download", "clip_score", "top_fraction"])
    shards = []
    for shard, start in enumerate(range(0, len(samples), shard_size)):
        part = samples[start:start + shard_size]
        keys = [f"{shard:05d}_{i:06d}" for i in range(len(part))]
        rows = [{"key": k, "url": url, "caption": "c", "status": "ok", "error_kind": None, "error_message": None,
                 "http_status": 200, "width": 8, "height": 8, "original_width": 8, "original_height": 8,
                 "sha256": url, "phash": None} for k, (url, _, _) in zip(keys, part)]
        write_parquet(pa.Table.from_pylist(rows, schema=get_schema("sample").schema), layout.samples_parquet(shard), "sample")
        decisions = [{"key": k, "stage": "clip_score", "keep": not dropped, "reason": "low_clip_score" if dropped else None,
                      "score": score, "detail": None} for k, (_, score, dropped) in zip(keys, part)]
        write_parquet(pa.Table.from_pylist(decisions, schema=get_schema(DECISION).schema),
                      layout.sidecar("clip_score", shard), DECISION)
        shards.append(shard)
    stage = TopFraction(TopFractionConfig(fraction=fraction), layout)
    found = findings_by_shard(stage, shards)
    urls = {}
    for shard in shards:
        stage.run_shard(shard, found[shard])
        sample_urls = dict(zip(*pq.read_table(layout.samples_parquet(shard), columns=["key", "url"]).to_pydict().values()))
        for r in pq.read_table(layout.sidecar("top_fraction", shard)).to_pylist():
            urls[sample_urls[r["key"]]] = r
    return urls


def expected_kept(samples, fraction: float) -> tuple[set[str], int, int]:
    """Computed here by sorting all scores: (kept urls, k, ties beyond k)."""
    scored = sorted(((s, url) for url, s, dropped in samples if s is not None and not dropped), reverse=True)
    k = math.floor(fraction * len(scored))
    if k == 0:
        return set(), 0, 0
    cut = bucket_of(np.array([scored[k - 1][0]]))[0]
    kept = {url for s, url in scored if bucket_of(np.array([s]))[0] >= cut}
    return kept, k, len(kept) - k


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.001, 1.0])
def test_keeps_floor_fraction_n_plus_ties_for_any_shard_size(tmp_path, fraction):
    samples = corpus()
    kept, k, ties = expected_kept(samples, fraction)
    results = {size: run_sharded(tmp_path / f"s{size}", samples, size, fraction) for size in (1000, 100, 37)}
    for size, rows in results.items():
        assert {u for u, r in rows.items() if r["keep"]} == kept, size
        assert {u for u, r in rows.items() if r["reason"] == "unscored"} == {
            u for u, s, d in samples if s is None and not d}
        assert len(rows) == sum(not d for _, _, d in samples)  # a row for every sample that reached it
    print(f"\nfraction {fraction}: n={sum(s is not None and not d for _, s, d in corpus())}, "
          f"floor(fraction*n)={k}, kept {len(kept)} = {k} + {ties} ties")
    if fraction == 0.3:
        assert ties > 0  # the planted ties straddle the 30% cut
    assert len(kept) == k + ties


def test_a_fraction_of_nothing_keeps_nothing(tmp_path):
    samples = [(f"http://h/{i}", 0.2 + i / 100, False) for i in range(3)]
    rows = run_sharded(tmp_path, samples, 2, 0.3)  # floor(0.9) = 0
    assert not any(r["keep"] for r in rows.values())
    assert {r["reason"] for r in rows.values()} == {"below_top_fraction"}


def test_settings_are_checked():
    with pytest.raises(ConfigError, match=r"top_fraction\.fraction: must be > 0 and <= 1, got 0\.0"):
        from_dict(TopFractionConfig, {"fraction": 0.0}, "stages[2].top_fraction")


def test_scores_from_must_name_an_earlier_filter(tmp_path, demo_urls):
    recipe = make_recipe(tmp_path, demo_urls, stages=[{"download": {}}, {"caption_filter": {}},
                                                      {"top_fraction": {"scores_from": "clip_score"}}])
    with pytest.raises(ConfigError, match=r"stages\[2\]\.top_fraction\.scores_from: 'clip_score' is not a filter "
                                          r"before this stage \(earlier filters: caption_filter\)"):
        load_recipe(recipe)


STAGES = [{"download": {"image_size": 64, "allow_networks": ["127.0.0.0/8"]}},
          {"clip_score": {"model": "vlc-tiny-vit", "device": "cpu", "tag_only": True, "min_score": 1.0}},
          {"top_fraction": {"fraction": 0.3}}]


def kept_urls(version: Path) -> set[str]:
    urls = {}
    for p in sorted((version / "samples").glob("*.parquet")):
        urls.update(dict(zip(*pq.read_table(p, columns=["key", "url"]).to_pydict().values())))
    return {urls[r["key"]] for p in sorted((version / "top_fraction").glob("*.parquet"))
            for r in pq.read_table(p).to_pylist() if r["keep"]}


@pytest.mark.slow
def test_same_samples_kept_for_other_shard_sizes_and_worker_counts(tmp_path, demo_urls):
    results = {}
    for workers, per_shard in ((1, 60), (2, 17)):
        recipe = make_recipe(tmp_path, demo_urls, root=f"w{workers}", samples_per_shard=per_shard, stages=STAGES,
                             runner={"name": "local", "workers": workers})
        results[(workers, per_shard)] = build(load_recipe(recipe), log=lambda s: None)
    first, second = results.values()
    reached = first.manifest["stages"][1]["counts"]["kept"]  # tag-only scoring drops nothing
    counts = first.manifest["stages"][2]["counts"]
    scored = counts["kept"] + counts["dropped.below_top_fraction"]
    assert scored + counts.get("dropped.unscored", 0) == reached and scored > 150
    assert math.floor(0.3 * scored) <= counts["kept"] <= math.floor(0.3 * scored) + 2
    assert kept_urls(Path(first.version_dir)) == kept_urls(Path(second.version_dir))
    assert second.manifest["stages"][2]["counts"] == counts


def test_histograms_are_added_up_as_they_arrive(tmp_path, monkeypatch):
    """With more shards than a group holds before it is combined (100 shards of 10), the
    histograms are folded as they pile up, so the group holds distinct buckets, not
    every shard's histogram; the same samples are kept."""
    from vlcurate.pipelines.keyed import COMBINE_AT

    calls = []
    real = TopFraction.combine

    def counting(self, group, values):
        calls.append(len(values))
        return real(self, group, values)

    monkeypatch.setattr(TopFraction, "combine", counting)
    samples = corpus()
    kept, _, _ = expected_kept(samples, 0.3)
    rows = run_sharded(tmp_path, samples, 10, 0.3)
    assert {u for u, r in rows.items() if r["keep"]} == kept
    assert calls == [COMBINE_AT]  # 64 histograms folded into 1; the other 36 join it in resolve
