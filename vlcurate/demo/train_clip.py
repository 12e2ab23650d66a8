"""Train and evaluate the demo-domain CLIP (``vlc-tiny-resnet``) on the demo's shapes.

Training: every image is scored against every caption the domain can produce
(8 colours x 3 shapes x 8 backgrounds = 192), a softmax over all of them with the true
caption as target. With so few captions a full softmax costs less than in-batch
contrastive pairs, has no false negatives (two images of one caption in a batch), and
every wrong colour, wrong shape and colour/background swap is a negative at every step.

Evaluation goes through the production path: the saved file is loaded by
:class:`~vlcurate.extractors.clip.ClipModel` as a user's weights would be, images are
prepared by the ``vit_features`` stage's :class:`ClipImageInput`, scores are
:func:`~vlcurate.extractors.clip.score`. The score threshold for the demo's
``clip_score`` filter is chosen here, on held-out images, never on the demo corpus.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from vlcurate.demo import domain
from vlcurate.demo.corpus import COLORS, SHAPES

MODEL = "vlc-tiny-resnet"
WEIGHTS_FILE = "vlc-tiny-resnet-demo.safetensors"
# Share of held-out true captions the threshold keeps: the demo's ~170 correct
# captions should lose at most a couple.
KEEP_TRUE = 0.995


def warmup_cosine(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The demo models' learning-rate schedule: linear warm-up over the first 5 % of the
    steps, then a cosine decay to zero."""
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))

def all_captions() -> list[str]:
    return [domain.caption(c, s, b) for c, s, b in itertools.product(COLORS, SHAPES, COLORS)]


def prepared_images(batch: list[domain.DomainSample], prepare: Callable[[Any], np.ndarray]) -> torch.Tensor:
    """``[N, H, W, 3]`` uint8: each image as stored by the download stage, then the
    model's PIL steps (what ``vit_features`` decodes and prepares)."""
    return torch.from_numpy(np.stack([prepare(s.stored()) for s in batch]))


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """fp16 safetensors (half the bytes; loading casts back to the fp32 parameters)."""
    from safetensors.torch import save

    from vlcurate.io import storage

    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    storage.write_bytes(path, save(state, metadata={"format": "pt", "model": MODEL}))


def train_clip(out: Path, n_train: int, steps: int, batch_size: int = 128, seed: int = 0,
               log: Callable[[str], None] = print) -> Path:
    import open_clip

    from vlcurate.extractors.clip import register_model_configs
    from vlcurate.extractors.vit_stage import PilSteps

    register_model_configs()
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=None)
    tokenizer = open_clip.get_tokenizer(MODEL)
    steps_pil = PilSteps(list(preprocess.transforms)[:-2], to_array=True)
    norm = preprocess.transforms[-1]
    mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
    std = torch.tensor(norm.std).view(1, 3, 1, 1)

    t0 = time.time()
    train = domain.samples(n_train, domain.TRAIN_SEED)
    images = prepared_images(train, steps_pil)
    captions = all_captions()
    index = {c: i for i, c in enumerate(captions)}
    targets = torch.tensor([index[s.caption] for s in train])
    tokens = tokenizer(captions)
    log(f"clip: {n_train} training images rendered in {time.time() - t0:.0f}s")

    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = warmup_cosine(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, n_train, (batch_size,), generator=gen)
        x = images[idx].permute(0, 3, 1, 2).float().div(255).sub(mean).div(std)
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        loss = F.cross_entropy(logits, targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == steps - 1:
            acc = (logits.argmax(1) == targets[idx]).float().mean().item()
            log(f"clip: step {step}/{steps} loss {loss.item():.3f} batch acc {acc:.2f} ({time.time() - t0:.0f}s)")
    model.eval()
    path = out / WEIGHTS_FILE
    save_weights(model, path)
    return path


def heldout_scores(weights: Path | str) -> dict[str, np.ndarray]:
    """CLIP scores of the held-out images with their true captions (``true``) and with
    each kind of wrong caption, through the production loading and preprocessing."""
    from vlcurate.extractors.clip import ClipConfig, ClipModel, score
    from vlcurate.extractors.vit_stage import ClipImageInput

    clip = ClipModel(ClipConfig(MODEL, weights=str(weights), device="cpu"))
    clip_input = ClipImageInput(clip)
    batch, negatives = domain.heldout()
    images = [clip_input.prepare(s.stored()) for s in batch]
    emb = torch.cat([clip.encode_images(clip_input.batch(images[i:i + 100])).embedding
                     for i in range(0, len(images), 100)])
    # fp16 rounding, as vit_features stores embeddings and clip_score reads them
    emb = emb.half().float()
    texts = {"true": [s.caption for s in batch], **negatives}
    return {kind: score(emb, clip.encode_texts(caps)).numpy() for kind, caps in texts.items()}


def evaluate(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """AUC of true captions against each negative kind, the chosen threshold and the
    share of each kind it keeps."""
    true = scores["true"]
    threshold = round(float(np.floor(np.quantile(true, 1 - KEEP_TRUE) * 1000)) / 1000, 3)  # 3 decimals, down
    metrics: dict[str, float] = {"threshold": threshold, "kept.true": float((true >= threshold).mean())}
    for kind in domain.NEGATIVE_KINDS:
        metrics[f"auc.{kind}"] = domain.auc(true, scores[kind])
        metrics[f"kept.{kind}"] = float((scores[kind] >= threshold).mean())
    return metrics
