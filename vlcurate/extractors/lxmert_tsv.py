"""LXMERT's region-feature TSV: ``vlcurate export lxmert-tsv`` and a reader.

The format of the bottom-up-attention feature files LXMERT (and VisualBERT, VL-BERT,
UNITER's converters) read: one image per line, tab-separated, no header, the fields

    img_id  img_h  img_w  objects_id  objects_conf  attrs_id  attrs_conf  num_boxes  boxes  features

where the six arrays are base64 of their raw little-endian bytes: ``objects_id`` and
``attrs_id`` int64 ``[N]``, ``objects_conf``/``attrs_conf`` float32 ``[N]``, ``boxes``
float32 ``[N, 4]`` (x1, y1, x2, y2 in original pixels) and ``features`` float32
``[N, D]``. Lines end in ``\\r\\n`` as those of the original ``generate_tsv.py`` (Python's
csv default). ``img_id`` is the sample's key. LXMERT's ``load_obj_tsv`` reads the file
unchanged; :func:`read_lxmert_tsv` reads it the same way.

What is exported, in shard order then sidecar order:

* rows of the region sidecar whose ``status`` is ``ok`` (failed samples have no
  regions);
* by default only samples that are still alive in the version: downloaded and kept
  by every filter, including filters that ran after the region stage
  (:func:`vlcurate.filters.base.alive_samples`, the same rule the stages use);
  ``include_dropped`` exports dropped samples too.

Stored fp16 features become float32 exactly (every fp16 value is a float32 value).
The file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import base64
import csv
import io
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlcurate.errors import UserError
from vlcurate.io import storage
from vlcurate.io.parquet import read_parquet
from vlcurate.pipelines.samples import alive_samples
from vlcurate.pipelines.stage import Layout
from vlcurate.schemas import validate
from vlcurate.schemas.features import feature_arrays
from vlcurate.schemas.regions import BOX_COORDS, FEATURES_COLUMN, REGION_FEATURES, declared_dim
from vlcurate.versions import load_manifest, version_layout

FIELDNAMES = ["img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
              "num_boxes", "boxes", "features"]
# Array fields: little-endian dtype on disk; shapes are (num_boxes,) or (num_boxes, -1).
ARRAY_DTYPES = {"objects_id": "<i8", "objects_conf": "<f4", "attrs_id": "<i8", "attrs_conf": "<f4",
                "boxes": "<f4", "features": "<f4"}
_PER_REGION_2D = ("boxes", "features")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and left out."""

    path: str
    rows: int  # lines written
    failed: int  # sidecar rows without regions (status failed)
    dropped: int  # ok rows of samples a filter dropped (not written unless include_dropped)
    shards: int


def region_sidecars(version_dir: str, stage: str) -> tuple[Layout, list[str]]:
    """The version's layout and the region sidecars of ``stage``, by shard; UserError if none."""
    manifest = load_manifest(version_dir)
    stages = [s["name"] for s in manifest["stages"]]
    if stage not in stages:
        raise UserError(f"version {version_dir}: no {stage} sidecars (its stages: {', '.join(stages)}); "
                        f"build with the region_features stage or name it with --stage")
    files = [f for f in manifest["files"] if f["path"].startswith(f"{stage}/") and f["path"].endswith(".parquet")]
    kinds = sorted({f.get("kind") for f in files} - {REGION_FEATURES})
    if not files or kinds:
        raise UserError(f"version {version_dir}: {stage}/ holds {', '.join(map(str, kinds)) or 'no'} records, "
                        f"not {REGION_FEATURES}")
    layout = version_layout(version_dir, manifest)
    return layout, [f["path"] for f in sorted(files, key=lambda f: f["path"])]


def _b64(values: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype=dtype).tobytes()).decode("ascii")


