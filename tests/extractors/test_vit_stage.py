"""The vit_features stage (and the FeatureStage base under it) on small hand-made
shards with the tiny random ViT, CPU only; plus its sidecars in the built demo."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pathlib import Path
import torch
from PIL import Image

from vlcurate.extractors.encoding import decode_image
from vlcurate.extractors.vit_stage import VitFeaturesConfig, VitFeatureStage, load_clip
from vlcurate.io.parquet import write_parquet
from vlcurate.io.tar import TarSample, write_tar
from vlcurate.pipelines.stage import Layout, StageEntry
from vlcurate.schemas import get_schema, validate
from vlcurate.schemas.features import feature_arrays, stacked_features, tensor_array
from vlcurate.typed import ConfigError, from_dict
from vlcurate.validate import validate_version

TINY = "vlc-tiny-vit"
CORRUPT = b"\xff\xd8\xff\xe0 not really a jpeg"


def jpeg(seed: int, size: tuple[int, int] = (80, 60), color: tuple[int, int, int] | None = None) -> bytes:
    if color is not None:
        img = Image.new("RGB", size, color)
    else:
        img = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_image_shard(layout: Layout, images: list[bytes | None], captions: list[str] | None = None,
                     shard: int = 0, dropped: tuple[int, ...] = ()) -> list[str]:
    """A samples parquet (every row ok) + tar; ``None`` = ok row with no image in the
    tar; a fake earlier filter decides on every row and drops the ``dropped`` ones. Returns keys."""
    keys = [f"{shard:05d}_{i:06d}" for i in range(len(images))]
    captions = captions or [f"a picture number {i}" for i in range(len(images))]
    rows = [{"key": k, "url": f"http://h/{k}.jpg", "caption": c, "status": "ok", "error_kind": None,
             "error_message": None, "http_status": 200, "width": 8, "height": 8, "original_width": 8,
             "original_height": 8, "sha256": f"h{k}", "phash": None} for k, c in zip(keys, captions)]
    write_parquet(pa.Table.from_pylist(rows, schema=get_schema("sample").schema),
                  layout.samples_parquet(shard), "sample")
    write_tar(layout.samples_tar(shard), [TarSample(k, {"jpg": data, "txt": c.encode(), "json": b"{}"})
                                          for k, c, data in zip(keys, captions, images) if data is not None])
    n = len(keys)  # the fake filter saw every sample, as a real one does
    decisions = pa.table({"key": keys, "stage": ["fake"] * n, "keep": [i not in dropped for i in range(n)],
                          "reason": pa.array([("fake" if i in dropped else None) for i in range(n)], pa.string()),
                          "score": pa.nulls(n, pa.float64()), "detail": pa.nulls(n, pa.string())})
    write_parquet(decisions, layout.sidecar("fake", shard), "decision")
    return keys


# a fake earlier filter (make_image_shard's drops), then the stage under test
STAGES = (StageEntry("fake", "decision"), StageEntry("vit_features", "vit_features"))


def vit_stage(layout: Layout, **cfg) -> VitFeatureStage:
    return VitFeatureStage(VitFeaturesConfig(model=TINY, **{"device": "cpu", "batch_size": 3, **cfg}), layout)


def read_tokens(path) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    t = pq.read_table(path)
    ok = t.filter(pa.compute.equal(t.column("status"), "ok"))
    tokens = np.stack([a.astype(np.float32) for a in feature_arrays(ok, "tokens")])
    emb = np.stack([a.astype(np.float32) for a in feature_arrays(ok, "embedding")])
    np.testing.assert_array_equal(stacked_features(t, "tokens"), tokens)  # the zero-copy reader agrees
    return t, tokens, emb


def test_sidecar_has_one_row_per_alive_sample_and_equals_direct_encoding(tmp_path):
    layout = Layout(tmp_path, STAGES)
    images = [jpeg(i, (60 + 10 * i, 50)) for i in range(7)]
    keys = make_image_shard(layout, images, dropped=(2,))
    stage = vit_stage(layout)
    stats = stage.run_shard(0)
    assert stats.rows == 6 and stats.counts == {"ok": 6}
    table, tokens, emb = read_tokens(layout.sidecar("vit_features", 0))
    alive = [k for i, k in enumerate(keys) if i != 2]
    assert table.column("key").to_pylist() == alive  # tar order, the dropped sample skipped
    clip = stage.clip
    assert tokens.shape == (6, *clip.token_shape) == (6, 17, 64) and emb.shape == (6, clip.embed_dim)
    assert table.schema.field("tokens").type == pa.binary()  # raw float16 bytes, shape in the metadata
    assert len(table.column("tokens")[0].as_py()) == 17 * 64 * 2
    batch = torch.stack([clip.preprocess(decode_image(images[keys.index(k)])) for k in alive])
    direct = clip.encode_images(batch)
    np.testing.assert_allclose(tokens, direct.tokens.numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(emb, direct.embedding.numpy(), rtol=2e-3, atol=2e-3)
    declared = json.loads(table.schema.metadata[b"vlcurate.features"])
    assert declared == {"tokens": {"shape": [17, 64], "dtype": "float16"},
                        "embedding": {"shape": [32], "dtype": "float16"}}
    assert validate(table, "vit_features") == []


def test_per_sample_failures_are_rows_and_never_fail_the_shard(tmp_path, monkeypatch):
    layout = Layout(tmp_path, STAGES)
    black = jpeg(0, color=(0, 0, 0))
    images = [jpeg(1), CORRUPT, jpeg(2), black, None, jpeg(3)]
    keys = make_image_shard(layout, images)
    stage = vit_stage(layout)
    stage.setup()
    real = stage.start_batch
    calls = []

    def flaky(batch):  # the model "fails" on the all-black image, and on any batch holding it
        calls.append(len(batch))
        if any(float(np.asarray(img, dtype=np.float32).std()) == 0 for img in batch):
            raise RuntimeError("boom on a flat image")
        return real(batch)

    monkeypatch.setattr(stage, "start_batch", flaky)
    stats = stage.run_shard(0)
    assert stats.counts == {"ok": 3, "failed.decode_error": 1, "failed.model_error": 1, "failed.missing_image": 1}
    rows = {r["key"]: r for r in pq.read_table(layout.sidecar("vit_features", 0)).to_pylist()}
    assert list(rows) == [keys[i] for i in (0, 1, 2, 3, 5, 4)]  # tar order, missing last
    assert rows[keys[1]]["error_kind"] == "decode_error" and "Truncated" in rows[keys[1]]["error_message"]
    assert rows[keys[3]]["error_kind"] == "model_error" and "boom" in rows[keys[3]]["error_message"]
    assert rows[keys[4]]["error_kind"] == "missing_image"
    for i in (0, 2, 5):
        assert rows[keys[i]]["status"] == "ok" and len(rows[keys[i]]["tokens"]) == 17 * 64 * 2
    for i in (1, 3, 4):
        assert rows[keys[i]]["tokens"] is None and rows[keys[i]]["embedding"] is None
    assert calls == [3, 1, 1, 1, 1]  # the failing batch was retried one image at a time


def test_fp32_storage_info_without_loading_and_config_errors(tmp_path):
    layout = Layout(tmp_path, STAGES)
    make_image_shard(layout, [jpeg(1), jpeg(2)])
    stage = vit_stage(layout, storage="fp32", include_cls=False)
    info = stage.info()
    assert not hasattr(stage, "clip")  # provenance needs no model
    assert info.weights["random"] is True and info.weights["model"] == TINY
    stage.run_shard(0)
    table, tokens, _ = read_tokens(layout.sidecar("vit_features", 0))
    assert json.loads(table.schema.metadata[b"vlcurate.features"])["embedding"] == {"shape": [32], "dtype": "float32"}
    assert len(table.column("embedding")[0].as_py()) == 32 * 4
    assert tokens.shape == (2, 16, 64)  # no CLS
    with pytest.raises(ConfigError, match="unknown open_clip model 'ViT-Q-9'"):
        from_dict(VitFeaturesConfig, {"model": "ViT-Q-9"}, "stages[3].vit_features")
    with pytest.raises(ConfigError, match="storage: expected one of 'fp16', 'fp32'"):
        from_dict(VitFeaturesConfig, {"model": TINY, "storage": "int8"}, "stages[3].vit_features")


def test_a_shard_with_no_alive_samples_gets_an_empty_valid_sidecar(tmp_path):
    layout = Layout(tmp_path, STAGES)
    make_image_shard(layout, [jpeg(1), jpeg(2)], dropped=(0, 1))
    assert vit_stage(layout).run_shard(0).rows == 0
    table = pq.read_table(layout.sidecar("vit_features", 0))
    assert table.num_rows == 0 and validate(table, "vit_features") == []


def test_same_bytes_whatever_decodes_the_images(tmp_path, monkeypatch, caplog):
    images = [jpeg(i) for i in range(5)] + [CORRUPT] + [jpeg(i) for i in range(5, 9)]
    files = []
    for i, how in enumerate([{"decode_threads": 1}, {"decode_threads": 4}, {"decode_processes": 2}]):
        layout = Layout(tmp_path / str(i), STAGES)
        make_image_shard(layout, images)
        stage = vit_stage(layout, **how)
        assert stage.run_shard(0).counts == {"ok": 9, "failed.decode_error": 1}
        files.append(Path(layout.sidecar("vit_features", 0)).read_bytes())
    assert files[0] == files[1] == files[2]
    daemon = Layout(tmp_path / "daemon", STAGES)  # a daemonic process (a Dask worker) cannot have children
    make_image_shard(daemon, images)
    import multiprocessing

    import vlcurate.extractors.encoding as encoding

    class Daemonic:
        daemon = True

    def no_pool(workers):
        raise AssertionError("a daemonic process must not start decode processes")

    monkeypatch.setattr(multiprocessing, "current_process", lambda: Daemonic())
    monkeypatch.setattr(encoding, "decode_process_pool", no_pool)
    with caplog.at_level("WARNING", logger="vlcurate.extractors.stage"):
        vit_stage(daemon, decode_processes=2).run_shard(0)  # falls back to threads
    assert "decode_processes=2 ignored" in caplog.text
    monkeypatch.undo()
    assert Path(daemon.sidecar("vit_features", 0)).read_bytes() == files[0]
    auto = vit_stage(layout)
    auto.setup()
    assert stage.decode_processes() == 2 and auto.decode_processes() == 0  # auto on a CPU: threads


def test_split_transform_equals_the_models_preprocess(tmp_path):
    stage = vit_stage(Layout(tmp_path, STAGES))
    stage.setup()
    images = [decode_image(jpeg(i, (90 - 20 * i, 50 + 30 * i))) for i in range(3)]
    assert stage.input.split  # open_clip's eval transform: PIL steps, ToTensor, Normalize
    prepared = [stage.prepare(im) for im in images]
    assert all(p.dtype == np.uint8 and p.shape == (64, 64, 3) for p in prepared)
    assert torch.equal(stage.input.batch(prepared), torch.stack([stage.clip.preprocess(im) for im in images]))


def test_model_is_loaded_once_per_process(tmp_path):
    a, b = vit_stage(Layout(tmp_path, STAGES)), vit_stage(Layout(tmp_path / "other", STAGES))
    a.setup()
    b.setup()
    assert a.clip is b.clip is load_clip(a.config.clip_config())


def with_row_changed(table: pa.Table, column: str, row: int, change) -> pa.Table:
    """``table`` with ``change(array)`` applied to one row's features in ``column``."""
    values = feature_arrays(table, column)
    values[row] = change(values[row])
    i = table.schema.get_field_index(column)
    return table.set_column(i, table.schema.field(i), tensor_array(values, "float16"))


