"""URL-list readers: every format (gzipped too), directories, columns, errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlcurate.io.inputs import InputError, InputSpec, list_input_files, read_inputs

ROWS = [
    {"url": "http://a.example/1.jpg", "caption": "a cat, sitting", "width": 10},
    {"url": "http://a.example/2.jpg", "caption": 'a "quoted" dog', "width": 20},
    {"url": "http://b.example/3.jpg", "caption": "line one\nline two", "width": 30},
]


def write(path: Path, rows: list[dict] = ROWS) -> Path:
    """Write `rows` in the format named by the file's extension."""
    name = path.name
    base = name[:-3] if name.endswith(".gz") else name
    if base.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    if base.endswith(".jsonl"):
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        sep = "\t" if base.endswith(".tsv") else ","
        cols = list(rows[0])

        def cell(v: object) -> str:
            s = str(v)
            if sep == "\t":
                return s.replace("\n", " ")  # TSV cannot hold newlines
            return '"' + s.replace('"', '""') + '"' if any(c in s for c in ',"\n') else s

        text = sep.join(cols) + "\n" + "".join(sep.join(cell(r[c]) for c in cols) + "\n" for r in rows)
    data = text.encode()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


def spec(*paths: Path, **kwargs) -> InputSpec:
    return InputSpec(paths=tuple(str(p) for p in paths), **kwargs)


@pytest.mark.parametrize(
    "name", ["u.parquet", "u.csv", "u.csv.gz", "u.tsv", "u.tsv.gz", "u.jsonl", "u.jsonl.gz"]
)
def test_each_format(tmp_path, name):
    table = read_inputs(spec(write(tmp_path / name), extra_cols=("width",)))
    assert table.column_names == ["url", "caption", "width"]
    assert table.schema.field("url").type == pa.string()
    assert table.column("url").to_pylist() == [r["url"] for r in ROWS]
    captions = table.column("caption").to_pylist()
    assert captions[:2] == ["a cat, sitting", 'a "quoted" dog']
    expected = "line one line two" if ".tsv" in name else "line one\nline two"
    assert captions[2] == expected
    # CSV/TSV carry extra columns as text; typed formats keep their types.
    widths = table.column("width").to_pylist()
    assert widths == (["10", "20", "30"] if (".csv" in name or ".tsv" in name) else [10, 20, 30])


def test_directory_sorted_recursive_skipping_bookkeeping(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    write(d / "b.csv", ROWS[1:2])
    write(d / "a.jsonl", ROWS[0:1])
    write(d / "sub" / "c.parquet", ROWS[2:3])
    (d / "_SUCCESS").write_text("")
    write(d / ".hidden.csv", ROWS)
    (d / "README.md").write_text("not an input")
    files = list_input_files(spec(d))
    assert [f.relative_to(d).as_posix() for f in files] == ["a.jsonl", "b.csv", "sub/c.parquet"]
    assert read_inputs(spec(d)).column("url").to_pylist() == [r["url"] for r in ROWS]


def test_paths_in_given_order_and_deduplicated(tmp_path):
    a, b = write(tmp_path / "a.csv", ROWS[:1]), write(tmp_path / "b.csv", ROWS[1:])
    assert list_input_files(spec(b, a, b)) == [b, a]
    assert read_inputs(spec(b, a)).column("url").to_pylist() == [ROWS[1]["url"], ROWS[2]["url"], ROWS[0]["url"]]


def test_explicit_format_for_any_extension_and_dir_filter(tmp_path):
    f = write(tmp_path / "urls.csv")
    txt = f.rename(tmp_path / "urls.txt")
    assert read_inputs(spec(txt, format="csv")).num_rows == 3
    write(tmp_path / "more.jsonl")
    assert [p.name for p in list_input_files(spec(tmp_path, format="jsonl"))] == ["more.jsonl"]


def test_renamed_columns_and_no_caption(tmp_path):
    rows = [{"link": "http://x/1.jpg", "alt": "x", "id": 7}]
    table = read_inputs(spec(write(tmp_path / "u.parquet", rows), url_col="link", caption_col="alt",
                             extra_cols=("id",)))
    assert table.to_pylist() == [{"url": "http://x/1.jpg", "caption": "x", "id": 7}]
    table = read_inputs(spec(write(tmp_path / "v.parquet", rows), url_col="link", caption_col=None))
    assert table.to_pylist() == [{"url": "http://x/1.jpg", "caption": None}]
    assert table.schema.field("caption").type == pa.string()


def test_tsv_stray_quote_does_not_swallow_rows(tmp_path):
    f = tmp_path / "u.tsv"
    f.write_text('url\tcaption\nhttp://x/1\t"unbalanced quote\nhttp://x/2\tsecond\n')
    table = read_inputs(spec(f))
    assert table.column("caption").to_pylist() == ['"unbalanced quote', "second"]


def test_types_unify_across_files(tmp_path):
    write(tmp_path / "a.parquet", [{"url": "u1", "caption": None, "n": None}])
    write(tmp_path / "b.parquet", [{"url": "u2", "caption": "c", "n": 5}])
    table = read_inputs(spec(tmp_path, extra_cols=("n",)))
    assert table.column("n").to_pylist() == [None, 5]


# --- errors: one line, naming the file -----------------------------------------

def _error(s: InputSpec) -> str:
    with pytest.raises(InputError) as info:
        read_inputs(s)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_path(tmp_path):
    assert _error(spec(tmp_path / "nope.csv")) == f"input {tmp_path / 'nope.csv'}: no such file or directory"


def test_empty_directory(tmp_path):
    (tmp_path / "README.md").write_text("x")
    assert "directory has no input files" in _error(spec(tmp_path))


def test_unknown_extension(tmp_path):
    (tmp_path / "urls.xlsx").write_bytes(b"PK")
    assert "unknown file type" in _error(spec(tmp_path / "urls.xlsx"))


@pytest.mark.parametrize("name", ["u.csv", "u.tsv.gz", "u.jsonl", "u.parquet"])
def test_missing_url_column(tmp_path, name):
    f = write(tmp_path / name, [{"a": "1", "b": "2"}])
    assert _error(spec(f)) == f"input {f}: no column 'url' (columns: a, b)"


def test_missing_caption_and_extra_column(tmp_path):
    f = write(tmp_path / "u.csv", [{"url": "x", "text": "y"}])
    assert "no column 'caption'" in _error(spec(f))
    assert "no column 'width'" in _error(spec(f, caption_col="text", extra_cols=("width",)))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bad.csv", b"url,caption\nhttp://x,a,extra,fields\n"),
        ("bad.jsonl", b'{"url": "x"}\n{not json\n'),
        ("bad.parquet", b"PAR1 this is not parquet"),
        ("bad.csv.gz", b"not gzip at all"),
        ("empty.csv", b""),
    ],
)
def test_unreadable_files(tmp_path, name, content):
    f = tmp_path / name
    f.write_bytes(content)
    message = _error(spec(f))
    assert message.startswith(f"input {f}: ")


