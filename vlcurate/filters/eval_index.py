"""Named eval-set indexes: what ``vlcurate evalsets add`` stores and the
``decontaminate`` stage searches.

An eval set lives beside the datasets, in ``ROOT/_evalsets/NAME/`` (not a dataset
version: ``versions list`` does not show it), and is immutable once its manifest
``evalset.json`` is written (last)::

    evalset.json        format, name, source, counts, the CLIP model (or none), the
                        index kinds and search settings, every file with sha256/bytes/rows
    items.parquet       one eval_item row per source image (id, source, status, phash, and
                        a 64-px JPEG thumbnail since format 2: :mod:`vlcurate.evalset_store`)
    hash.faiss          FAISS IndexBinaryFlat over the ok items' 64-bit pHashes
    embeddings.npy      the ok items' unit CLIP image embeddings (float32), when a model was named
    embeddings.faiss    FAISS index over them: IndexFlatIP (exact) up to ``EXACT_MAX``
                        items, IndexIVFFlat above, its ``nprobe`` chosen at build time

Position ``i`` in every index is the ``i``-th ok item. The hash index is exact (64-bit
codes searched by popcount: one query against a million hashes is ~1 ms), so hash
decisions never depend on an approximation. For the embedding index, ``nprobe`` is the
smallest power of two whose recall@1 against exact search reaches ``TARGET_RECALL`` on
held-out perturbed queries (eval vectors plus noise, renormalised); the figure is
stored in the manifest. The similarity of the nearest item found is recomputed in
float64 from the stored vectors, so it does not depend on FAISS's batching.

An index is loaded once per process (:func:`load_evalset`) and shared by every stage
instance and thread there; its files are checked against the manifest's checksums when
loaded.
"""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlcurate.errors import UserError
from vlcurate.evalset_store import (EVALSETS_DIR, FORMAT, ITEMS, MANIFEST, evalset_dir,  # noqa: F401  (re-exported)
                                    evalset_exists, evalsets_root, list_names, read_manifest)
from vlcurate.io import storage
from vlcurate.io.parquet import read_parquet

HASH_INDEX, VECTORS, EMBEDDING_INDEX = "hash.faiss", "embeddings.npy", "embeddings.faiss"
HASH_BITS = 64
EXACT_MAX = 20_000  # eval items up to which the embedding index is exact (IndexFlatIP)
TARGET_RECALL = 0.99  # recall@1 against exact search the approximate index must reach
CALIBRATION_QUERIES = 1000
CALIBRATION_NOISE = 0.35  # noise norm relative to the unit vector: a perturbed copy at cosine ~0.94


def hash_codes(hashes: list[str]) -> np.ndarray:
    """``[n, 8]`` uint8 FAISS binary codes of 16-hex-digit hashes."""
    return np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), np.uint8).reshape(len(hashes), 8)


def serialize(index: Any) -> bytes:
    import faiss

    if isinstance(index, faiss.IndexBinary):
        return faiss.serialize_index_binary(index).tobytes()
    return faiss.serialize_index(index).tobytes()


def build_hash_index(hashes: list[str]) -> Any:
    import faiss

    index = faiss.IndexBinaryFlat(HASH_BITS)
    if hashes:
        index.add(hash_codes(hashes))
    return index


def perturbed_queries(x: np.ndarray, n: int, seed: int, noise: float = CALIBRATION_NOISE) -> np.ndarray:
    """Unit queries near ``n`` rows of ``x`` (a seeded choice): each row plus Gaussian
    noise of norm ``noise``, renormalised; never the rows themselves."""
    rng = np.random.default_rng(seed)
    rows = x[rng.choice(len(x), size=min(n, len(x)), replace=False)].astype(np.float64)
    g = rng.standard_normal(rows.shape)
    g *= noise / np.linalg.norm(g, axis=1, keepdims=True)
    q = rows + g
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class EmbeddingIndexInfo:
    """How an embedding index searches, as its manifest records it."""

    kind: str  # "flat" (exact) or "ivf"
    dim: int
    nlist: int | None = None
    nprobe: int | None = None
    recall_at_1: float | None = None  # measured against exact search on held-out perturbed queries
    calibration_queries: int | None = None


