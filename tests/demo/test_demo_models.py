"""The shipped demo-domain CLIP: its files match the card's checksums, the demo's
clip_score makes real decisions with it, and the production path's preprocessing is
checked against the training script's held-out AUC (a broken path scores worse).

Nothing here retrains: the tests load the files in vlcurate/demo/weights."""

from __future__ import annotations

import json
import shutil
import stat

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from vlcurate.demo import domain, shipped
from vlcurate.demo.corpus import FAULTS, make_corpus
from vlcurate.demo.run import demo_recipe
from vlcurate.schemas.features import stacked_features


def clip_card() -> dict:
    return shipped.card()["clip"]


def test_shipped_files_match_the_card_and_fit_the_size_budget():
    card = shipped.card()
    files = [p for p in shipped.WEIGHTS_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 10 * 2**20
    for name in ("clip", "captioner"):
        for rel, digest in card[name]["sha256"].items():
            assert shipped.file_sha256(shipped.WEIGHTS_DIR / rel) == digest
        assert shipped.model_path(name).exists()
    assert card["label"] == shipped.LABEL == "demo-domain weights"


def test_a_changed_weights_file_is_refused(tmp_path):
    shutil.copytree(shipped.WEIGHTS_DIR, tmp_path / "w")
    weights = tmp_path / "w" / clip_card()["path"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(Exception, match="does not match"):
        shipped.model_path("clip", tmp_path / "w")


def test_heldout_images_are_not_demo_images():
    demo_bodies = {s.body for s in make_corpus().files.values()}
    batch, _ = domain.heldout()
    assert not demo_bodies & {s.body for s in batch}
    assert 0 not in (domain.TRAIN_SEED, domain.HELDOUT_SEED)  # the demo corpus's seed


def test_demo_manifest_and_summary_say_demo_domain_weights(demo_version):
    from vlcurate.report import summary_table

    manifest = json.loads((demo_version / "manifest.json").read_text())
    weights = {s["name"]: s.get("weights") for s in manifest["stages"]}
    for name in ("vit_features", "clip_score"):
        assert weights[name]["label"] == "demo-domain weights" and weights[name]["random"] is False
        assert weights[name]["weights_sha256"] == clip_card()["sha256"][clip_card()["path"]]
    summary = summary_table(manifest)
    assert "vit_features, clip_score ran with demo-domain weights" in summary
    assert "region_features ran with RANDOM weights" in summary  # no detector is shipped


def test_demo_clip_score_drops_the_mismatched_captions(demo_version):
    """Must show 1: >= 12 of the 14 mismatched captions dropped, <= 2 correct ones."""
    samples = pl.read_parquet(str(demo_version / "samples" / "*.parquet")).select("key", "kind")
    decisions = pl.read_parquet(str(demo_version / "clip_score" / "*.parquet")).join(samples, on="key")
    low = decisions.filter(pl.col("reason") == "low_clip_score")
    dropped = dict(low.group_by("kind").len().iter_rows())
    scored = dict(decisions.filter(pl.col("score").is_not_null()).group_by("kind").len().iter_rows())
    assert scored["mismatched"] == FAULTS["mismatched"] and scored["ok"] > 150
    assert dropped.get("mismatched", 0) >= 12
    assert dropped.get("ok", 0) <= 2
    assert set(dropped) <= {"mismatched", "ok"}


# --- must show 2: the held-out AUC through the production stages ---------------------

@pytest.fixture(scope="module")
def heldout_version(tmp_path_factory):
    """The training script's held-out images, served and built like the demo
    (download, vit_features, clip_score with the shipped CLIP)."""
    from vlcurate.demo.server import serve
    from vlcurate.pipelines.build import build
    from vlcurate.recipe import load_recipe

    tmp = tmp_path_factory.mktemp("heldout")
    batch, _ = domain.heldout()
    files, rows = domain.served_files(batch)
    with serve(files, port=0) as server:
        urls = tmp / "urls.parquet"
        pq.write_table(pa.Table.from_pylist([{**r, "url": server.base_url + r["url"]} for r in rows]), urls)
        recipe = demo_recipe(urls, tmp / "out", "v1", workers=1)
        recipe["samples_per_shard"] = 100
        recipe["stages"] = [s for s in recipe["stages"] if next(iter(s)) in ("download", "vit_features", "clip_score")]
        path = tmp / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return build(load_recipe(path), log=lambda s: None).version_dir


def heldout_aucs(version_dir, shards: int | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """AUC per negative kind from the image embeddings a vit_features run stored (its
    first ``shards`` shards; all by default), and each image's true-caption score."""
    from vlcurate.extractors.clip import ClipConfig, ClipModel, score

    import torch

    batch, negatives = domain.heldout()
    samples = pl.read_parquet(str(version_dir / "samples" / "*.parquet")).select("key", "url")
    index = {k: int(u.rsplit("/", 1)[1].split(".")[0]) for k, u in samples.iter_rows()}
    keys, embs = [], []
    for path in sorted((version_dir / "vit_features").glob("*.parquet"))[:shards]:
        table = pq.read_table(path)
        assert set(table.column("status").to_pylist()) == {"ok"}
        keys += table.column("key").to_pylist()
        embs.append(stacked_features(table, "embedding").astype(np.float32))
    assert len(keys) == (len(batch) if shards is None else shards * 100)  # 100 samples per shard
    order = [index[k] for k in keys]
    clip = ClipModel(ClipConfig(clip_card()["model"], weights=str(shipped.model_path("clip")), device="cpu"))
    img = torch.from_numpy(np.concatenate(embs))
    texts = {"true": [batch[i].caption for i in order], **{k: [v[i] for i in order] for k, v in negatives.items()}}
    scores = {kind: score(img, clip.encode_texts(caps)).numpy() for kind, caps in texts.items()}
    aucs = {kind: domain.auc(scores["true"], scores[kind]) for kind in domain.NEGATIVE_KINDS}
    return aucs, dict(zip(keys, scores["true"].tolist()))


@pytest.mark.slow
def test_production_path_reaches_the_heldout_auc_the_training_printed(heldout_version):
    aucs, true_scores = heldout_aucs(heldout_version)
    printed = clip_card()["heldout"]
    for kind, value in aucs.items():
        assert value == pytest.approx(printed[f"auc.{kind}"], abs=0.01), kind
    # clip_score scored the same pairs from the same stored embeddings
    decisions = pl.read_parquet(str(heldout_version / "clip_score" / "*.parquet"))
    got = dict(decisions.select("key", "score").iter_rows())
    assert np.allclose([got[k] for k in true_scores], list(true_scores.values()), atol=2e-3)
    kept = decisions["keep"].mean()
    assert kept == pytest.approx(printed["kept.true"], abs=0.01)


def rerun_vit_features(version_dir, tmp_path, shards: int):
    """A writable copy of the version with vit_features run again by its own stage
    (clip_score, which ran after it, removed)."""
    from vlcurate.extractors.vit_stage import VitFeaturesConfig, VitFeatureStage
    from vlcurate.pipelines.stage import Layout
    from vlcurate.typed import from_dict

    copy = tmp_path / "copy"
    shutil.copytree(version_dir, copy)
    for p in copy.rglob("*"):
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    recipe = json.loads((copy / "manifest.json").read_text())["recipe"]
    block = next(s["vit_features"] for s in recipe["stages"] if "vit_features" in s)
    shutil.rmtree(copy / "vit_features")
    shutil.rmtree(copy / "clip_score")  # its drops would hide samples from the re-run
    stage = VitFeatureStage(from_dict(VitFeaturesConfig, {**block, "device": "cpu"}), Layout(copy))
    for shard in range(shards):
        stage.run_shard(shard)
    return copy


@pytest.mark.slow
def test_bgr_input_or_skipped_normalisation_lowers_the_wrong_colour_auc(heldout_version, tmp_path, monkeypatch):
    from vlcurate.extractors import vit_stage

    shards = 2  # 200 images: enough to see a drop of 0.05 (it is far larger), half the time
    correct, _ = heldout_aucs(heldout_version, shards)
    prepare, init = vit_stage.PilSteps.__call__, vit_stage.ClipImageInput.__init__

    def bgr(self, image):  # a decoder that hands over BGR (as OpenCV does)
        return np.ascontiguousarray(prepare(self, image)[..., ::-1])

    def no_normalise(self, clip):
        init(self, clip)
        self._mean, self._std = self._mean * 0, self._std * 0 + 1

    for owner, name, patch in ((vit_stage.PilSteps, "__call__", bgr), (vit_stage.ClipImageInput, "__init__", no_normalise)):
        with monkeypatch.context() as m:
            m.setattr(owner, name, patch)
            broken, _ = heldout_aucs(rerun_vit_features(heldout_version, tmp_path / patch.__name__, shards), shards)
        print(f"{patch.__name__}: wrong-colour AUC {broken['wrong_colour']:.4f} (correct path {correct['wrong_colour']:.4f})")
        assert broken["wrong_colour"] <= correct["wrong_colour"] - 0.05, (patch.__name__, broken)


def test_train_models_refuses_an_unknown_model_before_writing(tmp_path, capsys):
    from vlcurate.cli import main

    assert main(["demo", "train-models", "--out", str(tmp_path / "w"), "--models", "clip,detector"]) == 2
    assert capsys.readouterr().err.strip() == ("vlcurate: error: --models: unknown demo models ['detector']; "
                                               "known: clip, captioner")
    assert not (tmp_path / "w").exists()


# --- must show 3: the captioner's captions through the synthetic_captions stage ---------

CAPTION_IMAGES = 100  # the first held-out images
CAPTIONS_PER_IMAGE = 3


@pytest.fixture(scope="module")
def captioned_version(tmp_path_factory):
    """The first held-out images served and built like the demo (download), then
    captioned by the synthetic_captions stage with the shipped captioner (nucleus 0.9)."""
    from vlcurate.demo.server import serve
    from vlcurate.demo.train_captioner import NUCLEUS_TOP_P
    from vlcurate.pipelines.build import build
    from vlcurate.recipe import load_recipe

    tmp = tmp_path_factory.mktemp("captioned")
    batch = domain.heldout()[0][:CAPTION_IMAGES]
    files, rows = domain.served_files(batch)
    entry = shipped.card()["captioner"]
    with serve(files, port=0) as server:
        urls = tmp / "urls.parquet"
        pq.write_table(pa.Table.from_pylist([{**r, "url": server.base_url + r["url"]} for r in rows]), urls)
        recipe = demo_recipe(urls, tmp / "out", "v1", workers=1)
        recipe["samples_per_shard"] = CAPTION_IMAGES
        recipe["stages"] = [s for s in recipe["stages"] if next(iter(s)) == "download"] + [
            {"synthetic_captions": {"model": entry["model"], "weights": str(shipped.model_path("captioner")),
                                    "device": "cpu", "top_p": NUCLEUS_TOP_P, "batch_size": 50,
                                    "captions_per_image": CAPTIONS_PER_IMAGE}}]
        path = tmp / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return build(load_recipe(path), log=lambda s: None).version_dir


def captions_by_image(version_dir, sidecar: str = "synthetic_captions") -> dict[int, list[str]]:
    """``{held-out index: captions}`` from a stage's sidecars (the URL names the image)."""
    samples = pl.read_parquet(str(version_dir / "samples" / "*.parquet")).select("key", "url")
    index = {k: int(u.rsplit("/", 1)[1].split(".")[0]) for k, u in samples.iter_rows()}
    rows = pl.read_parquet(str(version_dir / sidecar / "*.parquet")).select("key", "status", "captions")
    assert set(rows["status"]) == {"ok"} and len(rows) == CAPTION_IMAGES
    return {index[k]: c for k, c in rows.select("key", "captions").iter_rows()}


def share_correct(captions: dict[int, list[str]]) -> float:
    from vlcurate.demo.train_captioner import names_true_object

    batch = domain.heldout()[0]
    hits = [names_true_object(c, batch[i]) for i, caps in captions.items() for c in caps]
    return float(np.mean(hits))


def test_captioner_names_colour_and_shape_with_nucleus_sampling(captioned_version):
    """Must show 3 (nucleus p=0.9): >= 60% of sampled captions name the true colour and shape."""
    captions = captions_by_image(captioned_version)
    assert all(len(c) == CAPTIONS_PER_IMAGE for c in captions.values())
    share = share_correct(captions)
    print(f"nucleus 0.9: {share:.3f} of {CAPTION_IMAGES * CAPTIONS_PER_IMAGE} captions name colour and shape")
    assert share >= 0.6
    manifest = json.loads((captioned_version / "manifest.json").read_text())
    weights = next(s["weights"] for s in manifest["stages"] if s["name"] == "synthetic_captions")
    assert weights["random"] is False and weights["source"] == "local-dir"
    assert weights["label"] == "demo-domain weights"  # from the card beside the directory
    from vlcurate.report import summary_table

    assert "synthetic_captions ran with demo-domain weights" in summary_table(manifest)


def test_captioner_names_colour_and_shape_greedy(captioned_version, tmp_path):
    """Must show 3 (greedy, a one-token nucleus through the same stage): >= 80%; and
    the captions are the domain's sentences, not just the two words."""
    from vlcurate.demo.train_captioner import GREEDY_TOP_P
    from vlcurate.extractors.caption_stage import SyntheticCaptionsConfig, SyntheticCaptionStage
    from vlcurate.pipelines.stage import Layout

    copy = tmp_path / "copy"
    shutil.copytree(captioned_version, copy)
    for p in copy.rglob("*"):
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    shutil.rmtree(copy / "synthetic_captions")
    config = SyntheticCaptionsConfig(model=shipped.card()["captioner"]["model"],
                                     weights=str(shipped.model_path("captioner")), device="cpu",
                                     top_p=GREEDY_TOP_P, captions_per_image=1, batch_size=50)
    SyntheticCaptionStage(config, Layout(copy)).run_shard(0)
    captions = captions_by_image(copy)
    share = share_correct(captions)
    batch = domain.heldout()[0]
    exact = np.mean([caps[0] == batch[i].caption for i, caps in captions.items()])
    print(f"greedy: {share:.3f} of {CAPTION_IMAGES} captions name colour and shape, {exact:.3f} are the true caption")
    assert share >= 0.8
    assert exact >= 0.9  # whole sentences of the domain, background included
