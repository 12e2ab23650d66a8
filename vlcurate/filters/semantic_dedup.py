"""Near-duplicates by image embedding (SemDeDup, Abbas et al. 2023): samples whose
stored CLIP image embeddings have a cosine of at least ``threshold`` are copies, and
each is dropped when a smaller key is such a copy (``detail``: the smallest one).

Comparing all pairs is out of the question, so the corpus is partitioned first, in
two keyed stages:

1. ``embedding_clusters`` trains spherical k-means centroids on a sample of the
   embeddings and writes every sample's nearest centroid. Its keyed group
   ``"sample"`` receives, from every shard, its share of a ``sample`` of bounded size
   (``sample`` / the build's shard count, rounded up): the embeddings whose keys hash
   lowest (chosen by content, the same on every run). It trains the centroids in
   float64 numpy from a seeded start, writes them once to the stage's work directory
   and tells every shard where they are. The group's size
   is the sample's, whatever the corpus's.
2. ``semantic_dedup`` groups the samples by cluster and searches each cluster on its
   own with a FAISS inner-product range search; candidates are re-checked in float64,
   so the decision does not depend on FAISS's summation order. A pair split across two
   clusters is not found: that is SemDeDup's trade of recall for speed.

Embeddings are read from an earlier ``vit_features`` or ``clip_score`` stage
(``embeddings_from``; ``clip_score`` stores the embeddings it computed), so no image is
encoded again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlcurate.filters.base import KEEP, Decision, FilterConfig, FilterStage
from vlcurate.filters.clip_score import embedding_file
from vlcurate.io import storage
from vlcurate.io.parquet import read_parquet, write_parquet
from vlcurate.io.stats import ShardStats
from vlcurate.pipelines.keyed import KeyedStage, keyed_dir, shard_of
from vlcurate.pipelines.samples import SampleRow, alive_samples
from vlcurate.pipelines.stage import register_stage
from vlcurate.schemas import get_schema
from vlcurate.schemas.features import stacked_features
from vlcurate.typed import bounded, check_bounds

CLUSTER = "embedding_cluster"
TRAIN = "sample"  # the single group key of the centroid training


def shard_embeddings(layout, stage: str, shard: int, keys: Iterable[str]) -> tuple[list[str], np.ndarray]:
    """Keys (sorted) among ``keys`` with an ok embedding in ``stage``'s sidecar, and
    their unit-normalised float32 embeddings."""
    table = read_parquet(embedding_file(layout, stage, shard), columns=["key", "status", "embedding"])
    table = table.filter(pc.equal(table.column("status"), "ok"))
    wanted = set(keys)
    found = {k: e for k, e in zip(table.column("key").to_pylist(), stacked_features(table, "embedding"))
             if k in wanted}
    ordered = sorted(found)
    if not ordered:
        return [], np.zeros((0, 0), np.float32)
    emb = np.stack([found[k] for k in ordered]).astype(np.float32)
    return ordered, emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def check_earlier(setting: str, value: str, earlier: list[tuple[str, str]], record_kind: str) -> None:
    """ValueError unless ``value`` names an earlier stage writing ``record_kind`` (a
    ``clip_score`` stage counts as a ``vit_features`` one: it stores its embeddings)."""
    from vlcurate.pipelines.stage import stage_class

    fitting = [name for name, kind in earlier if stage_class(kind).record_kind == record_kind
               or (record_kind == "vit_features" and kind == "clip_score")]
    if value not in fitting:
        raise ValueError(f"{setting}: {value!r} is not a {record_kind} stage before this one "
                         f"(earlier: {', '.join(fitting) or 'none'})")


def spherical_kmeans(x: np.ndarray, k: int, iterations: int, seed: int) -> np.ndarray:
    """Unit centroids of ``x`` (rows in a content-given order): a seeded pick of rows,
    then Lloyd iterations on cosine, in float64 (deterministic on every machine)."""
    x = x.astype(np.float64)
    centroids = x[np.random.default_rng(seed).choice(len(x), size=k, replace=False)]
    for _ in range(iterations):
        nearest = np.argmax(x @ centroids.T, axis=1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, nearest, x)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = np.where(norms > 0, sums / np.maximum(norms, 1e-12), centroids)  # an empty cluster stays
    return centroids


@dataclass(frozen=True)
class EmbeddingClustersConfig:
    embeddings_from: str = "vit_features"  # an earlier stage that wrote embeddings
    clusters: int = bounded(100, ge=1)
    sample: int = bounded(25_600, ge=1)  # embeddings the training takes in all, an even share from each shard
    iterations: int = bounded(20, ge=1)
    seed: int = 0

    def __post_init__(self) -> None:
        check_bounds(self)

    def check_earlier_stages(self, earlier: list[tuple[str, str]]) -> None:
        check_earlier("embeddings_from", self.embeddings_from, earlier, "vit_features")


@register_stage
class EmbeddingClusters(KeyedStage):
    """Every sample's nearest k-means centroid of the stored image embeddings."""

    name = "embedding_clusters"
    Config = EmbeddingClustersConfig
    record_kind = CLUSTER

    def _embeddings(self, shard: int) -> tuple[list[str], np.ndarray]:
        keys = alive_samples(self.layout, shard, ["key"], before=self.name).column("key").to_pylist()
        return shard_embeddings(self.layout, self.config.embeddings_from, shard, keys)

    def signatures(self, shard: int) -> Iterator[tuple[str, tuple[int, list[str], bytes, int]]]:
        keys, emb = self._embeddings(shard)
        rank = sorted(range(len(keys)), key=lambda i: hashlib.sha256(keys[i].encode()).digest())
        share = -(-self.config.sample // self.layout.num_shards) if self.layout.num_shards else self.config.sample
        chosen = sorted(rank[:share])
        picked = emb[chosen] if chosen else np.zeros((0, 0), np.float32)
        # sent even when empty: the group must hear from every shard to answer it
        yield TRAIN, (shard, [keys[i] for i in chosen], picked.astype("<f4").tobytes(), picked.shape[-1])

    def resolve(self, group: str, parts: Iterable[tuple[int, list[str], bytes, int]]) -> Iterator[tuple[int, str]]:
        shards, rows = [], []
        for shard, keys, data, dim in parts:
            shards.append(shard)
            if keys:
                rows += zip(keys, np.frombuffer(data, "<f4").reshape(len(keys), dim))
        rows.sort(key=lambda r: r[0])
        if rows:
            x = np.stack([e for _, e in rows])
            centroids = spherical_kmeans(x, min(self.config.clusters, len(x)), self.config.iterations, self.config.seed)
        else:
            centroids = np.zeros((0, 0))
        # written once; every shard is told where (a copy per shard would be shards x centroids)
        location = storage.join(keyed_dir(self.layout, self.name), "centroids.bin")
        storage.write_bytes(location, np.ascontiguousarray(centroids, "<f8").tobytes()
                            + np.int64(centroids.shape[-1]).tobytes())
        for shard in sorted(set(shards)):
            yield shard, location

    def run_shard(self, shard: int, findings: list | None = None) -> ShardStats:
        keys = alive_samples(self.layout, shard, ["key"], before=self.name).column("key").to_pylist()
        stats = self.new_stats(shard, len(keys))
        with_emb, emb = shard_embeddings(self.layout, self.config.embeddings_from, shard, keys)
        cluster: dict[str, tuple[int, float]] = {}
        if findings and with_emb:
            payload = storage.read_bytes(findings[0])
            dim = int(np.frombuffer(payload[-8:], np.int64)[0])
            centroids = np.frombuffer(payload[:-8], "<f8").reshape(-1, dim) if dim else np.zeros((0, 0))
            if len(centroids):
                sims = emb.astype(np.float64) @ centroids.T
                nearest = np.argmax(sims, axis=1)
                cluster = {k: (int(c), float(sims[i, c])) for i, (k, c) in enumerate(zip(with_emb, nearest))}
        stats.add("clustered", len(cluster))
        if len(keys) > len(cluster):
            stats.add("no_embedding", len(keys) - len(cluster))
        table = pa.table({"key": keys, "cluster": [cluster.get(k, (None, None))[0] for k in keys],
                          "similarity": [cluster.get(k, (None, None))[1] for k in keys]},
                         schema=get_schema(CLUSTER).schema)
        stats.add_file(write_parquet(table, self.layout.sidecar(self.name, shard), CLUSTER))
        return stats


@dataclass(frozen=True)
class SemanticDedupConfig(FilterConfig):
    threshold: float = bounded(0.95, ge=-1.0, le=1.0)  # cosine at or above which two images are copies
    embeddings_from: str = "vit_features"
    clusters_from: str = "embedding_clusters"

    def __post_init__(self) -> None:
        check_bounds(self)

    def check_earlier_stages(self, earlier: list[tuple[str, str]]) -> None:
        check_earlier("embeddings_from", self.embeddings_from, earlier, "vit_features")
        check_earlier("clusters_from", self.clusters_from, earlier, CLUSTER)


def smallest_similar(keys: list[str], emb: np.ndarray, threshold: float) -> Iterator[tuple[str, str]]:
    """``(key, smallest smaller key with cosine >= threshold)`` in one cluster; ``keys``
    sorted, ``emb`` unit rows. FAISS finds candidates a little below the threshold;
    float64 decides."""
    import faiss

    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(np.ascontiguousarray(emb, np.float32))
    lims, _, ids = index.range_search(np.ascontiguousarray(emb, np.float32), threshold - 1e-4)
    exact = emb.astype(np.float64)
    for j in range(len(keys)):
        candidates = sorted(int(i) for i in ids[lims[j]:lims[j + 1]] if i < j)
        for i in candidates:
            if float(exact[i] @ exact[j]) >= threshold:
                yield keys[j], keys[i]
                break


@register_stage
class SemanticDedup(FilterStage, KeyedStage):
    """Drops samples whose image embedding is a near-copy of a smaller key's, within clusters."""

    name = "semantic_dedup"
    Config = SemanticDedupConfig

    def signatures(self, shard: int) -> Iterator[tuple[str, tuple[str, bytes]]]:
        keys = alive_samples(self.layout, shard, ["key"], before=self.name).column("key").to_pylist()
        with_emb, emb = shard_embeddings(self.layout, self.config.embeddings_from, shard, keys)
        clusters = read_parquet(self.layout.sidecar(self.config.clusters_from, shard), columns=["key", "cluster"])
        cluster_of = dict(zip(clusters.column("key").to_pylist(), clusters.column("cluster").to_pylist()))
        for key, vector in zip(with_emb, emb):
            if cluster_of.get(key) is not None:
                yield str(cluster_of[key]), (key, vector.astype("<f4").tobytes())

    def resolve(self, group: str, members: Iterable[tuple[str, bytes]]) -> Iterator[tuple[int, tuple[str, str]]]:
        ordered = sorted(members)
        if len(ordered) < 2:
            return
        emb = np.stack([np.frombuffer(v, "<f4") for _, v in ordered])
        for key, first in smallest_similar([k for k, _ in ordered], emb, self.config.threshold):
            yield shard_of(key), (key, first)

    def decide_shard(self, shard: int, rows: list[SampleRow]) -> list[Decision]:
        nearest: dict[str, str] = {}
        for key, first in self.findings():
            if key not in nearest or first < nearest[key]:
                nearest[key] = first
        return [KEEP if row["key"] not in nearest else Decision(False, "semantic_duplicate", detail=nearest[row["key"]])
                for row in rows]
