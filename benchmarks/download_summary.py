"""Summarise download_vs_img2dataset.sh: throughput per run, the ratio, peak RSS per
process, and each row's outcome checked against its corpus `kind`.

usage: python download_summary.py WORK URLS_PARQUET RUNS

Exits 1 when a vlcurate run lost a row or an outcome disagrees with its kind.
"""

from __future__ import annotations

import collections
import glob
import json
import re
import statistics
import sys
from pathlib import Path

import pyarrow.parquet as pq

# What vlcurate must make of each fault kind of shared/bench/download/make_corpus.py.
EXPECTED = {"ok": "ok", "redirect": "ok", "slow": "ok", "404": "http_error", "500": "http_error",
            "trunc": "transfer_error", "corrupt": "decode_error", "html": "not_an_image",
            "noai": "opted_out", "bomb": "bomb", "midbomb": "bomb"}


def outcomes(parquets: list[str], error_col: str) -> collections.Counter:
    """(kind, outcome) counts; outcome = 'ok' or the error class."""
    counts: collections.Counter = collections.Counter()
    for path in parquets:
        t = pq.read_table(path, columns=["kind", "status", error_col]).to_pylist()
        for row in t:
            ok = row["status"] in ("ok", "success")
            counts[(row["kind"], "ok" if ok else row[error_col] or row["status"])] += 1
    return counts


def i2d_outcome_label(message: str | None) -> str:
    """img2dataset's error message, digits collapsed (as shared summarize.py does), short."""
    return re.sub(r"\d+", "N", message or "")[:32]


def main() -> int:
    work, urls, runs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    n = pq.read_metadata(urls).num_rows
    kinds = collections.Counter(pq.read_table(urls, columns=["kind"]).column("kind").to_pylist())
    result: dict[str, list[dict]] = {"i2d": [], "vlc": []}
    startup: dict[str, list[float]] = {"i2d": [], "vlc": []}
    for tool in result:
        for run in range(1, runs + 1):
            rss = json.loads((work / f"rss-{tool}-{run}.json").read_text())
            procs = sorted(rss["processes"], key=lambda p: -p["peak_rss_mb"])
            result[tool].append({"run": run, "wall": rss["wall_s"], "cpu": rss["cpu_s"], "rc": rss["returncode"],
                                 "urls_s": n / rss["wall_s"], "peak": procs[0]["peak_rss_mb"],
                                 "peak_cmd": procs[0]["cmdline"][:60]})
            startup[tool].append(json.loads((work / f"rss-{tool}-startup{run}.json").read_text())["wall_s"])
    print(f"\n{n} URLs per run; throughput = URLs / wall-clock seconds of the whole command; "
          "CPU = user+system s of its process tree")
    print(f"{'tool':<12}{'run':>4}{'wall s':>8}{'URLs/s':>8}{'CPU s':>7}{'peak RSS/proc MB':>18}  (process)")
    for tool, name in (("i2d", "img2dataset"), ("vlc", "vlcurate")):
        for r in result[tool]:
            print(f"{name:<12}{r['run']:>4}{r['wall']:>8.1f}{r['urls_s']:>8.1f}{r['cpu']:>7.1f}"
                  f"{r['peak']:>18.0f}  {r['peak_cmd']}")
    med = {t: statistics.median(r["urls_s"] for r in result[t]) for t in result}
    mean = {t: statistics.mean(r["urls_s"] for r in result[t]) for t in result}
    cpu = {t: statistics.median(r["cpu"] for r in result[t]) for t in result}
    print(f"median URLs/s: img2dataset {med['i2d']:.1f}, vlcurate {med['vlc']:.1f}  "
          f"=> ratio {med['vlc'] / med['i2d']:.2f}x (means: {mean['vlc'] / mean['i2d']:.2f}x)")
    paired = [v["urls_s"] / i["urls_s"] for i, v in zip(result["i2d"], result["vlc"])]
    print(f"ratio per round (the two runs next to each other): {', '.join(f'{r:.2f}' for r in paired)}; "
          f"median {statistics.median(paired):.2f}x")
    print(f"median CPU per URL: img2dataset {1000 * cpu['i2d'] / n:.1f} ms, vlcurate {1000 * cpu['vlc'] / n:.1f} ms "
          f"=> {cpu['i2d'] / cpu['vlc']:.2f}x less CPU")
    up = {t: statistics.median(startup[t]) for t in startup}
    steady = {t: n / max(statistics.median(r["wall"] for r in result[t]) - up[t], 1e-9) for t in result}
    print(f"median start-up (8 URLs): img2dataset {up['i2d']:.1f} s, vlcurate {up['vlc']:.1f} s; "
          f"without it: img2dataset {steady['i2d']:.1f}, vlcurate {steady['vlc']:.1f} URLs/s "
          f"=> {steady['vlc'] / steady['i2d']:.2f}x")
    print(f"peak RSS per process, max over runs: img2dataset {max(r['peak'] for r in result['i2d']):.0f} MB, "
          f"vlcurate {max(r['peak'] for r in result['vlc']):.0f} MB")
    print("loadavg (1/5/15 min) before | after each run:")
    print("".join(f"  {line}" for line in open(work / "load.txt")), end="")

    bad = 0
    last = runs
    vlc = sorted(glob.glob(str(work / "vlc" / "bench" / f"r{last}" / "samples" / "*.parquet")))
    i2d = sorted(glob.glob(str(work / f"i2d-{last}" / "*.parquet")))
    got = outcomes(vlc, "error_kind")
    rows = sum(got.values())
    print(f"\noutcomes of run {last} by corpus kind (vlcurate: {rows} status rows for {n} URLs)")
    i2d_rows = [r for p in i2d for r in pq.read_table(p, columns=["kind", "status", "error_message"]).to_pylist()]
    i2d_counts = collections.Counter((r["kind"], "ok" if r["status"] == "success"
                                      else i2d_outcome_label(r["error_message"])) for r in i2d_rows)
    print(f"{'kind':<10}{'rows':>6}  {'vlcurate':<28}{'expected':<16}img2dataset")
    for kind in sorted(kinds):
        ours = ", ".join(f"{o} {c}" for (k, o), c in sorted(got.items()) if k == kind)
        theirs = ", ".join(f"{o} {c}" for (k, o), c in sorted(i2d_counts.items()) if k == kind)
        match = got[(kind, EXPECTED[kind])] == kinds[kind]
        bad += not match
        print(f"{kind:<10}{kinds[kind]:>6}  {ours:<28}{EXPECTED[kind]:<16}{theirs}{'' if match else '   <-- MISMATCH'}")
    if rows != n:
        print(f"vlcurate wrote {rows} status rows for {n} input rows")
        bad += 1
    for run in range(1, runs):  # the other runs: the same outcomes exactly
        earlier = outcomes(sorted(glob.glob(str(work / "vlc" / "bench" / f"r{run}" / "samples" / "*.parquet"))),
                           "error_kind")
        if earlier != got:
            print(f"vlcurate run {run}: outcomes differ from run {last}: {sorted((earlier - got).items())}")
            bad += 1
    print(f"vlcurate runs 1-{last}: {'identical outcomes' if not bad else 'see above'}")
    if any(r["rc"] for t in result for r in result[t]):
        print("a run exited non-zero: see the logs in", work)
        bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
