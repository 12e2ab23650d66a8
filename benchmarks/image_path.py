"""The download stage's image path (decode, resize, encode, hash) with each candidate
decoder, side by side in one run on the same images: CPU ms per image and fidelity
against image path 2 (Pillow with a reducing_gap of 2 in the resize, the path the
download issue measured) and today's path (`vlcurate.download.images.ImageProcessor`).

usage: python benchmarks/image_path.py [N] [--corpus DIR] [--rounds R] [--size 256] [--mode border]

- the images: the ok files of ``../shared/bench/download/make_corpus.py N DIR`` (made
  here if DIR has none): JPEG 70% / PNG 15% / WebP 15%, 64-4000 px, the download
  benchmark's corpus;
- every candidate does what a download worker does per image: the bomb/size checks on
  the header (Pillow, lazy: no pixel decoded), decode (at reduced scale where the
  library can), resize to the same target size as today, pad (``border``), encode JPEG
  quality 95 with 4:2:0 chroma, then sha256 and the pHash of the stored bytes (the
  same code for all);
- CPU: ``time.process_time`` of one thread over all images, best of ``--rounds``
  (alternating candidates each round);
- fidelity vs image path 2 (the first row): the mean absolute difference of the stored images' pixels (grey
  levels, 0-255, over all pixels of all images) and the largest per-image mean; and
  whether every image got the same outcome (ok, or the same error kind).

The candidates that are not project dependencies are imported if present:
``pip install --target /tmp/imgpath-deps pyvips==3.2.0 pyvips-binary==8.18.7
simplejpeg==1.9.0`` and run with ``PYTHONPATH=/tmp/imgpath-deps`` (numpy from the
project's venv).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vlcurate.download import images
from vlcurate.download.images import (
    ALLOWED_FORMATS,
    ImageConfig,
    ImageProcessor,
    draft_request,
    stored_phash,
)

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO.parent / "shared" / "bench" / "download"
Outcome = tuple[str | None, bytes | None]  # (error kind, stored bytes)


def corpus(n: int, where: Path) -> list[bytes]:
    files = where / "files"
    if not files.is_dir():
        subprocess.run([sys.executable, str(BENCH / "make_corpus.py"), str(n), str(where)], check=True,
                       stdout=subprocess.DEVNULL)
    names = sorted(p for p in files.iterdir() if p.suffix in (".jpg", ".png", ".webp"))[:n]
    return [p.read_bytes() for p in names]


class Candidate:
    """Shared frame: header checks (as today), then ``decode_resize`` -> RGB array of
    the final size, Pillow-free JPEG/pad/encode where the library has them."""

    name = "?"

    def __init__(self, config: ImageConfig) -> None:
        self.config = config
        self.today = ImageProcessor(config)

    def header(self, data: bytes) -> tuple[str | None, Image.Image | None]:
        try:
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except Image.DecompressionBombError:
            return "bomb", None
        except Exception:  # noqa: BLE001
            return "not_an_image", None
        w, h = img.size
        if w * h > self.config.max_pixels:
            return "bomb", None
        return None, img

    def __call__(self, data: bytes) -> Outcome:
        raise NotImplementedError

    def finish(self, encoded: bytes) -> Outcome:
        hashlib.sha256(encoded).hexdigest()
        stored_phash(encoded)
        return None, encoded

    def target(self, w: int, h: int) -> tuple[int, int]:
        return self.today.target_size(w, h)


class Pillow(Candidate):
    name = "today (image path 3)"

    def __call__(self, data: bytes) -> Outcome:
        r = self.today(data)
        return r.error_kind, r.data


class PillowPath2(Pillow):
    """Today's code as image path 2 was: the resize's reducing_gap 2 (Image.thumbnail's
    recipe) and every WebP decoded by Pillow: the path the download issue measured
    against."""

    name = "pillow, image path 2"

    def __call__(self, data: bytes) -> Outcome:
        gap, webp = images._DOWN_GAP, images.plain_webp
        images._DOWN_GAP, images.plain_webp = 2.0, lambda _: None
        try:
            return super().__call__(data)
        finally:
            images._DOWN_GAP, images.plain_webp = gap, webp


class OpenCV(Candidate):
    """cv2.imdecode with IMREAD_REDUCED_COLOR_{2,4,8} for JPEG (libjpeg-turbo DCT
    scaling, >= 2x the target as today), full decode otherwise; INTER_AREA resize."""

    name = "opencv reduced"

    def __init__(self, config: ImageConfig) -> None:
        import cv2
        self.cv2 = cv2
        super().__init__(config)

    def __call__(self, data: bytes) -> Outcome:
        cv2 = self.cv2
        kind, img = self.header(data)
        if kind:
            return kind, None
        w, h = img.size
        flag = cv2.IMREAD_COLOR
        if img.format == "JPEG" and (req := draft_request(w, h, self.config)):
            factor = min(w / req[0], h / req[1])
            flag = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4,
                    2: cv2.IMREAD_REDUCED_COLOR_2}.get(next((f for f in (8, 4, 2) if f <= factor), 1), flag)
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
        if arr is None:
            return "decode_error", None
        tw, th = self.target(w, h)
        arr = cv2.resize(arr, (tw, th), interpolation=cv2.INTER_AREA)
        arr = _pad(arr, self.config, value=255)
        ok, buf = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, self.config.encode_quality,
                                             cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420])
        return self.finish(buf.tobytes())


class SimpleJPEG(Candidate):
    """simplejpeg (libjpeg-turbo) scaled decoding and encoding for JPEG; Pillow resize;
    other formats through today's path."""

    name = "simplejpeg + pillow resize"

    def __init__(self, config: ImageConfig) -> None:
        import simplejpeg
        self.sj = simplejpeg
        super().__init__(config)

    def __call__(self, data: bytes) -> Outcome:
        kind, img = self.header(data)
        if kind:
            return kind, None
        if img.format != "JPEG" or img.mode != "RGB":
            r = self.today(data)
            return r.error_kind, r.data
        w, h = img.size
        req = draft_request(w, h, self.config) or (w, h)
        try:
            arr = self.sj.decode_jpeg(data, colorspace="RGB", min_width=req[0], min_height=req[1])
        except ValueError:
            return "decode_error", None
        out = Image.fromarray(arr).resize(self.target(w, h), Image.Resampling.BICUBIC, reducing_gap=2.0)
        arr = _pad(np.asarray(out), self.config, value=255)
        return self.finish(self.sj.encode_jpeg(np.ascontiguousarray(arr), self.config.encode_quality,
                                               colorspace="RGB", colorsubsampling="420"))


