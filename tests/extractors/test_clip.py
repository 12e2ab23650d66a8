"""ClipModel on the tiny random open_clip configs shipped with vlcurate (CPU, offline)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the network

import numpy as np
import pytest
import torch
from PIL import Image

from vlcurate.errors import UserError
from vlcurate.extractors.clip import ClipConfig, ClipModel, ImageFeatures, score, to_storage

TINY = "vlc-tiny-vit"  # 64 px, patch 16 -> 16 patches + CLS, width 64, 3 blocks, embed 32
TEXTS = ["a photo of a cat", "a diagram of a bridge", "", "x " * 200]  # empty + over-long


def images(n: int = 3, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny() -> ClipModel:
    return ClipModel(ClipConfig(TINY, device="cpu"))


def hooked_block_output(block: torch.nn.Module, run) -> list[torch.Tensor]:
    """Outputs of ``block`` captured while ``run()`` executes."""
    seen: list[torch.Tensor] = []
    handle = block.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    try:
        run()
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("layer", [-2, 0, -1])
def test_tokens_equal_forward_hook_on_configured_block(layer: int) -> None:
    m = ClipModel(ClipConfig(TINY, layer=layer, device="cpu"))
    x = images()
    block = m.model.visual.transformer.resblocks[layer]
    seen = hooked_block_output(block, lambda: m.model.encode_image(x))
    feats = m.encode_images(x)
    assert isinstance(feats, ImageFeatures)
    assert feats.tokens.shape == (3, 1 + 16, 64) == (3, *m.token_shape)
    torch.testing.assert_close(feats.tokens, seen[0])


def test_penultimate_is_default_and_cls_can_be_dropped(tiny: ClipModel) -> None:
    assert tiny.layer_index == len(tiny.model.visual.transformer.resblocks) - 2
    no_cls = ClipModel(ClipConfig(TINY, include_cls=False, device="cpu"))
    x = images()
    assert no_cls.token_shape == (16, 64)
    torch.testing.assert_close(no_cls.encode_images(x).tokens, tiny.encode_images(x).tokens[:, 1:])


def test_convolutional_tower_tokens_are_the_stage_feature_map_positions() -> None:
    """vlc-tiny-resnet (timm test_resnet): blocks = stem + 4 stages, tokens = the
    stage's H*W positions (row-major), no CLS whatever include_cls says."""
    m = ClipModel(ClipConfig("vlc-tiny-resnet", device="cpu"))
    assert m.convolutional and len(m.vision_blocks) == 5 and m.layer_index == 3
    x = images(2)
    seen = hooked_block_output(m.vision_blocks[3], lambda: m.model.encode_image(x))
    feats = m.encode_images(x)
    b, c, h, w = seen[0].shape
    assert m.token_shape == (h * w, c) == (16, 192)
    torch.testing.assert_close(feats.tokens, seen[0].flatten(2).transpose(1, 2))
    with torch.no_grad():
        torch.testing.assert_close(feats.embedding, m.model.encode_image(x, normalize=True))
    no_cls = ClipModel(ClipConfig("vlc-tiny-resnet", include_cls=False, device="cpu"))
    torch.testing.assert_close(no_cls.encode_images(x).tokens, feats.tokens)


