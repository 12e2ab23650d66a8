"""``vlcurate export lxmert-tsv``: the TSV of a demo build decodes, the way LXMERT's
loader decodes it, to exactly the stored region features."""

from __future__ import annotations

import base64
import csv
import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from vlcurate.cli import main
from vlcurate.extractors.lxmert_tsv import FIELDNAMES, export_lxmert_tsv, lxmert_rows, read_lxmert_tsv
from vlcurate.pipelines.samples import alive_samples
from vlcurate.pipelines.stage import Layout
from vlcurate.versions import load_manifest
from vlcurate.schemas.regions import region_schema

from tests.extractors.test_region_stage import _rewrite, writable_copy


def stored(version, shards=(0, 1)) -> dict[str, dict]:
    """The ok rows of the region sidecars, by key."""
    rows = {}
    for shard in shards:
        for r in pq.read_table(version / "region_features" / f"{shard:05d}.parquet").to_pylist():
            if r["status"] == "ok":
                rows[r["key"]] = r
    return rows


def test_the_tsv_of_a_demo_build_round_trips(region_version, tmp_path):
    out = tmp_path / "feats.tsv"
    result = export_lxmert_tsv(region_version, out)
    layout = Layout.for_stages(region_version, [s["name"] for s in load_manifest(region_version)["stages"]])
    kept = [k for s in (0, 1) for k in alive_samples(layout, s, ["key"]).column("key").to_pylist()]
    regions = stored(region_version)
    expected = [k for k in regions if k in set(kept)]  # sidecar order, filters' survivors only
    dropped = [k for k in regions if k not in set(kept)]
    assert dropped, "caption_filter ran after the region stage and dropped some samples"
    assert (result.rows, result.dropped, result.failed, result.shards) == (len(expected), len(dropped), 0, 2)

    data = read_lxmert_tsv(out)
    assert [d["img_id"] for d in data] == expected
    for item in data:
        row = regions[item["img_id"]]
        n = row["num_boxes"]
        assert (item["img_h"], item["img_w"], item["num_boxes"]) == (row["img_h"], row["img_w"], n)
        feats = item["features"]
        assert feats.dtype == np.float32 and feats.shape == (n, 64)
        # fp16 -> fp32 is exact: the decoded floats ARE the stored values.
        np.testing.assert_array_equal(feats, np.frombuffer(row["features"], "<f2").reshape(n, 64).astype(np.float32))
        np.testing.assert_array_equal(item["boxes"], np.asarray(row["boxes"], np.float32).reshape(n, 4))
        assert item["objects_id"].dtype == np.int64 and item["objects_id"].tolist() == row["objects_id"]
        assert item["attrs_id"].tolist() == row["attrs_id"]
        np.testing.assert_array_equal(item["objects_conf"], np.asarray(row["objects_conf"], np.float32))
        np.testing.assert_array_equal(item["attrs_conf"], np.asarray(row["attrs_conf"], np.float32))

    raw = out.read_bytes()
    first = raw.split(b"\r\n")[0].split(b"\t")  # no header; csv's \r\n, as generate_tsv.py wrote
    assert len(first) == len(FIELDNAMES) and first[0].decode() == expected[0]
    assert raw.count(b"\r\n") == len(expected) and not list(tmp_path.glob(".*tmp-*"))

    everything = export_lxmert_tsv(region_version, tmp_path / "all.tsv", include_dropped=True)
    assert everything.rows == len(regions) and everything.dropped == 0
    assert [d["img_id"] for d in read_lxmert_tsv(tmp_path / "all.tsv")] == list(regions)
    assert len(read_lxmert_tsv(tmp_path / "all.tsv", topk=3)) == 3


