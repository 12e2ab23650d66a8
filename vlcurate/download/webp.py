"""Still WebPs decoded by OpenCV's call of libwebp's one-shot decoder, for the download
stage's image path (`images.ImageProcessor`).

Pillow opens every WebP with libwebp's animation decoder: an RGBA canvas allocated and
filled, copied into a bytes object and unpacked, ~3 of the ~10 ms a WebP cost on the
download benchmark before the first pixel was asked for. A still WebP without EXIF or
ICC profile gets the very same pixels from ``cv2.imdecode``; its size and alpha are
read here from the first chunk's header, so the bomb and size checks still run before
any pixel is decoded. Anything else (animated, EXIF, ICC, another format, a header this
does not read, a body OpenCV does not decode to that size) is left to Pillow.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_VP8X_NOT_PLAIN = 0x02 | 0x08 | 0x20  # VP8X flags: animation, EXIF, ICC profile


def plain_webp(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, channels) of a still WebP without EXIF or ICC profile, read from
    its first chunk's header (RIFF, then VP8, VP8L or VP8X), or None for anything else.
    tests/download/test_webp_path.py compares the whole image path with Pillow's."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy, no alpha: a key frame's start code, then 14-bit sizes
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        return (int.from_bytes(data[26:28], "little") & 0x3FFF,
                int.from_bytes(data[28:30], "little") & 0x3FFF, 3)
    if chunk == b"VP8L":  # lossless: signature 0x2f, 14-bit width-1, height-1, alpha bit
        if data[20] != 0x2F:
            return None
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, 4 if bits >> 28 & 1 else 3
    if chunk == b"VP8X":  # extended: flags, then the canvas's 24-bit width-1, height-1
        flags = data[20]
        if flags & _VP8X_NOT_PLAIN:
            return None
        return (int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1,
                4 if flags & 0x10 else 3)
    return None


def decode_webp(data: bytes, channels: int, size: tuple[int, int]) -> Image.Image | None:
    """The pixels of a :func:`plain_webp` image (Pillow's mode: RGB or RGBA), or None when
    OpenCV does not decode it to that size and channel count."""
    import cv2  # imported here: only WebP needs it

    flag = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION if channels == 3 else cv2.IMREAD_UNCHANGED
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error:
        return None
    if arr is None or arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != channels \
            or (arr.shape[1], arr.shape[0]) != size:
        return None
    if channels == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    return Image.fromarray(arr, "RGB" if channels == 3 else "RGBA")
