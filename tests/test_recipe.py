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
        (lambda b: b.update(samples_per_shard=0), r"samples_per_shard: must be at least 1"),
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