def test_schema_row_checks_catch_wrong_lengths_and_misplaced_features(tmp_path):
    layout = Layout(tmp_path, STAGES)
    make_image_shard(layout, [jpeg(1), CORRUPT, jpeg(2)])
    vit_stage(layout).run_shard(0)
    table = pq.read_table(layout.sidecar("vit_features", 0))
    assert validate(table, "vit_features", raise_error=False) == []
    short = with_row_changed(table, "embedding", 2, lambda e: e[:31])
    assert validate(short, "vit_features", raise_error=False) == [
        "column 'embedding', row 2: 62 bytes, the declared [32] float16 needs 64"]
    narrow = with_row_changed(table, "tokens", 2, lambda t: t[:, :63])
    assert validate(narrow, "vit_features", raise_error=False) == [
        "column 'tokens', row 2: 2142 bytes, the declared [17, 64] float16 needs 2176"]
    status = pa.array(["ok", "ok", "ok"])  # features missing on an ok row
    problems = validate(table.set_column(1, "status", status), "vit_features", raise_error=False)
    assert any("row 1: features must be present exactly when status is ok" in p for p in problems), problems
    undeclared = table.append_column("extra", pa.array([1, 2, 3]))
    assert "column 'extra', row 0: feature column not declared in the schema metadata" in \
        validate(undeclared, "vit_features", raise_error=False)


