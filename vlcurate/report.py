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
    last = [s for s in stages if "kept" in s["counts"] or "ok" in s["counts"]]
    if last:
        kept = last[-1]["counts"].get("kept", last[-1]["counts"].get("ok", 0))
        lines.append(f"  {'=> kept':<50}{kept:>8}")
    if manifest.get("random_weights"):
        lines.append("  note: models ran with RANDOM weights (test/demo configs); their scores and features are not meaningful")
    return "\n".join(lines)
