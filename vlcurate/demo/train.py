"""``vlcurate demo train-models --out DIR``: train the demo-domain models on CPU.

Generates its own images with the demo corpus's generator under seeds the demo corpus
never uses (:mod:`vlcurate.demo.domain`), trains, evaluates on held-out images, prints
the metrics and writes to ``DIR`` the weights and ``weights_card.json`` (files,
SHA-256, metrics, the CLIP score threshold chosen on held-out data). Shipping them
means copying ``DIR``'s files and the captioner's folder into
``vlcurate/demo/weights/``. Deterministic: fixed seeds, and torch's intra-op threads
fixed by ``--threads``.
"""

from __future__ import annotations

import functools
import json
import platform
import time
from pathlib import Path
from typing import Callable

from vlcurate.demo import domain
from vlcurate.demo.shipped import CARD, LABEL, TRAINED_ON, file_sha256
from vlcurate.errors import UserError
from vlcurate.io import storage

MODELS = ("clip", "captioner")
# Sized to fit the 30-minute CPU budget on 2 cores with room to spare.
CLIP_TRAIN_IMAGES = 8_000
CLIP_STEPS = 600
CAPTIONER_TRAIN_IMAGES = 6_000
CAPTIONER_STEPS = 1_500


def _write_card(out: Path, name: str, entry: dict) -> None:
    """Add (or replace) one model's entry in ``out/weights_card.json``."""
    path = out / CARD
    card = json.loads(storage.read_bytes(path)) if storage.exists(path) else {}
    card.update({"label": LABEL, "trained_on": TRAINED_ON, name: entry})
    storage.write_bytes(path, (json.dumps(card, indent=1, sort_keys=True) + "\n").encode())


def train_clip_model(out: Path, log: Callable[[str], None]) -> dict:
    from vlcurate.demo import train_clip

    t0 = time.time()
    path = train_clip.train_clip(out, CLIP_TRAIN_IMAGES, CLIP_STEPS, log=log)
    seconds = time.time() - t0
    metrics = train_clip.evaluate(train_clip.heldout_scores(path))
    log(f"clip: held-out ({domain.HELDOUT_SIZE} images, seed {domain.HELDOUT_SEED}): "
        + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    entry = {
        "model": train_clip.MODEL, "path": path.name, "sha256": {path.name: file_sha256(path)},
        "threshold": metrics["threshold"], "threshold_rule": f"keeps {train_clip.KEEP_TRUE:.1%} of held-out true captions",
        "heldout": {"images": domain.HELDOUT_SIZE, "seed": domain.HELDOUT_SEED, **metrics},
        "train": {"images": CLIP_TRAIN_IMAGES, "seed": domain.TRAIN_SEED, "steps": CLIP_STEPS,
                  "seconds": round(seconds, 1)},
    }
    _write_card(out, "clip", entry)
    return entry


def train_captioner_model(out: Path, log: Callable[[str], None]) -> dict:
    from vlcurate.demo import train_captioner

    t0 = time.time()
    path = train_captioner.train_captioner(out, CAPTIONER_TRAIN_IMAGES, CAPTIONER_STEPS, log=log)
    seconds = time.time() - t0
    metrics = train_captioner.evaluate(path)
    log(f"captioner: held-out ({domain.HELDOUT_SIZE} images, seed {domain.HELDOUT_SEED}, through synthetic_captions): "
        + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    files = sorted(path / f.path for f in storage.list_files(path))
    entry = {
        "model": train_captioner.MODEL, "path": path.name,
        "sha256": {str(p.relative_to(out)): file_sha256(p) for p in files},
        "architecture": "VisionEncoderDecoderModel: vlc-conv-encoder (64 px, 16 tokens) + 2-layer GPT-2 (width 128), "
                        "word-level vocabulary of the domain",
        "heldout": {"images": domain.HELDOUT_SIZE, "seed": domain.HELDOUT_SEED,
                    "nucleus_top_p": train_captioner.NUCLEUS_TOP_P, "nucleus_per_image": 5, **metrics},
        "train": {"images": CAPTIONER_TRAIN_IMAGES, "seed": domain.TRAIN_SEED, "steps": CAPTIONER_STEPS,
                  "seconds": round(seconds, 1)},
    }
    _write_card(out, "captioner", entry)
    return entry


def train_models(out: Path, models: tuple[str, ...] = MODELS, threads: int = 2,
                 log: Callable[[str], None] = functools.partial(print, flush=True)) -> dict[str, dict]:
    import torch

    unknown = set(models) - set(MODELS)
    if unknown:
        raise UserError(f"--models: unknown demo models {sorted(unknown)}; known: {', '.join(MODELS)}")
    torch.set_num_threads(threads)
    log(f"training {', '.join(models)} on {threads} CPU threads ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}; output {out}")
    t0 = time.time()
    trainers = {"clip": train_clip_model, "captioner": train_captioner_model}
    done = {name: trainers[name](out, log) for name in models}
    log(f"done in {time.time() - t0:.0f}s; ship with `cp -r {out}/* vlcurate/demo/weights/`")
    return done
