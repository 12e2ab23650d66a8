"""The region_features stage with the tiny BUTD config (CPU, random weights): in a small
demo build, on hand-made shards with failures, and its schema's row checks."""

from __future__ import annotations

import io
import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlcurate.extractors.region_stage import RegionFeaturesConfig, RegionFeatureStage
from vlcurate.extractors.encoding import decode_image
from vlcurate.io.parquet import write_parquet
from vlcurate.io.tar import TarSample, read_tar, write_tar
from vlcurate.pipelines.stage import Layout
from vlcurate.schemas import get_schema, validate
from vlcurate.schemas.features import feature_arrays
from vlcurate.typed import ConfigError, from_dict
from vlcurate.validate import validate_version

from tests.extractors.conftest import TINY_REGIONS

CORRUPT = b"\xff\xd8\xff\xe0 not a jpeg at all"
REGION_COLUMNS = ("img_h", "img_w", "num_boxes", "boxes", "objects_id", "objects_conf", "attrs_id",
                  "attrs_conf", "features")


def jpeg(seed: int, size: tuple[int, int] = (90, 70)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def image_shard(layout: Layout, images: list[bytes | None]) -> list[str]:
    """Shard 0: every row downloaded ok; ``None`` = no image in the tar. Returns keys."""
    keys = [f"00000_{i:06d}" for i in range(len(images))]
    rows = [{"key": k, "url": f"http://h/{k}.jpg", "caption": "a caption", "status": "ok", "error_kind": None,
             "error_message": None, "http_status": 200, "width": 90, "height": 70, "original_width": 90,
             "original_height": 70, "sha256": f"h{k}", "phash": None} for k in keys]
    write_parquet(pa.Table.from_pylist(rows, schema=get_schema("sample").schema), layout.samples_parquet(0), "sample")
    write_tar(layout.samples_tar(0), [TarSample(k, {"jpg": d, "txt": b"a caption", "json": b"{}"})
                                      for k, d in zip(keys, images) if d is not None])
    return keys


def region_stage(layout: Layout, **cfg) -> RegionFeatureStage:
    return RegionFeatureStage(RegionFeaturesConfig(**{**TINY_REGIONS, **cfg}), layout)


def writable_copy(version: Path, dest: Path) -> Path:
    shutil.copytree(version, dest)
    for p in dest.rglob("*"):
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    return dest


def test_build_writes_regions_for_exactly_the_surviving_samples(region_version):
    manifest = json.loads((region_version / "manifest.json").read_text())
    stages = {s["name"]: s for s in manifest["stages"]}
    assert [s["name"] for s in manifest["stages"]] == ["download", "exact_dedup", "region_features", "caption_filter"]
    assert stages["region_features"]["counts"] == {"ok": stages["exact_dedup"]["counts"]["kept"]}
    weights = stages["region_features"]["weights"]
    assert weights["random"] is True and weights["config"] == "butd-tiny" and manifest["random_weights"] is True
    assert validate_version(region_version) == []
    counts = []
    for shard in (0, 1):
        side = pq.read_table(region_version / "region_features" / f"{shard:05d}.parquet")
        dedup = pq.read_table(region_version / "exact_dedup" / f"{shard:05d}.parquet").to_pylist()
        assert side.column("key").to_pylist() == [r["key"] for r in dedup if r["keep"]]
        assert set(side.column("status").to_pylist()) == {"ok"}
        assert json.loads(side.schema.metadata[b"vlcurate.features"]) == {
            "features": {"shape": [None, 64], "dtype": "float16"}}
        assert side.schema.field("features").type == pa.binary()
        counts += side.column("num_boxes").to_pylist()
    assert 1 <= min(counts) and max(counts) <= 36  # min_boxes 10 unless the image has fewer proposals


def test_sidecar_equals_the_extractor_run_directly(region_version):
    from vlcurate.extractors.region_stage import _torch_threads
    from vlcurate.extractors.regions import RegionFeatureExtractor

    table = pq.read_table(region_version / "region_features" / "00000.parquet").slice(0, 3)
    side = [{**r, "features": f} for r, f in zip(table.to_pylist(), feature_arrays(table, "features"))]
    images = {s["__key__"]: s["jpg"] for s in read_tar(region_version / "samples" / "00000.tar")}
    extractor = RegionFeatureExtractor("butd-tiny", min_boxes=10, max_boxes=36)
    with _torch_threads(1):  # the stage's default cpu_threads: CPU results depend on it
        direct = extractor.extract([decode_image(images[r["key"]]) for r in side])
    for row, want in zip(side, direct):
        assert (row["img_h"], row["img_w"], row["num_boxes"]) == (want.img_h, want.img_w, want.num_boxes)
        assert row["features"].dtype == np.float16
        np.testing.assert_array_equal(row["features"], want.features)
        np.testing.assert_array_equal(np.asarray(row["boxes"], np.float32), want.boxes)
        assert row["objects_id"] == want.objects_id.tolist() and row["attrs_id"] == want.attrs_id.tolist()


def test_boxes_are_stored_in_original_pixels(tmp_path, monkeypatch):
    """Whatever the detector's input size, a box covering the whole model input is the
    whole picture (300 x 200 here) and its centre half is the picture's centre half.
    The model sees the image at 96 x 64 (butd-tiny: short side 64), so a box left in
    model pixels would be 3.125 times too small."""
    import torch

    from vlcurate.extractors.regions import RegionFeatureExtractor

    real = RegionFeatureExtractor._select

    def known_boxes(self, out, fg_probs, size):
        sel, boxes = real(self, out, fg_probs, size)
        h, w = size
        known = torch.tensor([[0, 0, w, h], [w / 4, h / 4, 3 * w / 4, 3 * h / 4]], dtype=boxes.dtype)
        return sel, known.repeat(len(boxes), 1)[:len(boxes)]

    monkeypatch.setattr(RegionFeatureExtractor, "_select", known_boxes)
    layout = Layout(tmp_path)
    image_shard(layout, [jpeg(1, (300, 200))])
    assert region_stage(layout).run_shard(0).counts == {"ok": 1}
    (row,) = pq.read_table(layout.sidecar("region_features", 0)).to_pylist()
    assert (row["img_w"], row["img_h"]) == (300, 200)
    boxes = np.asarray(row["boxes"], np.float64)
    np.testing.assert_allclose(boxes[0], [0, 0, 300, 200], atol=1e-3)
    np.testing.assert_allclose(boxes[1], [75, 50, 225, 150], atol=1e-3)


def test_corrupt_and_missing_images_are_failed_rows_and_the_shard_completes(tmp_path):
    layout = Layout(tmp_path)
    keys = image_shard(layout, [jpeg(1), CORRUPT, jpeg(2, (60, 120)), None, jpeg(3)])
    stats = region_stage(layout, batch_size=2, storage="fp32", max_boxes=100).run_shard(0)
    assert stats.rows == 5
    assert stats.counts == {"ok": 3, "failed.decode_error": 1, "failed.missing_image": 1}
    table = pq.read_table(layout.sidecar("region_features", 0))
    assert validate(table, "region_features", raise_error=False) == []
    rows = {r["key"]: r for r in table.to_pylist()}
    assert rows[keys[1]]["error_kind"] == "decode_error" and rows[keys[3]]["error_kind"] == "missing_image"
    for i in (1, 3):
        assert rows[keys[i]]["status"] == "failed" and all(rows[keys[i]][c] is None for c in REGION_COLUMNS)
    assert (rows[keys[2]]["img_h"], rows[keys[2]]["img_w"]) == (120, 60)
    features = dict(zip(table.column("key").to_pylist(), feature_arrays(table, "features")))
    for i in (0, 2, 4):
        r = rows[keys[i]]
        assert r["status"] == "ok" and 10 <= r["num_boxes"] <= 100
        assert features[keys[i]].shape == (r["num_boxes"], 64) and features[keys[i]].dtype == np.float32


def test_no_regions_and_non_finite_features_are_sample_failures(tmp_path, monkeypatch):
    layout = Layout(tmp_path)
    keys = image_shard(layout, [jpeg(1), jpeg(2), jpeg(3)])
    stage = region_stage(layout, batch_size=3)
    stage.setup()
    real = stage.extractor.extract_prepared

    def faulty(prepared):
        out = real(prepared)
        first, second = out[0], out[1]
        empty = {k: v[:0] for k, v in vars(first).items() if isinstance(v, np.ndarray)}
        out[0] = type(first)(**{**vars(first), **empty, "num_boxes": 0})
        feats = second.features.copy()
        feats[0, 0] = np.inf
        out[1] = type(second)(**{**vars(second), "features": feats})
        return out

    monkeypatch.setattr(stage.extractor, "extract_prepared", faulty)
    stats = stage.run_shard(0)
    assert stats.counts == {"ok": 1, "failed.no_regions": 1, "failed.non_finite": 1}
    rows = pq.read_table(layout.sidecar("region_features", 0)).to_pylist()
    assert [r["error_kind"] for r in rows] == ["no_regions", "non_finite", None]
    assert "storage: fp32" in rows[1]["error_message"] and rows[2]["key"] == keys[2]


def test_config_is_checked_when_parsed_and_provenance_needs_no_model(tmp_path):
    where = "stages[2].region_features"
    for bad, message in [({"config": "butd-huge"}, "unknown region config 'butd-huge'"),
                         ({"config": str(tmp_path / "nope.json")}, "nope.json: no such file"),
                         ({"weights": str(tmp_path / "w.pkl")}, "w.pkl: no such file"),
                         ({"min_boxes": 50}, r"\.min_boxes: must be <= max_boxes \(36\), got 50"),
                         ({"device": "gpu"}, "device 'gpu'"),
                         ({"decode_threads": -1}, r"region_features\.decode_threads: must be >= 0, got -1"),
                         ({"storage": "int8"}, "storage: expected one of 'fp16', 'fp32'")]:
        with pytest.raises(ConfigError, match=message):
            from_dict(RegionFeaturesConfig, bad, where)
    from vlcurate.extractors.regions.config import get_config

    path = tmp_path / "mine.json"
    get_config("butd-tiny").replace(name="my-tiny", num_classes=7).to_json(path)
    stage = region_stage(Layout(tmp_path), config=str(path))
    info = stage.info().weights
    assert not hasattr(stage, "extractor")  # provenance without loading the model
    assert info["config"] == "my-tiny" and info["random"] is True and info["weights_sha256"] is None
    assert from_dict(RegionFeaturesConfig, {}, where).config == "butd-r101"  # LXMERT's model by default


def _rewrite(path: Path, edit) -> None:
    """Rewrite a sidecar after ``edit(rows)``, keeping its schema (and metadata)."""
    table = pq.read_table(path)
    rows = table.to_pylist()
    edit(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)


def test_validate_catches_a_boxes_array_of_the_wrong_length(region_version, tmp_path):
    copy = writable_copy(region_version, tmp_path / "v")
    path = copy / "region_features" / "00000.parquet"
    _rewrite(path, lambda rows: rows[1].update(boxes=rows[1]["boxes"][:-1]))
    problems = validate_version(copy)
    n = pq.read_table(path).column("num_boxes")[1].as_py()
    assert f"region_features/00000.parquet: column 'boxes', row 1: {n - 1} entries, num_boxes is {n}" in problems


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory) -> pa.Table:
    layout = Layout(tmp_path_factory.mktemp("regions"))
    image_shard(layout, [jpeg(1), CORRUPT, jpeg(2)])
    region_stage(layout).run_shard(0)
    return pq.read_table(layout.sidecar("region_features", 0))


