import pyarrow as pa
import pytest
import webdataset as wds

import hashlib

from vlcurate.io import (
    FileRecord, ShardStats, TarSample, read_parquet, read_stats, read_tar, storage, tar_keys,
    write_parquet, write_stats, write_tar,
)
from vlcurate.schemas import SchemaError
from tests.schemas.test_schemas import sample_table


def test_open_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with storage.open_write(target) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_tar_round_trip_is_reproducible_and_webdataset_reads_it(tmp_path):
    samples = [TarSample(f"k{i}", {"jpg": bytes([i]) * 10, "txt": b"cap", "json": b"{}"}) for i in range(3)]
    assert write_tar(tmp_path / "a.tar", samples).rows == 3
    write_tar(tmp_path / "b.tar", samples)
    assert storage.sha256(tmp_path / "a.tar") == storage.sha256(tmp_path / "b.tar")
    assert tar_keys(tmp_path / "a.tar") == {f"k{i}": ["jpg", "json", "txt"] for i in range(3)}
    got = list(wds.WebDataset(str(tmp_path / "a.tar"), shardshuffle=False))
    assert [s["__key__"] for s in got] == ["k0", "k1", "k2"] and got[1]["jpg"] == bytes([1]) * 10
    assert read_tar(tmp_path / "a.tar")[2]["txt"] == b"cap"
    with pytest.raises(ValueError, match="contains '.'"):
        write_tar(tmp_path / "c.tar", [TarSample("a.b", {"txt": b""})])
    assert not (tmp_path / "c.tar").exists()


def test_parquet_validates_before_writing(tmp_path):
    t = sample_table()
    write_parquet(t, tmp_path / "s.parquet", "sample")
    assert read_parquet(tmp_path / "s.parquet", "sample").num_rows == 2
    bad = t.set_column(0, pa.field("key", pa.string(), nullable=False), pa.array(["x", "x"]))
    with pytest.raises(SchemaError, match="not unique"):
        write_parquet(bad, tmp_path / "bad.parquet", "sample")
    assert not (tmp_path / "bad.parquet").exists()


def test_writers_record_what_they_wrote(tmp_path):
    """The record a writer returns (it goes into the stats marker, and from there into
    the manifest) equals what reading the file back gives."""
    samples = [TarSample(f"k{i}", {"jpg": bytes([i]) * 99, "txt": b"cap"}) for i in range(4)]
    for record, loc in ((write_tar(tmp_path / "a.tar", samples), tmp_path / "a.tar"),
                        (write_parquet(sample_table(), tmp_path / "s.parquet", "sample"), tmp_path / "s.parquet")):
        data = loc.read_bytes()
        assert record.sha256 == hashlib.sha256(data).hexdigest() and record.bytes == len(data)
    assert write_tar(tmp_path / "a.tar", samples).rows == 4
    assert write_parquet(sample_table(), tmp_path / "s.parquet", "sample").rows == 2


def test_stats_round_trip(tmp_path):
    s = ShardStats("download", 3, 10, {"ok": 8, "failed": 2},
                   [FileRecord("samples/00003.tar", "webdataset", "ab" * 32, 1234, 8)])
    write_stats(s, tmp_path / "s.json")
    assert read_stats(tmp_path / "s.json") == s
    with pytest.raises(SchemaError, match="negative"):
        write_stats(ShardStats("download", 3, 10, {"ok": -1}), tmp_path / "t.json")


def test_listing_skips_a_file_renamed_while_it_is_listed(tmp_path, monkeypatch):
    """A writer may commit (rename its temporary file) while another process lists the
    directory, e.g. the build's progress thread: the vanished name is skipped."""
    import os

    (tmp_path / "a.json").write_bytes(b"1")
    (tmp_path / ".b.json.tmp-1").write_bytes(b"22")
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if str(path).endswith(".tmp-1"):
            raise FileNotFoundError(path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    assert [(f.path, f.size) for f in storage.list_files(tmp_path)] == [("a.json", 1)]
