"""`vlcurate query` over the demo version, and the bad inputs of query and export:
one clear line, exit status 2, nothing written."""

from __future__ import annotations

import glob

import polars as pl
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import tree
from tests.export.conftest import kept_keys
from vlcurate.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_query_joins_samples_and_decisions(demo_version, capsys, tmp_path):
    sql = ("SELECT s.key, s.caption, d.stage, d.reason FROM samples s JOIN decisions d USING (key) "
           "WHERE NOT d.keep ORDER BY s.key")
    code, out, err = run(capsys, "query", str(demo_version), sql, "--out", str(tmp_path / "drops.parquet"))
    assert code == 0, err
    got = pl.read_parquet(tmp_path / "drops.parquet")
    expected = {}
    for path in glob.glob(str(demo_version / "*" / "*.parquet")):
        t = pq.read_table(path)
        if (t.schema.metadata or {}).get(b"vlcurate.record") == b"decision":
            t = t.filter(pc.invert(t["keep"]))
            expected.update(zip(t["key"].to_pylist(), zip(t["stage"].to_pylist(), t["reason"].to_pylist())))
    assert {k: (s, r) for k, s, r in zip(got["key"], got["stage"], got["reason"])} == expected
    assert got["key"].to_list() == sorted(expected)
    code, out, err = run(capsys, "query", str(demo_version),
                         "SELECT stage, reason, count(*) AS n FROM decisions WHERE NOT keep GROUP BY ALL ORDER BY ALL")
    assert code == 0 and out.splitlines()[0].split() == ["stage", "reason", "n"]
    assert "duplicate" in out and f"({len({v for v in expected.values()})} rows)" in out
    code, out, _ = run(capsys, "query", str(demo_version), "SELECT count(*) AS n FROM kept", "--out",
                       str(tmp_path / "n.csv"))
    assert (tmp_path / "n.csv").read_text().splitlines() == ['"n"', str(len(kept_keys(demo_version)))]
    code, out, _ = run(capsys, "query", str(demo_version),
                       "SELECT count(*) FROM vit_features v JOIN region_features r USING (key) WHERE v.status = 'ok'")
    assert code == 0


@pytest.mark.parametrize("sql, says", [("SELEC key FROM samples", "syntax error"),
                                        ("SELECT * FROM no_such_view", "no_such_view"),
                                        ("SELECT nope FROM samples", "nope")])
def test_bad_sql_is_one_line_and_exit_2(demo_version, capsys, tmp_path, sql, says):
    code, out, err = run(capsys, "query", str(demo_version), sql, "--out", str(tmp_path / "x.csv"))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("vlcurate: error: query: ") and says in err
    assert tree(tmp_path) == []


def assert_error(result, *parts):
    code, out, err = result
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    for part in parts:
        assert part in err, err


def test_missing_version(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert_error(run(capsys, "query", str(missing), "SELECT 1"), f"version {missing}: no such directory")
    assert_error(run(capsys, "export", "webdataset", str(missing), str(tmp_path / "out")),
                 f"version {missing}: no such directory")
    assert_error(run(capsys, "versions", "diff", str(missing), str(missing)), "no such directory")
    assert tree(tmp_path) == []


def test_export_target_that_exists(demo_version, wds_export, tmp_path, capsys):
    before = tree(wds_export)
    assert_error(run(capsys, "export", "parquet", str(demo_version), str(wds_export)),
                 f"output {wds_export}: already exists")
    assert tree(wds_export) == before
    (tmp_path / "empty").mkdir()
    assert_error(run(capsys, "export", "parquet", str(demo_version), str(tmp_path / "empty")), "already exists")
    assert tree(tmp_path) == ["empty/"]


def test_unknown_feature_name(demo_version, tmp_path, capsys):
    assert_error(run(capsys, "export", "webdataset", str(demo_version), str(tmp_path / "out"),
                     "--features", "vit,clip"), "--features clip: unknown feature (known: regions, vit)")
    assert tree(tmp_path) == []


def test_a_feature_the_version_lacks(tmp_path, capsys):
    """A version without region sidecars: the feature is named, nothing written."""
    import json
    import shutil

    from tests.conftest import tree as files

    version = tmp_path / "src" / "demo" / "v1"
    version.mkdir(parents=True)
    manifest = {"format": "vlcurate.manifest/1", "name": "demo", "version": "v1", "stages": [
        {"name": "download", "shards": 1, "rows": 1, "counts": {"ok": 1}}], "files": [],
        "recipe": {"stages": [{"download": {}}]}}
    (version / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    assert_error(run(capsys, "export", "parquet", str(version), str(out), "--features", "regions"),
                 f"version {version}: no region_features sidecars")
    assert files(tmp_path) == ["src/", "src/demo/", "src/demo/v1/", "src/demo/v1/manifest.json"]
    shutil.rmtree(version)


def test_bad_query_output_name(demo_version, tmp_path, capsys):
    assert_error(run(capsys, "query", str(demo_version), "SELECT 1", "--out", str(tmp_path / "x.xlsx")),
                 "unknown format")
    assert tree(tmp_path) == []


def test_a_failed_export_leaves_nothing(demo_version, tmp_path, capsys, monkeypatch):
    """A worker failure part way (a shard writer raising) removes the building directory."""
    from vlcurate.export import shards

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(shards, "write_parquet", broken)
    with pytest.raises(Exception, match="disk on fire"):
        main(["export", "parquet", str(demo_version), str(tmp_path / "demo" / "x"), "--samples-per-shard", "100"])
    capsys.readouterr()
    assert tree(tmp_path) == []


def test_validate_finds_a_damaged_export(wds_export, tmp_path, capsys):
    """A tar of the export rewritten without its .txt members: checksum and member problems."""
    import shutil
    import stat

    from vlcurate.io.tar import TarSample, read_tar, write_tar

    copy = tmp_path / "v"
    shutil.copytree(wds_export, copy)
    tar = copy / "train" / "00000.tar"
    tar.chmod(tar.stat().st_mode | stat.S_IWUSR)
    samples = read_tar(tar)
    write_tar(tar, [TarSample(s["__key__"], {k: v for k, v in s.items() if k not in ("__key__", "txt")})
                    for s in samples])
    assert main(["validate", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "train/00000.tar: sha256 differs from the manifest" in out
    assert f"train/00000.tar: sample {samples[0]['__key__']} lacks txt" in out
