"""Run a command and report the peak resident memory of every process in its tree.

usage: python peak_rss.py OUT.json -- COMMAND [ARGS...]

Polls the command's process tree every 50 ms and keeps, per process, the largest
VmHWM (the kernel's own high-water mark of that process's resident set) seen
while it was alive, so a peak between two polls is still caught as long as the
process lives until the next poll. Writes {"wall_s", "cpu_s", "returncode",
"processes": [{"pid", "name", "cmdline", "peak_rss_mb"}]} to OUT.json, where cpu_s is
the user+system time of the command and every descendant it waited for (as
/usr/bin/time counts it); the command's own stdout/stderr pass through untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil


def _hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main() -> int:
    out, sep, *cmd = sys.argv[1:]
    if sep != "--" or not cmd:
        print(__doc__, file=sys.stderr)
        return 2
    started = time.monotonic()
    proc = subprocess.Popen(cmd)
    root = psutil.Process(proc.pid)
    seen: dict[int, dict] = {}
    status = rusage = None
    while status is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for p in tree:
            hwm = _hwm_kib(p.pid)
            if hwm is None:
                continue
            entry = seen.get(p.pid)
            if entry is None:
                try:
                    entry = seen[p.pid] = {"pid": p.pid, "name": p.name(),
                                           "cmdline": " ".join(p.cmdline())[:200], "peak_rss_mb": 0.0}
                except psutil.Error:
                    continue
            entry["peak_rss_mb"] = max(entry["peak_rss_mb"], hwm / 1024)
        time.sleep(0.05)
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == 0:
            status = None
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    with open(out, "w") as f:
        json.dump({"wall_s": wall, "cpu_s": rusage.ru_utime + rusage.ru_stime, "returncode": proc.returncode,
                   "processes": sorted(seen.values(), key=lambda e: -e["peak_rss_mb"])}, f, indent=1)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
