"""The clip_score filter on hand-made shards with the tiny random ViT (CPU): scores
match a direct computation, drops carry reasons, and embeddings stored by an earlier
vit_features stage of the same model are reused without running the image tower."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.extractors.test_vit_stage import CORRUPT, TINY, jpeg, make_image_shard, vit_stage
from vlcurate.extractors.clip import score
from vlcurate.extractors.encoding import decode_image
from vlcurate.filters.clip_score import ClipScoreConfig, ClipScoreFilter
from vlcurate.pipelines.stage import Layout

CAPTIONS = ["a red square", "a photo of a dog", "", "two cats on a sofa", "a bridge at night", "   "]


def clip_filter(layout: Layout, **cfg) -> ClipScoreFilter:
    return ClipScoreFilter(ClipScoreConfig(model=TINY, device="cpu", **{"min_score": -1.0, "batch_size": 4, **cfg}),
                           layout)


class TowerCalls:
    """Counts forward calls of the image tower's first block while active."""

    def __init__(self, clip):
        self.block, self.calls = clip.vision_blocks[0], 0

    def __enter__(self):
        self.handle = self.block.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def direct_scores(clip, images: list[bytes], captions: list[str]) -> np.ndarray:
    batch = torch.stack([clip.preprocess(decode_image(b)) for b in images])
    emb = clip.encode_images(batch).embedding.half().float()
    return score(emb, clip.encode_texts(captions)).numpy()


def decisions(layout: Layout) -> dict[str, dict]:
    return {r["key"]: r for r in pq.read_table(layout.sidecar("clip_score", 0)).to_pylist()}


STAGES = ["download", "vit_features", "clip_score"]


@pytest.fixture
def shard(tmp_path):
    layout = Layout.for_stages(tmp_path, STAGES)
    images = [jpeg(i, (70, 50 + 5 * i)) for i in range(len(CAPTIONS))]
    return layout, images, make_image_shard(layout, images, CAPTIONS)


def test_reuses_stored_embeddings_without_running_the_image_tower(shard):
    layout, images, keys = shard
    vit_stage(layout).run_shard(0)
    filt = clip_filter(layout)
    filt.setup()
    with TowerCalls(filt.clip) as tower:
        stats = filt.run_shard(0)
    assert tower.calls == 0
    assert stats.counts == {"kept": 4, "dropped.no_caption": 2, "embedding.reused": 4}
    rows = decisions(layout)
    scored = [i for i, c in enumerate(CAPTIONS) if c.strip()]
    expected = direct_scores(filt.clip, [images[i] for i in scored], [CAPTIONS[i] for i in scored])
    got = np.array([rows[keys[i]]["score"] for i in scored])
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert rows[keys[2]]["reason"] == "no_caption" and rows[keys[2]]["score"] is None


def test_encodes_when_nothing_is_stored_and_scores_agree_with_reuse(shard, tmp_path):
    layout, images, keys = shard
    layout = Layout.for_stages(layout.root, ["download", "clip_score"])  # no vit_features stage
    filt = clip_filter(layout)
    filt.setup()
    with TowerCalls(filt.clip) as tower:
        stats = filt.run_shard(0)
    assert tower.calls == 1  # 4 captioned images, batch_size 4: one forward pass
    assert stats.counts == {"kept": 4, "dropped.no_caption": 2, "embedding.encoded": 4}
    fresh = decisions(layout)

    other = Layout.for_stages(tmp_path / "reuse", STAGES)
    make_image_shard(other, images, CAPTIONS)
    vit_stage(other).run_shard(0)
    clip_filter(other).run_shard(0)
    reused = decisions(other)
    for k in keys:
        if fresh[k]["score"] is not None:
            assert reused[k]["score"] == pytest.approx(fresh[k]["score"], abs=1e-3)


