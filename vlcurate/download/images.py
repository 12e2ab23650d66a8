"""Decode, check, resize and re-encode downloaded images; hash what is stored.

Plain Python, no Beam. `ImageProcessor(config)(data)` never raises on bad bytes:
every input becomes a `ProcessedImage` whose `error_kind` says why it was
rejected (see `IMAGE_ERROR_KINDS`).

Order of work, cheapest rejection first:
1. `Image.open` reads only the header (lazy), restricted to common web formats. A
   still WebP without EXIF or ICC profile is read from its first chunk's header
   instead and decoded by OpenCV (`webp.py`): the same pixels, ~30% less CPU.
2. Pixel count, smallest side and aspect ratio are checked on the header size,
   before any pixel is decoded (decompression bombs never reach the decoder).
3. JPEGs are decoded at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling) when the
   target still gets enough pixels: the main speed lever for large photos.
4. EXIF orientation, mode normalisation to RGB (alpha composited on white,
   16-bit scaled, ICC profiles converted to sRGB), resize, encode.

Global PIL state is left alone. PIL's own bomb guard (`Image.MAX_IMAGE_PIXELS`,
~89M pixels) runs inside `Image.open` before ours: above twice that limit it
raises and we report `bomb`; between the limit and `max_pixels` it only emits a
DecompressionBombWarning (shown once by Python's default filter) and our check
decides. A `max_pixels` above PIL's hard limit is refused at construction: raise
`PIL.Image.MAX_IMAGE_PIXELS` in your process first if you really want that.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageOps

from vlcurate.download.webp import decode_webp, plain_webp
from vlcurate.typed import FieldError, bounded, check_bounds

RESIZE_MODES = ("no", "keep_ratio", "center_crop", "border")
ENCODE_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
IMAGE_ERROR_KINDS = ("not_an_image", "decode_error", "bomb", "too_small", "bad_aspect_ratio")

# Formats we decode. Image.open would otherwise try ~40 plugins, some exotic or
# (EPS) shelling out to Ghostscript: needless attack surface for web images.
# Only those this Pillow build has: Image.open raises KeyError for an unknown name.
Image.init()
ALLOWED_FORMATS = tuple(f for f in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "ICO")
                        if f in Image.OPEN)
# Leading bytes of those formats: a file that starts like an image but does not
# open is corrupt (decode_error), anything else is not an image at all.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF87a", b"GIF89a", b"BM", b"II*\x00",
               b"MM\x00*", b"\x00\x00\x01\x00")
# Decode JPEGs at no less than this multiple of the target (same idea as
# Image.thumbnail's reducing_gap): the final resampling pass then still sees enough
# pixels to anti-alias, so quality matches a full decode at a fraction of the cost.
DRAFT_REDUCING_GAP = 2.0
# Resizing is BICUBIC (CLIP's preprocessing filter), antialiased when downscaling,
# with reducing_gap=1.5: a fast integer box reduction (Image.reduce) while the image is
# still >= 1.5x the target, then BICUBIC over the last 1.5x-3x. On the download
# benchmark's first 800 images the resize takes ~23% less CPU than with reducing_gap=2
# (Image.thumbnail's recipe, image path 2); the stored pixels are 0.12 grey levels from a
# plain BICUBIC of the full decode (worst image 0.78) and 0.14 from path 2 (worst 0.72).
# On textured images the box reduction shows more: up to 1.1 grey levels from path 2
# (tests/download/test_images.py); reducing_gap=1, which was tried, reached 2.5 there.
_DOWN_GAP = 1.5
_WHITE = (255, 255, 255)
_ORIENTATION = 0x0112  # EXIF tag: 1 (or absent, or 0 = invalid) means as stored
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@dataclass(frozen=True)
class ImageConfig:
    """How to check, resize and encode. Validated on construction (ValueError)."""

    image_size: int = bounded(256, ge=1)
    # "no": keep size; "keep_ratio": smallest side -> image_size; "center_crop":
    # keep_ratio then centre square crop; "border": fit inside the square, pad white.
    resize_mode: str = "keep_ratio"
    resize_only_if_bigger: bool = False  # never upscale (crop/pad still apply)
    min_image_size: int = bounded(0, ge=0)  # smallest side of the ORIGINAL below this -> too_small
    max_aspect_ratio: float = bounded(float("inf"), ge=1)  # long side / short side above this -> bad_aspect_ratio
    max_pixels: int = bounded(100_000_000, ge=1)  # width*height from the header above this -> bomb
    encode_format: str = "jpg"  # "jpg" | "png" | "webp"
    encode_quality: int = bounded(95, ge=1, le=100)  # jpg/webp quality; ignored for png
    reduced_decode: bool = True  # JPEG draft-mode decoding at 1/2, 1/4, 1/8 when the target allows

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise FieldError("resize_mode", f"expected one of {', '.join(map(repr, RESIZE_MODES))}, "
                             f"got {self.resize_mode!r}")
        if self.encode_format not in ENCODE_FORMATS:
            raise FieldError("encode_format", f"expected one of {', '.join(map(repr, ENCODE_FORMATS))}, "
                             f"got {self.encode_format!r}")
        check_bounds(self)
        # Cooperative: a config inheriting from several configs validates them all.
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()


@dataclass(frozen=True)
class ProcessedImage:
    """Result for one input. `data` is set exactly when `error_kind` is None.
    original_* are the full-resolution size as displayed (EXIF orientation
    applied); for rejections made from the header alone they are in stored order."""

    data: bytes | None
    width: int | None
    height: int | None
    original_width: int | None
    original_height: int | None
    sha256: str | None  # hex of the STORED (encoded) bytes
    phash: str | None  # DCT pHash of the stored image, 16 hex chars (see stored_phash())
    error_kind: str | None  # None or one of IMAGE_ERROR_KINDS
    error_message: str | None  # one line


def _reject(kind: str, message: str, size: tuple[int, int] | None = None) -> ProcessedImage:
    w, h = size if size else (None, None)
    return ProcessedImage(None, None, None, w, h, None, None, kind, " ".join(str(message).split())[:300])


def phash(img: Image.Image) -> str:
    """64-bit DCT perceptual hash as 16 hex chars (original pHash convention).

    Grayscale, resize to 32x32 (LANCZOS), 2-D DCT-II, keep the 8x8 lowest
    frequencies *excluding* row 0 and column 0 (the DC term and the flat
    horizontal/vertical components, which mostly encode overall brightness),
    bit = coefficient > median of those 64, row-major, most significant first.
    Compare hashes with `hamming_distance`.
    """
    from scipy.fft import dctn  # imported here: only hashing needs scipy

    small = img.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    coeffs = dctn(np.asarray(small, dtype=np.float64), type=2, norm="ortho")[1:9, 1:9]
    bits = (coeffs > np.median(coeffs)).flatten()  # row-major, first bit most significant
    return np.packbits(bits).tobytes().hex()


def stored_phash(data: bytes) -> str:
    """:func:`phash` of stored image bytes. A JPEG is decoded at reduced scale, straight
    from its DCT (Pillow's draft, greyscale, at least 64x64): the hash looks at 32x32
    pixels, and a full decode plus a LANCZOS resize of the whole image cost twice as much
    CPU for a hash that differs by 0.23 bits on average (at most 2, on the download
    benchmark's 400 first images)."""
    with Image.open(io.BytesIO(data)) as stored:
        if stored.format == "JPEG":
            stored.draft("L", (64, 64))
        return phash(stored)


# Which code decides the stored bytes, for the manifest (a different decoder, resize or
# encoder changes stored bytes, sha256 and pHash): bump IMAGE_PATH_VERSION when it does.
# 1: Pillow decodes (JPEG at reduced scale), BICUBIC resize with reducing_gap 2, encodes.
# 2: as 1, and the pHash of a stored JPEG is taken from a reduced-scale decode (stored_phash).
# 3: as 2, the resize's reducing_gap 1.5 instead of 2 (_DOWN_GAP); a still WebP without EXIF
#    or ICC profile is decoded by OpenCV (plain_webp: the same pixels as Pillow's).
IMAGE_PATH_VERSION = 3


def image_path_info() -> dict[str, object]:
    """The image path's version and the versions of the libraries behind it."""
    from PIL import features

    import cv2

    return {"image_path": IMAGE_PATH_VERSION, "decoder": "pillow; opencv for plain still WebP",
            "pillow": Image.__version__, "opencv": cv2.__version__,
            "libjpeg": str(features.version("jpg")), "libwebp": str(features.version("webp")),
            "zlib": str(features.version("zlib"))}


def hamming_distance(a: str, b: str) -> int:
    """Number of differing bits between two hex hashes of the same length."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def draft_request(width: int, height: int, config: ImageConfig) -> tuple[int, int] | None:
    """Size to pass to JPEG `draft()` so that the decoded image still has at least
    DRAFT_REDUCING_GAP x the pixels the resize needs, or None if decoding cannot
    be reduced (draft only scales by 1/2, 1/4, 1/8 and never below the request)."""
    if not config.reduced_decode or config.resize_mode == "no":
        return None
    if config.resize_mode == "border":  # the long side must reach image_size
        scale = config.image_size / max(width, height)
    else:  # keep_ratio / center_crop: the short side must reach image_size
        scale = config.image_size / min(width, height)
    scale *= DRAFT_REDUCING_GAP
    if scale > 0.5:  # not even a 1/2 reduction would leave enough pixels
        return None
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


class ImageProcessor:
    """Callable turning downloaded bytes into a stored image plus metadata.
    Stateless after construction; safe to share between threads."""

    def __init__(self, config: ImageConfig) -> None:
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and config.max_pixels > 2 * limit:
            raise ValueError(
                f"ImageConfig.max_pixels={config.max_pixels} exceeds PIL's hard limit "
                f"2*Image.MAX_IMAGE_PIXELS={2 * limit}; raise PIL.Image.MAX_IMAGE_PIXELS first")
        self.config = config

    def __call__(self, data: bytes) -> ProcessedImage:
        """Process one downloaded body. Never raises on bad bytes."""
        if not data:
            return _reject("not_an_image", "empty body")
        if (plain := plain_webp(data)) is not None:
            w, h, channels = plain
            if rejected := self._check_size(w, h):
                return rejected
            if (img := decode_webp(data, channels, (w, h))) is not None:
                return self._store(img, w, h)
            # anything OpenCV does not decode goes to Pillow, whose outcome it gets
        try:
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except Image.DecompressionBombError as e:
            return _reject("bomb", str(e))
        except Exception as e:  # noqa: BLE001 - UnidentifiedImageError or a plugin's own error
            if data.startswith(_SIGNATURES) or data[8:12] in (b"WEBP", b"avif", b"avis"):
                return _reject("decode_error", f"corrupt header: {e}")
            head = data[:40].decode("ascii", "replace")
            return _reject("not_an_image", f"unrecognised data starting {head!r}")
        with img:
            return self._process(img)

    def _process(self, img: Image.Image) -> ProcessedImage:
        cfg = self.config
        w, h = img.size
        if rejected := self._check_size(w, h):
            return rejected
        if img.format in ("JPEG", "MPO"):  # MPO (multi-picture JPEG) shares the decoder
            request = draft_request(w, h, cfg)
            if request is not None:
                img.draft("RGB", request)
        try:
            img.load()
        except Image.DecompressionBombError as e:
            return _reject("bomb", str(e), (w, h))
        except Exception as e:  # noqa: BLE001 - truncated/corrupt data, recorded
            return _reject("decode_error", f"{type(e).__name__}: {e}", (w, h))
        return self._store(img, w, h)

    def _check_size(self, w: int, h: int) -> ProcessedImage | None:
        """The checks made on the header's size, before any pixel is decoded."""
        cfg = self.config
        if w < 1 or h < 1:
            return _reject("decode_error", f"invalid size {w}x{h}")
        # The pre-decode checks are symmetric in w/h, so EXIF rotation can wait.
        if w * h > cfg.max_pixels:
            return _reject("bomb", f"{w}x{h} = {w * h} pixels > max_pixels {cfg.max_pixels}", (w, h))
        if min(w, h) < cfg.min_image_size:
            return _reject("too_small", f"{w}x{h}: smallest side < {cfg.min_image_size}", (w, h))
        if max(w, h) / min(w, h) > cfg.max_aspect_ratio:
            return _reject("bad_aspect_ratio",
                           f"{w}x{h}: aspect ratio {max(w, h) / min(w, h):.2f} > {cfg.max_aspect_ratio}", (w, h))
        return None

    def _store(self, img: Image.Image, w: int, h: int) -> ProcessedImage:
        """Decoded pixels (w x h the original's header size) -> the stored image."""
        try:
            loaded = img.size
            img = _transpose(img)
            if img.size != loaded:  # rotated by 90 degrees: the original is too
                w, h = h, w
            rgb = _to_rgb(img)
            out = self._resize(rgb, (w, h))
            encoded = self._encode(out)
            stored_hash = stored_phash(encoded)
        except Exception as e:  # noqa: BLE001 - odd modes/broken data found late, recorded
            return _reject("decode_error", f"{type(e).__name__}: {e}", (w, h))
        return ProcessedImage(encoded, out.width, out.height, w, h,
                              hashlib.sha256(encoded).hexdigest(), stored_hash, None, None)

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """Size after resizing (before crop/pad) an image of width x height."""
        cfg, s = self.config, self.config.image_size
        if cfg.resize_mode == "no":
            return width, height
        short, long = min(width, height), max(width, height)
        if cfg.resize_mode == "border":
            if cfg.resize_only_if_bigger and long <= s:
                return width, height
            other = max(1, round(short * s / long))
            return (s, other) if width >= height else (other, s)
        if cfg.resize_only_if_bigger and short <= s:
            return width, height
        other = max(1, round(long * s / short))
        return (s, other) if width <= height else (other, s)

    def _resize(self, img: Image.Image, original: tuple[int, int]) -> Image.Image:
        # Sizes come from the original dimensions, not the (possibly drafted)
        # decoded ones, so reduced decoding never changes the output size.
        cfg, s = self.config, self.config.image_size
        size = self.target_size(*original)
        if size != img.size:
            img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=_DOWN_GAP)
        if cfg.resize_mode == "center_crop":
            side = min(img.size)
            left, top = (img.width - side) // 2, (img.height - side) // 2
            img = img.crop((left, top, left + side, top + side))
        elif cfg.resize_mode == "border" and img.size != (s, s):
            canvas = Image.new("RGB", (max(s, img.width), max(s, img.height)), _WHITE)
            canvas.paste(img, ((canvas.width - img.width) // 2, (canvas.height - img.height) // 2))
            img = canvas
        return img

    def _encode(self, img: Image.Image) -> bytes:
        # A fresh info dict: no EXIF/ICC/comments are written (privacy, size, and
        # the pixels are already sRGB), and equal pixels give equal bytes.
        img.info = {}
        buf = io.BytesIO()
        fmt = ENCODE_FORMATS[self.config.encode_format]
        if fmt == "PNG":
            img.save(buf, fmt)
        else:
            img.save(buf, fmt, quality=self.config.encode_quality)
        return buf.getvalue()


def _transpose(img: Image.Image) -> Image.Image:
    try:
        # exif_transpose returns a full copy even when nothing needs turning: ask first.
        if img.getexif().get(_ORIENTATION, 1) in (0, 1):
            return img
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block shouldn't cost the image
        return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB in sRGB; transparency composited on white."""
    icc = img.info.get("icc_profile")
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        # PIL's convert("L") clips 16-bit values at 255 (a white image): scale instead.
        arr = np.asarray(img)
        if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
            arr = np.clip(arr, 0, 65535).astype(np.uint32) >> 8
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        background.alpha_composite(rgba)
        img = background
    if icc and img.mode in ("RGB", "RGBA", "CMYK"):
        converted = _to_srgb(img, icc)
        if converted is not None:
            return converted
    return img if img.mode == "RGB" else img.convert("RGB")


def _to_srgb(img: Image.Image, icc: bytes) -> Image.Image | None:
    """Convert with the embedded ICC profile (CMYK, Adobe RGB, Display P3...) to
    sRGB; None when the profile is sRGB already or unusable (naive convert then)."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if "srgb" in ImageCms.getProfileDescription(profile).lower():
            return None
        source = img if img.mode != "RGBA" else img.convert("RGB")
        return ImageCms.profileToProfile(source, profile, _SRGB, outputMode="RGB")
    except Exception:  # noqa: BLE001 - a bad profile falls back to naive conversion
        return None
