"""`vlcurate validate` on a good demo version, then on damaged copies of it."""

import json

import pytest

from vlcurate.cli import main
from vlcurate.validate import validate_version


def test_demo_version_is_valid(demo_version, capsys):
    assert validate_version(demo_version) == []
    assert main(["validate", str(demo_version)]) == 0
    assert "valid" in capsys.readouterr().out


def _truncate_tar(v):
    p = v / "samples/00001.tar"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return "samples/00001.tar"


def _flip_parquet_byte(v):
    p = v / "samples/00002.parquet"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    return "samples/00002.parquet"


def _delete_shard(v):
    (v / "samples/00003.tar").unlink()
    return "samples/00003.tar"


def _edit_row_count(v):
    m = json.loads((v / "manifest.json").read_text())
    entry = next(f for f in m["files"] if f["path"] == "samples/00000.parquet")
    entry["rows"] += 1
    (v / "manifest.json").write_text(json.dumps(m))
    return "samples/00000.parquet"


@pytest.mark.parametrize("damage", [_truncate_tar, _flip_parquet_byte, _delete_shard, _edit_row_count])
def test_damage_is_found_and_named(damaged, damage, capsys):
    name = damage(damaged)
    problems = validate_version(damaged)
    assert problems and all(isinstance(p, str) for p in problems)
    assert any(p.startswith(name) for p in problems), problems
    assert main(["validate", str(damaged)]) == 1
    assert name in capsys.readouterr().out


def test_unlisted_file_is_reported(damaged):
    (damaged / "samples/extra.txt").write_text("x")
    assert validate_version(damaged) == ["samples/extra.txt: present but not in the manifest"]


def test_not_a_version(tmp_path, capsys):
    assert main(["validate", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
