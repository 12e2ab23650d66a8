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


class _DropImportNoise(logging.Filter):
    """Beam warns on the root logger at import that its BigQuery client is missing
    (``apitools not found``), which no vlcurate job uses."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("apitools not found")


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
    counts = result.manifest["stages"][0]["counts"]
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


def _cmd_export_lxmert_tsv(args: argparse.Namespace) -> int:
    from vlcurate.extractors.lxmert_tsv import export_lxmert_tsv
    from vlcurate.report import plural

    r = export_lxmert_tsv(args.version_dir, args.out, stage=args.stage, include_dropped=args.include_dropped)
    print(f"wrote {plural(r.rows, 'image')} to {r.path} from {plural(r.shards, args.stage + ' shard')} "
          f"(left out: {r.failed} failed, {r.dropped} dropped by filters)")
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

    p = sub.add_parser("export", help="write a version's features in another tool's format")
    esub = p.add_subparsers(dest="export_format", required=True)
    q = esub.add_parser("lxmert-tsv", help="region features as LXMERT's TSV (base64 arrays, no header)")
    q.add_argument("version_dir")
    q.add_argument("out", help="the .tsv file to write (atomically)")
    q.add_argument("--stage", default="region_features", help="the region stage to export (default: region_features)")
    q.add_argument("--include-dropped", action="store_true",
                   help="also samples a filter dropped (default: only samples every filter kept)")
    q.set_defaults(func=_cmd_export_lxmert_tsv)
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
    logging.getLogger().addFilter(_DropImportNoise())
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
