"""``vlcurate download --retry-failed VERSION_DIR``: a new version that fetches again
only the rows that failed with a retryable error, and keeps every other row as it was.

It is an ordinary build of a recipe derived from the parent's manifest:

- input: the parent's own sample rows (``PARENT/samples/*.parquet``: url, caption and
  the parent's extra columns), with the parent's ``samples_per_shard``, so every row
  lands in the same shard at the same index and keeps its key;
- stages: the parent's, with ``download.reuse: PARENT``: the download stage copies ok
  rows (their stored image bytes included) and non-retryable failures from the
  parent's shard and fetches only retryable failures (see
  :mod:`vlcurate.download.reuse`); the later stages (filters, dedup) run again over
  the new version, so their decisions see the newly downloaded samples;
- an interleaved version (first stage ``interleave``) is rebuilt from the parent's own
  page inputs with its download stage reusing the parent's: the documents, and so the
  derived image keys, come out the same, and only the images that failed retryably
  are fetched again;
- output: beside the parent (same root and name), ``parent`` set to the parent's
  directory; the version is ``--version`` or the next free ``<base>-retryN``, where
  ``<base>`` is the parent's version without a ``-retryN`` suffix (v1 -> v1-retry1;
  retrying v1-retry1 -> v1-retry2).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc

from vlcurate.download.fetch import is_retryable
from vlcurate.errors import UserError
from vlcurate.pipelines.build import version_exists
from vlcurate.recipe import REDACTED, Recipe, recipe_from_dict
from vlcurate.typed import ConfigError
from vlcurate.io import storage
from vlcurate.io.parquet import read_parquet
from vlcurate.versions import load_manifest, manifest_files

_RETRY_SUFFIX = re.compile(r"-retry\d+$")


@dataclass(frozen=True)
class RetryPlan:
    """What a retry build will do: its recipe, and how many rows it fetches again."""

    recipe: Recipe
    retryable: int  # parent rows that failed with a retryable error
    rows: int  # all parent rows


def next_retry_version(name_dir: str, parent_version: str) -> str:
    """The first ``<base>-retryN`` (N = 1, 2, ...) with no version directory in ``name_dir``."""
    base = _RETRY_SUFFIX.sub("", parent_version)
    n = 1
    while version_exists(storage.join(name_dir, f"{base}-retry{n}")):
        n += 1
    return f"{base}-retry{n}"


def count_retryable(version_dir: str, manifest: dict) -> tuple[int, int]:
    """(rows that failed with a retryable error, all rows) of a version."""
    retryable = total = 0
    for rel in manifest_files(manifest, "samples", ".parquet"):
        table = read_parquet(storage.join(version_dir, rel))
        total += table.num_rows
        failed = table.filter(pc.equal(table.column("status"), "failed"))
        statuses = (failed.column("http_status").to_pylist() if "http_status" in failed.schema.names
                    else [None] * failed.num_rows)
        retryable += sum(is_retryable(kind, status)
                         for kind, status in zip(failed.column("error_kind").to_pylist(), statuses))
    return retryable, total


def plan_retry(version_dir: str | Path, version: str | None = None, workers: int | None = None,
               runner: str | None = None, runner_options: tuple[str, ...] = ()) -> RetryPlan:
    """The retry build of ``version_dir``; UserError (one line) when it cannot be one."""
    parent = os.fspath(version_dir) if storage.is_remote(version_dir) else str(Path(version_dir).resolve())
    manifest = load_manifest(parent)  # UserError when not a version directory
    where = f"version {parent}"
    try:
        body = manifest["recipe"]
        stages = [dict(s) for s in body["stages"]]
        first = next(iter(stages[0]))
        extra_cols = list(body["input"].get("extra_cols") or [])
        samples_per_shard = body["samples_per_shard"]
    except (KeyError, TypeError, IndexError, StopIteration, AttributeError):
        raise UserError(f"{where}: manifest has no usable recipe") from None
    pages = first == "interleave"  # an interleaved version: its download fetched the documents' images
    downloads = [i for i, s in enumerate(stages) if next(iter(s)) == "download"]
    if first != "download" and not (pages and downloads):
        raise UserError(f"{where}: its first stage is {first!r}, not download; nothing to retry")
    if not manifest_files(manifest, "samples", ".parquet"):
        raise UserError(f"{where}: no sample shards under {storage.join(parent, 'samples')}")
    at = downloads[0]
    stages[at] = {"download": {**stages[at]["download"], "reuse": str(parent)}}
    run = dict(body.get("runner") or {})
    if workers is not None:
        run["workers"] = workers
    if runner is not None:
        run["name"] = runner
    # A parent's secret options were redacted in its manifest: pass them again.
    prior = list(run.get("options", []))
    kept = [o for i, o in enumerate(prior) if not (o == REDACTED or o.endswith(f"={REDACTED}")
                                                   or prior[i + 1:i + 2] == [REDACTED])]
    run["options"] = [*kept, *runner_options]
    name_dir = storage.parent(parent)
    # Pages are read again from the parent's inputs (the same documents, so the same
    # image keys); a URL list from the parent's own sample rows.
    data = {
        "input": dict(body["input"]) if pages else {
            "paths": [storage.join(parent, "samples")], "format": "parquet", "url_col": "url",
            "caption_col": "caption", "extra_cols": extra_cols},
        "output": {"root": storage.parent(name_dir), "name": storage.basename(name_dir),
                   "version": version or next_retry_version(name_dir, storage.basename(parent)), "parent": parent},
        "samples_per_shard": samples_per_shard,
        "stages": stages,
        "runner": run,
    }
    try:
        recipe = recipe_from_dict(data, Path.cwd(), where=f"{where} (retry recipe)")
    except ConfigError as e:
        raise UserError(str(e)) from None
    if version_exists(recipe.output.version_dir):
        raise UserError(f"output {recipe.output.version_dir}: version already exists "
                        "(versions are immutable; pick a new --version)")
    retryable, rows = count_retryable(parent, manifest)
    return RetryPlan(recipe, retryable, rows)