def _split(values: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """A flat array cut into consecutive pieces of ``counts`` elements."""
    return np.split(values, np.cumsum(counts)[:-1]) if len(counts) else []


def _leaves(col: pa.Array) -> np.ndarray:
    while pa.types.is_list(col.type):
        col = pc.list_flatten(col)
    return col.to_numpy(zero_copy_only=False)


def lxmert_rows(table: pa.Table, dim: int) -> Iterator[dict[str, Any]]:
    """LXMERT TSV rows (strings, as written) of a validated sidecar table of ok rows."""
    for batch in table.to_batches():  # batch by batch: a whole shard can be GBs of features
        num = batch.column("num_boxes").to_numpy(zero_copy_only=False).astype(np.int64)
        arrays = {name: _split(_leaves(batch.column(name)), num * (BOX_COORDS if name == "boxes" else 1))
                  for name in ARRAY_DTYPES if name != FEATURES_COLUMN}
        arrays[FEATURES_COLUMN] = feature_arrays(batch, FEATURES_COLUMN)  # type: ignore[arg-type]
        for i, key in enumerate(batch.column("key").to_pylist()):
            row: dict[str, Any] = {"img_id": key, "img_h": int(batch.column("img_h")[i].as_py()),
                                   "img_w": int(batch.column("img_w")[i].as_py()), "num_boxes": int(num[i])}
            for name, dtype in ARRAY_DTYPES.items():
                row[name] = _b64(arrays[name][i], dtype)
            yield row


def _selected(layout: Layout, rel: str, include_dropped: bool) -> tuple[pa.Table, int, int, int]:
    """(ok rows to export, D, failed rows, dropped rows) of one sidecar."""
    version_dir = layout.root
    table = read_parquet(storage.join(version_dir, rel))
    problems = validate(table, REGION_FEATURES, raise_error=False)
    dim = declared_dim(table.schema)
    if problems or dim is None:
        why = problems[0] if problems else "no declared feature width"
        raise UserError(f"{rel}: not a valid {REGION_FEATURES} sidecar ({why}); run vlcurate validate {version_dir}")
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    failed = table.num_rows - ok.num_rows
    if include_dropped:
        return ok, dim[0], failed, 0
    alive = alive_samples(layout, int(rel.rsplit("/", 1)[-1].split(".")[0]), ["key"]).column("key")
    kept = ok.filter(pc.is_in(ok.column("key"), value_set=alive.combine_chunks()))
    return kept, dim[0], failed, ok.num_rows - kept.num_rows


def export_lxmert_tsv(version_dir: str | os.PathLike, out: str | os.PathLike, stage: str = "region_features",
                      include_dropped: bool = False) -> ExportResult:
    """Write the region features of a version as LXMERT's TSV (see the module docstring).

    Raises :class:`UserError` when ``version_dir`` is not a version, has no region
    sidecars under ``stage``, holds an invalid sidecar, or ``out`` is a directory.
    """
    version_dir, out = os.fspath(version_dir), os.fspath(out)
    problem = storage.write_problem(out)
    if problem:
        suffix = " (name the .tsv file to write)" if problem == "is a directory" else ""
        raise UserError(f"output {out}: {problem}{suffix}")
    layout, sidecars = region_sidecars(version_dir, stage)
    rows = failed = dropped = 0
    with storage.open_write(out) as raw:
        f = io.TextIOWrapper(raw, newline="", encoding="utf-8")
        # The csv defaults (excel dialect, \r\n) are what generate_tsv.py wrote.
        writer = csv.DictWriter(f, FIELDNAMES, delimiter="\t")
        for rel in sidecars:
            table, dim, n_failed, n_dropped = _selected(layout, rel, include_dropped)
            failed, dropped = failed + n_failed, dropped + n_dropped
            for row in lxmert_rows(table, dim):
                writer.writerow(row)
                rows += 1
        f.flush()
        f.detach()  # the storage layer closes (and commits) the file itself
    return ExportResult(out, rows, failed, dropped, len(sidecars))


def read_lxmert_tsv(path: str | os.PathLike, topk: int | None = None) -> list[dict[str, Any]]:
    """Read an LXMERT feature TSV the way LXMERT's ``load_obj_tsv`` does.

    csv.DictReader over the tab-separated FIELDNAMES (no header), the csv field size
    limit raised (a 36 x 2048 float32 feature field is ~390k characters, over the
    default 128k), ints for img_h/img_w/num_boxes and every array base64-decoded
    with ``np.frombuffer`` and reshaped to ``(num_boxes,)`` or ``(num_boxes, -1)``.
    The arrays are read-only views, as LXMERT's are. ``topk``: stop after that many.
    Like LXMERT, this raises the csv module's limit for the whole process.
    """
    csv.field_size_limit(sys.maxsize)
    data: list[dict[str, Any]] = []
    with storage.open_read(path) as raw, io.TextIOWrapper(raw, newline="") as f:
        for item in csv.DictReader(f, FIELDNAMES, delimiter="\t"):
            for key in ("img_h", "img_w", "num_boxes"):
                item[key] = int(item[key])
            n = item["num_boxes"]
            for key, dtype in ARRAY_DTYPES.items():
                shape = (n, -1) if key in _PER_REGION_2D else (n,)
                item[key] = np.frombuffer(base64.b64decode(item[key]), dtype=dtype).reshape(shape)
                item[key].setflags(write=False)
            data.append(item)
            if topk is not None and len(data) == topk:
                break
    return data
