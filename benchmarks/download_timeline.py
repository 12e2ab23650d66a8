"""Where a download build's cores sit idle: per-process shard timelines and CPU over time.

usage: python benchmarks/download_timeline.py CORPUS_DIR [--port 8817] [--rows N]
           [--procs 2] [--threads 32] [--shard 500] [--bench DIR] [--work DIR] [--repo DIR]

Runs ``vlcurate build`` of the same download-only recipe as download_vs_img2dataset.sh on
CORPUS_DIR/urls.parquet (a make_corpus.py corpus; its loopback server, serve.py of
--bench, is started here), with the trace hook of ``benchmarks/timeline_hook`` loaded in
every process of the build (launcher and Beam workers), and samples the CPU time of the
build's process tree every 0.1 s. ``--repo`` picks the checkout whose vlcurate runs
(default: this one), so two checkouts can be traced side by side. Prints:

- per worker process: its shards in order, each with start/end, rows in flight over it,
  and its *tail*: from the shard's last row being handed to a fetch thread to the end of
  its fetches (the time its threads wait on the last slow URLs);
- phases of the wall time: start-up (command start -> first shard starts), shards (first
  start -> last end), wrap-up (-> exit), with the cores used in each;
- a per-second strip: CPU cores busy (all processes), rows in flight per worker.

Times are CLOCK_MONOTONIC, which all processes of the machine share.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


def recipe(urls: str, out: str, args) -> str:
    return f"""input: {{paths: ["{urls}"], url_col: url, caption_col: caption, extra_cols: [kind]}}
output: {{root: "{out}", name: timeline, version: "v1"}}
samples_per_shard: {args.shard}
stages:
  - download: {{image_size: 256, resize_mode: border, encode_format: jpg, encode_quality: 95,
               threads: {args.threads}, timeout: 10, retries: 0, allow_networks: [127.0.0.0/8],
               max_connections_per_host: 0}}
runner: {{name: local, workers: {args.procs}}}
"""


def cpu_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError):
        return None


def runnable_ns(pid: int) -> dict[int, int]:
    """Per thread of ``pid``: nanoseconds on a CPU + waiting for one (schedstat)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                on_cpu, waiting, _ = f.read().split()
            out[int(tid)] = int(on_cpu) + int(waiting)
        except (OSError, ValueError):
            pass
    return out


