import pyarrow as pa
import pytest

from vlcurate.schemas import SchemaError, get_schema, validate


def sample_table(**changes):
    row = {"key": "00000_000000", "url": "http://x/a.jpg", "caption": "a cat", "status": "ok",
           "error_kind": None, "error_message": None, "http_status": 200, "width": 10, "height": 10,
           "original_width": 20, "original_height": 20, "sha256": "ab", "phash": "cd"}
    rows = [row, {**row, "key": "00000_000001", "status": "failed", "error_kind": "http_error",
                  "width": None, "sha256": None}]
    for i, values in changes.items():
        rows[int(i[1:])].update(values)
    return pa.Table.from_pylist(rows, schema=get_schema("sample").schema)


def test_valid_sample_table_passes():
    assert validate(sample_table(), "sample") == []


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"r1": {"key": "00000_000000"}}, "column 'key', row 1: '00000_000000' is not unique"),
        ({"r0": {"key": "a.b"}}, "column 'key', row 0: 'a.b' is empty or contains"),
        ({"r0": {"status": "great"}}, "column 'status', row 0: 'great' is not one of"),
        ({"r1": {"error_kind": None}}, "column 'error_kind', row 1: failed row without an error kind"),
        ({"r0": {"sha256": None}}, "column 'status', row 0: ok row needs sha256"),
    ],
)
def test_row_problems_name_column_and_row(changes, message):
    with pytest.raises(SchemaError) as err:
        validate(sample_table(**changes), "sample")
    assert message in err.value.problems[0]


def test_type_and_missing_column_problems():
    t = sample_table()
    problems = validate(t.drop_columns(["url"]), "sample", raise_error=False)
    assert problems == ["column 'url': missing"]
    t2 = t.set_column(t.schema.get_field_index("width"), "width", pa.array(["10", None]))
    assert validate(t2, "sample", raise_error=False) == ["column 'width': type string, expected int32"]
    nulls = t.set_column(t.schema.get_field_index("key"), pa.field("key", pa.string()), pa.array(["u", None]))
    assert "column 'key', row 1: null in a non-nullable column" in validate(nulls, "sample", raise_error=False)


def test_a_null_url_is_valid_since_schema_2():
    # A null input URL is carried as null (a failed invalid_url row), not as "".
    t = sample_table(r1={"url": None})
    assert validate(t, "sample") == []


def test_extra_columns_only_on_open_kinds():
    t = sample_table().append_column("kind", pa.array(["ok", "404"]))
    assert validate(t, "sample") == []
    d = pa.table({"key": ["k"], "stage": ["s"], "keep": [False], "reason": [None], "score": [None],
                  "detail": [None], "x": [1]}, schema=None)
    problems = validate(d.cast(pa.schema(list(get_schema("decision").schema) + [pa.field("x", pa.int64())])),
                        "decision", raise_error=False)
    assert "column 'x': not part of decision" in problems


def test_unknown_kind_lists_known():
    with pytest.raises(KeyError, match="known: .*sample"):
        get_schema("nope")