def ivf_lists(n: int) -> int:
    """IVF cell count for ``n`` vectors: ~4 sqrt(n) (FAISS's guideline), at most
    n / 40 (k-means wants ~40 training points per cell), at least 1."""
    return int(max(1, min(65536, round(4 * np.sqrt(n)), n // 40)))


def recall_at_1(index: Any, queries: np.ndarray, truth: np.ndarray) -> float:
    _, found = index.search(queries, 1)
    return float(np.mean(found[:, 0] == truth))


def build_embedding_index(x: np.ndarray, exact_max: int = EXACT_MAX, seed: int = 0,
                          target_recall: float = TARGET_RECALL, nlist: int | None = None) -> tuple[Any, EmbeddingIndexInfo]:
    """An index over unit rows ``x``: exact up to ``exact_max`` rows, else IVF with the
    smallest power-of-two ``nprobe`` reaching ``target_recall`` recall@1 against exact
    search on held-out perturbed queries (all lists if none does)."""
    import faiss

    x = np.ascontiguousarray(x, np.float32)
    n, d = x.shape
    flat = faiss.IndexFlatIP(d)
    flat.add(x)
    if n <= exact_max:
        return flat, EmbeddingIndexInfo("flat", d)
    nlist = nlist or ivf_lists(n)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = seed
    ivf.cp.niter = 10  # enough for coarse cells; the recall is measured below either way
    rng = np.random.default_rng(seed)
    train = x[np.sort(rng.choice(n, size=min(n, 40 * nlist), replace=False))]
    ivf.train(train)
    ivf.add(x)
    queries = perturbed_queries(x, CALIBRATION_QUERIES, seed + 1)
    _, truth = flat.search(queries, 1)
    nprobe, recall = 1, 0.0
    while True:
        ivf.nprobe = nprobe
        recall = recall_at_1(ivf, queries, truth[:, 0])
        if recall >= target_recall or nprobe >= nlist:
            break
        nprobe = min(nprobe * 2, nlist)
    return ivf, EmbeddingIndexInfo("ivf", d, nlist, nprobe, round(recall, 4), len(queries))


@dataclass(frozen=True)
class Match:
    """The nearest eval item to one sample by one path: ``value`` is the pHash
    distance (hash path) or the cosine similarity (embedding path)."""

    eval_id: str
    value: float


def check_model(name: str, manifest: dict, fingerprint: dict | None) -> None:
    """UserError when eval set ``name`` was built with another model than
    ``fingerprint`` (a stage's model), or without embeddings when one is asked for."""
    built = manifest.get("model")
    if fingerprint is None:
        return
    if built is None:
        raise UserError(f"eval set {name}: built without a CLIP model (hash index only), but the stage asks for "
                        f"{fingerprint['model']}; add it again with --model")
    if built != fingerprint:
        diff = sorted(k for k in set(built) | set(fingerprint) if built.get(k) != fingerprint.get(k))
        def says(fp: dict) -> str:
            parts = [f"{k}={fp[k]}" for k in diff if fp.get(k) is not None]
            return f"{fp.get('model')} ({', '.join(parts) or 'random weights'})"

        raise UserError(f"eval set {name}: built with model {says(built)}, but the stage asks for {says(fingerprint)}")


class EvalSetIndex:
    """One loaded eval set: its ok item ids, hash index and (optional) embedding
    index with the stored vectors."""

    def __init__(self, name: str, manifest: dict, ids: list[str], hash_index: Any,
                 embedding_index: Any | None = None, vectors: np.ndarray | None = None):
        self.name, self.manifest, self.ids = name, manifest, ids
        self.hash_index, self.embedding_index, self.vectors = hash_index, embedding_index, vectors

    @classmethod
    def load(cls, root: str, name: str) -> "EvalSetIndex":
        import faiss

        manifest = read_manifest(root, name)
        where = evalset_dir(root, name)
        data = {}
        for entry in manifest["files"]:
            blob = storage.read_bytes(storage.join(where, entry["path"]))
            if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
                raise UserError(f"eval set {where}: {entry['path']} differs from its manifest's sha256 "
                                f"(eval sets are immutable: add it again under a new name)")
            data[entry["path"]] = blob
        items = read_parquet(storage.join(where, ITEMS), columns=["id", "status"])
        ids = [i for i, s in zip(items.column("id").to_pylist(), items.column("status").to_pylist()) if s == "ok"]
        hash_index = faiss.deserialize_index_binary(np.frombuffer(data[HASH_INDEX], np.uint8))
        hash_index.use_heap = False  # k=1: the counting search is ~2x faster (benchmarks/README.md)
        embedding_index = vectors = None
        if EMBEDDING_INDEX in data:
            embedding_index = faiss.deserialize_index(np.frombuffer(data[EMBEDDING_INDEX], np.uint8))
            info = manifest["embedding_index"]
            if info.get("nprobe"):
                embedding_index.nprobe = int(info["nprobe"])
            vectors = np.load(io.BytesIO(data[VECTORS]), allow_pickle=False)
        return cls(name, manifest, ids, hash_index, embedding_index, vectors)

    def nearest_hash(self, hashes: list[str | None]) -> list[Match | None]:
        """The nearest item by pHash distance for each hash (None for a missing hash or
        an empty index)."""
        present = [i for i, h in enumerate(hashes) if h is not None]
        out: list[Match | None] = [None] * len(hashes)
        if not present or self.hash_index.ntotal == 0:
            return out
        dist, found = self.hash_index.search(hash_codes([hashes[i] for i in present]), 1)
        for i, d, j in zip(present, dist[:, 0], found[:, 0]):
            if j >= 0:
                out[i] = Match(self.ids[int(j)], float(d))
        return out

    def nearest_embedding(self, queries: np.ndarray) -> list[Match | None]:
        """The nearest item by cosine for each unit row of ``queries``; the similarity
        recomputed in float64 from the stored vector."""
        if self.embedding_index is None:
            raise RuntimeError(f"eval set {self.name} has no embedding index")
        if len(queries) == 0 or self.embedding_index.ntotal == 0:
            return [None] * len(queries)
        _, found = self.embedding_index.search(np.ascontiguousarray(queries, np.float32), 1)
        out: list[Match | None] = []
        for q, j in zip(queries.astype(np.float64), found[:, 0]):
            out.append(None if j < 0 else Match(self.ids[int(j)], float(q @ self.vectors[int(j)].astype(np.float64))))
        return out


_LOADED: dict[tuple[str, str], EvalSetIndex] = {}
_LOCK = threading.Lock()


def load_evalset(root: str, name: str) -> EvalSetIndex:
    """Eval set ``name`` under ``root``, loaded once per process (keyed by the
    manifest's bytes too, so a set added again under the same path is reloaded)."""
    digest = hashlib.sha256(storage.read_bytes(storage.join(evalset_dir(root, name), MANIFEST))).hexdigest() \
        if evalset_exists(root, name) else ""
    key = (storage.join(evalset_dir(root, name), digest), name)
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = EvalSetIndex.load(root, name)
        return _LOADED[key]


def model_fingerprint(config: Any) -> dict:
    """What decides a CLIP image embedding, independent of where the weights file is:
    the model, quick_gelu, and the weights file's SHA-256 (the hub id or tag otherwise;
    the seed for random weights). ``config``: a ClipModelConfig."""
    from vlcurate.extractors.clip_models import weights_file_info, weights_source

    fp: dict[str, Any] = {"model": config.model, "quick_gelu": config.quick_gelu}
    source = weights_source(config.weights)
    if source == "random":
        fp.update(weights=None, seed=config.seed)
    elif source == "file":
        fp["weights_sha256"] = weights_file_info(config.weights).get("weights_sha256")
    else:
        fp["weights"] = config.weights
    return fp
