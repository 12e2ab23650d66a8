"""Bad input: one line naming the input and the problem, exit 2, no version directory."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_recipe, tree
from vlcurate.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    assert err.startswith("vlcurate: error: ") and "\n" not in err, err
    for f in fragments:
        assert f in err, err


def unchanged(root, before):
    """Nothing written, hidden entries (a claimed ``.v1.building``) included."""
    return tree(root) == before


def test_missing_recipe(tmp_path, capsys):
    assert_one_line_error(*run(capsys, "build", str(tmp_path / "nope.yaml")), "nope.yaml", "no such file")


def test_malformed_recipe(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("stages: [download: {image_size: 12")
    assert_one_line_error(*run(capsys, "build", str(tmp_path / "bad.yaml")), "bad.yaml", "not valid YAML")


def test_wrong_type_in_recipe(tmp_path, demo_urls, capsys):
    recipe = make_recipe(tmp_path, demo_urls, samples_per_shard="many")
    before = tree(tmp_path)
    assert_one_line_error(*run(capsys, "build", str(recipe)), "samples_per_shard: expected int")
    assert unchanged(tmp_path, before)


def test_missing_input_file(tmp_path, capsys):
    recipe = make_recipe(tmp_path, tmp_path / "absent.parquet")
    before = tree(tmp_path)
    assert_one_line_error(*run(capsys, "build", str(recipe)), "absent.parquet")
    assert unchanged(tmp_path, before)


def test_input_without_url_column(tmp_path, capsys):
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"link": ["http://127.0.0.1/a.jpg"], "caption": ["a"]}), path)
    recipe = make_recipe(tmp_path, path)
    before = tree(tmp_path)
    assert_one_line_error(*run(capsys, "build", str(recipe)), "urls.parquet", "url")
    assert unchanged(tmp_path, before)


def test_existing_version(tmp_path, demo_urls, capsys):
    (tmp_path / "out" / "demo" / "v1").mkdir(parents=True)
    assert_one_line_error(*run(capsys, "build", str(make_recipe(tmp_path, demo_urls))), "already exists")
    assert list((tmp_path / "out" / "demo").iterdir()) == [tmp_path / "out" / "demo" / "v1"]


@pytest.mark.parametrize("how", ["recipe", "flag"])
def test_unknown_runner(tmp_path, demo_urls, capsys, how):
    if how == "recipe":
        argv = ["build", str(make_recipe(tmp_path, demo_urls, runner={"name": "WarpRunner"}))]
    else:
        argv = ["build", str(make_recipe(tmp_path, demo_urls)), "--runner", "WarpRunner"]
    assert_one_line_error(*run(capsys, *argv), "runner 'WarpRunner': unknown")
    assert not (tmp_path / "out").exists()