class Vips(Candidate):
    """libvips thumbnail (shrink-on-load for JPEG and WebP), flatten on white, pad,
    jpegsave 4:2:0 (as Pillow's default)."""

    name = "pyvips thumbnail"

    def __init__(self, config: ImageConfig) -> None:
        import pyvips
        self.vips = pyvips
        pyvips.cache_set_max(0)  # a download worker never sees the same image twice
        super().__init__(config)

    def __call__(self, data: bytes) -> Outcome:
        kind, img = self.header(data)
        if kind:
            return kind, None
        tw, th = self.target(*img.size)
        try:
            v = self.vips.Image.thumbnail_buffer(data, tw, height=th, size="force", no_rotate=True)
            if v.hasalpha():
                v = v.flatten(background=[255, 255, 255])
            if v.bands < 3:
                v = v.colourspace("srgb")
            s = self.config.image_size
            if self.config.resize_mode == "border" and (v.width, v.height) != (s, s):
                v = v.embed((s - v.width) // 2, (s - v.height) // 2, s, s, extend="background",
                            background=[255, 255, 255])
            encoded = v.jpegsave_buffer(Q=self.config.encode_quality, subsample_mode="on", keep="none")
        except self.vips.Error:
            return "decode_error", None
        return self.finish(encoded)


def _pad(arr: np.ndarray, config: ImageConfig, value: int) -> np.ndarray:
    s = config.image_size
    if config.resize_mode != "border" or arr.shape[:2] == (s, s):
        return arr
    canvas = np.full((max(s, arr.shape[0]), max(s, arr.shape[1]), 3), value, np.uint8)
    top, left = (canvas.shape[0] - arr.shape[0]) // 2, (canvas.shape[1] - arr.shape[1]) // 2
    canvas[top:top + arr.shape[0], left:left + arr.shape[1]] = arr
    return canvas


def pixels(encoded: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(encoded)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=300)
    ap.add_argument("--corpus", type=Path, default=Path("/tmp/vlcurate-imgpath"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--mode", default="border")
    args = ap.parse_args()
    images = corpus(args.n, args.corpus)
    config = ImageConfig(image_size=args.size, resize_mode=args.mode)
    candidates: list[Candidate] = [PillowPath2(config), Pillow(config)]
    for cls in (OpenCV, SimpleJPEG, Vips):
        try:
            candidates.append(cls(config))
        except ImportError as e:
            print(f"# {cls.name}: not installed ({e})")
    formats = ["jpg" if d[:3] == b"\xff\xd8\xff" else "png" if d[:4] == b"\x89PNG" else "webp"
               for d in images]
    best: dict[str, float] = {c.name: math.inf for c in candidates}
    per_format: dict[str, dict[str, float]] = {}
    outputs: dict[str, list[Outcome]] = {}
    for r in range(args.rounds):
        order = candidates if r % 2 == 0 else candidates[::-1]
        for c in order:
            spent = {f: 0.0 for f in ("jpg", "png", "webp")}
            out = []
            for d, f in zip(images, formats):
                t0 = time.process_time()
                out.append(c(d))
                spent[f] += time.process_time() - t0
            outputs[c.name] = out
            if sum(spent.values()) < best[c.name]:
                best[c.name], per_format[c.name] = sum(spent.values()), spent
    base = outputs[candidates[0].name]
    count = {f: formats.count(f) for f in ("jpg", "png", "webp")}
    print(f"# {len(images)} images ({count}), target {args.size} {args.mode}, JPEG q{config.encode_quality}, "
          f"best of {args.rounds} rounds, one thread")
    print("| candidate | CPU ms/image | vs path 2 | JPEG | PNG | WebP | mean abs diff (grey levels) "
          "| worst image | same outcomes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    t_base = best[candidates[0].name]
    for c in candidates:
        diffs, sizes, same = [], [], True
        for (k0, b0), (k1, b1) in zip(base, outputs[c.name]):
            same &= k0 == k1
            if b0 is not None and b1 is not None:
                p0, p1 = pixels(b0), pixels(b1)
                if p0.shape != p1.shape:
                    same = False
                    continue
                diffs.append(float(np.abs(p0 - p1).mean()))
                sizes.append(p0.size)
        mean = sum(d * s for d, s in zip(diffs, sizes)) / max(1, sum(sizes))
        fmt = " | ".join(f"{1000 * per_format[c.name][f] / max(1, count[f]):.1f}" for f in ("jpg", "png", "webp"))
        print(f"| {c.name} | {1000 * best[c.name] / len(images):.2f} | {t_base / best[c.name]:.2f}x | {fmt} | "
              f"{mean:.2f} | {max(diffs, default=0):.2f} | {'yes' if same else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