def test_threshold_image_errors_and_a_different_model_is_not_reused(tmp_path):
    layout = Layout.for_stages(tmp_path, STAGES)
    images = [jpeg(1), CORRUPT, jpeg(2), jpeg(3), jpeg(4)]
    keys = make_image_shard(layout, images, ["a cat", "a dog", "a car", "a tree", "a boat"])
    vit_stage(layout, seed=1).run_shard(0)  # other random weights: must not be reused
    probe = clip_filter(layout)
    probe.setup()
    ok = [0, 2, 3, 4]
    s = direct_scores(probe.clip, [images[i] for i in ok], ["a cat", "a car", "a tree", "a boat"])
    threshold = float(np.median(s))
    filt = clip_filter(layout, min_score=threshold)
    stats = filt.run_shard(0)
    assert stats.counts["embedding.encoded"] == 5 and "embedding.reused" not in stats.counts
    assert stats.counts["dropped.image_error"] == 1
    assert stats.counts["kept"] + stats.counts["dropped.low_clip_score"] == 4
    assert stats.counts["dropped.low_clip_score"] >= 1 and stats.counts["kept"] >= 1
    rows = decisions(layout)
    assert rows[keys[1]]["reason"] == "image_error" and rows[keys[1]]["detail"].startswith("decode_error:")
    for i, expected in zip(ok, s):
        r = rows[keys[i]]
        assert r["score"] == pytest.approx(float(expected), abs=1e-3)  # every scored sample has its score
        assert r["keep"] == (r["score"] >= threshold)
        assert r["keep"] or r["reason"] == "low_clip_score"


def test_info_and_demo_scores(demo_version):
    import json

    manifest = json.loads((demo_version / "manifest.json").read_text())
    stage = {s["name"]: s for s in manifest["stages"]}["clip_score"]
    assert stage["weights"]["random"] is False and stage["weights"]["label"] == "demo-domain weights"
    alive = {s["name"]: s for s in manifest["stages"]}["exact_dedup"]["counts"]["kept"]
    counts = stage["counts"]
    assert counts["kept"] + counts["dropped.low_clip_score"] == alive == counts["embedding.reused"]
    table = pq.read_table(demo_version / "clip_score")
    threshold = manifest["recipe"]["stages"][4]["clip_score"]["min_score"]
    assert len(table) == alive and all(-1 <= s <= 1 for s in table.column("score").to_pylist())
    assert all(r["keep"] == (r["score"] >= threshold) for r in table.to_pylist())


def test_embeddings_it_computed_are_stored_for_later_stages(shard):
    """Without a vit_features stage, clip_score stores what it encoded (fp16, failures
    as rows); semantic dedup then reads them: no image is encoded a second time."""
    from vlcurate.filters.clip_score import embedding_file
    from vlcurate.filters.semantic_dedup import shard_embeddings
    from vlcurate.schemas.features import stacked_features

    layout, images, keys = shard
    layout = Layout.for_stages(layout.root, ["download", "clip_score", "embedding_clusters"])
    filt = clip_filter(layout)
    stats = filt.run_shard(0)
    loc = embedding_file(layout, "clip_score", 0)
    assert loc.endswith("clip_score.embeddings/00000.parquet")
    assert sorted(f.path for f in stats.files) == sorted([layout.sidecar("clip_score", 0), loc])
    table = pq.read_table(loc)
    scored = [i for i, c in enumerate(CAPTIONS) if c.strip()]
    assert table.column("key").to_pylist() == [keys[i] for i in scored]
    batch = torch.stack([filt.clip.preprocess(decode_image(images[i])) for i in scored])
    expected = filt.clip.encode_images(batch).embedding.half().numpy()
    np.testing.assert_allclose(stacked_features(table, "embedding").astype(np.float32), expected, atol=2e-3)
    found, unit = shard_embeddings(layout, "clip_score", 0, keys)
    assert found == [keys[i] for i in scored] and unit.shape == (4, filt.clip.embed_dim)


def test_nothing_is_stored_when_every_embedding_was_reused(shard):
    from vlcurate.filters.clip_score import embedding_file
    from vlcurate.io import storage

    layout, images, keys = shard
    vit_stage(layout).run_shard(0)
    stats = clip_filter(layout).run_shard(0)
    assert not storage.exists(embedding_file(layout, "clip_score", 0))
    assert [f.path for f in stats.files] == [layout.sidecar("clip_score", 0)]