def test_demo_version_has_features_for_every_kept_sample(demo_version):
    manifest = json.loads((demo_version / "manifest.json").read_text())
    stages = {s["name"]: s for s in manifest["stages"]}
    assert stages["vit_features"]["counts"] == {"ok": stages["exact_dedup"]["counts"]["kept"]}
    # the shipped demo-domain CLIP; region_features still runs random weights
    assert stages["vit_features"]["weights"]["random"] is False and manifest["random_weights"] is True
    assert stages["vit_features"]["weights"]["label"] == "demo-domain weights"
    for path in sorted((demo_version / "vit_features").glob("*.parquet")):
        dedup = pq.read_table(demo_version / "exact_dedup" / path.name).to_pylist()
        kept = [r["key"] for r in dedup if r["keep"]]
        assert pq.read_table(path, columns=["key"]).column("key").to_pylist() == kept


def test_validate_finds_a_feature_array_of_the_wrong_length(damaged):
    path = damaged / "vit_features" / "00001.parquet"
    table = pq.read_table(path)
    pq.write_table(with_row_changed(table, "tokens", 3, lambda t: t[:15]), path)  # one token short
    problems = validate_version(damaged)
    assert "vit_features/00001.parquet: column 'tokens', row 3: 5760 bytes, the declared [16, 192] float16 needs 6144" \
        in problems, problems


