"""Progress of a running build, read from the version directory.

Stats files are the completion markers of (stage, shard) pairs, so watching them
works the same whatever runner and however many processes do the work.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from vlcurate.io import storage
from vlcurate.pipelines.stage import Layout


class Progress:
    """Logs 'shards done / total, samples/s' every ``interval`` seconds while running."""

    def __init__(self, layout: Layout, stages: list[str], num_shards: int, samples_per_shard: int,
                 rows: int, log: Callable[[str], None], interval: float = 2.0):
        self.layout, self.stages, self.num_shards = layout, stages, num_shards
        self.samples_per_shard, self.rows, self.log, self.interval = samples_per_shard, rows, log, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _done(self) -> dict[str, int]:
        names = [f.path for f in storage.list_files(storage.join(self.layout.root, "stats"))]
        return {s: sum(n.startswith(f"{s}-") for n in names) for s in self.stages}

    def _line(self, start_done: dict[str, int], elapsed: float) -> str:
        done = self._done()
        total = len(self.stages) * self.num_shards
        finished = sum(done.values())
        # input samples per second: shards through the first stage (the rest follow behind)
        new_shards = done[self.stages[0]] - start_done[self.stages[0]]
        rate = min(new_shards * self.samples_per_shard, self.rows) / elapsed if elapsed > 0 else 0.0
        per_stage = ", ".join(f"{s} {done[s]}/{self.num_shards}" for s in self.stages)
        return f"  [{elapsed:6.1f}s] {finished}/{total} stage-shards ({per_stage}), {rate:.1f} samples/s"

    def _loop(self) -> None:
        start, start_done = time.monotonic(), self._done()
        last = ""
        while not self._stop.wait(self.interval):
            line = self._line(start_done, time.monotonic() - start)
            if line.split("]", 1)[1] != last:
                self.log(line)
                last = line.split("]", 1)[1]
        self.log(self._line(start_done, time.monotonic() - start))

    def __enter__(self) -> "Progress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


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
