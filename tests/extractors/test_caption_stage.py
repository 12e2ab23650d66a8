"""The synthetic_captions stage (BLIP's captioner) with the tiny random BLIP, CPU only:
K captions per sample, failures as rows, captions that depend on the sample and the
seed only, the sampler's distribution, and loading a saved model directory."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.extractors.test_vit_stage import CORRUPT, jpeg
from vlcurate.errors import UserError
from vlcurate.extractors.caption_stage import SyntheticCaptionsConfig, SyntheticCaptionStage
from vlcurate.extractors.encoding import decode_image
from vlcurate.extractors.hf_models import HfModelConfig, load_hf_model
from vlcurate.extractors.seeded_sampling import SeededNucleus, caption_uniforms
from vlcurate.io.parquet import write_parquet
from vlcurate.io.tar import TarSample, write_tar
from vlcurate.pipelines.stage import Layout
from vlcurate.schemas import get_schema, validate
from vlcurate.schemas.features import MODEL_META

K = 3


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny models' steps are far too small for intra-op threads: on a loaded
    2-core machine two threads made generate 7x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_shard(layout: Layout, shard: int, items: list[tuple[str, bytes | None, str]],
                keys: list[str] | None = None) -> list[str]:
    """A shard of ``(name, image bytes or None for no image in the tar, web caption)``;
    the URL comes from the name, the key too unless ``keys`` gives other keys."""
    urls = [f"http://h/{name}.jpg" for name, _, _ in items]
    if keys is not None:
        items = [(k, d, c) for k, (_, d, c) in zip(keys, items)]
    rows = [{"key": k, "url": u, "caption": c, "status": "ok", "error_kind": None,
             "error_message": None, "http_status": 200, "width": 8, "height": 8, "original_width": 8,
             "original_height": 8, "sha256": f"h{k}", "phash": None} for u, (k, _, c) in zip(urls, items)]
    write_parquet(pa.Table.from_pylist(rows, schema=get_schema("sample").schema),
                  layout.samples_parquet(shard), "sample")
    write_tar(layout.samples_tar(shard), [TarSample(k, {"jpg": d, "txt": c.encode(), "json": b"{}"})
                                          for k, d, c in items if d is not None])
    return [k for k, _, _ in items]


def caption_stage(layout: Layout, **cfg) -> SyntheticCaptionStage:
    return SyntheticCaptionStage(SyntheticCaptionsConfig(**{"device": "cpu", "captions_per_image": K,
                                                            "batch_size": 1, **cfg}), layout)


def captions_of(layout: Layout, shards=(0,)) -> dict[str, list[str]]:
    """``{key: captions}`` of the ok rows of the shards' synthetic_captions sidecars."""
    out = {}
    for shard in (shards,) if isinstance(shards, int) else shards:
        for r in pq.read_table(layout.sidecar("synthetic_captions", shard)).to_pylist():
            if r["status"] == "ok":
                out[r["key"]] = r["captions"]
    return out


ITEMS = [(f"s{i:03d}", jpeg(i, (60 + 7 * i, 50)), f"web caption {i}") for i in range(6)]


def test_k_captions_per_sample_and_failures_are_rows(tmp_path):
    layout = Layout(tmp_path)
    items = ITEMS[:4] + [("bad", CORRUPT, "x"), ("gone", None, "y")]
    write_shard(layout, 0, items)
    stats = caption_stage(layout, batch_size=2).run_shard(0)
    assert stats.counts == {"ok": 4, "failed.decode_error": 1, "failed.missing_image": 1}
    table = pq.read_table(layout.sidecar("synthetic_captions", 0))
    validate(table, "synthetic_captions")
    rows = {r["key"]: r for r in table.to_pylist()}
    for key, _, _ in ITEMS[:4]:
        assert rows[key]["status"] == "ok" and len(rows[key]["captions"]) == K
        assert all(isinstance(c, str) and c for c in rows[key]["captions"])
        assert not any(c.startswith("a picture of") for c in rows[key]["captions"])  # prompt stripped
    assert rows["bad"]["error_kind"] == "decode_error" and rows["bad"]["captions"] is None
    assert rows["gone"]["error_kind"] == "missing_image"
    model = json.loads(table.schema.metadata[MODEL_META])
    assert model["random"] is True and model["captions_per_image"] == K and model["prompt"] == "a picture of "


def test_captions_depend_on_the_sample_and_seed_only(tmp_path):
    """Batch size 1: the same captions whether a sample sits in a 6-sample shard or,
    under another key (keys number samples by shard and position), in one of two shards
    in another order, in another stage instance (as on another worker); another seed
    gives other captions."""
    one = Layout(tmp_path / "one")
    write_shard(one, 0, ITEMS)
    caption_stage(one).run_shard(0)
    two = Layout(tmp_path / "two")
    order = [[4, 1, 2], [5, 3, 0]]
    for shard, picks in enumerate(order):
        write_shard(two, shard, [ITEMS[i] for i in picks], keys=[f"{shard:05d}_{j:06d}" for j in range(3)])
    other_worker = caption_stage(two)
    for shard in (1, 0):
        other_worker.run_shard(shard)
    reseeded = Layout(tmp_path / "reseeded")
    write_shard(reseeded, 0, ITEMS)
    caption_stage(reseeded, seed=1).run_shard(0)

    expected = captions_of(one)
    moved = captions_of(two, (0, 1))
    assert {ITEMS[i][0]: moved[f"{s:05d}_{j:06d}"] for s, picks in enumerate(order)
            for j, i in enumerate(picks)} == expected
    assert len({tuple(c) for c in expected.values()}) == len(ITEMS)  # samples differ from each other
    assert all(captions_of(reseeded)[k] != expected[k] for k in expected)


