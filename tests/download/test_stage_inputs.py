"""Input lists through ``vlcurate build``: gzipped CSV/TSV/JSONL, a directory of files,
renamed URL/caption columns, extra columns carried into Parquet and the tar's JSON,
deterministic sharding by ``samples_per_shard``."""

from __future__ import annotations

import gzip
import json
import tarfile

import polars as pl
import pytest

from tests.download.conftest import write_recipe
from tests.download.faults import serve_faults
from vlcurate.cli import main


@pytest.fixture(scope="module")
def server(fault_corpus):
    with serve_faults(fault_corpus.files) as srv:
        yield srv


def test_gz_files_and_a_directory_with_renamed_and_extra_columns(fault_corpus, server, tmp_path, capsys):
    ok = [r for r in fault_corpus.rows if r["kind"] == "ok"][:9]
    lists = tmp_path / "lists"
    (lists / "b").mkdir(parents=True)

    def line(r, i, sep):
        return sep.join([server.base_url + r["path"], r["caption"], r["kind"], str(i)])

    with gzip.open(lists / "a.csv.gz", "wt") as f:
        f.write("link,text,kind,rank\n" + "".join(line(r, i, ",") + "\n" for i, r in enumerate(ok[:3])))
    with gzip.open(lists / "b" / "c.jsonl.gz", "wt") as f:
        for i, r in enumerate(ok[3:6], 3):
            f.write(json.dumps({"link": server.base_url + r["path"], "text": r["caption"],
                                "kind": r["kind"], "rank": str(i), "ignored": 1}) + "\n")
    (lists / "b" / "d.tsv").write_text("link\ttext\tkind\trank\n"
                                       + "".join(line(r, i, "\t") + "\n" for i, r in enumerate(ok[6:], 6)))
    (lists / "_SUCCESS").write_text("")  # bookkeeping files are skipped
    recipe = write_recipe(tmp_path, [str(lists)], {"allow_networks": ["127.0.0.0/8"]}, samples_per_shard=4,
                          input_extra={"url_col": "link", "caption_col": "text", "extra_cols": ["kind", "rank"]})
    assert main(["build", str(recipe)]) == 0, capsys.readouterr().err
    version = tmp_path / "out" / "faults" / "v1"

    shards = sorted(p.name for p in (version / "samples").glob("*.parquet"))
    assert shards == ["00000.parquet", "00001.parquet", "00002.parquet"]  # 9 rows / 4 per shard
    rows = pl.read_parquet(str(version / "samples" / "*.parquet"))
    # directory order: a.csv.gz, b/c.jsonl.gz, b/d.tsv; rows in file order
    assert rows["rank"].to_list() == [str(i) for i in range(9)]
    assert rows["caption"].to_list() == [r["caption"] for r in ok]
    assert rows["key"].to_list()[:5] == ["00000_000000", "00000_000001", "00000_000002",
                                         "00000_000003", "00001_000000"]
    assert set(rows["status"]) == {"ok"} and "ignored" not in rows.columns
    with tarfile.open(version / "samples" / "00001.tar") as tf:
        meta = json.loads(tf.extractfile("00001_000000.json").read())
    assert (meta["rank"], meta["kind"], meta["caption"]) == ("4", "ok", ok[4]["caption"])
    inputs = json.loads((version / "manifest.json").read_text())["inputs"]
    assert [p["path"].rsplit("/", 1)[1] for p in inputs] == ["a.csv.gz", "c.jsonl.gz", "d.tsv"]


def test_missing_extra_column_is_a_one_line_error(fault_corpus, server, tmp_path, capsys):
    path = tmp_path / "urls.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write(f"url,caption\n{server.base_url}/ok/x.jpg,x\n")
    recipe = write_recipe(tmp_path, [str(path)], {"allow_networks": ["127.0.0.0/8"]})  # extra_cols: [kind]
    assert main(["build", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("vlcurate: error: input ") and "urls.csv.gz" in err and "'kind'" in err
    assert not (tmp_path / "out").exists()
