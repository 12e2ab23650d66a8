"""OpenCV decoding of PNG and WebP gives Pillow's very pixels: with it and without it
the image path stores the same bytes (so sha256 and pHash) and keeps every outcome."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vlcurate.download import decoders, images
from vlcurate.download.images import ImageConfig, ImageProcessor, phash


def _photo(mode: str, size=(300, 200), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (6, 9, len(mode)) if len(mode) > 1 else (6, 9)
    small = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
    return small.resize(size, Image.Resampling.BICUBIC)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _rotated_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    return exif.tobytes()


def _animated_webp() -> bytes:
    frames = [_photo("RGB", seed=s) for s in range(2)]
    return _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100)


PLAIN = {  # decoded by OpenCV
    "png-rgb": lambda: _save(_photo("RGB"), "PNG"),
    "png-rgba": lambda: _save(_photo("RGBA"), "PNG"),
    "png-rgb-icc": lambda: _save(_photo("RGB"), "PNG", icc_profile=images._SRGB.tobytes()),
    "webp-lossy": lambda: _save(_photo("RGB", (600, 400)), "WEBP", quality=80),
    "webp-rgba": lambda: _save(_photo("RGBA"), "WEBP", lossless=True),
    "webp-small": lambda: _save(_photo("RGB", (40, 30)), "WEBP"),
}
LEFT_TO_PILLOW = {
    "png-rgb-trns": lambda: _save(_photo("RGB"), "PNG", transparency=(1, 2, 3)),
    "png-palette": lambda: _save(_photo("RGB").convert("P"), "PNG"),
    "png-grey": lambda: _save(_photo("L"), "PNG"),
    "png-16bit": lambda: _save(Image.fromarray((np.arange(60000, dtype=np.uint16) * 7).reshape(200, 300)), "PNG"),
    "png-exif": lambda: _save(_photo("RGB"), "PNG", exif=_rotated_exif()),
    "webp-animated": _animated_webp,
    "png-truncated": lambda: _save(_photo("RGB"), "PNG")[:-20],  # no IEND: Pillow still reads it
    "png-half": lambda: (lambda d: d[: len(d) // 2])(_save(_photo("RGB"), "PNG")),
    "webp-half": lambda: (lambda d: d[: len(d) // 2])(_save(_photo("RGB"), "WEBP")),
    "jpeg": lambda: _save(_photo("RGB"), "JPEG"),
}


@pytest.fixture
def opencv_calls(monkeypatch):
    calls: list[bool] = []
    real = decoders.decode_with_opencv

    def spy(header, data):
        out = real(header, data)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(images, "decode_with_opencv", spy)
    return calls


@pytest.mark.parametrize("mode", ["border", "keep_ratio", "no"])
@pytest.mark.parametrize("name", sorted(PLAIN) + sorted(LEFT_TO_PILLOW))
def test_same_result_with_and_without_opencv(name, mode, opencv_calls, monkeypatch):
    data = {**PLAIN, **LEFT_TO_PILLOW}[name]()
    processor = ImageProcessor(ImageConfig(image_size=64, resize_mode=mode))
    with_opencv = processor(data)
    assert opencv_calls == [name in PLAIN] or (opencv_calls == [] and name not in PLAIN)
    monkeypatch.setattr(images, "decode_with_opencv", lambda header, data: None)
    pillow_only = processor(data)
    assert with_opencv == pillow_only  # stored bytes, sizes, sha256, pHash, error kind and message


def test_decoded_pixels_equal_pillows():
    for name, make in PLAIN.items():
        data = make()
        with Image.open(io.BytesIO(data)) as header:
            fast = decoders.decode_with_opencv(header, data)
            header.load()
            assert fast is not None and fast.mode == header.mode, name
            assert np.array_equal(np.asarray(fast), np.asarray(header)), name


def test_phash_bits_unchanged():
    # the packed-bits form of phash equals the original string-of-bits form
    img = _photo("RGB", (128, 96), seed=3)
    from scipy.fft import dctn

    small = img.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    coeffs = dctn(np.asarray(small, dtype=np.float64), type=2, norm="ortho")[1:9, 1:9]
    bits = (coeffs > np.median(coeffs)).flatten()
    assert phash(img) == f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def test_manifest_records_the_image_path(tmp_path):
    from vlcurate.download.stage import DownloadConfig, DownloadStage
    from vlcurate.pipelines.stage import Layout

    info = DownloadStage(DownloadConfig(), Layout(tmp_path)).info().libraries
    assert info["image_path"] == decoders.IMAGE_PATH_VERSION == 2
    assert "opencv" in info["decoders"]["WEBP"] and info["opencv"] and info["pillow"]
