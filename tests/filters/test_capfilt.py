"""The caption filters on a hand-made shard with tiny random models (CPU): BLIP-2's
CLIP ranking (top N in score order, stored image embeddings reused without the image
tower) and BLIP's ITM filter (exactly the captions below the threshold removed,
samples left with none dropped), each with its records."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import pytest
import torch

from tests.extractors.test_caption_stage import caption_stage, captions_of, write_shard
from tests.extractors.test_vit_stage import TINY, jpeg, vit_stage
from vlcurate.extractors.clip import score
from vlcurate.extractors.caption_stage import SyntheticCaptionsConfig, SyntheticCaptionStage
from vlcurate.extractors.encoding import decode_image
from vlcurate.extractors.hf_models import load_hf_model
from vlcurate.filters.caption_itm import CaptionItmConfig, CaptionItmFilter
from vlcurate.filters.caption_rank import CaptionRankConfig, CaptionRankFilter
from vlcurate.filters.captions import CAPTIONS_EXT, selected_captions
from vlcurate.io.parquet import write_parquet
from vlcurate.io.tar import TarSample, iter_tar_files, write_tar
from vlcurate.pipelines.stage import Layout
from vlcurate.schemas import validate
from vlcurate.schemas.features import stacked_features

K = 3
# s003 has no web caption (ranked on its synthetic ones); s004 has no image (its
# synthetic captions failed, only the web caption is left); s005 has neither
ITEMS = [("s000", jpeg(0, (70, 50)), "a red square"), ("s001", jpeg(1, (60, 60)), "a photo of a dog"),
         ("s002", jpeg(2, (50, 70)), "two cats on a sofa"), ("s003", jpeg(3, (64, 48)), ""),
         ("s004", None, "a bridge at night"), ("s005", None, "  ")]


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# the stages a recipe would run, so the filters find earlier sidecars through the layout
STAGES = ["download", "synthetic_captions", "vit_features", "caption_rank", "caption_itm"]


@pytest.fixture
def shard(tmp_path):
    layout = Layout.for_stages(tmp_path, STAGES)
    write_shard(layout, 0, ITEMS)
    caption_stage(layout, captions_per_image=K, batch_size=2).run_shard(0)
    return layout


def records(layout: Layout, stage: str) -> dict[str, dict]:
    table = pq.read_table(layout.sidecar(stage, 0, CAPTIONS_EXT))
    validate(table, "caption_scores")
    return {r["key"]: r for r in table.to_pylist()}


def decisions(layout: Layout, stage: str) -> dict[str, dict]:
    return {r["key"]: r for r in pq.read_table(layout.sidecar(stage, 0)).to_pylist()}


class RaisingTower(torch.nn.Module):
    def forward(self, *args, **kwargs):
        raise AssertionError("the image tower ran")


def test_rank_keeps_top_n_in_score_order_from_stored_embeddings(shard):
    layout = shard
    vit_stage(layout).run_shard(0)
    filt = CaptionRankFilter(CaptionRankConfig(model=TINY, device="cpu", top_n=2, batch_size=4), layout)
    filt.setup()
    tower = filt.clip.model.visual  # the model is shared by the process: put it back after
    filt.clip.model.visual = RaisingTower()
    try:
        stats = filt.run_shard(0)
    finally:
        filt.clip.model.visual = tower
    # s004 is looked up in the tar (it has no stored embedding) and has no image there
    assert stats.counts == {"kept": 4, "dropped.image_error": 1, "dropped.no_caption": 1, "embedding.reused": 4,
                            "embedding.encoded": 1}

    rec, dec = records(layout, "caption_rank"), decisions(layout, "caption_rank")
    vit = pq.read_table(layout.sidecar("vit_features", 0))
    stored = dict(zip(vit.column("key").to_pylist()[:4], stacked_features(vit, "embedding")))
    for key in ("s000", "s001", "s002", "s003"):
        r = rec[key]
        assert r["sources"] == (["web"] if key != "s003" else []) + ["synthetic"] * K
        image = torch.from_numpy(stored[key].astype(np.float32)).expand(len(r["captions"]), -1)
        expected = score(image, filt.clip.encode_texts(r["captions"])).numpy()
        np.testing.assert_allclose(r["scores"], expected, atol=1e-4)
        order = np.argsort(-expected, kind="stable")[:2]
        assert r["selected"] == [r["captions"][i] for i in order]
        assert dec[key]["keep"] and dec[key]["score"] == pytest.approx(max(r["scores"]))
    assert dec["s004"]["reason"] == "image_error" and rec["s004"]["scores"] == []
    assert dec["s005"]["reason"] == "no_caption" and rec["s005"]["captions"] == []
    assert selected_captions(layout, "caption_rank", 0)["s001"] == rec["s001"]["selected"]


def test_rank_encodes_images_when_nothing_is_stored(shard, tmp_path):
    layout = Layout.for_stages(shard.root, ["download", "synthetic_captions", "caption_rank"])  # no vit_features
    filt = CaptionRankFilter(CaptionRankConfig(model=TINY, device="cpu", top_n=1, include_web=False), layout)
    stats = filt.run_shard(0)
    assert stats.counts == {"kept": 4, "dropped.no_caption": 2, "embedding.encoded": 4}
    rec = records(layout, "caption_rank")
    assert rec["s000"]["sources"] == ["synthetic"] * K and len(rec["s000"]["selected"]) == 1
    assert rec["s000"]["selected"][0] == rec["s000"]["captions"][int(np.argmax(rec["s000"]["scores"]))]


def direct_itm(hf, image: bytes, captions: list[str]) -> np.ndarray:
    """P(matched) from the model's own forward, one image-caption pair at a time."""
    inputs = hf.processor(images=[decode_image(image)] * len(captions), text=captions, padding=True,
                          return_tensors="pt")
    with torch.inference_mode():
        logits = hf.model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                          pixel_values=inputs.pixel_values, use_itm_head=True).itm_score
    return torch.softmax(logits, -1)[:, 1].numpy()


