"""Pages/s per core of the interleave extraction, against the floor of a bare parse.

Generates a WARC of ``--pages`` varied pages (~7 KB each: articles with navigation,
footers, asides, scripts, lists, tables, figures, lazy images, srcset, tracking
pixels, icons; a few non-UTF-8), then measures, on the same pages, in alternating
rounds (CPU time of this process, so the figure is per core):

- ``floor-<parser>``: parse, remove script/style/nav, take the text;
- ``extract-<parser>``: what the stage does per page: charset decision, extraction
  in reading order, images with their URLs resolved, the image/text/document rules and
  the OBELICS row; with selectolax the walk is the compiled one (``_speedups.c``) where it
  is built, as in the stage, and ``extract-selectolax-pywalk`` is the same with the
  Python walk, which ``extract-resiliparse`` runs too (so the difference between those
  two is the parsers' parse and node access);
- ``stage``: the ``interleave`` stage's ``run_shard`` on the WARC (reading the
  records, everything above with the default parser, and writing the three Parquet
  files), per page;
- with ``--breakdown``, ``upto-<step>``: extract-selectolax stopped after the charset
  decision, the parse, the walk, the rules, the row (results dropped at once, so
  ``upto-row`` is extract-selectolax without keeping 2000 rows), so differences between
  rows are what each step costs in place.

    python benchmarks/interleave.py --pages 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from selectolax.lexbor import LexborHTMLParser

from vlcurate.demo.pages import CrawlRecord, varied_page, write_warc
from vlcurate.interleave.charset import decode_page
from vlcurate.interleave.documents import DocumentRules, document_problem, obelics_row, select_nodes
from vlcurate.interleave.extract import bare_text, compiled_walk, compiled_walk_problem, extract

def extract_page(body: bytes, content_type: str, url: str, parser: str, rules: DocumentRules,
                 compiled: bool | None = None) -> dict | None:
    decoded = decode_page(body, content_type)
    extracted = extract(decoded.text, url, parser, compiled)  # type: ignore[arg-type]
    counts: dict[str, int] = {}
    doc, outcomes = select_nodes(extracted.nodes, rules, None, counts)
    if document_problem(doc, rules):
        return None
    keys = [f"k_{o.index:03d}" for o in outcomes if o.keep]
    return obelics_row("k", doc, {"url": url, "title": extracted.title}, keys)


def page_steps(body: bytes, content_type: str, url: str, rules: DocumentRules, upto: str) -> None:
    """``extract_page`` with selectolax, stopped after the step ``upto`` (``--breakdown``).
    Nothing is returned, so that no step's figure includes keeping its results."""
    text = decode_page(body, content_type).text
    if upto == "decode":
        return
    if upto == "parse":
        tree = LexborHTMLParser(text)
        _ = tree.head, tree.body
        return
    extracted = extract(text, url, "selectolax")
    if upto == "walk":
        return
    doc, outcomes = select_nodes(extracted.nodes, rules, None, {})
    if document_problem(doc, rules) or upto == "rules":
        return
    obelics_row("k", doc, {"url": url, "title": extracted.title},
                [f"k_{o.index:03d}" for o in outcomes if o.keep])


def run_stage(warc: Path, work: Path) -> float:
    """CPU seconds of the interleave stage's run_shard on the whole WARC."""
    import shutil

    from vlcurate.interleave.stage import InterleaveConfig, InterleaveStage
    from vlcurate.io.inputs import InputSpec
    from vlcurate.io.parquet import write_work_parquet
    from vlcurate.pipelines.stage import Layout

    shutil.rmtree(work, ignore_errors=True)
    config = InterleaveConfig()
    shards = InterleaveStage.split_input(config, InputSpec(paths=(str(warc),), format="warc"))
    layout = Layout.for_stages(work, ["interleave"])
    write_work_parquet(shards[0], layout.input_shard(0))
    stage = InterleaveStage(config, layout)
    t = time.process_time()
    stage.run_shard(0, [])
    return time.process_time() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time extract-selectolax stopped after each step (decode, parse, walk, rules, row)")
    args = ap.parse_args(argv)
    rng = random.Random(14)
    pages = [varied_page(i, rng) for i in range(args.pages)]
    urls = [f"https://site{i % 50}.example.org/a/{i}.html" for i in range(args.pages)]
    size = statistics.mean(len(b) for b, _ in pages)
    rules = DocumentRules()
    with tempfile.TemporaryDirectory() as tmp:
        warc = Path(tmp) / "bench.warc.gz"
        records = [CrawlRecord(f"/a/{i}.html", b, ct) for i, (b, ct) in enumerate(pages)]
        warc.write_bytes(write_warc(records, "https://site.example.org"))
        kept = {p: sum(extract_page(b, ct, u, p, rules) is not None for (b, ct), u in zip(pages, urls))
                for p in ("selectolax", "resiliparse")}
        variants = {
            "floor-selectolax": lambda: [bare_text(b.decode("utf-8", "replace"), "selectolax") for b, _ in pages],
            "floor-resiliparse": lambda: [bare_text(b.decode("utf-8", "replace"), "resiliparse") for b, _ in pages],
            "extract-selectolax": lambda: [extract_page(b, ct, u, "selectolax", rules)
                                           for (b, ct), u in zip(pages, urls)],
            "extract-selectolax-pywalk": lambda: [extract_page(b, ct, u, "selectolax", rules, compiled=False)
                                                  for (b, ct), u in zip(pages, urls)],
            "extract-resiliparse": lambda: [extract_page(b, ct, u, "resiliparse", rules)
                                            for (b, ct), u in zip(pages, urls)],
        }
        for step in ("decode", "parse", "walk", "rules", "row") if args.breakdown else ():
            variants[f"  upto-{step}"] = lambda step=step: [page_steps(b, ct, u, rules, step)
                                                          for (b, ct), u in zip(pages, urls)]
        times: dict[str, list[float]] = {name: [] for name in [*variants, "stage"]}
        load = os.getloadavg()
        for r in range(args.rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))  # alternate the order too
            for name in order:
                t = time.process_time()
                variants[name]()
                times[name].append(time.process_time() - t)
            times["stage"].append(run_stage(warc, Path(tmp) / "v"))
        load_after = os.getloadavg()
    rate = {name: args.pages / statistics.median(ts) for name, ts in times.items()}
    floor = rate["floor-selectolax"]
    print(f"{args.pages} pages, mean {size / 1024:.1f} KB; documents kept: {kept}; "
          f"load average {load[0]:.1f} before, {load_after[0]:.1f} after; {args.rounds} alternating rounds")
    print("walk of extract-selectolax and stage: " + ("compiled" if compiled_walk() is not None
                                                       else f"Python ({compiled_walk_problem()})"))
    print(f"{'variant':<27}{'pages/s/core':>14}{'us/page':>10}{'vs floor-selectolax':>22}{'spread':>10}")
    for name, ts in times.items():
        spread = (max(ts) - min(ts)) / statistics.median(ts)
        print(f"{name:<27}{rate[name]:>14,.0f}{1e6 / rate[name]:>10.0f}{rate[name] / floor:>22.2f}{spread:>10.0%}")
    if args.json:
        args.json.write_text(json.dumps({"pages": args.pages, "mean_bytes": size, "rate": rate, "times": times,
                                         "load": [load, load_after], "kept": kept}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
