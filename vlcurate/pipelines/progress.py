"""Progress of long commands: a bar with rate and ETA on a terminal, plain periodic
lines otherwise.

A build's progress is read from the version directory, so watching it works the same
whatever the runner and however many processes or machines do the work: stats files
mark finished (stage, shard) pairs, and while a stage works on a shard it writes how
many of the shard's samples it has finished to a small progress file
(``_work/progress/<stage>-<shard>.json``, through the storage layer, at most once a
second). The launcher counts samples from both, so the count moves as samples
finish, not only when whole shards do.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, TextIO

from vlcurate.io import storage

if TYPE_CHECKING:
    from vlcurate.pipelines.stage import Layout

def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _rate_eta(done: float, total: float, new: float, elapsed: float) -> tuple[float, str]:
    """Units per second since the start (``new`` of them counted in this run), and the
    time left at that rate."""
    rate = new / elapsed if elapsed > 0 else 0.0
    eta = _clock((total - done) / rate) if rate > 0 and total > done else ("0:00" if total <= done else "?")
    return rate, eta


class Display:
    """Where progress goes. On a terminal: one line redrawn in place (``\\r``), a
    bar with rate and ETA. Otherwise: a plain line through ``log`` every
    ``interval`` seconds, when it changed."""

    def __init__(self, log: Callable[[str], None] | None, terminal: TextIO | None = None,
                 interval: float = 2.0, quiet_if_quick: bool = False):
        self.log, self.terminal, self.interval = log, terminal, interval
        # quiet_if_quick: no line at all for a job that ends within the first interval
        self.quiet_if_quick = quiet_if_quick
        self._last_line, self._last_time = "", time.monotonic() if quiet_if_quick else float("-inf")
        self._last_counts: str | None = None
        self._shown = False

    @staticmethod
    def for_stderr(log: Callable[[str], None] | None, interval: float = 2.0) -> "Display":
        """A display that draws a bar when ``sys.stderr`` is a terminal, and shows
        nothing for a job done within ``interval``."""
        stream = sys.stderr
        tty = stream.isatty() if hasattr(stream, "isatty") else False
        return Display(log, stream if tty and log is not None else None, interval, quiet_if_quick=True)

    @property
    def period(self) -> float:
        """How often a caller should offer an update."""
        return 0.5 if self.terminal else self.interval

    def show(self, bar: str, line: str, final: bool = False, counts: str | None = None) -> None:
        """Offer an update; ``counts`` (what was done, without rates): a final line
        that repeats the last shown line's counts is not shown again."""
        if self.terminal is not None:
            width = shutil.get_terminal_size().columns - 1  # a wrapped line cannot be redrawn in place
            self.terminal.write("\r" + bar[:width] + "\x1b[K" + ("\n" if final else ""))
            self.terminal.flush()
            return
        now = time.monotonic()
        due = now - self._last_time >= self.interval or (final and (self._shown or not self.quiet_if_quick))
        repeated = final and counts is not None and counts == self._last_counts
        if self.log is not None and line != self._last_line and due and not repeated:
            self.log(line)
            self._last_line, self._last_time, self._last_counts, self._shown = line, now, counts, True


def bar(fraction: float, width: int = 24) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    full = int(fraction * width)
    return "[" + "#" * full + "." * (width - full) + "]"


class Ticker:
    """Counts units of a job as they finish: ``advance(n)`` from the job's loop."""

    def __init__(self, label: str, total: int, log: Callable[[str], None] | None = None,
                 unit: str = "", display: Display | None = None):
        self.label, self.total, self.unit = label, total, unit
        self.display = display or Display.for_stderr(log)
        self.done, self._start = 0, time.monotonic()

    def _lines(self) -> tuple[str, str]:
        elapsed = time.monotonic() - self._start
        rate, eta = _rate_eta(self.done, self.total, self.done, elapsed)
        unit = f" {self.unit}" if self.unit else ""
        counts = f"{self.done}/{self.total}{unit}"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.label} {bar(pct / 100)} {counts} {pct:3.0f}% {rate:.1f}/s ETA {eta}",
                f"  [{elapsed:6.1f}s] {self.label}: {counts} ({pct:.0f}%), {rate:.1f}/s, ETA {eta}")

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.display.show(*self._lines())

    def __enter__(self) -> "Ticker":
        return self

    def __exit__(self, *exc) -> None:
        if self.total and self.done:
            self.display.show(*self._lines(), final=True)


