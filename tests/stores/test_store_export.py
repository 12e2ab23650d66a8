"""A training export written to an object store: built in place, committed by its
manifest, byte for byte the local export, valid read from the store, and queried there."""

from __future__ import annotations

from tests.export.conftest import kept_keys
from vlcurate import cli
from vlcurate.io import storage


def test_export_to_a_store_equals_the_local_export(stores, demo_version, parquet_export, capsys):
    store = stores["s3"]
    out = store.url("exports", "demo", "v1-parquet")
    assert cli.main(["export", "parquet", str(demo_version), out, "--samples-per-shard", "64",
                     "--features", "vit,regions"]) == 0
    local = {f.path for f in storage.list_files(parquet_export)}
    remote = {f.path for f in storage.list_files(out)}
    assert remote == local
    for path in sorted(local):
        if path.startswith(("train/", "stats/")):
            assert storage.read_bytes(storage.join(out, path)) == (parquet_export / path).read_bytes(), path
    capsys.readouterr()
    assert cli.main(["validate", out]) == 0, capsys.readouterr().out
    capsys.readouterr()
    assert cli.main(["query", out, "SELECT count(DISTINCT key) AS n FROM train"]) == 0
    assert str(len(kept_keys(demo_version))) in capsys.readouterr().out.splitlines()[2]
    # a second export to the same place is refused, and leaves the version alone
    before = storage.list_files(out)
    assert cli.main(["export", "parquet", str(demo_version), out]) == 2
    assert "already exists" in capsys.readouterr().err
    assert storage.list_files(out) == before
