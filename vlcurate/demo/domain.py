"""The demo's image domain as training and evaluation data for the demo-domain models.

Images come from the demo corpus's own generator (:func:`vlcurate.demo.corpus._draw`,
same sizes, colours, shapes and encodings) under seeds the demo corpus never uses (it
uses seed 0), and pass through the download stage's own decoding and resizing
(:class:`~vlcurate.download.images.ImageProcessor` with the demo recipe's settings),
so a model sees here exactly what it sees in a built demo version.

Captions follow the corpus: ``"a {colour} {shape} on a {background} background"``.
Negatives for evaluation: the caption of another image, the true caption with another
shape colour (``wrong_colour``), with another shape (``wrong_shape``).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from vlcurate.demo.corpus import COLORS, SHAPES, Served, _draw, _encode
from vlcurate.download.images import ImageConfig, ImageProcessor

# The demo corpus uses seed 0; these streams are disjoint from it by construction.
TRAIN_SEED = 15_001
HELDOUT_SEED = 15_002
HELDOUT_SIZE = 400
NEGATIVE_KINDS = ("other_image", "wrong_colour", "wrong_shape")
# What the demo recipe's download stage does to every image (vlcurate.demo.run).
DOWNLOAD = ImageConfig(image_size=128, resize_mode="keep_ratio")
_NAMES = list(COLORS)


def caption(color: str, shape: str, background: str) -> str:
    return f"a {color} {shape} on a {background} background"


@dataclass(frozen=True)
class DomainSample:
    """One generated image: the bytes the demo server would serve and its true labels."""

    body: bytes
    fmt: str  # "JPEG" or "PNG"
    color: str
    shape: str
    background: str

    @property
    def caption(self) -> str:
        return caption(self.color, self.shape, self.background)

    def stored(self) -> Image.Image:
        """The image as the download stage stores it (decoded, resized, re-encoded)."""
        processed = ImageProcessor(DOWNLOAD)(self.body)
        if processed.data is None:  # our own generator's output: a bug, not a sample problem
            raise RuntimeError(f"generated image rejected: {processed.error_message}")
        return Image.open(io.BytesIO(processed.data)).convert("RGB")


def samples(n: int, seed: int) -> list[DomainSample]:
    """``n`` images drawn as the demo corpus draws them (colour and background
    distinct, every fifth PNG), reproducible from ``seed``."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        color, background = rng.sample(_NAMES, 2)
        shape = rng.choice(SHAPES)
        fmt = "PNG" if i % 5 == 0 else "JPEG"
        out.append(DomainSample(_encode(_draw(rng, color, shape, background), fmt), fmt, color, shape, background))
    return out


def negatives(batch: list[DomainSample], seed: int) -> dict[str, list[str]]:
    """One wrong caption of each kind per sample (``NEGATIVE_KINDS``)."""
    rng = random.Random(seed)
    n = len(batch)
    other = []
    for i, s in enumerate(batch):
        j = rng.randrange(n - 1)
        j = j + 1 if j >= i else j
        # another image's caption; if it happens to read the same, it is not a negative
        while batch[j].caption == s.caption:
            j = rng.randrange(n)
        other.append(batch[j].caption)
    colour = [caption(rng.choice([c for c in _NAMES if c != s.color]), s.shape, s.background) for s in batch]
    shape = [caption(s.color, rng.choice([x for x in SHAPES if x != s.shape]), s.background) for s in batch]
    return {"other_image": other, "wrong_colour": colour, "wrong_shape": shape}


@lru_cache(maxsize=1)
def heldout() -> tuple[list[DomainSample], dict[str, list[str]]]:
    """The held-out evaluation set the training script reports on (and tests re-check)."""
    batch = samples(HELDOUT_SIZE, HELDOUT_SEED)
    return batch, negatives(batch, HELDOUT_SEED + 1)


def served_files(batch: list[DomainSample]) -> tuple[dict[str, Served], list[dict]]:
    """``batch`` as the demo server's files and URL rows (url path, caption, kind)."""
    files, rows = {}, []
    for i, s in enumerate(batch):
        ext = "png" if s.fmt == "PNG" else "jpg"
        path = f"/heldout/{i:04d}.{ext}"
        files[path] = Served(200, f"image/{'png' if ext == 'png' else 'jpeg'}", s.body)
        rows.append({"url": path, "caption": s.caption, "kind": "heldout"})
    return files, rows


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half):
    the ROC AUC, by ranks (Mann-Whitney U)."""
    from scipy.stats import rankdata

    pos, neg = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    ranks = rankdata(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))