def test_itm_removes_exactly_the_captions_below_the_threshold(shard):
    layout = Layout.for_stages(shard.root, ["download", "synthetic_captions", "caption_itm"])
    cfg = dict(device="cpu", seed=5, batch_size=3)
    hf = load_hf_model(CaptionItmConfig(**cfg), "itm")
    synthetic = {r["key"]: r["captions"] for r in pq.read_table(layout.sidecar("synthetic_captions", 0)).to_pylist()}
    images = {k: d for k, d, _ in ITEMS if d is not None}
    cands = {k: ([c] if c.strip() else []) + synthetic[k] for k, _, c in ITEMS if k in images}
    probs = {k: direct_itm(hf, images[k], caps) for k, caps in cands.items()}
    # a threshold between the two lowest per-sample best probabilities: one sample loses all
    best = sorted((p.max(), k) for k, p in probs.items())
    threshold = float((best[0][0] + best[1][0]) / 2)
    below = sum(int((p < threshold).sum()) for p in probs.values())
    assert 0 < below < sum(len(p) for p in probs.values())

    stats = CaptionItmFilter(CaptionItmConfig(threshold=threshold, **cfg), layout).run_shard(0)
    assert stats.counts == {"kept": 3, "dropped.no_matching_caption": 1, "dropped.no_caption": 1,
                            "dropped.image_error": 1, "captions.below_threshold": below}
    rec, dec = records(layout, "caption_itm"), decisions(layout, "caption_itm")
    for key, p in probs.items():
        assert rec[key]["captions"] == cands[key]
        np.testing.assert_allclose(rec[key]["scores"], p, atol=1e-5)
        passing = sorted((i for i in range(len(p)) if p[i] >= threshold), key=lambda i: -p[i])
        assert rec[key]["selected"] == [cands[key][i] for i in passing]
    lost = best[0][1]
    assert dec[lost]["keep"] is False and dec[lost]["reason"] == "no_matching_caption"
    assert rec[lost]["selected"] == [] and dec[lost]["score"] == pytest.approx(float(probs[lost].max()))
    assert all(dec[k]["keep"] for k in probs if k != lost)
    assert dec["s005"]["reason"] == "no_caption"


