"""Every failure a user can cause: one line naming the input and the problem, the
right exit code, and the directory tree (hidden entries included) as it was.

Builds here are tiny (three URLs from the demo server, one local worker)."""

from __future__ import annotations

import json
import shutil
import stat

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import tree
from vlcurate.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def assert_error(result, expected: str) -> None:
    """Exit 2 and exactly one stderr line: ``vlcurate: error: EXPECTED``."""
    code, _, err = result
    assert (code, err) == (2, f"vlcurate: error: {expected}")


@pytest.fixture
def urls(tmp_path, demo_corpus, demo_server):
    """Three demo URLs (url, caption, kind) as Parquet."""
    rows = [{**r, "url": demo_server.base_url + r["url"]} for r in demo_corpus.rows if r["kind"] == "ok"][:3]
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def recipe(tmp_path, inputs, later=None, name="r.yaml", download=None, **top):
    """A small recipe: download then the ``later`` stages; ``top`` replaces top-level keys."""
    body = {
        "input": {"paths": [str(p) for p in inputs], "extra_cols": ["kind"]},
        "output": {"root": "out", "name": "small", "version": "v1"},
        "samples_per_shard": 100,
        "stages": [{"download": {"allow_networks": ["127.0.0.0/8"], "image_size": 32, "threads": 4, "retries": 0,
                                 "timeout": 5.0, **(download or {})}}, *(later or [])],
        "runner": {"name": "local", "workers": 1},
        **top,
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


# --- 2. a stage listed twice --------------------------------------------------------

def test_a_stage_kind_twice_gets_numbered_names(tmp_path, urls, capsys):
    path = recipe(tmp_path, [urls], [{"exact_dedup": {"column": "sha256"}}, {"exact_dedup": {"column": "phash"}},
                                     {"caption_filter": {"name": "short_captions", "min_chars": 3}}])
    code, out, err = run(capsys, "build", str(path))
    assert code == 0, err
    version = tmp_path / "out" / "small" / "v1"
    manifest = json.loads((version / "manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == ["download", "exact_dedup", "exact_dedup_2", "short_captions"]
    assert manifest["recipe"]["stages"][2] == {"exact_dedup": {"name": "exact_dedup_2", "tag_only": False, "column": "phash"}}
    for stage in ("exact_dedup", "exact_dedup_2", "short_captions"):
        assert (version / stage / "00000.parquet").is_file() and (version / "stats" / f"{stage}-00000.json").is_file()
    assert "stages download, exact_dedup, exact_dedup_2, short_captions" in err
    assert main(["validate", str(version)]) == 0, capsys.readouterr().out


def test_a_repeated_stage_name_is_an_error(tmp_path, urls, capsys):
    path = recipe(tmp_path, [urls], [{"exact_dedup": {"name": "dedup"}}, {"caption_filter": {"name": "dedup"}}])
    before = tree(tmp_path)
    assert_error(run(capsys, "build", str(path)),
                 f"{path}.stages[2].caption_filter: stage name 'dedup' is already used by {path}.stages[1]; "
                 "give one of them another 'name:'")
    assert tree(tmp_path) == before


def test_a_failure_before_the_first_shard_leaves_nothing(tmp_path, urls, capsys, monkeypatch):
    """A stage that fails on its first shard (here: its setup) takes the build directory
    with it, so the same version can be built again."""
    from vlcurate.download.stage import DownloadStage

    path = recipe(tmp_path, [urls])
    before = tree(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(DownloadStage, "setup", lambda self: (_ for _ in ()).throw(RuntimeError("no network stack")))
        with pytest.raises(Exception, match="no network stack"):
            main(["build", str(path)])
    assert tree(tmp_path) == before
    capsys.readouterr()
    code, _, err = run(capsys, "build", str(path))
    assert code == 0, err


# --- 3. builds where every row fails -------------------------------------------------

def test_every_row_failing_exits_1_naming_the_kind(tmp_path, demo_server, capsys):
    path = tmp_path / "ints.jsonl"
    path.write_text("".join(json.dumps({"url": i, "caption": "a caption", "kind": "x"}) + "\n" for i in range(3)))
    code, out, err = run(capsys, "build", str(recipe(tmp_path, [path])))
    version = tmp_path / "out" / "small" / "v1"
    assert code == 1
    assert err.splitlines()[-1] == ("vlcurate: warning: all 3 rows invalid_url: the url column holds no http(s) "
                                    f"URLs; check input.url_col (version kept for inspection: {version})")
    assert (version / "manifest.json").is_file()


def test_every_row_blocked_names_the_setting(tmp_path, urls, capsys):
    code, out, err = run(capsys, "build", str(recipe(tmp_path, [urls], download={"allow_networks": []})))
    assert code == 1
    assert err.splitlines()[-1].startswith(
        "vlcurate: warning: all 3 rows blocked_address: the hosts are on a non-public network; "
        "allow it in the download settings (download.allow_networks: [CIDR, ...])")


# --- 5. range errors in the key-path style --------------------------------------------

@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"download": {"image_size": -64}}, ".stages[0].download.image_size: must be >= 1, got -64"),
        ({"download": {"threads": 0}}, ".stages[0].download.threads: must be >= 1, got 0"),
        ({"download": {"timeout": 0}}, ".stages[0].download.timeout: must be > 0, got 0.0"),
        ({"download": {"resize_mode": "fill"}},
         ".stages[0].download.resize_mode: expected one of 'no', 'keep_ratio', 'center_crop', 'border', got 'fill'"),
        ({"runner": {"workers": 0}}, ".runner.workers: must be >= 1, got 0"),
        ({"all_stages": [{"caption_filter": {}}]},
         ".stages[0]: the first stage must read the input list (download), got 'caption_filter'"),
        ({"all_stages": [{"download": {}}, {"caption_filter": {"min_chars": -1}}]},
         ".stages[1].caption_filter.min_chars: must be >= 0, got -1"),
    ],
)
def test_range_errors_name_the_key(tmp_path, urls, capsys, change, expected):
    top = {"stages" if k == "all_stages" else k: v for k, v in change.items() if k != "download"}
    path = recipe(tmp_path, [urls], download=change.get("download"), **top)
    before = tree(tmp_path)
    assert_error(run(capsys, "build", str(path)), f"{path}{expected}")
    assert tree(tmp_path) == before


