"""Training exports of the demo version: exactly the kept samples, readable by
webdataset, Hugging Face datasets, polars and DuckDB, features equal to the sidecars."""

from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import local_dask_cluster
from tests.export.conftest import export, kept_keys
from vlcurate.cli import main


def sidecar_arrays(version: Path, stage: str, column: str) -> dict[str, np.ndarray]:
    """``{key: array}`` of a feature sidecar, decoded here from its bytes and metadata."""
    out = {}
    for path in sorted(glob.glob(str(version / stage / "*.parquet"))):
        t = pq.read_table(path)
        spec = json.loads(t.schema.metadata[b"vlcurate.features"])[column]
        dtype, inner = np.dtype({"float16": "<f2", "float32": "<f4"}[spec["dtype"]]), spec["shape"][1:]
        for key, status, raw in zip(t["key"].to_pylist(), t["status"].to_pylist(), t[column].to_pylist()):
            if status == "ok":
                out[key] = np.frombuffer(raw, dtype).reshape(-1, *inner)
    return out


def sidecar_boxes(version: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted(glob.glob(str(version / "region_features" / "*.parquet"))):
        t = pq.read_table(path, columns=["key", "status", "boxes"])
        for key, status, boxes in zip(t["key"].to_pylist(), t["status"].to_pylist(), t["boxes"].to_pylist()):
            if status == "ok":
                out[key] = np.asarray(boxes, np.float32)
    return out


def test_webdataset_export_holds_exactly_the_kept_samples(demo_version, wds_export):
    import webdataset as wds

    kept = kept_keys(demo_version)
    assert 0 < len(kept) < 220
    tars = sorted(glob.glob(str(wds_export / "train" / "*.tar")))
    samples = list(wds.WebDataset(tars, shardshuffle=False).decode("rgb8"))
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys)) and set(keys) == kept
    assert keys != sorted(keys)  # shuffled
    sizes = [len(list(wds.WebDataset(t, shardshuffle=False))) for t in tars]
    assert sizes == [50] * (len(kept) // 50) + ([len(kept) % 50] if len(kept) % 50 else [])
    vit = sidecar_arrays(demo_version, "vit_features", "tokens")
    regions = sidecar_arrays(demo_version, "region_features", "features")
    boxes = sidecar_boxes(demo_version)
    captions = {}
    for path in glob.glob(str(demo_version / "samples" / "*.parquet")):
        t = pq.read_table(path, columns=["key", "caption"])
        captions.update(zip(t["key"].to_pylist(), t["caption"].to_pylist()))
    for s in samples:
        k = s["__key__"]
        assert s["vit.npy"].dtype == vit[k].dtype and np.array_equal(s["vit.npy"], vit[k])
        assert np.array_equal(s["regions.npy"], regions[k]) and np.array_equal(s["boxes.npy"], boxes[k])
        assert s["txt"] == captions[k] and s["json"]["texts"] == [captions[k]] and s["json"]["key"] == k
        assert s["jpg"].shape[2] == 3  # decoded as an image


def test_export_is_a_version_that_validates(demo_version, wds_export, capsys):
    manifest = json.loads((wds_export / "manifest.json").read_text())
    assert manifest["parent"] == str(demo_version)
    assert manifest["inputs"][0]["path"].endswith("manifest.json")
    stages = {s["name"]: s for s in manifest["stages"]}
    assert stages["select"]["counts"]["exported"] == len(kept_keys(demo_version))
    assert {f["path"] for f in manifest["files"]} >= {"README.md", "train/00000.tar", "stats/select-00000.json"}
    assert main(["validate", str(wds_export)]) == 0, capsys.readouterr().out
    card = (wds_export / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "## Licence" in card and "## Funnel" in card
    assert main(["versions", "list", str(wds_export.parent.parent)]) == 0
    assert "v1-wds" in capsys.readouterr().out


def test_webdataset_export_loads_in_hf_datasets_with_arrays(demo_version, wds_export, tmp_path):
    import datasets

    datasets.disable_progress_bars()
    vit = sidecar_arrays(demo_version, "vit_features", "tokens")
    regions = sidecar_arrays(demo_version, "region_features", "features")
    for ds in (datasets.load_dataset(str(wds_export), split="train", cache_dir=str(tmp_path / "a")),
               datasets.load_dataset("webdataset", data_files={"train": str(wds_export / "train" / "*.tar")},
                                     split="train", cache_dir=str(tmp_path / "b"))):
        assert set(ds["__key__"]) == kept_keys(demo_version)
        rows = ds.with_format("numpy")
        for i in (0, len(ds) - 1):
            row = rows[i]
            assert isinstance(row["vit.npy"], np.ndarray) and row["vit.npy"].shape == vit[row["__key__"]].shape
            assert np.array_equal(row["vit.npy"], vit[row["__key__"]].astype(np.float32))
            assert np.array_equal(row["regions.npy"], regions[row["__key__"]].astype(np.float32))


def test_parquet_export_loads_in_polars_hf_and_duckdb(demo_version, parquet_export, tmp_path):
    import datasets
    import duckdb
    import polars as pl

    datasets.disable_progress_bars()
    kept = kept_keys(demo_version)
    df = pl.read_parquet(str(parquet_export / "train" / "*.parquet"))
    assert set(df["key"]) == kept and df.height == len(kept)
    assert df["key"].to_list() == sorted(kept)  # not shuffled: source shard, then key order
    vit = sidecar_arrays(demo_version, "vit_features", "tokens")
    regions = sidecar_arrays(demo_version, "region_features", "features")
    boxes = sidecar_boxes(demo_version)
    for row in df.head(5).iter_rows(named=True):
        k = row["key"]
        assert np.array_equal(np.asarray(row["vit"], np.float16), vit[k])
        assert np.array_equal(np.asarray(row["regions"], np.float16), regions[k])
        assert np.array_equal(np.asarray(row["boxes"], np.float32), boxes[k]) and row["num_boxes"] == len(boxes[k])
        assert row["texts"] == [row["text"]]
    ds = datasets.load_dataset(str(parquet_export), split="train", cache_dir=str(tmp_path)).with_format("numpy")
    row = ds[3]
    assert isinstance(row["vit"], np.ndarray) and np.array_equal(row["vit"], vit[row["key"]].astype(np.float32))
    assert isinstance(row["regions"], np.ndarray) and row["regions"].shape == regions[row["key"]].shape
    assert row["image"].ndim == 3
    plain = datasets.load_dataset("parquet", data_files={"train": str(parquet_export / "train" / "*.parquet")},
                                  split="train", cache_dir=str(tmp_path / "plain")).with_format("numpy")
    row = plain[len(plain) - 1]
    assert row["image"].ndim == 3  # the Image feature, from the Parquet file's own metadata
    assert isinstance(row["vit"], np.ndarray) and np.array_equal(row["vit"], vit[row["key"]].astype(np.float32))
    assert np.array_equal(row["regions"], regions[row["key"]].astype(np.float32))
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{parquet_export}/train/*.parquet')").fetchall()[0][0]
    assert n == len(kept)


def test_the_same_seed_gives_the_same_bytes(demo_version, wds_export, tmp_path, capsys):
    again = tmp_path / "again"
    other = tmp_path / "other"
    export(capsys, "webdataset", demo_version, again, "--samples-per-shard", "50", "--shuffle-seed", "3",
           "--features", "vit,regions")
    export(capsys, "webdataset", demo_version, other, "--samples-per-shard", "50", "--shuffle-seed", "4")
    for tar in sorted((wds_export / "train").glob("*.tar")):
        assert (again / "train" / tar.name).read_bytes() == tar.read_bytes()
    assert (other / "train" / "00000.tar").read_bytes() != (wds_export / "train" / "00000.tar").read_bytes()


def test_capfilt_selected_captions_are_the_training_text(demo_version, tmp_path):
    """Where a caption filter recorded selected captions, .txt holds the first and
    .json / the Parquet texts column all of them, in rank order."""
    import pyarrow as pa

    from vlcurate.export.select import export_samples, exported_keys, find_sources
    from vlcurate.export.shards import write_parquet_shard, write_tar_shard
    from vlcurate.io.tar import read_tar
    from vlcurate.versions import load_manifest, version_layout

    version = tmp_path / "v"
    shutil.copytree(demo_version, version)
    manifest = load_manifest(version)
    keys = pq.read_table(version / "clip_score" / "00000.parquet")["key"].to_pylist()
    selected = [[f"best caption of {k}", f"second of {k}"] for k in keys]
    table = pa.table({"key": keys, "stage": ["clip_score"] * len(keys), "captions": selected,
                      "sources": [["synthetic"] * 2] * len(keys), "scores": [[0.9, 0.5]] * len(keys),
                      "selected": selected})
    pq.write_table(table, version / "clip_score" / "00000.captions.parquet")
    manifest["files"].append({"path": "clip_score/00000.captions.parquet", "kind": "caption_scores",
                              "sha256": "", "bytes": 0, "rows": len(keys)})
    sources = find_sources(manifest, (), str(version))
    assert sources.captions_stage == "clip_score"
    layout = version_layout(version, manifest)
    samples = export_samples(layout, 0, sources, exported_keys(layout, 0, sources)[0])
    assert samples and all(s.texts == [f"best caption of {s.key}", f"second of {s.key}"] for s in samples)
    write_tar_shard(str(tmp_path / "s.tar"), samples)
    first = read_tar(tmp_path / "s.tar")[0]
    assert first["txt"].decode() == f"best caption of {first['__key__']}"
    assert json.loads(first["json"])["texts"] == [f"best caption of {first['__key__']}", f"second of {first['__key__']}"]
    write_parquet_shard(str(tmp_path / "s.parquet"), samples, {})
    t = pq.read_table(tmp_path / "s.parquet")
    assert t["texts"].to_pylist() == [s.texts for s in samples] and t["text"].to_pylist()[0] == samples[0].texts[0]


def test_shuffle_positions_are_a_permutation():
    from vlcurate.export.shards import position

    for total in (1, 2, 7, 64, 183, 1000):
        placed = [position(i, total, seed=11) for i in range(total)]
        assert sorted(placed) == list(range(total))
    assert [position(i, 183, None) for i in range(183)] == list(range(183))
    assert [position(i, 183, 1) for i in range(183)] != [position(i, 183, 2) for i in range(183)]


def test_feature_sources_are_stages_not_side_files():
    """A clip_score filter's stored embeddings are vit_features records too, but hold no
    tokens: --features vit takes the vit_features stage; without one it is an error."""
    from vlcurate.errors import UserError
    from vlcurate.export.select import find_sources

    def manifest(*stages):
        files = [{"path": f"{d}/00000.parquet", "kind": k} for d, k in
                 [("clip_score", "decision"), ("clip_score.embeddings", "vit_features"),
                  *((s, "vit_features") for s in stages)]]
        return {"files": files, "stages": [{"name": n} for n in ("download", *stages, "clip_score")]}

    assert find_sources(manifest("vit_features", "vit_2"), ("vit",), "v").features == {"vit": "vit_2"}
    with pytest.raises(UserError, match="no vit_features sidecars"):
        find_sources(manifest(), ("vit",), "v")


def test_an_export_cannot_be_exported_again(wds_export, tmp_path, capsys):
    assert main(["export", "parquet", str(wds_export), str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert "no samples/ shards to export" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "again").exists()


def test_the_card_names_the_image_member_the_source_wrote():
    from vlcurate.export.card import card_features, image_ext

    manifest = {"recipe": {"stages": [{"download": {"encode_format": "webp"}}, {"caption_filter": {}}]}}
    assert image_ext(manifest) == "webp"
    assert card_features("webdataset", {}, image_ext(manifest))[0] == {"name": "webp", "dtype": "image"}
    assert image_ext({"recipe": {"stages": [{"download": {"encode_format": "jpeg"}}]}}) == "jpg"


@pytest.mark.slow
def test_two_workers_and_dask_write_the_same_bytes(demo_version, wds_export, tmp_path, capsys):
    """The export is a Beam job: on two local worker processes and on the DaskRunner
    (a local 2-process dask.distributed cluster) it writes the same shards."""
    args = ("--samples-per-shard", "50", "--shuffle-seed", "3", "--features", "vit,regions")
    export(capsys, "webdataset", demo_version, tmp_path / "w2", *args, "--workers", "2")
    with local_dask_cluster() as (cluster, _):  # closed quietly (tests/conftest.py says how)
        export(capsys, "webdataset", demo_version, tmp_path / "dask", *args, "--runner", "DaskRunner", "--",
               f"--dask_client_address={cluster.scheduler_address}")
    def shards(root: Path) -> dict[str, bytes]:  # the data and its markers (the card names the version)
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.suffix == ".tar" or p.name.startswith(("select-", "webdataset-"))}

    want = shards(wds_export)
    assert len(want) == 2 * len(list((wds_export / "train").glob("*.tar"))) + 6  # + one select marker per source shard
    for name in ("w2", "dask"):
        assert shards(tmp_path / name) == want, name


def test_versions_show_says_what_an_export_is(wds_export, demo_version, capsys):
    """Not "downloaded" samples and a count-less dataset_card stage: the exported
    samples, of what the parent kept, and each step said as what it did."""
    kept = len(kept_keys(demo_version))
    assert main(["versions", "show", str(wds_export)]) == 0
    out = capsys.readouterr().out
    assert "downloaded" not in out
    assert f"  export       webdataset training export of {demo_version}" in out
    assert f"  samples      {kept} exported (of {kept} the parent kept), 50 per shard, shuffled (seed 3)" in out
    assert "  features     vit, regions" in out
    shards = -(-kept // 50)
    assert f"  step webdataset      wrote {kept} samples in {shards} shards (webdataset)" in out
    assert "  step dataset_card    README.md: the dataset card" in out
    assert main(["versions", "show", str(wds_export), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["samples"], summary["kept"], summary["export"]["exported"]) == (kept, kept, kept)
    assert summary["parent"] == str(demo_version)
