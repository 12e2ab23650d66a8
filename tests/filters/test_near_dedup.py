"""Near-duplicates by pHash: the measurement behind the default distance (transformed
copies against hard negatives from the demo generator), the multi-index hashing
against brute force, and one representative per near-copy group on every runner."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageEnhance

from tests.conftest import local_dask_cluster, make_recipe
from vlcurate.demo.corpus import draw_scene
from vlcurate.download.images import phash
from vlcurate.filters.near_dedup import NearDedup, NearDedupConfig, band_masks
from vlcurate.io.parquet import write_parquet
from vlcurate.pipelines.build import build
from vlcurate.pipelines.keyed import findings_by_shard
from vlcurate.pipelines.stage import Layout
from vlcurate.recipe import load_recipe
from vlcurate.schemas import get_schema
from vlcurate.typed import ConfigError, from_dict

N = 500


def transformed(img: Image.Image, rng: random.Random) -> Image.Image:
    """A near-copy as the web makes them: resized 0.4-1.6x, cropped by up to 10% of its
    area (at a random place), brightness and contrast shifted by up to 20%, re-encoded
    as JPEG or WebP at quality 35-95."""
    w, h = img.size
    f = rng.uniform(0.4, 1.6)
    img = img.resize((max(8, round(w * f)), max(8, round(h * f))), Image.Resampling.BILINEAR)
    w, h = img.size
    area = 1 - rng.uniform(0, 0.10)
    fw = rng.uniform(area, 1)
    cw, ch = round(w * fw), round(h * area / fw)
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = img.crop((left, top, left + cw, top + ch))
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.8, 1.2))
    buf = io.BytesIO()
    img.save(buf, rng.choice(["JPEG", "WEBP"]), quality=rng.randint(35, 95))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def write_hashes(layout: Layout, shard: int, hashes: list[str | None]) -> list[str]:
    keys = [f"{shard:05d}_{i:06d}" for i in range(len(hashes))]
    rows = [{"key": k, "url": f"http://h/{k}", "caption": "c", "status": "ok", "error_kind": None,
             "error_message": None, "http_status": 200, "width": 8, "height": 8, "original_width": 8,
             "original_height": 8, "sha256": k, "phash": h} for k, h in zip(keys, hashes)]
    write_parquet(pa.Table.from_pylist(rows, schema=get_schema("sample").schema), layout.samples_parquet(shard), "sample")
    return keys


def run_near_dedup(layout: Layout, shards: list[int], **cfg) -> dict[str, str]:
    stage = NearDedup(NearDedupConfig(**cfg), layout)
    found = findings_by_shard(stage, shards)
    dropped = {}
    for shard in shards:
        stage.run_shard(shard, found[shard])
        for r in pq.read_table(layout.sidecar("near_dedup", shard)).to_pylist():
            if not r["keep"]:
                assert r["reason"] == "near_duplicate"
                dropped[r["key"]] = r["detail"]
    return dropped


def brute_force(keys: list[str], hashes: list[int], distance: int) -> dict[str, str]:
    """Every key -> the smallest smaller key within ``distance``, by comparing all pairs."""
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    out = {}
    for pos, i in enumerate(order):
        for j in order[:pos]:
            if (hashes[i] ^ hashes[j]).bit_count() <= distance:
                out[keys[i]] = keys[j]
                break
    return out


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(a[:, None] ^ b[None, :])


def test_default_distance_separates_transformed_copies_from_hard_negatives(tmp_path):
    rng = random.Random(7)
    originals = [draw_scene(rng) for _ in range(N)]
    copies = [transformed(img, rng) for img in originals]
    negatives = [draw_scene(rng) for _ in range(N)]  # same palette, shapes and layout style
    h_orig, h_copy, h_neg = ([phash(i) for i in imgs] for imgs in (originals, copies, negatives))

    # the measurement: copy -> its original, and hard negative -> nearest original
    as_int = lambda hs: np.array([int(h, 16) for h in hs], dtype=np.uint64)  # noqa: E731
    to_original = np.bitwise_count(as_int(h_copy) ^ as_int(h_orig))
    nearest_negative = distances(as_int(h_neg), as_int(h_orig + h_copy)).min(axis=1)
    print(f"\npHash distance, {N} transformed copies to their originals: "
          f"percentiles 50/90/95/99/max = {np.percentile(to_original, [50, 90, 95, 99, 100]).tolist()}")
    print(f"pHash distance, {N} hard negatives to the nearest of the {2 * N} others: "
          f"min/1/5/50 percentile = {np.percentile(nearest_negative, [0, 1, 5, 50]).tolist()}")

    # the hash path itself: originals in shard 0, copies and negatives interleaved in shard 1
    layout = Layout.for_stages(tmp_path, ["download", "near_dedup"])
    write_hashes(layout, 0, h_orig)
    mixed = [h for pair in zip(h_copy, h_neg) for h in pair]
    mixed_keys = write_hashes(layout, 1, mixed)
    copy_keys = mixed_keys[0::2]
    for distance in (10, 12, NearDedupConfig().distance, 16):
        dropped = run_near_dedup(layout, [0, 1], distance=distance)
        # a true find: a copy dropped, with its own original within the distance
        true = sum(key in dropped and d <= distance for key, d in zip(copy_keys, to_original))
        precision, recall = true / max(len(dropped), 1), true / N
        print(f"distance {distance:2d}: dropped {len(dropped):4d}, precision {precision:.3f}, recall {recall:.3f}"
              + ("  <- default" if distance == NearDedupConfig().distance else ""))
        if distance == NearDedupConfig().distance:
            assert precision >= 0.95 and recall >= 0.95, (precision, recall)


def test_multi_index_hashing_finds_exactly_the_brute_force_pairs_across_shards(tmp_path):
    """Planted near-copies (0-8 bits flipped) among random hashes, spread over three
    shards: every sample's finding is the smallest smaller key within the distance,
    even when a pair agrees on several bands (findings combined by min)."""
    rng = random.Random(3)
    base = [rng.getrandbits(64) for _ in range(120)]
    hashes = []
    for i in range(300):
        h = rng.choice(base) if i % 3 else base[i % len(base)]
        for bit in rng.sample(range(64), rng.randint(0, 8)):
            h ^= 1 << bit
        hashes.append(h)
    layout = Layout.for_stages(tmp_path, ["download", "near_dedup"])
    keys = []
    for shard in range(3):
        keys += write_hashes(layout, shard, [f"{h:016x}" for h in hashes[shard * 100:(shard + 1) * 100]])
    for distance, bands in ((6, None), (6, 9), (3, None)):
        found = run_near_dedup(layout, [0, 1, 2], distance=distance, bands=bands)
        assert found == brute_force(keys, hashes, distance), (distance, bands)
        assert any(k[:5] != v[:5] for k, v in found.items())  # representatives in other shards


def test_bands_cover_the_hash_and_fewer_bands_than_distance_plus_one_are_refused():
    for bands in (1, 5, 15, 64):
        masks = band_masks(bands)
        assert sum(bin(m).count("1") for _, m in masks) == 64 and len(masks) == bands
        covered = 0
        for shift, mask in masks:
            assert covered & (mask << shift) == 0
            covered |= mask << shift
        assert covered == (1 << 64) - 1
    with pytest.raises(ConfigError, match=r"near_dedup.bands: must be > distance"):
        from_dict(NearDedupConfig, {"distance": 8, "bands": 8}, "stages[1].near_dedup")


STAGES = [{"download": {"image_size": 64, "allow_networks": ["127.0.0.0/8"]}}, {"near_dedup": {}}]


def near_decisions(version: Path) -> dict[str, str]:
    rows = [r for p in sorted((version / "near_dedup").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    return {r["key"]: r["detail"] for r in rows if not r["keep"]}


@pytest.mark.slow
def test_one_representative_across_shards_on_one_and_two_workers_and_dask(tmp_path, demo_urls):
    pytest.importorskip("distributed")
    results = {}
    for workers in (1, 2):
        recipe = make_recipe(tmp_path, demo_urls, root=f"w{workers}", samples_per_shard=24, stages=STAGES,
                             runner={"name": "local", "workers": workers})
        results[f"local-{workers}"] = Path(build(load_recipe(recipe), log=lambda s: None).version_dir)
    with local_dask_cluster() as (cluster, client):
        recipe = make_recipe(tmp_path, demo_urls, root="dask", samples_per_shard=24, stages=STAGES, runner={
            "name": "DaskRunner", "options": [f"--dask_client_address={cluster.scheduler_address}"]})
        results["dask"] = Path(build(load_recipe(recipe), log=lambda s: None).version_dir)
    first = results["local-1"]
    samples = [r for p in sorted((first / "samples").glob("*.parquet")) for r in pq.read_table(p).to_pylist()
               if r["status"] == "ok"]
    expected = brute_force([r["key"] for r in samples], [int(r["phash"], 16) for r in samples],
                           NearDedupConfig().distance)
    decisions = near_decisions(first)
    assert decisions == expected and len(decisions) >= 14  # at least the demo's exact copies
    assert any(k[:5] != v[:5] for k, v in decisions.items())  # representatives in other shards
    for name, version in results.items():
        assert near_decisions(version) == decisions, name