def test_non_text_url_column(tmp_path):
    f = tmp_path / "u.parquet"
    pq.write_table(pa.table({"url": [[1, 2]], "caption": ["c"]}), f)
    assert "column 'url' has type" in _error(spec(f))


def test_types_disagreeing_across_files_read_as_text(tmp_path):
    write(tmp_path / "a.parquet", [{"url": "u1", "caption": "c", "n": 1}])
    write(tmp_path / "b.jsonl", [{"url": "u2", "caption": "c", "n": "one"}])
    assert read_inputs(spec(tmp_path, extra_cols=("n",))).column("n").to_pylist() == ["1", "one"]


def test_types_disagreeing_within_a_jsonl_read_as_text(tmp_path):
    f = tmp_path / "u.jsonl"
    f.write_bytes(b'{"url": "x", "caption": "a", "kind": "photo"}\n{"url": "y", "caption": 5, "kind": 3}\n'
                  b'{"url": "z", "caption": null, "kind": [1, 2]}\n')
    table = read_inputs(spec(f, extra_cols=("kind",)))
    assert table.column("kind").to_pylist() == ["photo", "3", "[1, 2]"]
    assert table.column("caption").to_pylist() == ["a", "5", None]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("u.jsonl", b'{"url": "x"}\n{"url": oops}\n', "line 2: not valid JSON (Expecting value at column 9)"),
        ("u.jsonl", b'{"url": "x"}\n\n{"url": "\xff\xfe"}\n', "line 3: not UTF-8 text"),
        ("u.jsonl", b'{"url": "x"}\n["x"]\n', "line 2: expected a JSON object, got list"),
        ("u.csv", b"url,caption\nhttp://a,b\nhttp://b,c\nhttp://c,d,e\n",
         "cannot read as csv: line 4: Expected 2 columns, got 3: http://c,d,e"),
    ],
)
def test_bad_line_is_named_one_based(tmp_path, name, content, expected):
    f = tmp_path / name
    f.write_bytes(content)
    assert _error(spec(f)) == f"input {f}: {expected}"


@pytest.mark.parametrize(
    "kwargs",
    [{"format": "xls"}, {"paths": ()}, {"extra_cols": ("url",)}, {"caption_col": "url"},
     {"extra_cols": ("caption",), "caption_col": "text"}],
)
def test_spec_validation(kwargs):
    with pytest.raises(ValueError):
        InputSpec(**{"paths": ("x.csv",), **kwargs})
