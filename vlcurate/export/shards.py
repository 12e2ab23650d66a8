"""Where each exported sample goes, and the writers of an export's shards.

Placement: the exported samples, in source-shard then key order, are numbered
0..N-1 (each source shard knows its offset from the per-shard counts); sample ``i``
goes to position ``p(i)``, output shard ``p(i) // samples_per_shard``. Without a
seed ``p`` is the identity; with one it is a seeded pseudo-random permutation of
0..N-1 (a four-round Feistel network on the next power of four, cycle-walking back
into range), so every sample's place is computed where the sample is, no worker
gathers the keys, and the same seed gives the same shards on any runner.

Writers: ``train/<shard>.tar`` in webdataset's layout (``<key>.jpg``, ``.txt`` the
first training caption, ``.json`` the metadata with ``texts`` in rank order, and
``.vit.npy``, ``.regions.npy``, ``.boxes.npy`` when asked), or
``train/<shard>.parquet`` (record kind ``training_sample``, with the ``datasets``
features in its metadata).
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Iterable

import numpy as np
import pyarrow as pa

from vlcurate.export.select import ExportSample
from vlcurate.io.parquet import write_parquet
from vlcurate.io.stats import FileRecord
from vlcurate.io.tar import TarSample, encode_json, write_tar
from vlcurate.schemas.training import IMAGE_TYPE, TRAINING_SAMPLE

SPLIT = "train"  # the directory of the shards, and the Hugging Face split
FORMATS = ("webdataset", "parquet")
_ROUNDS = 4


def _round(seed: int, r: int, value: int, bits: int) -> int:
    h = hashlib.blake2b(f"{seed}:{r}:{value}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << bits) - 1)


def position(index: int, total: int, seed: int | None) -> int:
    """Where sample ``index`` of ``total`` goes: itself without a seed, else its image
    under the seeded permutation of ``range(total)``."""
    if seed is None or total <= 1:
        return index
    half = max(1, ((total - 1).bit_length() + 1) // 2)
    mask = (1 << half) - 1
    value = index
    while True:  # cycle-walk: the domain is 4**half >= total
        left, right = value >> half, value & mask
        for r in range(_ROUNDS):
            left, right = right, left ^ _round(seed, r, right, half)
        value = (left << half) | right
        if value < total:
            return value


def shard_name(shard: int, fmt: str) -> str:
    return f"{SPLIT}/{shard:05d}.{'tar' if fmt == 'webdataset' else 'parquet'}"


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _json(sample: ExportSample) -> dict:
    return {**sample.meta, "key": sample.key, "texts": sample.texts}


def write_tar_shard(loc: str, samples: Iterable[ExportSample]) -> FileRecord:
    def members():
        for s in samples:
            files = {s.image_ext: s.image, "txt": s.texts[0].encode(), "json": encode_json(_json(s))}
            files.update({f"{name}.npy": _npy(a) for name, a in s.features.items()})
            yield TarSample(s.key, files)

    return write_tar(loc, members())


_PA_DTYPES = {"float16": pa.float16(), "float32": pa.float32(), "int64": pa.int64()}


def _fixed(values: np.ndarray, width: int, dtype: str) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), _PA_DTYPES[dtype])
    return pa.FixedSizeListArray.from_arrays(flat, width)


def _tensor_column(arrays: list[np.ndarray], spec: dict) -> pa.Array:
    """Fixed shape ``[T, D]``: fixed_size_list of fixed_size_list. Variable ``[None, D]``:
    list of fixed_size_list (one list entry per row of each array)."""
    shape, dtype = spec["shape"], spec["dtype"]
    width = int(shape[-1])
    stacked = np.concatenate([a.reshape(-1, width) for a in arrays]) if arrays else np.zeros((0, width))
    rows = _fixed(stacked, width, dtype)
    if shape[0] is not None:
        return pa.FixedSizeListArray.from_arrays(rows, int(shape[0]))
    offsets = np.zeros(len(arrays) + 1, np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), rows)


def hf_features(specs: dict[str, dict]) -> dict:
    """The ``datasets`` features (``Features.to_dict()`` form) of a Parquet shard."""
    def value(dtype: str) -> dict:
        return {"dtype": dtype, "_type": "Value"}

    features = {"key": value("string"), "image": {"_type": "Image"}, "text": value("string"),
                "texts": {"feature": value("string"), "_type": "List"}, "url": value("string"),
                "width": value("int32"), "height": value("int32")}
    for name, spec in specs.items():
        row = {"feature": value(spec["dtype"]), "length": int(spec["shape"][-1]), "_type": "List"}
        outer = {"feature": row, "_type": "List"}
        if spec["shape"][0] is not None:
            outer["length"] = int(spec["shape"][0])
        features[name] = outer
    if "regions" in specs:
        features["num_boxes"] = value("int32")
    return features


def write_parquet_shard(loc: str, samples: list[ExportSample], specs: dict[str, dict]) -> FileRecord:
    def ints(name: str) -> pa.Array:
        return pa.array([s.meta.get(name) for s in samples], pa.int32())

    columns = {
        "key": pa.array([s.key for s in samples], pa.string()),
        "image": pa.array([{"bytes": s.image, "path": f"{s.key}.{s.image_ext}"} for s in samples], IMAGE_TYPE),
        "text": pa.array([s.texts[0] for s in samples], pa.string()),
        "texts": pa.array([s.texts for s in samples], pa.list_(pa.string())),
        "url": pa.array([s.meta.get("url") for s in samples], pa.string()),
        "width": ints("width"), "height": ints("height"),
    }
    for name, spec in specs.items():
        columns[name] = _tensor_column([s.features[name] for s in samples], spec)
    if "regions" in specs:
        columns["num_boxes"] = pa.array([len(s.features["regions"]) for s in samples], pa.int32())
    hf = json.dumps({"info": {"features": hf_features(specs)}}, sort_keys=True)
    return write_parquet(pa.table(columns), loc, TRAINING_SAMPLE, metadata={"huggingface": hf})
