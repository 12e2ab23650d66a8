"""The report of a version on an object store, written there: the same bytes as the
report of the same version on local disk (everything goes through the storage layer)."""

from __future__ import annotations

from pathlib import Path

from vlcurate.export.html_report import default_out, write_report
from vlcurate.io import storage


def test_report_of_a_version_on_a_store(stores, local_build, tmp_path):
    store = stores["s3"]
    local = Path(local_build.version_dir)
    remote = store.url("reported", "demo", "v1")
    for f in storage.list_files(local):
        storage.write_bytes(storage.join(remote, f.path), storage.read_bytes(local / f.path))
    written = write_report(remote)
    assert written == default_out(remote) == store.url("reported", "demo", "v1.report.html")
    assert storage.read_bytes(written) == Path(write_report(local, tmp_path / "local.html")).read_bytes()
