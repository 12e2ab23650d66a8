"""The s3:// and gs:// backends against real servers on loopback: the storage layer's
contract (whole-or-nothing writes, listing, deletes) and inputs read from a store."""

import gzip
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlcurate.io import storage
from vlcurate.io.inputs import InputError, InputSpec, list_input_files, read_inputs


def test_files_round_trip(store, request):
    base = store.url(request.node.name)
    storage.write_bytes(storage.join(base, "a", "x.bin"), b"hello")
    storage.write_bytes(storage.join(base, "b.bin"), b"!" * 1000)
    assert storage.read_bytes(storage.join(base, "a", "x.bin")) == b"hello"
    assert storage.exists(base) and storage.is_dir(storage.join(base, "a"))
    assert not storage.is_dir(storage.join(base, "b.bin")) and storage.size(storage.join(base, "b.bin")) == 1000
    assert [(f.path, f.size) for f in storage.list_files(base)] == [("a/x.bin", 5), ("b.bin", 1000)]
    assert storage.list_files(storage.join(base, "missing")) == []
    storage.delete(storage.join(base, "b.bin"))
    storage.delete(storage.join(base, "b.bin"))  # already gone: no error
    storage.delete_tree(base)
    assert not storage.exists(base)


def test_a_failed_write_leaves_nothing(store, request):
    loc = store.url(request.node.name, "half.bin")
    with pytest.raises(RuntimeError), storage.open_write(loc) as f:
        f.write(b"x" * 100_000)
        raise RuntimeError("writer died")
    assert not storage.exists(loc)
    storage.write_bytes(loc, b"old")
    with pytest.raises(RuntimeError), storage.open_write(loc) as f:
        f.write(b"new but unfinished")
        raise RuntimeError("writer died")
    assert storage.read_bytes(loc) == b"old"  # the committed object is untouched


def test_missing_bucket_is_a_write_problem(store):
    assert storage.write_problem(store.url("out")) is None
    missing = f"{store.scheme}://no-such-bucket/out"
    assert storage.write_problem(missing) == f"bucket {store.scheme}://no-such-bucket does not exist"


def test_inputs_read_from_a_store(store, request):
    base = store.url(request.node.name)
    rows = [{"url": f"http://example.com/{i}.jpg", "caption": f"caption {i}"} for i in range(5)]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows[:2]), buf)
    storage.write_bytes(storage.join(base, "urls", "a.parquet"), buf.getvalue())
    text = "url,caption\n" + "".join(f"{r['url']},{r['caption']}\n" for r in rows[2:])
    compressed = gzip.compress(text.encode())
    storage.write_bytes(storage.join(base, "urls", "b.csv.gz"), compressed)
    assert storage.read_bytes(storage.join(base, "urls", "b.csv.gz")) == compressed  # stored as given
    storage.write_bytes(storage.join(base, "urls", "_SUCCESS"), b"")
    spec = InputSpec(paths=(storage.join(base, "urls"),))
    assert list_input_files(spec) == [storage.join(base, "urls", "a.parquet"), storage.join(base, "urls", "b.csv.gz")]
    assert read_inputs(spec).to_pylist() == rows
    with pytest.raises(InputError, match=r"^input .*/nothing: no such file or directory$"):
        list_input_files(InputSpec(paths=(storage.join(base, "nothing"),)))
