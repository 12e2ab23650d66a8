"""Pixel decoding of PNG and WebP through OpenCV: the same pixels as Pillow, for less CPU.

Pillow decodes WebP through libwebp's animation decoder (RGBA, then converted) and
PNG through its own zlib loop; OpenCV calls libwebp's and libpng's one-shot decoders.
Both give the very same 8-bit pixels (libwebp and libpng are exact), measured at 3x
less CPU for WebP and 1.7x less for PNG (``benchmarks/image_path.py``). Since the
pixels are identical, so are the stored bytes, sha256 and pHash.

Only the plain cases take this path, everything else (and any image OpenCV fails
on) is decoded by Pillow exactly as before, so every row keeps its outcome:
- the header has been read by Pillow first (format, size, mode: the bomb and size
  checks ran on it, no pixel decoded);
- WebP: still images, mode RGB or RGBA; PNG: 8-bit RGB or RGBA without a ``tRNS``
  chunk, not animated;
- no EXIF (orientation stays Pillow's business);
- OpenCV's result must have the header's size and channel count.
A truncated PNG that Pillow still reads (a missing IEND) fails in OpenCV and goes to
Pillow: the outcome is Pillow's.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

# Recorded in the manifest (download stage info): which library decoded what. The
# image path's version: 1 = Pillow only; 2 = OpenCV for plain PNG/WebP (same pixels).
IMAGE_PATH_VERSION = 2
DECODERS = {"JPEG": "pillow", "PNG": "opencv (8-bit RGB/RGBA), else pillow",
            "WEBP": "opencv (still RGB/RGBA), else pillow", "other": "pillow"}
_TO_RGB = {3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGBA}


def image_path_info() -> dict[str, object]:
    """What the manifest records about the image path: its version, which library
    decodes which format, and their versions (a different libjpeg can change bytes)."""
    from PIL import features

    return {"image_path": IMAGE_PATH_VERSION, "decoders": DECODERS, "pillow": Image.__version__,
            "opencv": cv2.__version__, "libjpeg": str(features.version("jpg")),
            "libwebp": str(features.version("webp")), "zlib": str(features.version("zlib"))}


def _plain(header: Image.Image, data: bytes) -> bool:
    if header.mode not in ("RGB", "RGBA") or "exif" in header.info or "transparency" in header.info:
        return False
    if getattr(header, "n_frames", 1) != 1:  # animated WebP or APNG
        return False
    if header.format == "WEBP":
        return True
    if header.format == "PNG":
        # IHDR bit depth 8; no eXIf chunk (Pillow finds one after the pixels only on load).
        return data[24:25] == b"\x08" and b"eXIf" not in data
    return False


def decode_with_opencv(header: Image.Image, data: bytes) -> Image.Image | None:
    """The decoded image (loaded, Pillow mode of ``header``, its ``info``), or None
    when this image is left to Pillow."""
    if not _plain(header, data):
        return None
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    channels = len(header.mode)
    if (arr is None or arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != channels
            or (arr.shape[1], arr.shape[0]) != header.size):
        return None
    img = Image.fromarray(cv2.cvtColor(arr, _TO_RGB[channels]), header.mode)
    img.info = dict(header.info)  # ICC profile and the like, as Pillow would carry them
    return img
