"""Progress: a bar with rate and ETA on a terminal, plain periodic lines otherwise;
a build counts samples as they finish (progress files through the storage layer),
not whole shards; and a normal build prints no third-party noise."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import make_recipe
from vlcurate.io import storage
from vlcurate.pipelines.progress import Display, Progress, ShardProgress, Ticker, read_shard_progress
from vlcurate.pipelines.stage import Layout


def test_terminal_gets_a_bar_redrawn_in_place_with_rate_and_eta():
    term = io.StringIO()
    ticker = Ticker("report: shards read", 4, display=Display(lambda s: None, terminal=term))
    with ticker:
        ticker.advance(1)
        ticker.advance(1)
    out = term.getvalue()
    draws = out.split("\r")[1:]
    assert len(draws) == 3 and out.endswith("\n")  # two updates and the final one
    assert draws[0].startswith("report: shards read [######..................] 1/4  25%")
    assert "/s ETA " in draws[0] and draws[0].endswith("\x1b[K")
    assert draws[-1].startswith("report: shards read [############............] 2/4  50%")


def test_plain_lines_at_most_once_per_interval_and_a_final_one():
    lines: list[str] = []
    ticker = Ticker("job", 100, display=Display(lines.append, interval=3600))
    with ticker:
        for _ in range(50):
            ticker.advance(1)
    assert len(lines) == 2  # the first update, then the last (interval not reached between)
    assert re.search(r"job: 1/100 \(1%\)", lines[0]) and re.search(r"job: 50/100 \(50%\), [\d.]+/s, ETA ", lines[1])
    again: list[str] = []
    display = Display(again.append, interval=0)
    display.show("", "[1s] 100% (a 5/5), 3.0/s", counts="a 5/5")
    display.show("", "[2s] 100% (a 5/5), 2.5/s", final=True, counts="a 5/5")  # the same counts: not again
    assert again == ["[1s] 100% (a 5/5), 3.0/s"]
    quiet: list[str] = []
    with Ticker("quick", 3, log=quiet.append) as quick:  # a job done within the interval says nothing
        quick.advance(3)
    assert quiet == []


def test_shard_progress_writes_at_most_once_per_period(tmp_path):
    loc = str(tmp_path / "p" / "download-00000.json")
    never = ShardProgress(loc, 40, every=3600)
    for _ in range(40):
        never.add()
    assert not storage.exists(loc)
    always = ShardProgress(loc, 40, every=0)
    always.add(10)
    assert json.loads(storage.read_bytes(loc)) == {"done": 10, "of": 40}
    assert read_shard_progress(loc) == 0.25
    assert read_shard_progress(str(tmp_path / "absent.json")) is None
    (tmp_path / "file").write_text("")
    unwritable = ShardProgress(str(tmp_path / "file" / "x.json"), 40, every=0)  # its directory is a file
    unwritable.add(5)  # no error: progress never fails a shard
    assert unwritable.done == 5


def test_progress_adds_the_finished_part_of_shards_in_flight(tmp_path):
    layout = Layout(str(tmp_path), track_progress=True)
    storage.write_bytes(layout.stats("download", 0), b"{}")  # shard 0 (40 rows) done
    storage.write_bytes(layout.progress_file("download", 0), b'{"done": 1, "of": 40}')  # stale: the marker wins
    storage.write_bytes(layout.progress_file("download", 1), b'{"done": 5, "of": 10}')  # last shard: 10 rows
    storage.write_bytes(layout.progress_file("caption_filter", 0), b'{"done": 9, "of": 36}')  # of its alive rows
    storage.write_bytes(storage.join(layout.progress_dir(), ".caption_filter-00001.json.tmp123"), b"{")
    progress = Progress(layout, ["download", "caption_filter"], 2, 40, 50, log=lambda s: None)
    assert progress._done() == {"download": 45.0, "caption_filter": 10.0}
    bar, line, _ = progress._lines(0.0, 2.0)
    assert "download 45/50, caption_filter 10/50" in line and " 55%" in bar


def test_stages_write_no_progress_files_unless_the_layout_asks(tmp_path):
    from vlcurate.filters.text import CaptionFilter  # a per-sample filter

    quiet = CaptionFilter(CaptionFilter.Config(), Layout(str(tmp_path)))
    quiet.start_progress(0, 10)
    quiet.advance(10)
    assert not storage.exists(Layout(str(tmp_path)).progress_dir())


def test_build_counts_samples_as_they_finish_and_prints_no_noise(demo_corpus, tmp_path):
    """Two worker processes: the stage runs in one of them, the count reaches the launcher."""
    from vlcurate.demo.server import serve

    with serve(demo_corpus.files, port=0, delay=0.3) as server:
        rows = [{**r, "url": server.base_url + r["url"]} for r in demo_corpus.rows[:40]]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
        recipe = make_recipe(tmp_path, tmp_path / "urls.parquet", samples_per_shard=40, stages=[
            {"download": {"image_size": 64, "allow_networks": ["127.0.0.0/8"], "threads": 2}},
            {"caption_filter": {"min_chars": 5}}], runner={"name": "local", "workers": 2})
        started = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "vlcurate.cli", "build", str(recipe)],
                             capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert time.monotonic() - started > 40 * 0.3 / 2  # the download took seconds: lines came during it
    lines = run.stderr.splitlines()
    assert lines[0].startswith("building demo/v1: 40 rows in 1 shard")
    # every other line is a progress line of ours: no Beam or dask warning, no traceback
    assert all(re.match(r"  \[ *[\d.]+s\] \d+% \(download \d+/40, caption_filter \d+/40\), [\d.]+ samples/s, "
                        r"ETA \S+$", line) for line in lines[1:]), run.stderr
    downloaded = [int(re.search(r"download (\d+)/40", line).group(1)) for line in lines[1:]]
    assert any(0 < n < 40 for n in downloaded), lines  # inside the one shard, before it was done
    assert lines[-1].split("] ")[1].startswith("100% (download 40/40, caption_filter 40/40)")
    assert "=> kept" in run.stdout


def test_importing_beam_through_vlcurate_drops_only_the_apitools_warning():
    code = ("import logging; logging.basicConfig(); import vlcurate.pipelines.beam; "
            "logging.warning('our own warning')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stderr == "WARNING:root:our own warning\n"


def test_polled_progress_draws_a_bar_and_says_when_it_is_still_counting():
    from vlcurate.pipelines.progress import PolledProgress

    term = io.StringIO()
    polls = iter([(0.0, None, "1/2 source shards counted"), (10.0, 40.0, "selected 10/20, written 0/20")])
    progress = PolledProgress("export", lambda: next(polls), log=lambda s: None, terminal=term)
    bar_text, line, counts = progress._lines(1.0)
    progress.display.show(bar_text, line, counts=counts)
    bar_text, line, counts = progress._lines(2.0)
    progress.display.show(bar_text, line, final=True, counts=counts)
    draws = term.getvalue().split("\r")[1:]
    assert draws[0].startswith("export: counting | 1/2 source shards counted")
    # (cut to the terminal's width, so that it can be redrawn in place)
    assert re.match(r"export \[######\.+\] 10/40 samples  25% [\d.]+/s ETA \S+ \| sel", draws[1])
    assert draws[1].endswith("\x1b[K\n")