def test_workers_flag_must_be_positive(tmp_path, urls, capsys):
    path = recipe(tmp_path, [urls])
    before = tree(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["build", str(path), "--workers", "0"])
    assert exit_info.value.code == 2 and "--workers: must be >= 1, got 0" in capsys.readouterr().err
    assert tree(tmp_path) == before


# --- 6. input and YAML errors that say where ---------------------------------------------

def test_yaml_error_has_line_and_column(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("input: {paths: [u.csv]}\nstages:\n  - download: {image_size: 12\n")
    before = tree(tmp_path)
    assert_error(run(capsys, "build", str(path)),
                 f"recipe {path}: not valid YAML at line 4, column 1: expected ',' or '}}', but got '<stream end>'")
    assert tree(tmp_path) == before


def test_jsonl_error_names_the_line(tmp_path, urls, capsys):
    path = tmp_path / "u.jsonl"
    path.write_text('{"url": "http://127.0.0.1/a.jpg", "caption": "c", "kind": "x"}\n{"url": "http://127.0.0.1/b.jpg", "caption": "c\\q"}\n')
    r = recipe(tmp_path, [path])
    before = tree(tmp_path)
    assert_error(run(capsys, "build", str(r)), f"input {path}: line 2: not valid JSON (Invalid \\escape at column 48)")
    assert tree(tmp_path) == before


def test_missing_input_writes_nothing_not_even_hidden(tmp_path, capsys):
    """The build directory is claimed only after the inputs are read."""
    path = recipe(tmp_path, [tmp_path / "absent.parquet"])
    before = tree(tmp_path)
    assert_error(run(capsys, "build", str(path)), f"input {tmp_path / 'absent.parquet'}: no such file or directory")
    assert tree(tmp_path) == before


def test_different_recipe_refused_on_an_unfinished_build(tmp_path, urls, capsys):
    from vlcurate.pipelines.build import _claim_building_dir
    from vlcurate.recipe import load_recipe

    _claim_building_dir(load_recipe(recipe(tmp_path, [urls], name="first.yaml")))  # as a killed build leaves it
    path = recipe(tmp_path, [urls], samples_per_shard=2)
    before = tree(tmp_path)
    code, out, err = run(capsys, "build", str(path))
    assert code == 2 and err.startswith(
        f"vlcurate: error: output {tmp_path / 'out' / 'small' / '.v1.building'}: an unfinished build of a "
        "different recipe is there (hash "), err
    assert tree(tmp_path) == before


# --- 7. unknown pipeline options ---------------------------------------------------------

@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--runner", "DaskRunner", "--", "--dask_client_adress=tcp://127.0.0.1:9"],
         "pipeline option --dask_client_adress: unknown (did you mean --dask_client_address?)"),
        (["--", "--bogus_option=1"], "pipeline option --bogus_option: unknown (not a Beam or runner option)"),
        (["--", "stray"], "pipeline option 'stray': not an option (pass --name=value after '--')"),
    ],
)
def test_unknown_pipeline_option(tmp_path, urls, capsys, argv, expected):
    if "DaskRunner" in argv:
        pytest.importorskip("distributed")
    path = recipe(tmp_path, [urls])
    before = tree(tmp_path)
    assert_error(run(capsys, "build", str(path), *argv), expected)
    assert tree(tmp_path) == before