@pytest.mark.gpu
def test_cuda_stage_matches_cpu_and_clip_score_reuses_on_cuda(tmp_path):
    from vlcurate.filters.clip_score import ClipScoreConfig, ClipScoreFilter

    images = [jpeg(i) for i in range(5)] + [CORRUPT]
    tables = {}
    for device in ("cpu", "cuda"):
        layout = Layout(tmp_path / device, STAGES)
        make_image_shard(layout, images)
        stage = vit_stage(layout, device=device)
        assert stage.run_shard(0).counts == {"ok": 5, "failed.decode_error": 1}
        tables[device] = read_tokens(layout.sidecar("vit_features", 0))
        filt = ClipScoreFilter(ClipScoreConfig(model=TINY, device=device, min_score=-1.0), layout)
        assert filt.run_shard(0).counts["embedding.reused"] == 5
    assert stage.clip.device.type == "cuda"
    (cpu_t, cpu_tok, cpu_emb), (gpu_t, gpu_tok, gpu_emb) = tables["cpu"], tables["cuda"]
    assert cpu_t.column("status").to_pylist() == gpu_t.column("status").to_pylist()
    np.testing.assert_allclose(gpu_tok, cpu_tok, rtol=2e-2, atol=2e-2)  # fp16 autocast vs fp32
    np.testing.assert_allclose(gpu_emb, cpu_emb, rtol=2e-2, atol=2e-2)


def test_an_output_side_crash_fails_the_shard_and_leaves_no_sidecar(tmp_path, monkeypatch):
    import vlcurate.extractors.stage as stage_mod

    layout = Layout(tmp_path, STAGES)
    make_image_shard(layout, [jpeg(i) for i in range(8)])
    stage = vit_stage(layout, batch_size=2)

    def full_disk(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(stage_mod, "SIDECAR_ROW_GROUP", 2)  # the first row group is written mid-shard
    monkeypatch.setattr(stage_mod, "tensor_array", full_disk)
    with pytest.raises(OSError, match="No space left"):
        stage.run_shard(0)
    assert not Path(layout.sidecar("vit_features", 0)).parent.exists() or \
        list(Path(layout.sidecar("vit_features", 0)).parent.iterdir()) == []
