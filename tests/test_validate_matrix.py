"""`vlcurate validate` over every kind of file in a version and every damage: never a
traceback, every problem a line naming its file, exit 1. And damage that only one
check can see (the file still matches the manifest's checksum), one check at a time."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlcurate.cli import main
from vlcurate.io.parquet import write_parquet
from vlcurate.io.tar import TarSample, tar_keys, write_tar
from vlcurate.validate import validate_version

FILES = {
    "tar": "samples/00001.tar",
    "samples": "samples/00002.parquet",
    "decision": "caption_filter/00000.parquet",
    "vit_features": "vit_features/00001.parquet",
    "region_features": "region_features/00003.parquet",
    "stats": "stats/exact_dedup-00004.json",
    "manifest": "manifest.json",
}


def truncate(path):
    path.write_bytes(path.read_bytes()[:-10])


def flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))


def delete(path):
    path.unlink()


def stray(path):
    (path.parent / "extra.bin").write_bytes(b"not listed")


def edit_rows(path, version):
    m = json.loads((version / "manifest.json").read_text())
    rel = path.relative_to(version).as_posix()
    for entry in m["files"]:
        if entry["path"] == rel:
            entry["rows"] = (entry["rows"] or 0) + 1
    (version / "manifest.json").write_text(json.dumps(m))


DAMAGES = {"truncate": truncate, "flip": flip, "delete": delete, "stray": stray, "rows": edit_rows}


DATA_KINDS = [k for k in FILES if k != "manifest"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_every_damage_to_every_kind_of_file_is_listed(damaged, damage, capsys):
    """One damage applied to a file of every kind at once: each is named, nothing crashes."""
    for kind in DATA_KINDS:
        path = damaged / FILES[kind]
        (DAMAGES[damage])(*((path, damaged) if damage == "rows" else (path,)))
    code = main(["validate", str(damaged)])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in out + err, out + err
    lines = out.strip().splitlines()
    problems, summary = lines[:-1], lines[-1]
    assert summary.endswith("problems") and not err
    listed = {e["path"] for e in json.loads((damaged / "manifest.json").read_text())["files"]}
    strays = {(Path(FILES[k]).parent / "extra.bin").as_posix() for k in DATA_KINDS}
    for kind in DATA_KINDS:
        named = (Path(FILES[kind]).parent / "extra.bin").as_posix() if damage == "stray" else FILES[kind]
        assert any(p.startswith(named + ":") for p in problems), (kind, problems)
    for p in problems:  # every line starts with the file it is about
        assert p.split(":")[0] in listed | strays | {"manifest.json"}, p
    if damage == "delete":  # a missing file is one problem, not one per check that needs it
        for kind in DATA_KINDS:
            assert sum(p.startswith(FILES[kind] + ":") for p in problems) == 1, (kind, problems)


@pytest.mark.parametrize("damage", ["truncate", "flip", "stray"])
def test_a_damaged_manifest_is_a_listed_problem(damaged, damage, capsys):
    (DAMAGES[damage])(damaged / "manifest.json")
    code = main(["validate", str(damaged)])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in out + err, out + err
    problem = out.strip().splitlines()[0]
    assert problem.startswith("extra.bin: present but not in the manifest" if damage == "stray"
                              else "manifest.json: is not valid JSON"), problem


def test_a_deleted_manifest_is_not_a_version(damaged, capsys):
    (damaged / "manifest.json").unlink()
    assert main(["validate", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith(f"version {damaged}: no manifest.json (not a version directory)")
    assert len(err.strip().splitlines()) == 1


def _rewrite(version, rel, write):
    """Replace a file and make the manifest agree with its new bytes and rows, so that
    only a consistency check can tell."""
    import hashlib

    path = version / rel
    path.unlink()
    record = write(path)
    data = path.read_bytes()
    m = json.loads((version / "manifest.json").read_text())
    for entry in m["files"]:
        if entry["path"] == rel:
            entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data),
                         rows=getattr(record, "rows", entry["rows"]))
    (version / "manifest.json").write_text(json.dumps(m, indent=1))


def test_tar_keys_must_agree_with_the_parquet(damaged):
    rel = "samples/00000.tar"
    keys = list(tar_keys(damaged / rel))
    from vlcurate.io.tar import iter_tar_files

    files: dict = {}
    for key, ext, payload in iter_tar_files(damaged / rel, None):
        files.setdefault(key, {})[ext] = payload
    _rewrite(damaged, rel, lambda p: write_tar(p, [TarSample(k, files[k]) for k in keys[1:]]))
    assert validate_version(damaged) == [
        f"{rel}: keys disagree with samples/00000.parquet (only in tar: [], only ok in parquet: ['{keys[0]}'])"]


def test_a_sidecar_key_outside_its_shard_is_reported(damaged):
    rel = "exact_dedup/00002.parquet"
    table = pq.read_table(damaged / rel)
    keys = table.column("key").to_pylist()
    keys[0] = "00009_000000"
    table = table.set_column(0, table.schema.field("key"), pa.array(keys, pa.string()))
    _rewrite(damaged, rel, lambda p: write_parquet(table, p, "decision"))
    assert validate_version(damaged) == [f"{rel}: keys not in the shard's samples: ['00009_000000']"]


def test_stats_must_add_up_to_the_manifest_counts(damaged):
    rel = "stats/caption_filter-00001.json"
    body = json.loads((damaged / rel).read_text())
    body["counts"]["kept"] += 1

    def write(path):
        path.write_text(json.dumps(body, indent=1) + "\n")

    _rewrite(damaged, rel, write)
    assert validate_version(damaged) == ["manifest.json: stage caption_filter counts differ from its stats files"]


def test_two_damages_at_once_are_both_reported(damaged):
    truncate(damaged / "samples/00001.tar")
    flip(damaged / "vit_features/00002.parquet")
    problems = validate_version(damaged)
    assert any(p.startswith("samples/00001.tar") for p in problems)
    assert any(p.startswith("vit_features/00002.parquet") for p in problems)