def test_tiny_top_p_is_greedy_decoding_of_the_loaded_directory(tmp_path):
    """A model saved with save_pretrained loads through the real loader; with a nucleus
    of one token the stage's captions are transformers' own greedy captions."""
    from transformers import AutoProcessor, BlipForConditionalGeneration

    base = load_hf_model(HfModelConfig(device="cpu", seed=7), "captioner")
    saved = tmp_path / "blip"
    base.model.save_pretrained(saved)
    base.processor.save_pretrained(saved)
    layout = Layout(tmp_path / "v")
    write_shard(layout, 0, ITEMS[:3])
    stage = caption_stage(layout, model="my-blip", weights=str(saved), top_p=1e-9, batch_size=2)
    stage.run_shard(0)
    assert stage.info().weights["source"] == "local-dir" and stage.info().weights["random"] is False

    model = BlipForConditionalGeneration.from_pretrained(saved).eval()
    processor = AutoProcessor.from_pretrained(saved)
    images = [decode_image(d) for _, d, _ in ITEMS[:3]]
    inputs = processor(images=images, text=["a picture of "] * 3, return_tensors="pt")
    out = model.generate(pixel_values=inputs.pixel_values, input_ids=inputs.input_ids, do_sample=False,
                         max_length=30, min_length=5)
    prompt_len = inputs.input_ids.shape[1] - 1
    greedy = [t.strip() for t in processor.tokenizer.batch_decode(out[:, prompt_len:], skip_special_tokens=True)]
    got = captions_of(layout)
    assert [got[k] for k, _, _ in ITEMS[:3]] == [[g] * K for g in greedy]


def test_seeded_nucleus_draws_from_the_nucleus_with_the_model_probabilities():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.06, 0.04])
    rows = 20000
    uniforms = caption_uniforms([f"k{i}" for i in range(rows)], seed=3, per_sample=1, steps=1)
    sampler = SeededNucleus(uniforms, top_p=0.85, start_len=1, device="cpu")
    out = sampler(torch.zeros(rows, 1, dtype=torch.long), probs.log().expand(rows, -1).clone())
    assert torch.isinf(out).sum(1).eq(4).all()  # exactly one token left per row
    freq = np.bincount(out.argmax(1).numpy(), minlength=5) / rows
    # nucleus at 0.85: tokens 0-2 (0.5 + 0.25 < 0.85 <= 0.9), renormalised by 0.9
    np.testing.assert_allclose(freq, [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0, 0], atol=0.01)


def test_a_weights_directory_without_a_config_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: not a directory with a config.json"):
        load_hf_model(HfModelConfig(weights=str(tmp_path / "empty"), device="cpu"), "captioner")


def test_a_sample_whose_generation_fails_is_a_row_and_spares_its_batch_mates(tmp_path):
    layout = Layout(tmp_path)
    write_shard(layout, 0, ITEMS[:4])
    stage = caption_stage(layout, batch_size=4)
    stage.setup()
    real = stage.captioner.captions

    def captions(ids, images):
        if any(i.startswith("http://h/s002.jpg") for i in ids):
            raise RuntimeError("generation failed")
        return real(ids, images)

    stage.captioner.captions = captions
    stats = stage.run_shard(0)
    assert stats.counts == {"ok": 3, "failed.model_error": 1}
    rows = {r["key"]: r for r in pq.read_table(layout.sidecar("synthetic_captions", 0)).to_pylist()}
    assert rows["s002"]["error_message"] == "RuntimeError: generation failed"
    assert all(len(rows[k]["captions"]) == K for k in ("s000", "s001", "s003"))


def test_another_image_to_text_model_loads_and_matches_its_own_greedy_decoding(tmp_path):
    """A tiny random GIT (not BLIP) directory loads through AutoModelForImageTextToText
    and captions without a prompt; a one-token nucleus gives transformers' greedy output."""
    from transformers import BertTokenizer, CLIPImageProcessor, GitConfig, GitProcessor

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "a the of dog cat man on in red blue".split()
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    saved = tmp_path / "git"
    GitProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                 BertTokenizer(str(tmp_path / "vocab.txt"))).save_pretrained(saved)
    GitConfig(vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 image_size=32, patch_size=8),
              vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
              bos_token_id=2, eos_token_id=3, pad_token_id=0, max_position_embeddings=64).save_pretrained(saved)
    layout = Layout(tmp_path / "v")
    write_shard(layout, 0, ITEMS[:2])
    stage = caption_stage(layout, model=str(saved), top_p=1e-9, max_length=12, min_length=3)
    stage.run_shard(0)
    hf = stage.captioner.hf
    assert type(hf.model).__name__ == "GitForCausalLM" and not stage.captioner.is_blip

    pixels = hf.processor(images=[decode_image(d) for _, d, _ in ITEMS[:2]], return_tensors="pt").pixel_values
    out = hf.model.generate(pixel_values=pixels, do_sample=False, max_length=12, min_length=3)
    greedy = [t.strip() for t in hf.processor.tokenizer.batch_decode(out, skip_special_tokens=True)]
    got = captions_of(layout)
    assert [got[k] for k, _, _ in ITEMS[:2]] == [[g] * K for g in greedy]