def test_failed_rows_are_left_out(region_version, tmp_path):
    copy = writable_copy(region_version, tmp_path / "v")
    path = copy / "region_features" / "00000.parquet"
    nulls = dict.fromkeys(["img_h", "img_w", "num_boxes", "boxes", "objects_id", "objects_conf", "attrs_id",
                           "attrs_conf", "features"])
    _rewrite(path, lambda rows: rows[0].update(status="failed", error_kind="decode_error", error_message="x", **nulls))
    failed_key = pq.read_table(path).column("key")[0].as_py()
    result = export_lxmert_tsv(copy, tmp_path / "f.tsv", include_dropped=True)
    assert result.failed == 1
    assert failed_key not in [d["img_id"] for d in read_lxmert_tsv(tmp_path / "f.tsv")]


def test_a_full_size_row_reads_back_past_the_csv_field_limit(tmp_path):
    """36 x 2048 float32 features are ~390k base64 characters, 3x csv's default limit."""
    rng = np.random.default_rng(0)
    n, d = 36, 2048
    feats = rng.standard_normal((n, d)).astype(np.float16)
    row = {"key": "00000_000000", "status": "ok", "error_kind": None, "error_message": None, "img_h": 480,
           "img_w": 640, "num_boxes": n, "boxes": [[1.0, 2.0, 30.0, 40.0]] * n,
           "objects_id": list(range(n)), "objects_conf": [0.5] * n, "attrs_id": [3] * n,
           "attrs_conf": [0.25] * n, "features": feats.tobytes()}
    table = pa.Table.from_pylist([row], schema=region_schema(d, "float16"))
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, FIELDNAMES, delimiter="\t")
    for r in lxmert_rows(table, d):
        writer.writerow(r)
    assert len(buf.getvalue()) > 131072  # csv's default field size limit: would not read with it
    path = tmp_path / "big.tsv"
    path.write_text(buf.getvalue(), newline="")
    [item] = read_lxmert_tsv(path)
    np.testing.assert_array_equal(item["features"], feats.astype(np.float32))
    assert base64.b64decode(buf.getvalue().split("\t")[3]) == np.arange(n, dtype="<i8").tobytes()


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out.strip(), captured.err.strip()


def test_cli_export(region_version, tmp_path, capsys):
    code, out, _ = run(capsys, "export", "lxmert-tsv", str(region_version), str(tmp_path / "x.tsv"))
    assert code == 0 and out.startswith("wrote ") and "dropped by filters" in out
    assert (tmp_path / "x.tsv").is_file()


@pytest.mark.parametrize("args, fragment", [
    (["{tmp}"], "no manifest.json (not a version directory)"),
    (["{version}", "--stage", "vit_features"], "no vit_features sidecars (its stages: download, exact_dedup, region_features, caption_filter)"),
    (["{version}", "--stage", "caption_filter"], "caption_filter/ holds decision records, not region_features"),
])
def test_cli_export_bad_inputs_are_one_line_errors(region_version, tmp_path, capsys, args, fragment):
    argv = [a.format(tmp=tmp_path, version=region_version) for a in args]
    code, _, err = run(capsys, "export", "lxmert-tsv", argv[0], str(tmp_path / "x.tsv"), *argv[1:])
    assert code == 2 and err.startswith("vlcurate: error: ") and "\n" not in err and fragment in err, err
    assert not (tmp_path / "x.tsv").exists()


def test_cli_export_to_a_directory_is_an_error(region_version, tmp_path, capsys):
    code, _, err = run(capsys, "export", "lxmert-tsv", str(region_version), str(tmp_path))
    assert code == 2 and "is a directory" in err and "\n" not in err


def test_invalid_sidecar_is_refused(region_version, tmp_path, capsys):
    copy = writable_copy(region_version, tmp_path / "v")
    path = copy / "region_features" / "00001.parquet"
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.schema.get_field_index("num_boxes"), "num_boxes",
                                    pc.add(table.column("num_boxes"), 1)), path)
    code, _, err = run(capsys, "export", "lxmert-tsv", str(copy), str(tmp_path / "x.tsv"))
    assert code == 2 and "region_features/00001.parquet: not a valid region_features sidecar" in err
    assert "\n" not in err and not (tmp_path / "x.tsv").exists()
