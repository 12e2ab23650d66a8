"""The training_sample record kind (a training export's Parquet rows)."""

import pyarrow as pa

from vlcurate.schemas import validate
from vlcurate.schemas.training import IMAGE_TYPE


def rows(**change):
    cols = {"key": pa.array(["a_1", "a_2"]), "image": pa.array([{"bytes": b"x", "path": "a_1.jpg"}] * 2, IMAGE_TYPE),
            "text": pa.array(["one", "two"]), "texts": pa.array([["one", "uno"], ["two"]]),
            "url": pa.array(["u", "v"]), "width": pa.array([1, 2], pa.int32()), "height": pa.array([1, 2], pa.int32())}
    cols.update(change)
    return pa.table(cols)


def test_a_good_table_passes():
    assert validate(rows(), "training_sample", raise_error=False) == []


def test_text_must_be_the_first_of_texts_and_an_image_is_required():
    assert "start with text" in validate(rows(texts=pa.array([["uno", "one"], ["two"]])), "training_sample",
                                         raise_error=False)[0]
    assert "image bytes" in validate(rows(image=pa.array([None, {"bytes": b"x", "path": "p"}], IMAGE_TYPE)),
                                     "training_sample", raise_error=False)[0]


def test_regions_must_have_num_boxes_rows():
    regions = pa.array([[[1.0, 2.0]], [[1.0, 2.0], [3.0, 4.0]]], pa.list_(pa.list_(pa.float32(), 2)))
    table = rows().append_column("regions", regions).append_column("num_boxes", pa.array([1, 1], pa.int32()))
    assert "2 rows, num_boxes is 1" in validate(table, "training_sample", raise_error=False)[0]
