import pytest
import yaml

from tests.conftest import make_recipe
from vlcurate.recipe import load_recipe
from vlcurate.typed import ConfigError


def test_recipe_loads_and_hash_ignores_paths_and_runner(tmp_path, demo_urls):
    a = load_recipe(make_recipe(tmp_path, demo_urls, root="a"))
    b = load_recipe(make_recipe(tmp_path, demo_urls, root="b", runner={"name": "DaskRunner", "workers": 1}))
    assert a.stages[0].name == "download" and a.stages[0].config.image_size == 128
    assert a.hash() == b.hash()
    c = load_recipe(make_recipe(tmp_path, demo_urls, root="c", samples_per_shard=7))
    assert c.hash() != a.hash()


def _write(tmp_path, body):
    path = tmp_path / "r.yaml"
    path.write_text(body if isinstance(body, str) else yaml.safe_dump(body))
    return path


def _base(demo_urls):
    return {"input": {"paths": [str(demo_urls)]}, "output": {"root": "o", "name": "n", "version": "v1"},
            "stages": [{"download": {}}]}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b.update(extra=1), r"\.extra: unknown key"),
        (lambda b: b["stages"][0]["download"].update(image_size="x"), r"stages\[0\]\.download\.image_size: expected int"),
        (lambda b: b["stages"][0]["download"].update(bogus=1), r"stages\[0\]\.download\.bogus: unknown key"),
        (lambda b: b["stages"].append({"nope": {}}), r"stages\[1\]: unknown stage 'nope'"),
        (lambda b: b.pop("output"), r"\.output: required key is missing"),
        (lambda b: b["output"].update(version="a/b"), r"version 'a/b' must be"),
        (lambda b: b.update(samples_per_shard=0), r"samples_per_shard: must be >= 1, got 0"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, demo_urls, mutate, message):
    body = _base(demo_urls)
    mutate(body)
    with pytest.raises(ConfigError, match=message):
        load_recipe(_write(tmp_path, body))


def test_missing_and_malformed_recipe(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_recipe(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(_write(tmp_path, "input: [unclosed"))
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_recipe(_write(tmp_path, "- a\n- b\n"))


def test_paths_in_a_recipe_are_relative_to_it_not_to_the_working_directory(tmp_path, demo_urls, monkeypatch):
    here = tmp_path / "recipes"
    (here / "models" / "clip-dir").mkdir(parents=True)
    (here / "models" / "butd.pkl").write_bytes(b"")
    (tmp_path / "parent" / "v0").mkdir(parents=True)
    (tmp_path / "parent" / "v0" / "manifest.json").write_text("{}")
    (here / "urls.parquet").write_bytes(demo_urls.read_bytes())
    body = {"input": {"paths": ["urls.parquet", "gs://bucket/more.parquet"]},
            "output": {"root": "../out", "name": "n", "version": "v1"},
            "stages": [{"download": {"reuse": "../parent/v0"}},
                       {"vit_features": {"model": "ViT-B-32", "weights": "models/vit.safetensors"}},
                       {"vit_features": {"model": "any", "weights": "local-dir:models/clip-dir"}},
                       {"clip_score": {"model": "ViT-B-32", "weights": "laion2b_s34b_b79k"}},
                       {"clip_score": {"model": "ViT-B-32", "weights": "hf-hub:org/model"}},
                       {"region_features": {"config": "butd-tiny", "weights": "models/butd.pkl"}}]}
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the download.reuse check would fail from here
    recipe = load_recipe(_write(here, body))
    assert recipe.input.paths == (str(here / "urls.parquet"), "gs://bucket/more.parquet")
    assert recipe.output.root == str(tmp_path / "out")
    configs = [s.config for s in recipe.stages]
    assert configs[0].reuse == str(tmp_path / "parent" / "v0")
    assert configs[1].weights == str(here / "models" / "vit.safetensors")
    assert configs[2].weights == f"local-dir:{here / 'models' / 'clip-dir'}"
    assert configs[3].weights == "laion2b_s34b_b79k" and configs[4].weights == "hf-hub:org/model"
    assert configs[5].weights == str(here / "models" / "butd.pkl")
    # read back from the resolved form (what a version stores) they stay the same
    again = load_recipe(_write(tmp_path / "elsewhere", recipe.resolved()))
    assert again.resolved() == recipe.resolved()


def test_secret_runner_options_are_redacted_where_the_recipe_is_written():
    from vlcurate.recipe import redact_options

    options = ("--s3_secret_access_key=abc", "--project=p", "--aws_session_token", "tok",
               "--dask_client_address=127.0.0.1:8786", "--db_password=pw", "--s3_access_key_id=AKIA")
    assert redact_options(options) == ["--s3_secret_access_key=<redacted>", "--project=p", "--aws_session_token",
                                       "<redacted>", "--dask_client_address=127.0.0.1:8786",
                                       "--db_password=<redacted>", "--s3_access_key_id=<redacted>"]