def test_a_filter_without_captions_names_the_missing_stage(tmp_path):
    from vlcurate.errors import UserError

    layout = Layout(tmp_path)
    write_shard(layout, 0, ITEMS[:2])
    with pytest.raises(UserError, match="needs the 'synthetic_captions' stage earlier"):
        CaptionItmFilter(CaptionItmConfig(device="cpu"), layout).run_shard(0)


def test_built_version_validates_and_captions_do_not_depend_on_the_shard_size(demo_urls, tmp_path):
    """A build of the first 10 demo rows in shards of 5: every record validates and the
    manifest names the models (random weights); the stage run again over the same
    samples in one shard (so under other keys) writes the same captions."""
    from tests.conftest import make_recipe
    from vlcurate.pipelines.build import build
    from vlcurate.recipe import load_recipe
    from vlcurate.validate import validate_version

    urls = tmp_path / "urls.parquet"
    pq.write_table(pq.read_table(demo_urls).slice(0, 10), urls)
    captioner = {"captions_per_image": 2, "batch_size": 1, "device": "cpu"}
    stages = [{"download": {"image_size": 64, "resize_mode": "keep_ratio", "allow_networks": ["127.0.0.0/8"],
                            "retries": 1, "timeout": 5.0, "threads": 8}},
              {"synthetic_captions": captioner},
              {"vit_features": {"model": TINY, "device": "cpu"}},
              {"caption_rank": {"model": TINY, "device": "cpu"}},
              {"caption_itm": {"device": "cpu", "threshold": 0.0}}]
    recipe = make_recipe(tmp_path, urls, samples_per_shard=5, stages=stages)
    result = build(load_recipe(recipe), log=lambda s: None)
    assert validate_version(result.version_dir) == []
    assert result.manifest["random_weights"] is True
    weights = {s["name"]: s.get("weights") for s in result.manifest["stages"]}
    assert weights["synthetic_captions"]["model"] == "vlc-tiny-blip" and weights["synthetic_captions"]["random"]
    assert weights["caption_itm"]["source"] == "random" and weights["caption_rank"]["model"] == TINY
    assert {"synthetic_captions", "caption_rank", "caption_itm"} <= {f["path"].split("/")[0]
                                                                     for f in result.manifest["files"]}
    built = Layout(result.version_dir)
    samples = pa.concat_tables([pq.read_table(built.samples_parquet(s)) for s in (0, 1)])
    ok = samples.filter(pa.compute.equal(samples.column("status"), "ok")).to_pylist()
    assert len(ok) >= 6
    tars = {k: d for s in (0, 1) for k, _, d in iter_tar_files(built.samples_tar(s), ("jpg",))}
    merged = Layout(tmp_path / "merged")
    new_keys = [f"m{i:03d}" for i in range(len(ok))]
    write_parquet(pa.Table.from_pylist([{**r, "key": k} for r, k in zip(ok, new_keys)],
                                       schema=samples.schema), merged.samples_parquet(0), "sample")
    write_tar(merged.samples_tar(0), [TarSample(k, {"jpg": tars[r["key"]], "txt": b"", "json": b"{}"})
                                      for r, k in zip(ok, new_keys)])
    SyntheticCaptionStage(SyntheticCaptionsConfig(**captioner), merged).run_shard(0)
    again = captions_of(merged)
    original = {k: c for s in (0, 1) for k, c in captions_of(built, s).items()}
    assert {r["key"]: again[k] for r, k in zip(ok, new_keys)} == original