def test_embedding_equals_encode_image_and_runs_each_block_once(tiny: ClipModel) -> None:
    x = images()
    calls = {i: 0 for i in range(len(tiny.vision_blocks))}
    hooks = [blk.register_forward_hook(lambda *_a, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, blk in enumerate(tiny.vision_blocks)]
    try:
        feats = tiny.encode_images(x)
    finally:
        for h in hooks:
            h.remove()
    assert set(calls.values()) == {1}, calls  # one pass: no block ran twice
    with torch.no_grad():
        expected = tiny.model.encode_image(x, normalize=True)
    assert feats.embedding.shape == (3, 32) and tiny.embed_dim == 32
    torch.testing.assert_close(feats.embedding, expected)
    torch.testing.assert_close(feats.embedding.norm(dim=-1), torch.ones(3))


def test_preprocess_is_the_models_eval_transform(tiny: ClipModel) -> None:
    pil = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    t = tiny.preprocess(pil)
    assert t.shape == (3, 64, 64)
    assert tiny.encode_images(t[None]).tokens.shape == (1, 17, 64)
    with pytest.raises(ValueError, match=r"expected images \[B, 3, 64, 64\]"):
        tiny.encode_images(torch.zeros(1, 3, 32, 32))


def test_random_init_is_seeded_reported_and_leaves_global_rng_alone(tiny: ClipModel) -> None:
    state = torch.get_rng_state()
    again = ClipModel(ClipConfig(TINY, device="cpu"))
    other = ClipModel(ClipConfig(TINY, device="cpu", seed=1))
    assert torch.equal(state, torch.get_rng_state())
    assert tiny.weights_are_random and again.weights_are_random
    x = images()
    assert torch.equal(tiny.encode_images(x).embedding, again.encode_images(x).embedding)
    assert not torch.allclose(tiny.encode_images(x).embedding, other.encode_images(x).embedding)
    info = tiny.describe()
    assert info["weights_are_random"] is True and info["token_shape"] == [17, 64]
    json.dumps(info)  # manifest-ready


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_from_local_file_reproduce_outputs(tiny: ClipModel, tmp_path, suffix: str) -> None:
    path = tmp_path / f"tiny{suffix}"
    state = {k: v.contiguous() for k, v in tiny.model.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(state, str(path))
    else:
        torch.save(state, path)
    # A different seed proves the outputs come from the file, not from the init.
    loaded = ClipModel(ClipConfig(TINY, weights=str(path), device="cpu", seed=123))
    assert not loaded.weights_are_random
    x = images()
    a, b = tiny.encode_images(x), loaded.encode_images(x)
    torch.testing.assert_close(b.tokens, a.tokens, rtol=0, atol=0)
    torch.testing.assert_close(b.embedding, a.embedding, rtol=0, atol=0)
    torch.testing.assert_close(loaded.encode_texts(TEXTS), tiny.encode_texts(TEXTS), rtol=0, atol=0)


def test_weights_from_local_dir(tiny: ClipModel, tmp_path) -> None:
    from safetensors.torch import save_file
    import open_clip
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": open_clip.get_model_config(TINY)}))
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()},
              str(tmp_path / "open_clip_model.safetensors"))
    for weights in (f"local-dir:{tmp_path}", str(tmp_path)):
        loaded = ClipModel(ClipConfig(TINY, weights=weights, device="cpu", seed=7))
        assert not loaded.weights_are_random
        torch.testing.assert_close(loaded.encode_images(images()).embedding,
                                   tiny.encode_images(images()).embedding, rtol=0, atol=0)


def test_load_errors_are_one_line_and_name_the_input(tmp_path) -> None:
    with pytest.raises(UserError, match="unknown open_clip model 'ViT-Q-99'") as err:
        ClipModel(ClipConfig("ViT-Q-99"))
    assert "ViT-B-32" in str(err.value) and TINY in str(err.value)

    missing = tmp_path / "nope.safetensors"
    with pytest.raises(UserError) as err:
        ClipModel(ClipConfig(TINY, weights=str(missing)))
    assert str(err.value) == f"weights file not found: {missing}"

    with pytest.raises(UserError, match="weights directory not found"):
        ClipModel(ClipConfig(TINY, weights=f"local-dir:{tmp_path / 'gone'}"))
    (tmp_path / "open_clip_config.json").write_text("{}")
    with pytest.raises(UserError, match="no .safetensors/.bin/.pth checkpoint"):
        ClipModel(ClipConfig(TINY, weights=str(tmp_path)))
    with pytest.raises(UserError, match="not a pretrained tag of ViT-B-32.*laion2b_s34b_b79k"):
        ClipModel(ClipConfig("ViT-B-32", weights="no_such_tag"))

    bad = tmp_path / "wrong.pt"
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match="cannot load vlc-tiny-vit weights") as err:
        ClipModel(ClipConfig(TINY, weights=str(bad), device="cpu"))
    assert "\n" not in str(err.value)

    with pytest.raises(UserError, match="layer=5 out of range for 3 blocks"):
        ClipModel(ClipConfig(TINY, layer=5, device="cpu"))
    with pytest.raises(UserError, match="precision"):
        ClipConfig(TINY, precision="int8")