def _problems(table: pa.Table, edit) -> list[str]:
    rows = table.to_pylist()
    edit(rows)
    return validate(pa.Table.from_pylist(rows, schema=table.schema), "region_features", raise_error=False)


@pytest.mark.parametrize("edit, expected", [
    (lambda r: r[0].update(boxes=[b[:3] for b in r[0]["boxes"]]), "column 'boxes', row 0: an entry of 3 values, 4 expected"),
    (lambda r: r[2].update(features=r[2]["features"][:-128]), "column 'features', row 2:"),
    (lambda r: r[0].update(objects_conf=r[0]["objects_conf"][:-1]), "column 'objects_conf', row 0:"),
    (lambda r: r[1].update(status="ok", error_kind=None), "column 'img_h', row 1: must be present exactly when status is ok"),
    (lambda r: r[2].update(boxes=[[0.0, 0.0, 1e4, 5.0]] + r[2]["boxes"][1:]), "column 'boxes', row 2: box [0.0, 0.0, 10000.0, 5.0] is not inside"),
    (lambda r: r[0].update(attrs_conf=[1.5] + r[0]["attrs_conf"][1:]), "column 'attrs_conf', row 0: 1.5 is not a probability"),
    (lambda r: r[2].update(features=r[2]["features"][:6] + np.float16("nan").tobytes() + r[2]["features"][8:]),
     "column 'features', row 2: non-finite value"),
])
def test_row_checks(sidecar, edit, expected):
    assert validate(sidecar, "region_features", raise_error=False) == []
    problems = _problems(sidecar, edit)
    assert any(p.startswith(expected) for p in problems), problems


