"""The end-of-build summary: what was kept and what was dropped, and why."""

from __future__ import annotations

from vlcurate.versions import is_filter


def funnel(manifest: dict) -> list[tuple[str, str, int]]:
    """(stage, outcome, count) rows in pipeline order: failures by kind, drops (and a tag-only filter's would-be drops) by reason, kept."""
    rows: list[tuple[str, str, int]] = []
    for stage in manifest["stages"]:
        counts = stage["counts"]
        for name, value in counts.items():
            if name.startswith(("failed.", "dropped.", "would_drop.")):
                rows.append((stage["name"], name, value))
        if "ok" in counts:
            rows.append((stage["name"], "ok", counts["ok"]))
        if "kept" in counts:
            rows.append((stage["name"], "kept", counts["kept"]))
    return rows


def summary_table(manifest: dict, seconds: float | None = None) -> str:
    stages = manifest["stages"]
    rows_in = stages[0]["rows"] if stages else 0
    lines = [f"{manifest['name']}/{manifest['version']}: {rows_in} input rows"
             + (f" in {seconds:.1f}s ({rows_in / seconds:.1f} rows/s)" if seconds else "")]
    lines.append(f"  {'stage':<16}{'outcome':<34}{'samples':>8}")
    for stage, outcome, count in funnel(manifest):
        lines.append(f"  {stage:<16}{outcome:<34}{count:>8}")
    # The last filter's kept count; a feature stage's ok count is not a funnel step
    # (a sample whose features failed is still kept), so with no filter it is the
    # first stage's (the download's) ok count.
    filters = [s for s in stages if is_filter(s["counts"])]
    if filters or (stages and "ok" in stages[0]["counts"]):
        kept = filters[-1]["counts"].get("kept", 0) if filters else stages[0]["counts"]["ok"]
        lines.append(f"  {'=> kept':<50}{kept:>8}")
    lines += [f"  note: {note}" for note in weights_notes(manifest)]
    return "\n".join(lines)


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``1 shard``, ``2 shards``; ``many`` for irregular plurals."""
    return f"{count} {noun if count == 1 else (many or noun + 's')}"


# What to change when every row failed with this kind (the dominant one).
_ADVICE = {
    "blocked_address": "the hosts are on a non-public network; allow it in the download settings "
                       "(download.allow_networks: [CIDR, ...]) if that is intended",
    "invalid_url": "the url column holds no http(s) URLs; check input.url_col",
    "connection_error": "the hosts could not be reached; check the URLs and the network, "
                        "then `vlcurate download --retry-failed`",
    "timeout": "the hosts did not answer in time; raise download.timeout or retry later "
               "(`vlcurate download --retry-failed`)",
    "transfer_error": "connections broke mid-transfer; retry later (`vlcurate download --retry-failed`)",
    "http_error": "the servers refused the requests; check the URLs (see error_message per row)",
    "too_large": "the files exceed download.max_bytes; raise it if they are images you want",
    "opted_out": "the servers opt out of AI use (X-Robots-Tag); respect it, or change "
                 "download.disallowed_header_directives",
    "too_many_redirects": "the URLs redirect in loops; raise download.max_redirects if legitimate",
    "not_an_image": "the URLs do not point at images",
    "decode_error": "the images are corrupt or in a format this Pillow cannot decode",
    "bomb": "the images exceed download.max_pixels; raise it if they are legitimate",
    "too_small": "the images are smaller than download.min_image_size; lower it",
    "bad_aspect_ratio": "the images exceed download.max_aspect_ratio; raise it",
}


def nothing_succeeded(manifest: dict) -> str | None:
    """A one-line warning when no row of the first (download) stage succeeded: the
    dominant error kind and what to change; None when anything succeeded."""
    stages = manifest["stages"]
    if not stages or stages[0]["rows"] == 0 or stages[0]["counts"].get("ok", 0) > 0 \
            or stages[0]["counts"].get("kept", 0) > 0:  # (a first stage reading pages keeps documents)
        return None
    rows = stages[0]["rows"]
    failures = {k.removeprefix("failed."): v for k, v in stages[0]["counts"].items() if k.startswith("failed.")}
    if not failures:
        return f"no row of {rows} succeeded"
    kind, count = max(failures.items(), key=lambda kv: (kv[1], kv[0]))
    share = f"all {plural(rows, 'row')} {kind}" if count == rows else \
        f"no row of {rows} succeeded; most ({count}) {kind}"
    advice = _ADVICE.get(kind, "see error_message in the sample rows")
    return f"{share}: {advice}"


def weights_notes(manifest: dict) -> list[str]:
    """What the models ran with, where it is not general-purpose weights: random
    init, or labelled weights (the demo-domain models), naming the stages."""
    random, labelled = [], {}
    for s in manifest["stages"]:
        weights = s.get("weights") or {}
        if weights.get("random"):
            random.append(s["name"])
        elif weights.get("label"):
            labelled.setdefault((weights["label"], weights.get("trained_on")), []).append(s["name"])
    notes = [f"{', '.join(names)} ran with {label}" + (f", trained on {on}" if on else "")
             for (label, on), names in labelled.items()]
    if random or (manifest.get("random_weights") and not labelled):
        notes.append(f"{', '.join(random) or 'models'} ran with RANDOM weights (test/demo configs); "
                     "their scores and features are not meaningful")
    return notes
