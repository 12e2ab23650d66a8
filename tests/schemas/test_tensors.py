"""Tensor columns (feature arrays stored as bytes) and the streaming Parquet writer."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlcurate.io.parquet import ParquetStreamWriter
from vlcurate.schemas import SchemaError, validate
from vlcurate.schemas.features import (
    feature_arrays, feature_metadata, stacked_features, tensor_array, tensor_length_problems,
)


def sidecar(values: list, shape=(2, 3), dtype="float16") -> pa.Table:
    n = len(values)
    table = pa.table({
        "key": pa.array([f"00000_{i:06d}" for i in range(n)], pa.string()),
        "status": pa.array(["ok" if v is not None else "failed" for v in values], pa.string()),
        "error_kind": pa.array([None if v is not None else "decode_error" for v in values], pa.string()),
        "error_message": pa.array([None if v is not None else "x" for v in values], pa.string()),
        "tokens": tensor_array(values, dtype),
    })
    return table.replace_schema_metadata(feature_metadata({"tokens": (list(shape), dtype)}))


def test_round_trip_through_parquet_with_nulls_slices_and_chunks(tmp_path):
    rng = np.random.default_rng(0)
    values = [rng.standard_normal((2, 3)).astype(np.float32) if i % 3 else None for i in range(10)]
    table = sidecar(values)  # float32 arrays are cast to the declared float16
    assert table.column("tokens").null_count == 4 and len(table.column("tokens")[1].as_py()) == 12
    pq.write_table(table, tmp_path / "t.parquet")
    back = pq.read_table(tmp_path / "t.parquet")
    for got, want in zip(feature_arrays(back, "tokens"), values):
        assert (got is None) == (want is None)
        if want is not None:
            assert got.dtype == np.float16 and got.shape == (2, 3)
            np.testing.assert_array_equal(got, want.astype(np.float16))
    ok = np.stack([v.astype(np.float16) for v in values if v is not None])
    np.testing.assert_array_equal(stacked_features(back, "tokens"), ok)
    # A slice and a multi-chunk column read the same rows.
    sliced = back.slice(4, 5)
    np.testing.assert_array_equal(stacked_features(sliced, "tokens"),
                                  np.stack([v.astype(np.float16) for v in values[4:9] if v is not None]))
    two = pa.concat_tables([back.slice(0, 5), back.slice(5)])
    assert two.column("tokens").num_chunks == 2
    np.testing.assert_array_equal(stacked_features(two, "tokens"), ok)
    assert [a is None for a in feature_arrays(two, "tokens")] == [v is None for v in values]


def test_length_checks_for_fixed_and_variable_first_dimensions():
    col = pa.chunked_array([tensor_array([np.zeros((2, 3)), None, np.zeros((1, 3))], "float32")])
    assert tensor_length_problems(col, [2, 3], "float32") == [(2, "12 bytes, the declared [2, 3] float32 needs 24")]
    assert tensor_length_problems(col, [None, 3], "float32") == []
    assert tensor_length_problems(col, [None, 4], "float32") == [
        (0, "24 bytes, the declared [None, 4] float32 needs a multiple of 16")]
    assert tensor_length_problems(col, [None, 3], "float32", np.array([2, 0, 2])) == [
        (2, "12 bytes, the declared [None, 3] float32 needs 24 (num_boxes x 12)")]
    table = sidecar([np.zeros((2, 3))]).replace_schema_metadata(feature_metadata({"tokens": ([2, 3], "int8")}))
    assert validate(table, "vit_features", raise_error=False) == [
        "column 'tokens', row 0: declared dtype 'int8' is not one of float16, float32, int64"]


def test_stream_writer_commits_only_complete_files(tmp_path):
    path = tmp_path / "vit_features" / "00000.parquet"
    good = sidecar([np.ones((2, 3)), None, np.zeros((2, 3))])
    with ParquetStreamWriter(path, "vit_features") as writer:
        writer.write(good.slice(0, 2))
        writer.write(good.slice(2))
        assert not path.exists()  # nothing visible before commit
        writer.commit(empty=good.slice(0, 0))
    back = pq.ParquetFile(path)
    assert back.metadata.num_row_groups == 2 and back.metadata.num_rows == 3
    assert back.schema_arrow.metadata[b"vlcurate.record"] == b"vit_features"
    assert validate(back.read(), "vit_features", raise_error=False) == []

    other = tmp_path / "bad" / "00000.parquet"
    bad = good.set_column(1, "status", pa.array(["ok", "ok", "ok"]))  # an ok row with an error kind, no features
    with pytest.raises(SchemaError, match="an error kind is required on failed rows and only there"):
        with ParquetStreamWriter(other, "vit_features") as writer:
            writer.write(good)
            writer.write(bad)
    assert list(other.parent.iterdir()) == []  # no partial file, no temporary left

    with ParquetStreamWriter(tmp_path / "e.parquet", "vit_features") as writer:
        assert writer.commit(empty=good.slice(0, 0)).rows == 0
    assert pq.read_table(tmp_path / "e.parquet").num_rows == 0