def test_row_checks_on_the_declaration(sidecar):
    meta = dict(sidecar.schema.metadata)
    wrong_d = sidecar.replace_schema_metadata({**meta, b"vlcurate.features": b'{"features": {"shape": [null, 32], "dtype": "float16"}}'})
    assert any("column 'features', row 0:" in p and "(num_boxes x 64)" in p
               for p in validate(wrong_d, "region_features", raise_error=False))
    wrong_dtype = sidecar.replace_schema_metadata({**meta, b"vlcurate.features": b'{"features": {"shape": [null, 64], "dtype": "float32"}}'})
    assert any("column 'features'" in p and "needs" in p for p in validate(wrong_dtype, "region_features", raise_error=False))
    undeclared = sidecar.replace_schema_metadata({k: v for k, v in meta.items() if k != b"vlcurate.features"})
    assert any("lacks vlcurate.features" in p for p in validate(undeclared, "region_features", raise_error=False))
    extra = sidecar.append_column("score", pa.array([1.0, None, 2.0])).replace_schema_metadata(meta)
    assert any("'score'" in p and "not part of region_features" in p for p in validate(extra, "region_features", raise_error=False))


@pytest.mark.gpu
def test_stage_on_cuda_agrees_with_cpu(tmp_path):
    """On a GPU the float conversion and resize run on the device."""
    tables = {}
    for device in ("cpu", "cuda"):
        layout = Layout(tmp_path / device)
        image_shard(layout, [jpeg(1), CORRUPT, jpeg(2, (60, 120)), jpeg(3)])
        stats = region_stage(layout, device=device, storage="fp32", batch_size=2).run_shard(0)
        assert stats.counts == {"ok": 3, "failed.decode_error": 1}
        tables[device] = pq.read_table(layout.sidecar("region_features", 0))
        assert validate(tables[device], "region_features", raise_error=False) == []
    rows = {d: zip(t.to_pylist(), feature_arrays(t, "features")) for d, t in tables.items()}
    for (a, fa), (b, fb) in zip(rows["cpu"], rows["cuda"]):
        assert (a["key"], a["status"], a["num_boxes"]) == (b["key"], b["status"], b["num_boxes"])
        if a["status"] == "ok":
            np.testing.assert_allclose(a["boxes"], b["boxes"], atol=0.5)
            np.testing.assert_allclose(fa, fb, rtol=2e-2, atol=0.5)
