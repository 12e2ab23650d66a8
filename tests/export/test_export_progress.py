"""Progress of `vlcurate export`: samples counted as the workers select and write
them (read from their progress files and markers, so on any runner), plain lines
when not on a terminal, and nothing of it left in the export."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

from tests.export.conftest import kept_keys
from vlcurate.export.training import ExportProgress, ExportRecipe, export_training
from vlcurate.io import storage
from vlcurate.io.stats import ShardStats, write_stats

LINE = re.compile(r"  \[ *[\d.]+s\] export: (counting \| \d+/\d+ source shards counted|"
                  r"\d+/\d+ samples \(\d+%\), [\d.]+/s, ETA \S+ \| selected \d+/\d+, written \d+/\d+)$")


def test_poll_counts_finished_and_in_flight_shards(tmp_path):
    out = str(tmp_path)
    job = SimpleNamespace(out=out, format="webdataset")
    work = tmp_path / "_work" / "progress"
    work.mkdir(parents=True)
    progress = ExportProgress(job, num_source=2)
    (work / "count-00000.json").write_text(json.dumps({"exported": 30, "kept": 31}))
    assert progress.poll() == (0.0, None, "1/2 source shards counted")
    (work / "count-00001.json").write_text(json.dumps({"exported": 20}))
    write_stats(ShardStats("select", 0, 31, {"kept": 31, "exported": 30}), storage.join(out, "stats", "select-00000.json"))
    (work / "select-00000.json").write_text('{"done": 5, "of": 30}')  # stale: the marker wins
    (work / "select-00001.json").write_text('{"done": 7, "of": 20}')  # in flight
    (work / "webdataset-00000.json").write_text('{"done": 4, "of": 25}')
    assert progress.poll() == (30 + 7 + 4, 100.0, "selected 37/50, written 4/50")
    write_stats(ShardStats("webdataset", 0, 25, {"ok": 25}), storage.join(out, "stats", "webdataset-00000.json"))
    assert progress.poll()[0] == 30 + 7 + 25


def test_export_shows_plain_lines_and_leaves_no_progress_files(demo_version, tmp_path):
    lines: list[str] = []
    out = tmp_path / "demo" / "e"
    r = export_training(ExportRecipe(str(demo_version), "parquet", samples_per_shard=64), str(out),
                        log=lines.append, progress_interval=0.2)
    kept = len(kept_keys(demo_version))
    assert r.exported == kept and lines
    assert all(LINE.match(line) for line in lines), lines
    assert lines[-1].split("] ")[1].startswith(f"export: {2 * kept}/{2 * kept} samples (100%)")
    assert lines[-1].endswith(f"selected {kept}/{kept}, written {kept}/{kept}")
    assert not (out / "_work").exists()
    assert "_work" not in json.dumps(r.manifest["files"])


def test_report_counts_samples_read(demo_version, tmp_path, monkeypatch):
    from vlcurate.export.html_report import write_report
    from vlcurate.pipelines import progress

    # every update shown (a real run shows one each 2 s, none for a report done sooner)
    monkeypatch.setattr(progress.Display, "for_stderr",
                        staticmethod(lambda log, interval=2.0: progress.Display(log, interval=0)))
    lines: list[str] = []
    write_report(demo_version, tmp_path / "r.html", log=lines.append)
    rows = json.loads((demo_version / "manifest.json").read_text())["stages"][0]["rows"]
    assert re.search(rf"report: samples read: {rows}/{rows} samples \(100%\)", lines[-1]), lines
    assert len(lines) > 1 and all("report: samples read: " in line for line in lines)