# --- 8. small lies -------------------------------------------------------------------------

@pytest.fixture
def small_version(tmp_path, urls, capsys):
    path = recipe(tmp_path, [urls], [{"caption_filter": {"min_chars": 10_000}}])  # drops every sample
    assert main(["build", str(path)]) == 0
    capsys.readouterr()
    return tmp_path / "out" / "small" / "v1"


def test_versions_list_kept_column_and_wrong_level(small_version, capsys):
    root = small_version.parent.parent
    code, out, _ = run(capsys, "versions", "list", str(root))
    header, line = out.splitlines()
    assert code == 0 and header.split()[:5] == ["name", "version", "samples", "kept", "files"]
    assert line.split()[:4] == ["small", "v1", "3", "0"]
    before = tree(root)
    for wrong, why in ((small_version.parent, " (it is a NAME directory)"),
                       (small_version, " (it is a version directory itself)")):
        assert_error(run(capsys, "versions", "list", str(wrong)),
                     f"root {wrong}: no versions under it{why}; pass the root that holds NAME/VERSION")
    assert tree(root) == before


def test_versions_show_json_is_the_summary(small_version, capsys):
    code, out, _ = run(capsys, "versions", "show", str(small_version), "--json")
    summary = json.loads(out)
    assert code == 0 and "files" in summary and not isinstance(summary["files"], list)
    assert (summary["samples"], summary["kept"]) == (3, 0)
    assert [s["name"] for s in summary["stages"]] == ["download", "caption_filter"]
    code, out, _ = run(capsys, "versions", "show", str(small_version))
    assert "samples      3 downloaded, 0 kept" in out and "3 rows in 1 shard:" in out


def test_validate_missing_directory_and_plural(small_version, tmp_path, capsys):
    before = tree(tmp_path)
    assert_error(run(capsys, "validate", str(tmp_path / "nope")), f"version {tmp_path / 'nope'}: no such directory")
    assert tree(tmp_path) == before
    copy = tmp_path / "copy"
    shutil.copytree(small_version, copy)
    copy.chmod(copy.stat().st_mode | stat.S_IWUSR)
    (copy / "stray.txt").write_text("x")
    code, out, _ = run(capsys, "validate", str(copy))
    assert code == 1 and out.splitlines()[-1] == f"{copy}: 1 problem", out


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_export_to_an_unwritable_place(small_version, tmp_path, capsys, where):
    if where == "proc":
        out, expected = "/proc/vlcurate-test/x.tsv", "output /proc/vlcurate-test/x.tsv: cannot write in /proc ("
    else:
        (tmp_path / "file").write_text("x")
        out = str(tmp_path / "file" / "x.tsv")
        expected = f"output {out}: {tmp_path / 'file'} is not a directory"
    before = tree(tmp_path)
    code, _, err = run(capsys, "export", "lxmert-tsv", str(small_version), out)
    assert code == 2 and "\n" not in err and err.startswith(f"vlcurate: error: {expected}"), err
    assert tree(tmp_path) == before


def test_version_flag_and_download_help(capsys):
    from vlcurate import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"vlcurate {__version__}"
    with pytest.raises(SystemExit):
        main(["download", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "HTTP 408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524" in text
    assert "5xx" not in text and "501" not in text