class ShardProgress:
    """How many of a shard's samples a stage has finished, written to ``loc`` at most
    once per ``every`` seconds (a shard done sooner writes nothing: its stats marker
    says it all). Thread-safe: a stage's worker threads may all call :meth:`add`."""

    def __init__(self, loc: str, of: int, every: float = 1.0):
        self.loc, self.of, self.every = loc, of, every
        self.done = 0
        self._lock = threading.Lock()
        self._last = time.monotonic()

    def add(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self._last < self.every:
                return
            self._last = now
            try:
                storage.write_bytes(self.loc, json.dumps({"done": self.done, "of": self.of}).encode())
            except OSError:  # a display never fails a shard: this one is counted when it is done
                self.every = float("inf")


def read_shard_progress(loc: str) -> float | None:
    """The finished fraction a progress file records (None if unreadable: a file
    being replaced, or one from another version of the code)."""
    try:
        body = json.loads(storage.read_bytes(loc))
        return min(1.0, body["done"] / body["of"]) if body["of"] else 1.0
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Progress:
    """Shows a running build's samples done per stage, samples/s and ETA: a bar on a
    terminal (``terminal``), else a line through ``log`` every ``interval`` seconds."""

    def __init__(self, layout: "Layout", stages: list[str], num_shards: int, samples_per_shard: int,
                 rows: int, log: Callable[[str], None], interval: float = 2.0, terminal: TextIO | None = None):
        self.layout, self.stages, self.num_shards = layout, stages, num_shards
        self.samples_per_shard, self.rows = samples_per_shard, rows
        self.display = Display(log, terminal, interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def shard_rows(self, shard: int) -> int:
        """Input rows of ``shard`` (inputs are cut into equal shards, the last one shorter)."""
        return max(0, min(self.samples_per_shard, self.rows - shard * self.samples_per_shard))

    def _done(self) -> dict[str, float]:
        """Samples (input rows) each stage has finished: whole finished shards, plus the
        finished part of shards in flight."""
        names = {f.path for f in storage.list_files(storage.join(self.layout.root, "stats"))}
        done: dict[str, float] = {s: 0.0 for s in self.stages}
        finished: set[tuple[str, int]] = set()
        for s in self.stages:
            for shard in range(self.num_shards):
                if f"{s}-{shard:05d}.json" in names:
                    done[s] += self.shard_rows(shard)
                    finished.add((s, shard))
        progress_dir = self.layout.progress_dir()
        for f in storage.list_files(progress_dir):
            if storage.is_tmp(f.path):
                continue
            stage, _, shard_text = f.path.removesuffix(".json").rpartition("-")
            if stage not in done or not shard_text.isdigit() or (stage, int(shard_text)) in finished:
                continue
            fraction = read_shard_progress(storage.join(progress_dir, f.path))
            if fraction is not None:
                done[stage] += fraction * self.shard_rows(int(shard_text))
        return done

    def _lines(self, start: float, elapsed: float) -> tuple[str, str, str]:
        """The bar, the plain line and the counts they show."""
        done = self._done()
        units = sum(done.values())
        total = len(self.stages) * self.rows
        # samples/s through the whole pipeline: stage-samples per second over the stages
        rate, eta = _rate_eta(units, total, units - start, elapsed)
        rate /= max(len(self.stages), 1)
        per_stage = ", ".join(f"{s} {done[s]:.0f}/{self.rows}" for s in self.stages)
        pct = 100.0 * units / total if total else 100.0
        return (f"{bar(pct / 100)} {pct:3.0f}% {rate:.1f} samples/s ETA {eta} | {per_stage}",
                f"  [{elapsed:6.1f}s] {pct:.0f}% ({per_stage}), {rate:.1f} samples/s, ETA {eta}", per_stage)

    def _loop(self) -> None:
        begin = time.monotonic()
        start = sum(self._done().values())  # a resumed build's finished work is not this run's rate
        # a bar is redrawn every second (the progress files change no faster), lines every interval
        period = min(self.display.interval, 1.0) if self.display.terminal else self.display.interval
        while not self._stop.wait(period):
            bar_text, line, counts = self._lines(start, time.monotonic() - begin)
            self.display.show(bar_text, line, counts=counts)
        bar_text, line, counts = self._lines(start, time.monotonic() - begin)
        self.display.show(bar_text, line, final=True, counts=counts)

    def __enter__(self) -> "Progress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class PolledProgress:
    """A job's progress as the launcher reads it from what the job's workers write
    (progress files, markers), so it works on any runner: every ``interval`` seconds
    (a bar: every second) ``poll()`` gives ``(done, total, detail)`` in ``unit``,
    ``total`` None while the job has not counted its work yet; shown as
    :class:`Progress` shows a build's."""

    def __init__(self, label: str, poll: Callable[[], tuple[float, float | None, str]],
                 log: Callable[[str], None] | None, interval: float = 2.0, terminal: TextIO | None = None,
                 unit: str = "samples"):
        self.label, self.poll, self.unit = label, poll, unit
        self.display = Display(log, terminal, interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _lines(self, elapsed: float) -> tuple[str, str, str]:
        """The bar, the plain line and the counts they show."""
        done, total, detail = self.poll()
        detail = f" | {detail}" if detail else ""
        if total is None:
            return (f"{self.label}: counting{detail}", f"  [{elapsed:6.1f}s] {self.label}: counting{detail}",
                    f"counting{detail}")
        rate, eta = _rate_eta(done, total, done, elapsed)
        pct = 100.0 * done / total if total else 100.0
        counts = f"{done:.0f}/{total:.0f} {self.unit}"
        return (f"{self.label} {bar(pct / 100)} {counts} {pct:3.0f}% {rate:.1f}/s ETA {eta}{detail}",
                f"  [{elapsed:6.1f}s] {self.label}: {counts} ({pct:.0f}%), {rate:.1f}/s, ETA {eta}{detail}",
                counts + detail)

    def _loop(self) -> None:
        begin = time.monotonic()
        period = min(self.display.interval, 1.0) if self.display.terminal else self.display.interval
        while not self._stop.wait(period):
            bar_text, line, counts = self._lines(time.monotonic() - begin)
            self.display.show(bar_text, line, counts=counts)
        bar_text, line, counts = self._lines(time.monotonic() - begin)
        self.display.show(bar_text, line, final=True, counts=counts)

    def __enter__(self) -> "PolledProgress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def stderr_terminal(log: Callable[[str], None] | None) -> TextIO | None:
    """stderr when it is a terminal and ``log`` writes there (a bar then), else None
    (plain lines through ``log``)."""
    stream = sys.stderr
    return stream if log is not None and hasattr(stream, "isatty") and stream.isatty() else None


@contextlib.contextmanager
def worker_output_to(path: Path) -> Iterator[None]:
    """Send what Beam's worker processes write to stderr (their INFO logs) to ``path``,
    while Python's own ``sys.stderr`` (progress, summaries) stays on the terminal.

    Workers inherit file descriptor 2, so it is the descriptor that is redirected.
    On failure the log is kept (the build names it).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    terminal = os.fdopen(os.dup(saved), "w", buffering=1)
    old_stderr = sys.stderr
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
        sys.stderr = terminal
        try:
            yield
        finally:
            sys.stderr = old_stderr
            os.dup2(saved, 2)
            os.close(saved)
            terminal.close()
