"""SemDeDup: k-means partitions of stored embeddings, then within each partition every
sample points at the smallest smaller key with cosine >= threshold (as brute force
within the partition finds), whatever order the group's values arrive in."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlcurate.filters.semantic_dedup import (EmbeddingClusters, EmbeddingClustersConfig, SemanticDedup,
                                             SemanticDedupConfig)
from vlcurate.io.parquet import write_parquet
from vlcurate.pipelines.keyed import findings_by_shard
from vlcurate.pipelines.stage import Layout
from vlcurate.schemas import get_schema
from vlcurate.schemas.features import TENSOR_TYPE, feature_metadata

DIM = 32
STAGES = ["download", "vit_features", "embedding_clusters", "semantic_dedup"]


def write_shard(layout: Layout, shard: int, vectors: list[np.ndarray | None]) -> list[str]:
    keys = [f"{shard:05d}_{i:06d}" for i in range(len(vectors))]
    rows = [{"key": k, "url": f"http://h/{k}", "caption": "c", "status": "ok", "error_kind": None,
             "error_message": None, "http_status": 200, "width": 8, "height": 8, "original_width": 8,
             "original_height": 8, "sha256": k, "phash": None} for k in keys]
    write_parquet(pa.Table.from_pylist(rows, schema=get_schema("sample").schema), layout.samples_parquet(shard), "sample")
    ok = [v is not None for v in vectors]
    table = pa.table({
        "key": keys, "status": ["ok" if o else "failed" for o in ok],
        "error_kind": [None if o else "decode_error" for o in ok], "error_message": [None if o else "bad" for o in ok],
        "embedding": pa.array([v.astype("<f2").tobytes() if v is not None else None for v in vectors], TENSOR_TYPE)})
    write_parquet(table, layout.sidecar("vit_features", shard), "vit_features",
                  metadata=feature_metadata({"embedding": ([DIM], "float16")}))
    return keys


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def planted(seed: int = 0) -> list[list[np.ndarray | None]]:
    """Three shards: 8 topic directions, 40 originals around them, copies of originals
    (cosine ~0.99) in any shard, unrelated samples of the same topics, failures."""
    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    topics = [unit(rng.normal(size=DIM)) for _ in range(8)]
    originals = [unit(topics[i % 8] + 0.5 * unit(rng.normal(size=DIM))) for i in range(40)]
    shards = []
    for _ in range(3):
        part: list[np.ndarray | None] = []
        for _ in range(60):
            r = pick.random()
            if r < 0.4:
                part.append(unit(pick.choice(originals) + 0.08 * unit(rng.normal(size=DIM))))
            elif r < 0.95:
                part.append(unit(topics[pick.randrange(8)] + 0.5 * unit(rng.normal(size=DIM))))
            else:
                part.append(None)
        shards.append(part)
    return shards


def brute_force(layout: Layout, shards: list[int], threshold: float, within_clusters: bool) -> dict[str, str]:
    cluster, emb = {}, {}
    for s in shards:
        for r in pq.read_table(layout.sidecar("embedding_clusters", s)).to_pylist():
            cluster[r["key"]] = r["cluster"]
        t = pq.read_table(layout.sidecar("vit_features", s)).to_pylist()
        for r in t:
            if r["status"] == "ok":
                v = np.frombuffer(r["embedding"], "<f2").astype(np.float64)
                emb[r["key"]] = v / np.linalg.norm(v)
    keys = sorted(k for k in emb if cluster.get(k) is not None)
    out = {}
    for j, kj in enumerate(keys):
        for ki in keys[:j]:
            if (cluster[ki] == cluster[kj] or not within_clusters) and float(emb[ki] @ emb[kj]) >= threshold:
                out[kj] = ki
                break
    return out


def test_semantic_dedup_within_clusters_equals_brute_force(tmp_path):
    shards = [0, 1, 2]
    layout = Layout.for_stages(tmp_path, STAGES, num_shards=len(shards))
    for shard, vectors in enumerate(planted()):
        write_shard(layout, shard, vectors)
    clusters = EmbeddingClusters(EmbeddingClustersConfig(clusters=8, sample=120), layout)
    # the training sample is bounded in all: an even share of it from each shard
    assert [len(v[1]) for s in shards for _, v in clusters.signatures(s)] == [40, 40, 40]
    found = findings_by_shard(clusters, shards)
    stats = [clusters.run_shard(s, found[s]) for s in shards]
    assert sum(s.counts["clustered"] for s in stats) + sum(s.counts.get("no_embedding", 0) for s in stats) == 180
    used = {r["cluster"] for s in shards for r in pq.read_table(layout.sidecar("embedding_clusters", s)).to_pylist()}
    assert len(used - {None}) >= 4  # a real partition, not one group

    dedup = SemanticDedup(SemanticDedupConfig(threshold=0.95), layout)
    found = findings_by_shard(dedup, shards)
    decided = {}
    for s in shards:
        dedup.run_shard(s, found[s])
        for r in pq.read_table(layout.sidecar("semantic_dedup", s)).to_pylist():
            if not r["keep"]:
                assert r["reason"] == "semantic_duplicate"
                decided[r["key"]] = r["detail"]
    assert decided == brute_force(layout, shards, 0.95, within_clusters=True)
    assert any(k[:5] != v[:5] for k, v in decided.items())  # representatives in other shards
    everywhere = brute_force(layout, shards, 0.95, within_clusters=False)
    assert len(everywhere) >= 30 and len(decided.keys() & everywhere.keys()) >= 0.9 * len(everywhere)


def test_resolve_does_not_depend_on_arrival_order(tmp_path):
    layout = Layout.for_stages(tmp_path, STAGES)
    rng = np.random.default_rng(1)
    base = [unit(rng.normal(size=DIM)) for _ in range(5)]
    members = [(f"00000_{i:06d}", unit(base[i % 5] + 0.05 * rng.normal(size=DIM)).astype("<f4").tobytes())
               for i in range(30)]
    stage = SemanticDedup(SemanticDedupConfig(threshold=0.9), layout)
    first = list(stage.resolve("0", members))
    random.Random(2).shuffle(members)
    assert list(stage.resolve("0", members)) == first and len(first) == 25


def test_settings_that_name_stages_are_checked_when_the_recipe_is_read(tmp_path, demo_urls):
    from tests.conftest import make_recipe
    from vlcurate.recipe import load_recipe
    from vlcurate.typed import ConfigError

    recipe = make_recipe(tmp_path, demo_urls, stages=[{"download": {}}, {"embedding_clusters": {}}])
    with pytest.raises(ConfigError, match=r"stages\[1\]\.embedding_clusters\.embeddings_from: 'vit_features' is "
                                          r"not a vit_features stage before this one \(earlier: none\)"):
        load_recipe(recipe)


@pytest.mark.slow
def test_a_build_clusters_and_drops_the_demo_copies_and_validates(tmp_path, demo_urls):
    from pathlib import Path

    from tests.conftest import make_recipe
    from vlcurate.pipelines.build import build
    from vlcurate.recipe import load_recipe
    from vlcurate.validate import validate_version

    stages = [{"download": {"image_size": 64, "allow_networks": ["127.0.0.0/8"]}},
              {"vit_features": {"model": "vlc-tiny-vit", "device": "cpu", "batch_size": 32}},
              {"embedding_clusters": {"clusters": 4, "sample": 100}},
              {"semantic_dedup": {"threshold": 0.999}}]
    recipe = make_recipe(tmp_path, demo_urls, samples_per_shard=60, stages=stages, runner={"name": "local", "workers": 2})
    result = build(load_recipe(recipe), log=lambda s: None)
    version = Path(result.version_dir)
    assert validate_version(version) == []
    samples = [r for p in sorted((version / "samples").glob("*.parquet")) for r in pq.read_table(p).to_pylist()
               if r["status"] == "ok"]
    first_of = {}
    copies = {}
    for r in sorted(samples, key=lambda r: r["key"]):
        if r["sha256"] in first_of:
            copies[r["key"]] = first_of[r["sha256"]]
        else:
            first_of[r["sha256"]] = r["key"]
    decided = {r["key"]: r["detail"] for p in sorted((version / "semantic_dedup").glob("*.parquet"))
               for r in pq.read_table(p).to_pylist() if not r["keep"]}
    # identical images (cosine 1, same cluster) are dropped, pointing at their original or a smaller key
    assert len(copies) == 14 and all(k in decided and decided[k] <= original for k, original in copies.items())