def run_traced(cmd: list[str], env: dict, samples: list, server: int | None, cwd: Path,
               limit: float = 600.0) -> tuple[float, float, int, float]:
    """Run ``cmd``; append (t, {pid: cpu seconds}) every 0.1 s; (start, end, returncode,
    CPU seconds the corpus server used meanwhile)."""
    server_before = cpu_ticks(server) if server else None
    start = time.monotonic()
    # cwd: not a checkout, or `python -m` would import vlcurate from there, not from --repo
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        if time.monotonic() - start > limit:
            for child in root.children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
            print(f"build still running after {limit} s: killed", file=sys.stderr)
            break
        try:
            pids = [root.pid, *(c.pid for c in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            pids = []
        now = time.monotonic()
        threads: dict[int, int] = {}
        for p in pids:
            threads.update(runnable_ns(p))
        samples.append((now, {p: t / TICK for p in pids if (t := cpu_ticks(p)) is not None}, threads))
        time.sleep(0.1)
    end = time.monotonic()
    server_cpu = (cpu_ticks(server) - server_before) / TICK if server_before is not None else float("nan")
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode:
        print(err[-3000:], file=sys.stderr)
    return start, end, proc.returncode, server_cpu


def mean_in_flight(steps: list[tuple[float, int]], a: float, b: float) -> float:
    """Time-weighted mean of a step function (t, value after t) over [a, b)."""
    total, level, at = 0.0, 0, a
    for t, n in steps:
        if t >= b:
            break
        if t > at:
            total += level * (t - at)
            at = t
        level = n
    return (total + level * (b - at)) / (b - a)


def analyse(events: list[dict], samples: list, start: float, end: float, rows: int, threads: int) -> dict:
    by_pid: dict[int, list[dict]] = collections.defaultdict(list)
    for e in sorted(events, key=lambda e: e["t"]):
        by_pid[e["pid"]].append(e)
    workers = sorted((p for p, evs in by_pid.items() if any(e["ev"] == "shard_start" for e in evs)),
                     key=lambda p: min(e["t"] for e in by_pid[p] if e["ev"] == "shard_start"))
    rel = lambda t: t - start  # noqa: E731
    report: dict = {"wall_s": end - start, "workers": {}}
    first_start, last_end = end, start
    for pid in workers:
        evs = by_pid[pid]
        thread_shard: dict[int, int] = {}
        shards: dict[int, dict] = {}
        sched_shard: dict[int, int] = {}
        for e in evs:
            if e["ev"] == "shard_start":
                thread_shard[e["thread"]] = e["shard"]
                shards[e["shard"]] = {"shard": e["shard"], "start": rel(e["t"])}
            elif e["ev"] == "sched":
                sched_shard[e["sched"]] = thread_shard[e["thread"]]
            elif e["ev"] == "take":
                s = shards[sched_shard[e["sched"]]]
                s.setdefault("first_take", rel(e["t"]))
                s["last_take"] = rel(e["t"])
            elif e["ev"] == "fetch_end":
                shards[thread_shard[e["thread"]]]["fetch_end"] = rel(e["t"])
            elif e["ev"] == "shard_end":
                shards[e["shard"]]["end"] = rel(e["t"])
        for s in shards.values():
            s["tail"] = s.get("fetch_end", s["end"]) - s.get("last_take", s["start"])
            s["write"] = s["end"] - s.get("fetch_end", s["end"])
        in_flight = []  # (t, rows in flight) after each take / row_done
        n = 0
        for e in evs:
            if e["ev"] in ("take", "row_done"):
                n += 1 if e["ev"] == "take" else -1
                in_flight.append((rel(e["t"]), n))
        ordered = sorted(shards.values(), key=lambda s: s["start"])
        first_start = min(first_start, start + ordered[0]["start"])
        last_end = max(last_end, start + max(s["end"] for s in ordered))
        born = [e["t"] for e in evs if e["ev"] == "proc"]
        report["workers"][pid] = {"shards": ordered, "in_flight": in_flight,
                                  "born": rel(born[0]) if born else float("nan"),
                                  "busy_from": ordered[0]["start"], "busy_to": max(s["end"] for s in ordered)}

    def cpu_between(a: float, b: float) -> float:
        """CPU seconds of the tree between monotonic times a and b (from the samples)."""
        def total_at(t: float) -> float:
            best: dict[int, float] = {}
            for ts, per, _ in samples:
                if ts > t:
                    break
                best.update(per)
            return sum(best.values())
        return total_at(b) - total_at(a)

    phases = [("start-up", start, first_start), ("shards", first_start, last_end), ("wrap-up", last_end, end)]
    launcher = [p for p, evs in by_pid.items() if any(e["ev"] == "build_start" for e in evs)]
    report["launcher"] = {e["ev"]: rel(e["t"]) for e in by_pid[launcher[0]]} if launcher else {}
    report["cpu_by_process"] = {}
    last = {}
    for _, per, _ in samples:
        last.update(per)
    for pid, cpu in last.items():
        role = "launcher" if launcher and pid == launcher[0] else (
            f"w{workers.index(pid)}" if pid in workers else f"other {pid}")
        report["cpu_by_process"][role] = cpu
    report["phases"] = [{"phase": name, "s": b - a, "cpu_s": cpu_between(a, b),
                         "cores": cpu_between(a, b) / (b - a) if b > a else 0.0} for name, a, b in phases]
    report["cpu_s"] = cpu_between(start, end)
    report["rows_per_s"] = rows / (end - start)
    strip = []
    for sec in range(int(end - start) + 1):
        a, b = start + sec, min(start + sec + 1, end)
        if b <= a:
            break
        row = {"t": sec, "cores": cpu_between(a, b) / (b - a)}
        for i, pid in enumerate(workers):
            row[f"w{i}"] = mean_in_flight(report["workers"][pid]["in_flight"], sec, sec + 1)
        strip.append(row)
    # Demand: threads of the build on a CPU or waiting for one (schedstat), per second.
    # Unlike CPU time it does not shrink when other jobs take the cores, so
    # max(0, cores - demand) is what an undisturbed machine's cores would idle.
    demand = [0.0] * len(strip)
    seen: dict[int, int] = {}
    for ts, _, per_thread in samples:
        sec = int(ts - start)
        for tid, ns in per_thread.items():
            if sec < len(demand):
                demand[sec] += (ns - seen.get(tid, ns)) / 1e9
            seen[tid] = ns
    cores = len(os.sched_getaffinity(0))
    for row, d in zip(strip, demand):
        row["demand"] = d
    report["idle_core_s"] = {name: sum(max(0.0, cores - d) for d in demand[int(a - start):int(b - start)])
                             for name, a, b in phases}
    report["cores"] = cores
    report["strip"] = strip
    a, b = first_start - start, last_end - start
    report["occupancy"] = [mean_in_flight(report["workers"][pid]["in_flight"], a, b) / threads
                           for pid in workers]
    return report


def show(report: dict) -> None:
    print(f"wall {report['wall_s']:.1f} s, {report['rows_per_s']:.1f} rows/s, CPU {report['cpu_s']:.1f} s "
          f"({report['cpu_s'] / report['wall_s']:.2f} cores on average); the corpus server "
          f"{report['server_cpu_s']:.1f} s ({report['server_cpu_s'] / report['wall_s']:.2f} cores)")
    for p in report["phases"]:
        print(f"  {p['phase']:<9} {p['s']:6.1f} s  CPU {p['cpu_s']:6.1f} s  = {p['cores']:.2f} cores")
    marks = ("proc", "build_start", "run_start", "run_end", "build_end", "exit")
    launcher = report["launcher"]
    print("  launcher: " + ", ".join(f"{m} {launcher[m]:.2f}" for m in marks if m in launcher))
    if "run_end" in launcher and "exit" in launcher:
        last = max(w["busy_to"] for w in report["workers"].values())
        print(f"  wrap-up: last shard end -> pipeline done (workers stopped) {launcher['run_end'] - last:.2f} s, "
              f"-> manifest {launcher['build_end'] - launcher['run_end']:.2f} s, "
              f"-> atexit {launcher['exit'] - launcher['build_end']:.2f} s, "
              f"-> exited {report['wall_s'] - launcher['exit']:.2f} s")
    print("  CPU s by process: " + ", ".join(f"{k} {v:.1f}" for k, v in report["cpu_by_process"].items()))
    tails = []
    for i, (pid, w) in enumerate(report["workers"].items()):
        print(f"worker w{i} (pid {pid}): interpreter started {w['born']:.1f} s, "
              f"shards busy {w['busy_from']:.1f}-{w['busy_to']:.1f} s")
        for s in w["shards"]:
            tails.append(s["tail"])
            print(f"    shard {s['shard']:3d}: {s['start']:6.1f} -> {s['end']:6.1f} s  "
                  f"last row handed out {s.get('last_take', float('nan')):6.1f}  "
                  f"fetches end {s.get('fetch_end', float('nan')):6.1f}  "
                  f"tail {s['tail']:4.1f} s  write {s['write']:4.2f} s")
    ends = [w["busy_to"] for w in report["workers"].values()]
    print(f"tails: {sum(tails):.1f} s in all over {len(tails)} shards (max {max(tails, default=0):.1f} s); "
          f"workers' last shard ends {', '.join(f'{e:.1f}' for e in ends)} s")
    print(f"fetch threads in use while shards run (first shard start -> last shard end), per worker: "
          f"{', '.join(f'{w:.0%}' for w in report['occupancy'])}")
    idle = report["idle_core_s"]
    print(f"core-seconds no thread of the build wanted ({report['cores']} cores; the build's demand = threads "
          f"on a CPU or runnable): start-up {idle['start-up']:.1f}, shards {idle['shards']:.1f}, "
          f"wrap-up {idle['wrap-up']:.1f}; in all {sum(idle.values()):.1f} of "
          f"{report['cores'] * report['wall_s']:.1f}")
    print("per second: cores busy (the build's processes) | demand | rows in flight per worker (mean)")
    for row in report["strip"]:
        flights = " ".join(f"{row[k]:4.1f}" for k in row if k.startswith("w"))
        print(f"  {row['t']:4d} s  {row['cores']:4.2f} {'#' * round(row['cores'] * 10):<20} "
              f"| {row.get('demand', 0):5.2f} | {flights}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus")
    ap.add_argument("--port", type=int, default=8817)
    ap.add_argument("--rows", type=int, default=0, help="first N rows of the corpus (0 = all)")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--shard", type=int, default=500)
    ap.add_argument("--bench", default=str(HERE.parent.parent / "shared" / "bench" / "download"))
    ap.add_argument("--work", default=None)
    ap.add_argument("--repo", default=str(HERE.parent), help="checkout whose vlcurate is traced")
    ap.add_argument("--json", help="also write the full report here")
    ap.add_argument("--no-serve", action="store_true", help="the corpus server is already running")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="vlc-timeline-"))
    work.mkdir(parents=True, exist_ok=True)
    urls = Path(args.corpus) / "urls.parquet"
    rows = pq_rows = __import__("pyarrow.parquet", fromlist=["x"]).read_metadata(urls).num_rows
    if args.rows and args.rows < pq_rows:
        import pyarrow.parquet as pq

        pq.write_table(pq.read_table(urls).slice(0, args.rows), work / "urls.parquet")
        urls, rows = work / "urls.parquet", args.rows
    trace = work / "trace"
    for f in glob.glob(str(trace / "*.jsonl")):
        os.remove(f)
    trace.mkdir(exist_ok=True)
    out = work / "out"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    (work / "recipe.yaml").write_text(recipe(str(urls), str(out), args))
    server = None
    if not args.no_serve:
        server = subprocess.Popen([sys.executable, f"{args.bench}/serve.py", args.corpus, str(args.port),
                                   "--max-seconds", "900"], stderr=subprocess.DEVNULL)
        import socket

        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", args.port), 1).close()
                break
            except OSError:
                time.sleep(0.1)
    env = {**os.environ, "VLC_TIMELINE_DIR": str(trace),
           "PYTHONPATH": f"{HERE / 'timeline_hook'}:{args.repo}",
           "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
    samples: list = []
    try:
        start, end, rc, server_cpu = run_traced(
            [sys.executable, "-m", "vlcurate.cli", "build", str(work / "recipe.yaml")], env, samples,
            server.pid if server else None, work)
    finally:
        if server is not None:
            server.terminate()
            server.wait()
    if rc:
        print(f"build failed (exit {rc})", file=sys.stderr)
        return rc
    events = [json.loads(line) for f in glob.glob(str(trace / "*.jsonl")) for line in open(f)]
    report = analyse(events, samples, start, end, rows, args.threads)
    report["server_cpu_s"] = server_cpu
    print(f"repo {args.repo}, {rows} rows, {args.procs} processes x {args.threads} threads, "
          f"{args.shard} rows per shard; loadavg {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    show(report)
    if args.json:
        report["workers"] = {str(k): {**v, "in_flight": None} for k, v in report["workers"].items()}
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
