"""The end-of-build summary: what was kept and what was dropped, and why."""

from __future__ import annotations


def funnel(manifest: dict) -> list[tuple[str, str, int]]:
    """(stage, outcome, count) rows in pipeline order: failures by kind, drops by reason, kept."""
    rows: list[tuple[str, str, int]] = []
    for stage in manifest["stages"]:
        counts = stage["counts"]
        for name, value in counts.items():
            if name.startswith("failed.") or name.startswith("dropped."):
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
    filters = [s for s in stages if "kept" in s["counts"]]
    if filters or (stages and "ok" in stages[0]["counts"]):
        kept = filters[-1]["counts"]["kept"] if filters else stages[0]["counts"]["ok"]
        lines.append(f"  {'=> kept':<50}{kept:>8}")
    lines += [f"  note: {note}" for note in weights_notes(manifest)]
    return "\n".join(lines)


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
