"""The ``vlcurate`` command: one subcommand per job.

Errors a user can fix print one line (``vlcurate: error: ...``) and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from vlcurate.errors import UserError
from vlcurate.typed import ConfigError

# Offline by default: no albumentations update check, no wandb, no hub lookups at import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def _cmd_build(args: argparse.Namespace) -> int:
    from vlcurate.pipelines.build import build
    from vlcurate.recipe import load_recipe
    from vlcurate.report import summary_table

    recipe = load_recipe(args.recipe)
    runner = recipe.runner
    if args.runner:
        runner = replace(runner, name=args.runner)
    if args.workers:
        runner = replace(runner, workers=args.workers)
    if args.beam_options:
        runner = replace(runner, options=runner.options + tuple(args.beam_options))
    result = build(replace(recipe, runner=runner))
    print(summary_table(result.manifest, result.seconds))
    print(f"version written: {result.version_dir}")
    return _nothing_succeeded_exit(result)


def _nothing_succeeded_exit(result) -> int:
    """1 (with a warning naming the dominant error kind) when no row succeeded; the
    version stays for inspection."""
    from vlcurate.report import nothing_succeeded

    warning = nothing_succeeded(result.manifest)
    if warning is None:
        return 0
    print(f"vlcurate: warning: {warning} (version kept for inspection: {result.version_dir})", file=sys.stderr)
    return 1


def _cmd_download(args: argparse.Namespace) -> int:
    from vlcurate.download.retry import plan_retry

    plan = plan_retry(args.retry_failed, version=args.version, workers=args.workers,
                      runner=args.runner, runner_options=tuple(args.beam_options))
    if plan.retryable == 0:
        print(f"vlcurate: nothing to retry: no row of {args.retry_failed} failed with a retryable error "
              f"({plan.rows} rows); no version written", file=sys.stderr)
        return 0
    from vlcurate.pipelines.build import build  # imports Beam: after the cheap checks
    from vlcurate.report import plural, summary_table

    out = plan.recipe.output
    print(f"retrying {plan.retryable} of {plan.rows} rows (retryable failures) of {out.parent} "
          f"into {out.name}/{out.version}", file=sys.stderr)
    result = build(plan.recipe)
    print(summary_table(result.manifest, result.seconds))
    print(f"version written: {result.version_dir}")
    stages = result.manifest["stages"]  # the download stage: first, or after interleave
    counts = next((s["counts"] for s in stages if "refetched" in s["counts"]), stages[0]["counts"])
    refetched, recovered = counts.get("refetched", 0), counts.get("recovered", 0)
    print(f"refetched {plural(refetched, 'row')}: {recovered} of {refetched} recovered"
          + ("" if recovered == refetched else
             f"; {refetched - recovered} failed again (their first error is in first_error_kind)"))
    if recovered == 0:
        print(f"vlcurate: warning: 0 of {refetched} recovered; version kept for inspection: "
              f"{result.version_dir}", file=sys.stderr)
        return 1
    return _nothing_succeeded_exit(result)


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.action == "train-models":
        from vlcurate.demo.train import train_models

        train_models(Path(args.out), tuple(args.models.split(",")), threads=args.threads)
        return 0
    if args.interleaved:
        from vlcurate.demo.interleaved import run_interleaved_demo

        run_interleaved_demo(Path(args.out), workers=args.workers)
        return 0
    from vlcurate.demo.run import run_demo

    run_demo(Path(args.out), workers=args.workers)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from vlcurate.report import plural
    from vlcurate.validate import validate_version

    problems = validate_version(args.version_dir)
    for p in problems:
        print(p)
    print(f"{args.version_dir}: {'valid' if not problems else plural(len(problems), 'problem')}")
    return 1 if problems else 0


def _cmd_versions_list(args: argparse.Namespace) -> int:
    from vlcurate.versions import list_versions

    rows = list_versions(args.root)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'name':<16}{'version':<12}{'samples':>9}{'kept':>9}{'files':>7}{'bytes':>14}  created")
    for r in rows:
        samples = "-" if r["samples"] is None else r["samples"]
        kept = "-" if r["kept"] is None else r["kept"]
        print(f"{r['name']:<16}{r['version']:<12}{samples:>9}{kept:>9}{r['files']:>7}{r['bytes']:>14,}  "
              f"{r['created_at']}")
    return 0


def _cmd_versions_show(args: argparse.Namespace) -> int:
    from vlcurate.versions import show, summary

    if args.json:
        print(json.dumps(summary(args.version_dir), indent=1))
    else:
        print(show(args.version_dir))
    return 0


def _cmd_versions_diff(args: argparse.Namespace) -> int:
    from vlcurate.versions import diff_versions, show_diff

    d = diff_versions(args.a, args.b)
    print(json.dumps(d, indent=1) if args.json else show_diff(d))
    return 0


def _cmd_export_lxmert_tsv(args: argparse.Namespace) -> int:
    from vlcurate.extractors.lxmert_tsv import export_lxmert_tsv
    from vlcurate.report import plural

    r = export_lxmert_tsv(args.version_dir, args.out, stage=args.stage, include_dropped=args.include_dropped)
    print(f"wrote {plural(r.rows, 'image')} to {r.path} from {plural(r.shards, args.stage + ' shard')} "
          f"(left out: {r.failed} failed, {r.dropped} dropped by filters)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from vlcurate.export.html_report import ReportOptions, write_report

    out = write_report(args.version_dir, args.out, ReportOptions(seed=args.seed), log=_log)
    print(f"report written: {out}")
    return 0


def _log(line: str) -> None:
    print(line, file=sys.stderr)


def _cmd_export_training(args: argparse.Namespace) -> int:
    from vlcurate.export.training import ExportRecipe, export_training
    from vlcurate.report import plural

    features = tuple(dict.fromkeys(f.strip() for f in (args.features or "").split(",") if f.strip()))
    recipe = ExportRecipe(args.version_dir, args.export_format, args.samples_per_shard, args.shuffle_seed, features,
                          args.runner, args.workers, tuple(args.beam_options))
    r = export_training(recipe, args.out, log=_log)
    left = "".join(f", {n} without {name}" for name, n in sorted(r.left_out.items()))
    print(f"exported {plural(r.exported, 'sample')} in {plural(r.shards, 'shard')} ({args.export_format}) "
          f"to {r.version_dir}{' (left out' + left[1:] + ')' if left else ''}; parent {args.version_dir}")
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    from vlcurate.export.query import format_table, run_query

    table = run_query(args.version_dir, args.sql, args.out)
    if args.out:
        print(f"wrote {table.num_rows} rows to {args.out}")
    else:
        print(format_table(table, args.max_rows))
    return 0


def _cmd_evalsets_add(args: argparse.Namespace) -> int:
    import yaml

    from vlcurate.evalsets.build import add_evalset
    from vlcurate.extractors.clip_models import ClipModelConfig
    from vlcurate.typed import from_dict

    model = None
    if args.model:
        model = from_dict(ClipModelConfig, {"model": args.model, "weights": args.weights,
                                            **({"quick_gelu": True} if args.quick_gelu else {})}, "--model")
    try:
        download = yaml.safe_load(args.download) if args.download else {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--download: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(download, dict):
        raise ConfigError(f"--download: expected a mapping of download settings, got {args.download!r}")
    source = args.source if "://" in args.source else os.path.abspath(args.source)
    r = add_evalset(args.root, args.name, source, model=model, download=download, workers=args.workers,
                    log=lambda s: print(s, file=sys.stderr))
    counts = r.manifest["counts"]
    print(f"eval set {args.name}: {counts['ok']} of {counts['items']} images indexed "
          f"({'hash + ' + r.manifest['embedding_index']['kind'] + ' embedding index' if r.manifest['model'] else 'hash index only'}) "
          f"at {r.path}")
    return 0


def _cmd_evalsets_list(args: argparse.Namespace) -> int:
    from vlcurate.evalsets.build import evalset_rows

    rows = evalset_rows(args.root)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'name':<20}{'items':>8}{'ok':>8}  {'model':<18}{'embeddings':<12}created")
    for r in rows:
        print(f"{r['name']:<20}{r['items']:>8}{r['ok']:>8}  {r['model'] or '-':<18}{r['embedding_index'] or '-':<12}"
              f"{r['created_at']}")
    return 0


def _cmd_evalsets_show(args: argparse.Namespace) -> int:
    from vlcurate.evalsets.build import show_evalset

    print(show_evalset(args.root, args.name))
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def make_parser() -> argparse.ArgumentParser:
    from vlcurate import __version__
    from vlcurate.download.fetch import RETRYABLE_HTTP_STATUSES

    parser = argparse.ArgumentParser(prog="vlcurate", description="Curate and featurize image-text corpora as versioned, reproducible datasets.")
    parser.add_argument("--version", action="version", version=f"vlcurate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="build a dataset version from a recipe (YAML)",
                       epilog="Beam pipeline options go after '--', e.g. -- --project=p --region=r")
    p.add_argument("recipe")
    p.add_argument("--runner", help="override runner.name: local, DataflowRunner, DaskRunner, ...")
    p.add_argument("--workers", type=_positive_int, help="override runner.workers (local runner processes)")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("download", help="download jobs on an existing version: re-fetch its retryable failures",
                       epilog="Builds ROOT/NAME/<version>-retryN beside VERSION_DIR (parent = VERSION_DIR): rows "
                              "that failed with a retryable error (timeouts, connection and transfer errors, HTTP "
                              f"{', '.join(map(str, sorted(RETRYABLE_HTTP_STATUSES)))}) are fetched again; every "
                              "other row is copied as it was; later stages re-run. Exits 1 when no row is recovered.")
    p.add_argument("--retry-failed", metavar="VERSION_DIR", required=True,
                   help="the version whose retryable failures to fetch again")
    p.add_argument("--version", help="name of the new version (default: next free <version>-retryN)")
    p.add_argument("--workers", type=_positive_int, help="override runner.workers (local runner processes)")
    p.add_argument("--runner", help="override runner.name: local, DataflowRunner, DaskRunner, ...")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("demo", help="build a version from the embedded sample corpus, validate it, summarise",
                       epilog="`vlcurate demo train-models --out DIR` retrains the shipped demo-domain models "
                              "into DIR instead (CPU, under 30 minutes on 2 cores)")
    p.add_argument("action", nargs="?", choices=("run", "train-models"), default="run")
    p.add_argument("--out", default="datasets", help="output root, or the weights directory for train-models "
                                                      "(default: ./datasets)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--interleaved", action="store_true",
                   help="build the interleaved demo instead: documents from an embedded WARC served on loopback")
    p.add_argument("--models", default="clip,captioner",
                   help="train-models: which models, comma-separated (default: clip,captioner)")
    p.add_argument("--threads", type=int, default=2, help="train-models: torch CPU threads (default: 2)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("validate", help="re-check a version: schemas, checksums, row counts, tar/parquet agreement")
    p.add_argument("version_dir")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("versions", help="list or show dataset versions")
    vsub = p.add_subparsers(dest="versions_command", required=True)
    q = vsub.add_parser("list", help="every version under ROOT")
    q.add_argument("root")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_cmd_versions_list)
    q = vsub.add_parser("show", help="one version's manifest summary")
    q.add_argument("version_dir")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_cmd_versions_show)
    q = vsub.add_parser("diff", help="what changed from version A to B: recipe, counts, samples added, removed, "
                                     "and whose decision changed")
    q.add_argument("a")
    q.add_argument("b")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_cmd_versions_diff)

    p = sub.add_parser("query", help="SQL (DuckDB) over a version: views samples, decisions, kept, one per sidecar",
                       epilog="e.g. vlcurate query datasets/demo/v1 \"SELECT stage, reason, count(*) FROM decisions "
                              "GROUP BY ALL\"")
    p.add_argument("version_dir")
    p.add_argument("sql")
    p.add_argument("--out", help="write the result to this .csv or .parquet file instead of printing it")
    p.add_argument("--max-rows", type=_positive_int, default=50, help="rows to print (default: 50)")
    p.set_defaults(func=_cmd_query)

    p = sub.add_parser("evalsets", help="named eval-set indexes to decontaminate against (ROOT/_evalsets/NAME)")
    vsub = p.add_subparsers(dest="evalsets_command", required=True)
    q = vsub.add_parser("add", help="index a folder of images, a URL list or a version as eval set NAME")
    q.add_argument("name")
    q.add_argument("source", help="a folder of images, a URL list (fetched by the download stage) or a version")
    q.add_argument("--root", required=True, help="the datasets root the eval set is stored beside")
    q.add_argument("--model", help="also index CLIP image embeddings of this open_clip model")
    q.add_argument("--weights", help="the model's weights (file, local-dir:, hf-hub: or pretrained tag)")
    q.add_argument("--quick-gelu", action="store_true", help="the model uses QuickGELU (OpenAI weights)")
    q.add_argument("--download", help="URL list: download stage settings as YAML, e.g. "
                                      "'{allow_networks: [10.0.0.0/8], input: {url_col: link}}'")
    q.add_argument("--workers", type=_positive_int, default=1, help="URL list: download processes")
    q.set_defaults(func=_cmd_evalsets_add)
    q = vsub.add_parser("list", help="every eval set under ROOT")
    q.add_argument("root")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_cmd_evalsets_list)
    q = vsub.add_parser("show", help="one eval set's manifest, summarised")
    q.add_argument("root")
    q.add_argument("name")
    q.set_defaults(func=_cmd_evalsets_show)

    p = sub.add_parser("export", help="write a version's features in another tool's format")
    esub = p.add_subparsers(dest="export_format", required=True)
    q = esub.add_parser("lxmert-tsv", help="region features as LXMERT's TSV (base64 arrays, no header)")
    q.add_argument("version_dir")
    q.add_argument("out", help="the .tsv file to write (atomically)")
    q.add_argument("--stage", default="region_features", help="the region stage to export (default: region_features)")
    q.add_argument("--include-dropped", action="store_true",
                   help="also samples a filter dropped (default: only samples every filter kept)")
    q.set_defaults(func=_cmd_export_lxmert_tsv)

    p = sub.add_parser("report", help="one self-contained HTML page to check a version by eye",
                       epilog="Funnel, score histograms with thresholds, thumbnails of kept and dropped samples, "
                              "duplicate pairs, download errors, model provenance; no network needed to open it.")
    p.add_argument("version_dir")
    p.add_argument("--out", help="the .html file to write (default: VERSION_DIR.report.html beside the version)")
    p.add_argument("--seed", type=int, default=0, help="which shards and samples the page shows (default: 0)")
    p.set_defaults(func=_cmd_report)
    for fmt in ("webdataset", "parquet"):
        q = esub.add_parser(fmt, help=f"the samples every filter kept as {fmt} training shards, a version of its own",
                            epilog="Beam pipeline options go after '--'")
        q.add_argument("version_dir")
        q.add_argument("out", help="the new version directory (ROOT/NAME/VERSION); must not exist")
        q.add_argument("--samples-per-shard", type=_positive_int, default=1000,
                       help="samples per output shard (default: 1000)")
        q.add_argument("--shuffle-seed", type=int, help="shuffle the samples across shards with this seed")
        q.add_argument("--features", help="comma-separated: vit (ViT tokens), regions (region features + boxes)")
        q.add_argument("--runner", default="local", help="Beam runner (default: local, the FnApiRunner)")
        q.add_argument("--workers", type=_positive_int, default=1, help="local runner processes")
        q.set_defaults(func=_cmd_export_training)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after a bare '--' is passed to Beam untouched.
    beam_options = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    args = make_parser().parse_args(argv)
    args.beam_options = beam_options
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    # A DaskRunner run without --dask_client_address starts a local cluster, whose
    # dashboard moves to a free port when 8787 is taken, with a three-line warning.
    warnings.filterwarnings("ignore", message=r"Port \d+ is already in use", category=UserWarning)
    try:
        return args.func(args)
    except (UserError, ConfigError) as e:
        print(f"vlcurate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
