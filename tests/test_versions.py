import json
import os

from vlcurate.cli import main
from vlcurate.versions import list_versions, show


def test_list_and_show(demo_version, capsys):
    root = demo_version.parent.parent
    rows = list_versions(root)
    assert [(r["name"], r["version"]) for r in rows] == [("demo", "v1")]
    m = json.loads((demo_version / "manifest.json").read_text())
    assert rows[0]["files"] == len(m["files"]) and rows[0]["samples"] == m["stages"][0]["counts"]["ok"]
    text = show(demo_version)
    assert "demo/v1" in text and "stage download" in text and m["recipe_hash"][:16] in text
    assert main(["versions", "list", str(root)]) == 0
    assert "demo" in capsys.readouterr().out
    assert main(["versions", "show", str(demo_version), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe_hash"] == m["recipe_hash"]


def test_manifest_records_what_a_rebuild_needs(demo_version):
    m = json.loads((demo_version / "manifest.json").read_text())
    assert m["schema_version"] and m["code_version"].startswith("0.1.0")
    assert m["inputs"][0]["sha256"] and m["inputs"][0]["bytes"] > 0
    assert m["recipe"]["stages"][0]["download"]["image_size"] == 128
    assert [s["name"] for s in m["stages"]] == [list(s)[0] for s in m["recipe"]["stages"]]
    paths = {f["path"] for f in m["files"]}
    assert "samples/00000.tar" in paths and "stats/download-00000.json" in paths
    assert not any(p.startswith("_work") for p in paths)


def test_version_is_read_only(demo_version):
    mode = os.stat(demo_version / "samples" / "00000.tar").st_mode
    assert not mode & 0o222


def test_list_missing_root(tmp_path, capsys):
    assert main(["versions", "list", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