def test_text_embeddings_and_scores(tiny: ClipModel) -> None:
    t1 = tiny.encode_texts(TEXTS)
    assert t1.shape == (4, 32) and t1.dtype == torch.float32
    torch.testing.assert_close(t1.norm(dim=-1), torch.ones(4))
    assert tiny.encode_texts([]).shape == (0, 32)
    with pytest.raises(TypeError):
        tiny.encode_texts("a single string")

    img = tiny.encode_images(images(4)).embedding
    s1 = score(img, t1)
    assert s1.shape == (4,)
    assert bool(((s1 >= -1) & (s1 <= 1)).all())
    torch.testing.assert_close(s1, (img * t1).sum(-1))  # plain cosine, not x100
    assert torch.equal(s1, score(img, tiny.encode_texts(TEXTS)))  # deterministic
    fresh = ClipModel(ClipConfig(TINY, device="cpu"))
    assert torch.equal(s1, score(fresh.encode_images(images(4)).embedding, fresh.encode_texts(TEXTS)))
    torch.testing.assert_close(score(img * 7, t1), s1)  # scale-free
    with pytest.raises(ValueError, match="equal shape"):
        score(img, t1[:2])


def test_to_storage() -> None:
    t = torch.randn(2, 17, 64)
    arr = to_storage(t)
    assert arr.dtype == np.float16 and arr.shape == (2, 17, 64)
    np.testing.assert_allclose(arr, t.numpy(), rtol=1e-3, atol=1e-3)
    assert to_storage(t, "fp32").dtype == np.float32
    with pytest.raises(ValueError, match="non-finite.*max \\|x\\| of input = 100000"):
        to_storage(torch.tensor([1.0, 1e5]))
    with pytest.raises(ValueError, match="storage dtype"):
        to_storage(t, "int8")


def test_timm_tower_path_eva() -> None:
    """EVA01-g-14 is a timm tower (eva_giant_patch14_224); the tiny EVA02 config takes
    the same TimmModel.forward_intermediates route."""
    m = ClipModel(ClipConfig("vlc-tiny-eva", device="cpu"))
    x = images(2, 224)
    block = m.model.visual.trunk.blocks[-2]
    seen = hooked_block_output(block, lambda: m.model.encode_image(x))
    feats = m.encode_images(x)
    assert m.token_shape == (257, 192)
    torch.testing.assert_close(feats.tokens, seen[0])
    with torch.no_grad():
        torch.testing.assert_close(feats.embedding, m.model.encode_image(x, normalize=True))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_autocast_close_to_cpu_fp32(tiny: ClipModel, precision: str) -> None:
    gpu = ClipModel(ClipConfig(TINY, device="cuda", precision=precision))
    x = images()
    ref, got = tiny.encode_images(x), gpu.encode_images(x)
    assert got.tokens.device.type == "cuda" and got.tokens.dtype == torch.float32
    tol = 2e-2 if precision == "fp16" else 6e-2
    torch.testing.assert_close(got.tokens.cpu(), ref.tokens, rtol=tol, atol=tol)
    torch.testing.assert_close(got.embedding.cpu(), ref.embedding, rtol=tol, atol=tol)
    torch.testing.assert_close(gpu.encode_texts(TEXTS).cpu(), tiny.encode_texts(TEXTS), rtol=tol, atol=tol)
