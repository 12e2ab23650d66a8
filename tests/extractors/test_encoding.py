"""The threaded encoding engine on its own, with a trivial encoder (no model)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vlcurate.extractors.encoding import BatchEncoder, encode_images, run_encoder
from vlcurate.io.tar import TarSample, write_tar


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), seed % 256, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def shard(tmp_path):
    keys = [f"00000_{i:06d}" for i in range(40)]
    write_tar(tmp_path / "s.tar", [TarSample(k, {"png": png(i)}) for i, k in enumerate(keys)])
    return tmp_path / "s.tar", keys


def first_pixel(img: Image.Image) -> int:
    return img.getpixel((0, 0))[0]


def test_rows_come_back_in_archive_order_with_missing_keys_last(shard):
    tar, keys = shard
    out = encode_images(tar, keys + ["00000_999999"], first_pixel, lambda values: list(values), batch_size=3)
    assert [k for k, _ in out] == keys + ["00000_999999"]
    assert [v for _, v in out[:-1]] == list(range(40))
    assert out[-1][1].kind == "missing_image"


def test_an_output_failure_is_the_error_raised_every_time(shard):
    """The output thread failing stops the reader quietly; the calling thread must raise
    the output thread's error, never take the stopped reader for a dead one (a race that
    once raised 'reader thread ended' instead, about one run in three)."""
    tar, keys = shard

    def full_disk(rows):
        raise OSError("No space left on device")

    for _ in range(30):
        with pytest.raises(OSError, match="No space left"):
            run_encoder(tar, keys, first_pixel, BatchEncoder(lambda values: list(values)), 1, full_disk)


def test_a_model_crash_in_start_fails_only_its_images(shard):
    tar, keys = shard

    def start(values):
        if 7 in values:
            raise RuntimeError("bad image 7")
        return list(values)

    out: list = []
    run_encoder(tar, keys, first_pixel, BatchEncoder(start), 4, out.extend)
    failed = [k for k, v in out if not isinstance(v, int)]
    assert failed == [keys[7]]
    assert dict(out)[keys[7]].kind == "model_error"
