"""A deterministic sample corpus, made at run time: images, captions and the faults
a web corpus has (broken URLs, server errors, non-images, truncated files, exact
duplicates under other URLs, captions that describe another image, empty captions).

``make_corpus()`` returns the files to serve and the URL list rows; the same seed
always gives the same bytes.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
    "purple": (140, 60, 170), "orange": (245, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")

# kind -> how many rows of that kind (the rest are plain "ok" rows)
FAULTS = {
    "404": 8, "500": 4, "html": 4, "truncated": 4, "duplicate": 14,
    "mismatched": 14, "empty_caption": 4, "short_caption": 4,
}


@dataclass(frozen=True)
class Served:
    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True)
class Corpus:
    files: dict[str, Served]  # URL path -> response
    rows: list[dict]          # url path (no host), caption, kind


def _draw(rng: random.Random, color: str, shape: str, background: str) -> Image.Image:
    w, h = rng.randint(96, 640), rng.randint(96, 640)
    img = Image.new("RGB", (w, h), COLORS[background])
    draw = ImageDraw.Draw(img)
    s = min(w, h) * rng.uniform(0.4, 0.8)
    cx, cy = w / 2 + rng.uniform(-0.1, 0.1) * w, h / 2 + rng.uniform(-0.1, 0.1) * h
    _shape(draw, shape, cx, cy, s, COLORS[color])
    return img


def _shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, s: float, fill: tuple[int, int, int]) -> None:
    box = [cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)


def draw_scene(rng: random.Random, size: tuple[int, int] = (96, 72), shapes: tuple[int, int] = (10, 20)) -> Image.Image:
    """A picture in the demo's palette and shapes with ``shapes`` (min, max) shapes
    at random places: the same style as the corpus's pictures with enough structure to
    tell two of them apart (near-duplicate measurements use it for originals and for
    hard negatives)."""
    w, h = size
    names = list(COLORS)
    img = Image.new("RGB", size, COLORS[rng.choice(names)])
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(*shapes)):
        _shape(draw, rng.choice(SHAPES), rng.uniform(0, w), rng.uniform(0, h), min(w, h) * rng.uniform(0.2, 0.6),
               COLORS[rng.choice(names)])
    return img


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def make_corpus(n: int = 240, seed: int = 0) -> Corpus:
    """``n`` rows (at least 200 recommended) with every fault kind of FAULTS."""
    if n < sum(FAULTS.values()) + 10:
        raise ValueError(f"corpus size {n} is too small for the fault mix")
    rng = random.Random(seed)
    kinds = [k for k, c in FAULTS.items() for _ in range(c)]
    kinds += ["ok"] * (n - len(kinds) - 5)
    rng.shuffle(kinds)
    kinds = ["ok"] * 5 + kinds  # a duplicate needs an earlier original to copy
    files: dict[str, Served] = {}
    rows: list[dict] = []
    originals: list[tuple[str, str]] = []  # (path, caption) of served images
    names = list(COLORS)
    for i, kind in enumerate(kinds):
        color, background = rng.sample(names, 2)
        shape = rng.choice(SHAPES)
        caption = f"a {color} {shape} on a {background} background"
        fmt = "PNG" if i % 5 == 0 else "JPEG"
        path = f"/img/{i:04d}.{'png' if fmt == 'PNG' else 'jpg'}"
        ctype = "image/png" if fmt == "PNG" else "image/jpeg"
        if kind == "404":
            path = f"/missing/{i:04d}.jpg"
        elif kind == "500":
            path = f"/error/{i:04d}.jpg"
            files[path] = Served(500, "text/plain", b"internal error")
        elif kind == "html":
            path = f"/page/{i:04d}.jpg"
            files[path] = Served(200, "text/html", b"<html><body>not an image</body></html>")
        elif kind == "duplicate":
            src_path, caption = rng.choice(originals)
            path = f"/mirror/{i:04d}.{src_path.rsplit('.', 1)[1]}"
            files[path] = files[src_path]
        else:
            body = _encode(_draw(rng, color, shape, background), fmt)
            if kind == "truncated":
                body = body[: len(body) // 3]
            files[path] = Served(200, ctype, body)
            if kind == "mismatched":  # the caption describes some other picture
                other = rng.choice([s for s in SHAPES if s != shape])
                caption = f"a {rng.choice([c for c in names if c != color])} {other} on a {background} background"
            elif kind == "empty_caption":
                caption = ""
            elif kind == "short_caption":
                caption = "img"
            if kind in ("ok", "mismatched"):
                originals.append((path, caption))
        rows.append({"url": path, "caption": caption, "kind": kind})
    return Corpus(files, rows)
