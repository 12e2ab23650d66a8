"""Still WebPs are decoded by OpenCV's one-shot libwebp call (vlcurate/download/webp.py)
instead of Pillow's animation decoder: the stored bytes, hashes and outcomes must be
exactly what the Pillow path gives, and anything unusual must go to Pillow."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageCms

from vlcurate.download import images
from vlcurate.download.images import ImageConfig, ImageProcessor
from vlcurate.download.webp import plain_webp


def webp(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "WEBP", **kwargs)
    return buf.getvalue()


def scene(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (5, 7, len(mode)), dtype=np.uint8)
    img = Image.fromarray(coarse, mode).resize(size, Image.Resampling.BICUBIC)
    if mode == "RGBA":  # a real transparent corner, so compositing on white matters
        arr = np.asarray(img).copy()
        arr[: size[1] // 3, : size[0] // 3, 3] = 0
        img = Image.fromarray(arr, "RGBA")
    return img


def pillow_only(monkeypatch, data: bytes, config: ImageConfig):
    with monkeypatch.context() as m:
        m.setattr(images, "plain_webp", lambda _: None)
        return ImageProcessor(config)(data)


PLAIN = {
    "lossy RGB (VP8)": lambda: webp(scene((300, 200)), quality=80),
    "lossless RGB (VP8L)": lambda: webp(scene((257, 129), seed=1), lossless=True),
    "lossless RGBA (VP8L alpha)": lambda: webp(scene((180, 240), "RGBA", seed=2), lossless=True),
    "lossy RGBA (VP8X + ALPH)": lambda: webp(scene((321, 123), "RGBA", seed=3), quality=70),
    "large lossy": lambda: webp(scene((1500, 1100), seed=4), quality=90),
}


@pytest.mark.parametrize("name", sorted(PLAIN))
@pytest.mark.parametrize("mode", ["border", "keep_ratio"])
def test_plain_webps_take_the_opencv_path_and_store_pillows_very_bytes(monkeypatch, name, mode):
    data = PLAIN[name]()
    with Image.open(io.BytesIO(data)) as header:
        assert plain_webp(data) == (*header.size, len(header.mode))
    calls = []
    decode = images.decode_webp
    monkeypatch.setattr(images, "decode_webp", lambda *a: calls.append(a) or decode(*a))
    config = ImageConfig(image_size=128, resize_mode=mode)
    fast = ImageProcessor(config)(data)
    assert len(calls) == 1  # it did take the OpenCV path
    slow = pillow_only(monkeypatch, data, config)
    assert fast.error_kind is None and slow.error_kind is None
    assert fast == slow  # same stored bytes, sizes, sha256 and pHash


def _exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turned, which Pillow's path applies
    return exif


NOT_PLAIN = {
    "with EXIF": lambda: webp(scene((120, 80)), exif=_exif()),
    "with an ICC profile": lambda: webp(scene((120, 80)), icc_profile=ImageCms.ImageCmsProfile(
        ImageCms.createProfile("LAB")).tobytes()),
    "animated": lambda: _animated(),
    "a JPEG": lambda: _jpeg(),
    "a cut-off RIFF header": lambda: webp(scene((120, 80)))[:20],
}


def _animated() -> bytes:
    buf = io.BytesIO()
    scene((64, 48)).save(buf, "WEBP", save_all=True, append_images=[scene((64, 48), seed=9)], duration=100)
    return buf.getvalue()


def _jpeg() -> bytes:
    buf = io.BytesIO()
    scene((64, 48)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("name", sorted(NOT_PLAIN))
def test_anything_else_is_left_to_pillow(monkeypatch, name):
    data = NOT_PLAIN[name]()
    assert plain_webp(data) is None
    monkeypatch.setattr(images, "decode_webp", lambda *a: pytest.fail("OpenCV called"))
    ImageProcessor(ImageConfig(image_size=64))(data)  # whatever Pillow makes of it


def test_exif_orientation_still_applied_to_a_webp():
    result = ImageProcessor(ImageConfig(image_size=64, resize_mode="no"))(NOT_PLAIN["with EXIF"]())
    assert (result.width, result.height) == (80, 120)  # turned by 90 degrees, by Pillow


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_a_damaged_body_gets_pillows_outcome(monkeypatch, cut):
    data = PLAIN["large lossy"]()
    damaged = data[: int(len(data) * cut)]
    assert plain_webp(damaged) is not None  # the header still reads
    config = ImageConfig(image_size=64)
    fast, slow = ImageProcessor(config)(damaged), pillow_only(monkeypatch, damaged, config)
    assert (fast.error_kind, fast.data) == (slow.error_kind, slow.data)
    assert fast.error_kind == "decode_error"


def _vp8l_header(w: int, h: int) -> bytes:
    bits = (w - 1) | (h - 1) << 14
    body = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 16
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(body)) + b"WEBPVP8L" + struct.pack("<I", len(body)) + body


def _vp8x_header(w: int, h: int) -> bytes:
    body = b"\x00\x00\x00\x00" + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(body)) + b"WEBPVP8X" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(("data", "size"), [(_vp8l_header(16384, 16384), (16384, 16384)),
                                            (_vp8x_header(20000, 20000), (20000, 20000))])
def test_a_bomb_webp_is_refused_from_its_header_before_any_decoder(monkeypatch, data, size):
    assert plain_webp(data)[:2] == size
    monkeypatch.setattr(images, "decode_webp", lambda *a: pytest.fail("decoded"))
    result = ImageProcessor(ImageConfig())(data)
    assert result.error_kind == "bomb"
    assert (result.original_width, result.original_height) == size
