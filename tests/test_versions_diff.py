"""`vlcurate versions diff` of two demo builds that differ only in the caption filter."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from vlcurate.cli import main


def outcomes(version: Path) -> dict[str, str]:
    """Each key's outcome read straight from the files, filters in recipe order."""
    manifest = json.loads((version / "manifest.json").read_text())
    result = {}
    for path in sorted(glob.glob(str(version / "samples" / "*.parquet"))):
        t = pq.read_table(path, columns=["key", "status", "error_kind"])
        for k, s, e in zip(t["key"].to_pylist(), t["status"].to_pylist(), t["error_kind"].to_pylist()):
            result[k] = "kept" if s == "ok" else f"failed:{e}"
    for item in manifest["recipe"]["stages"]:
        (kind, settings), = item.items()
        name = (settings or {}).get("name", kind)
        for path in sorted(glob.glob(str(version / name / "[0-9]*[0-9].parquet"))):
            t = pq.read_table(path)
            if (t.schema.metadata or {}).get(b"vlcurate.record") != b"decision":
                continue
            for k, keep, reason in zip(t["key"].to_pylist(), t["keep"].to_pylist(), t["reason"].to_pylist()):
                if not keep and result[k] == "kept":
                    result[k] = f"dropped:{name}:{reason}"
    return result


@pytest.fixture(scope="session")
def stricter_demo(demo_urls, tmp_path_factory) -> Path:
    """The demo recipe with caption_filter.min_chars 36 instead of 5 (a second build)."""
    from tests.conftest import make_recipe
    from vlcurate.pipelines.build import build
    from vlcurate.recipe import load_recipe

    tmp = tmp_path_factory.mktemp("demo-strict")
    path = make_recipe(tmp, demo_urls, version="v2")
    body = yaml.safe_load(path.read_text())
    body["stages"][1] = {"caption_filter": {"min_chars": 36}}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return build(load_recipe(path), log=lambda s: None).version_dir


def test_diff_lists_exactly_the_samples_whose_decision_changed(demo_version, stricter_demo, capsys):
    assert main(["versions", "diff", str(demo_version), str(stricter_demo), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    a, b = outcomes(demo_version), outcomes(stricter_demo)
    expected = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    assert expected  # the stricter filter changed something
    assert {c["key"]: (c["a"], c["b"]) for c in d["changed"]} == expected
    assert any(v == ("kept", "dropped:caption_filter:caption_too_short") for v in expected.values())
    assert d["added"] == [] and d["removed"] == []
    settings = {r["setting"]: (r["a"], r["b"]) for r in d["recipe"]}
    assert settings["stages[1].caption_filter.min_chars"] == (5, 36)
    assert settings["output.version"] == ("v1", "v2")
    counts = {(c["stage"], c["count"]): c for c in d["counts"]}
    too_short = counts[("caption_filter", "dropped.caption_too_short")]
    assert too_short["b"] - too_short["a"] == sum(
        1 for k in b if b[k] == "dropped:caption_filter:caption_too_short") - sum(
        1 for k in a if a[k] == "dropped:caption_filter:caption_too_short")
    assert d["kept"] == {"a": sum(v == "kept" for v in a.values()), "b": sum(v == "kept" for v in b.values())}
    assert main(["versions", "diff", str(demo_version), str(stricter_demo)]) == 0
    text = capsys.readouterr().out
    assert f"{len(expected)} whose decision changed" in text
    assert "stages[1].caption_filter.min_chars: 5 -> 36" in text


def test_a_version_against_itself_has_no_differences(demo_version, capsys):
    assert main(["versions", "diff", str(demo_version), str(demo_version), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["recipe"] == [] and d["changed"] == [] and all(c["change"] == 0 for c in d["counts"])
