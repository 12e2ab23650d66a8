"""``vlcurate report``: one self-contained HTML page a person can check a version by.

The page needs no network when opened: images are ``data:`` URIs, charts are inline
SVG, and a Content-Security-Policy forbids every other source. Its size is bounded
whatever the version's size: counts come from the manifest (summed from the stats
markers), and everything per sample (score histograms, thumbnails, duplicate pairs,
example URLs) from a seeded sample of at most ``max_shards`` shards, with a fixed
number of thumbnails per group (:mod:`vlcurate.export.report_sample`). The same
version, options and seed give the same bytes.

Sections (each a ``<section id=...>``): ``funnel``, ``scores``, ``kept``, ``dropped``,
``duplicates``, ``contamination`` (each sampled sample a ``decontaminate`` stage dropped
beside the eval image it matched, from the eval set's stored thumbnail), ``errors``,
``provenance``.
"""

from __future__ import annotations

import html
import json
import os
from typing import Callable

import numpy as np

from vlcurate.errors import UserError
from vlcurate.export.report_sample import (ReportOptions, Sampled, choose, eval_thumbnail_uris, num_shards, sample,
                                           thumbnails)
from vlcurate.io import storage
from vlcurate.report import funnel, weights_notes
from vlcurate.versions import load_manifest, version_layout

SECTIONS = ("funnel", "scores", "kept", "dropped", "duplicates", "contamination", "errors", "provenance")
# Every source other than the page itself and data: images is refused by the browser.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def default_out(version_dir: str | os.PathLike) -> str:
    """``ROOT/NAME/VERSION.report.html``: beside the version, which is immutable."""
    loc = os.fspath(version_dir).rstrip("/")
    return storage.join(storage.parent(loc), storage.basename(loc) + ".report.html")


def write_report(version_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 options: ReportOptions = ReportOptions(), log: Callable[[str], None] | None = None) -> str:
    """Write the report of ``version_dir`` to ``out`` (atomically) and return where.
    Raises :class:`UserError` before any work when ``version_dir`` is not a version
    or ``out`` cannot be written."""
    manifest = load_manifest(version_dir)
    target = os.fspath(out) if out is not None else default_out(version_dir)
    problem = storage.write_problem(target)
    if problem:
        suffix = " (name the .html file to write)" if problem == "is a directory" else ""
        raise UserError(f"output {target}: {problem}{suffix}")
    page = render(version_dir, manifest, options, log)
    storage.write_bytes(target, page.encode())
    return target


def render(version_dir: str | os.PathLike, manifest: dict, options: ReportOptions = ReportOptions(),
           log: Callable[[str], None] | None = None) -> str:
    layout = version_layout(version_dir, manifest)
    sampled = choose(sample(layout, manifest, options, log), manifest, options)
    thumbs = thumbnails(layout, sampled, options)
    title = f"{manifest['name']}/{manifest['version']}"
    body = [
        f"<header><h1>vlcurate report: {_e(title)}</h1>",
        f"<p>{_e(_headline(manifest))}; per-sample parts from {len(sampled.shards)} of "
        f"{num_shards(manifest)} shards (seed {options.seed}).</p>",
        *(f'<p class="warn">{_e(note)}</p>' for note in weights_notes(manifest) if "RANDOM" in note),
        "<nav>" + " ".join(f'<a href="#{s}">{s}</a>' for s in SECTIONS) + "</nav></header>",
        _funnel_section(manifest),
        _scores_section(manifest, sampled, options),
        _kept_section(sampled, thumbs),
        _dropped_section(manifest, sampled, thumbs),
        _duplicates_section(sampled, thumbs),
        _contamination_section(manifest, sampled, thumbs, eval_thumbnail_uris(manifest, sampled)),
        _errors_section(manifest, sampled),
        _provenance_section(manifest),
    ]
    return _PAGE.format(csp=_e(CSP), title=_e(title), style=_STYLE, body="\n".join(body), script=_SCRIPT)


# --- sections -----------------------------------------------------------------------

def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _headline(manifest: dict) -> str:
    stages = manifest["stages"]
    rows = stages[0]["rows"] if stages else 0
    return (f"{rows} input rows, {len(stages)} stages; created {manifest['created_at']}, "
            f"code {manifest['code_version']}")


def _funnel_section(manifest: dict) -> str:
    rows = funnel(manifest)
    top = max([c for _, _, c in rows] or [1]) or 1
    out = ['<section id="funnel"><h2>Funnel</h2><table><tr><th>stage</th><th>outcome</th>'
           '<th class="n">samples</th><th></th></tr>']
    for stage, outcome, count in rows:
        cls = "ok" if outcome in ("ok", "kept") else "bad" if outcome.startswith(("failed.", "dropped.")) else "tag"
        out.append(f'<tr><td>{_e(stage)}</td><td>{_e(outcome)}</td><td class="n">{count}</td>'
                   f'<td><div class="bar {cls}" style="width:{300 * count / top:.1f}px"></div></td></tr>')
    out.append("</table></section>")
    return "\n".join(out)


def _thresholds(manifest: dict, stage: str) -> dict[str, float]:
    """The stage's numeric ``min_*``/``max_*``/``threshold`` settings: where its scores are cut."""
    for item in manifest["recipe"]["stages"]:
        (kind, settings), = item.items()
        settings = settings or {}
        if settings.get("name", kind) == stage:
            return {k: float(v) for k, v in settings.items()
                    if (k.startswith(("min_", "max_")) or k == "threshold")
                    and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {}


def _histogram(stage: str, values: list[tuple[float, bool]], thresholds: dict[str, float], bins: int) -> str:
    scores = np.array([v for v, _ in values], dtype=np.float64)
    kept = np.array([k for _, k in values], dtype=bool)
    lo, hi = float(scores.min()), float(scores.max())
    near = {k: t for k, t in thresholds.items() if lo - (hi - lo) <= t <= hi + (hi - lo)}  # same scale only
    lo, hi = min([lo, *near.values()]), max([hi, *near.values()])
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    n_kept, _ = np.histogram(scores[kept], edges)
    n_drop, _ = np.histogram(scores[~kept], edges)
    w, h, pad = 520, 170, 30
    top = max(int((n_kept + n_drop).max()), 1)
    bw = (w - 2 * pad) / bins
    x = lambda v: pad + (v - lo) / (hi - lo) * (w - 2 * pad)  # noqa: E731
    parts = [f'<svg class="hist" data-stage="{_e(stage)}" width="{w}" height="{h + 30}" '
             f'viewBox="0 0 {w} {h + 30}" role="img" aria-label="{_e(stage)} score histogram">']
    for i in range(bins):
        y = h
        for count, cls in ((n_kept[i], "ok"), (n_drop[i], "bad")):
            if count:
                bh = (h - 20) * count / top
                y -= bh
                parts.append(f'<rect class="{cls}" x="{pad + i * bw:.1f}" y="{y:.1f}" width="{bw - 1:.1f}" '
                             f'height="{bh:.1f}"><title>{edges[i]:.3f}-{edges[i + 1]:.3f}: {count}</title></rect>')
    parts.append(f'<line x1="{pad}" y1="{h}" x2="{w - pad}" y2="{h}" class="axis"/>')
    parts.append(f'<text x="{pad}" y="{h + 16}">{lo:.3g}</text>'
                 f'<text x="{w - pad}" y="{h + 16}" text-anchor="end">{hi:.3g}</text>'
                 f'<text x="{pad}" y="12">max {top} per bin</text>')
    for name, t in sorted(near.items()):
        parts.append(f'<line class="threshold" data-threshold="{t:g}" x1="{x(t):.1f}" y1="14" x2="{x(t):.1f}" '
                     f'y2="{h}"/><text class="threshold" x="{x(t) + 3:.1f}" y="{h + 28}">{_e(name)} {t:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _scores_section(manifest: dict, sampled: Sampled, options: ReportOptions) -> str:
    out = ['<section id="scores"><h2>Scores</h2>']
    if not sampled.scores:
        out.append("<p>No stage recorded scores.</p>")
    for stage, values in sampled.scores.items():
        n_drop = sum(not k for _, k in values)
        out.append(f"<h3>{_e(stage)}</h3><p>{len(values)} scored samples in the sampled shards "
                   f"({len(values) - n_drop} kept, {n_drop} dropped); thresholds marked in red.</p>")
        out.append(_histogram(stage, values, _thresholds(manifest, stage), options.bins))
    out.append("</section>")
    return "\n".join(out)


def _figure(key: str, thumbs: dict[str, str], caption: str | None, note: str | None = None) -> str:
    img = (f'<img src="{thumbs[key]}" alt="{_e(key)}">' if key in thumbs
           else '<div class="noimg">no image</div>')
    text = _e(caption if caption is not None else "")
    extra = f'<br><span class="note">{_e(note)}</span>' if note else ""
    return f'<figure data-key="{_e(key)}">{img}<figcaption><b>{_e(key)}</b> {text}{extra}</figcaption></figure>'


def _kept_section(sampled: Sampled, thumbs: dict[str, str]) -> str:
    figures = "".join(_figure(k, thumbs, sampled.captions.get(k)) for _, k in sampled.kept)
    return (f'<section id="kept"><h2>Kept samples</h2><p>{len(sampled.kept)} samples every filter kept, '
            f'drawn at random from the sampled shards.</p><div class="grid">{figures}</div></section>')


def _dropped_section(manifest: dict, sampled: Sampled, thumbs: dict[str, str]) -> str:
    totals = {(stage, outcome.removeprefix("dropped.")): n for stage, outcome, n in funnel(manifest)
              if outcome.startswith("dropped.")}
    out = ['<section id="dropped"><h2>Dropped samples by reason</h2>']
    if not sampled.dropped:
        out.append("<p>No filter dropped a sample in the sampled shards.</p>")
    for (stage, reason), items in sampled.dropped.items():
        total = totals.get((stage, reason), len(items))
        figures = "".join(_figure(k, thumbs, sampled.captions.get(k), detail) for _, k, detail in items)
        out.append(f'<div class="reason" data-stage="{_e(stage)}" data-reason="{_e(reason)}">'
                   f"<h3>{_e(stage)}: {_e(reason)} ({total} in the version)</h3>"
                   f'<div class="grid">{figures}</div></div>')
    out.append("</section>")
    return "\n".join(out)


def _duplicates_section(sampled: Sampled, thumbs: dict[str, str]) -> str:
    out = ['<section id="duplicates"><h2>Duplicate pairs</h2>'
           "<p>Each dropped copy beside the representative its filter kept.</p>"]
    if not sampled.pairs:
        out.append("<p>No duplicates in the sampled shards.</p>")
    for stage, items in sampled.pairs.items():
        out.append(f"<h3>{_e(stage)}</h3>")
        for _, key, representative in items:
            out.append(f'<div class="pair" data-key="{_e(key)}" data-representative="{_e(representative)}">'
                       f"{_figure(key, thumbs, sampled.captions.get(key), 'dropped copy')}"
                       f"{_figure(representative, thumbs, sampled.captions.get(representative), 'kept')}</div>")
    out.append("</section>")
    return "\n".join(out)


def _contamination_section(manifest: dict, sampled: Sampled, thumbs: dict[str, str],
                           eval_thumbs: dict[tuple[str, str, str], str]) -> str:
    out = ['<section id="contamination"><h2>Eval-set contamination</h2>'
           "<p>Each sample a decontaminate stage dropped beside the eval image it matched.</p>"]
    if not sampled.matches:
        out.append("<p>No decontaminate stage in this version.</p>")
    counts = {s["name"]: s["counts"] for s in manifest["stages"]}
    for stage, items in sampled.matches.items():
        total = sum(v for k, v in counts.get(stage, {}).items() if k.startswith("dropped."))
        out.append(f"<h3>{_e(stage)}</h3><p>{total} dropped in the version; {len(items)} shown, drawn at random "
                   "from the sampled shards.</p>")
        if not items:
            out.append("<p>No sample matched an eval item in the sampled shards.</p>")
        for _, key, row in items:
            dist, sim = row["hash_distance"], row["similarity"]
            facts = (f"{row['evalset']}: {row['eval_id']}; hash distance {'-' if dist is None else dist}, "
                     f"similarity {'-' if sim is None else f'{sim:.4f}'} (by {row['matched_by']})")
            uri = eval_thumbs.get((stage, row["evalset"], row["eval_id"]))
            img = (f'<img src="{uri}" alt="{_e(row["eval_id"])}">' if uri
                   else '<div class="noimg">no thumbnail</div>')
            out.append(f'<div class="pair match" data-key="{_e(key)}" data-evalset="{_e(row["evalset"])}" '
                       f'data-eval-id="{_e(row["eval_id"])}" data-hash-distance="{"" if dist is None else dist}" '
                       f'data-similarity="{"" if sim is None else f"{sim:.6f}"}">'
                       f"{_figure(key, thumbs, sampled.captions.get(key), 'dropped')}"
                       f'<figure class="eval" data-eval-id="{_e(row["eval_id"])}">{img}<figcaption>'
                       f"<b>{_e(row['eval_id'])}</b><br>{_e(facts)}</figcaption></figure></div>")
    out.append("</section>")
    return "\n".join(out)


def _errors_section(manifest: dict, sampled: Sampled) -> str:
    first = manifest["stages"][0] if manifest["stages"] else {"name": "-", "counts": {}}
    failures = sorted(((k.removeprefix("failed."), v) for k, v in first["counts"].items() if k.startswith("failed.")),
                      key=lambda kv: (-kv[1], kv[0]))
    out = [f'<section id="errors"><h2>Download errors</h2><p>Failures of stage {_e(first["name"])} by kind, '
           "with example URLs (as text: nothing here is fetched).</p>"]
    if not failures:
        out.append("<p>No row failed.</p>")
    else:
        out.append('<table><tr><th>kind</th><th class="n">rows</th><th>examples</th></tr>')
        for kind, count in failures:
            examples = "".join(f'<li><span class="url">{_e(url)}</span> <span class="note">{_e(message)}</span></li>'
                               for url, message in sampled.errors.get(kind, []))
            out.append(f'<tr data-kind="{_e(kind)}"><td>{_e(kind)}</td><td class="n">{count}</td>'
                       f"<td><ul>{examples}</ul></td></tr>")
        out.append("</table>")
    out.append("</section>")
    return "\n".join(out)


def _provenance_section(manifest: dict) -> str:
    out = ['<section id="provenance"><h2>Provenance</h2><table>']
    for label, value in (("version", f"{manifest['name']}/{manifest['version']}"),
                         ("parent", manifest.get("parent") or "-"), ("created", manifest["created_at"]),
                         ("code", manifest["code_version"]), ("schema", manifest["schema_version"]),
                         ("recipe hash", manifest["recipe_hash"])):
        out.append(f"<tr><th>{_e(label)}</th><td>{_e(value)}</td></tr>")
    out.append("</table><h3>Models</h3>")
    for note in weights_notes(manifest):
        out.append(f'<p class="{"warn" if "RANDOM" in note else "note"}">{_e(note)}</p>')
    out.append('<table><tr><th>stage</th><th>model</th><th>weights</th><th>sha256</th><th>random</th></tr>')
    for s in manifest["stages"]:
        w = s.get("weights")
        if w:
            out.append(f"<tr><td>{_e(s['name'])}</td><td>{_e(w.get('model') or w.get('config') or '-')}</td>"
                       f"<td>{_e(w.get('label') or w.get('source') or '-')}</td>"
                       f"<td>{_e((w.get('weights_sha256') or '-')[:16])}</td>"
                       f'<td class="{"warn" if w.get("random") else ""}">{"yes" if w.get("random") else "no"}</td></tr>')
    out.append("</table><h3>Inputs</h3><ul>")
    out += [f"<li>{_e(i['path'])} ({i['bytes']} bytes, sha256 {_e(i['sha256'][:16])})</li>"
            for i in manifest.get("inputs", [])]
    recipe = json.dumps(manifest["recipe"], indent=1)
    out.append(f"</ul><details><summary>Recipe (resolved)</summary><pre>{_e(recipe)}</pre></details></section>")
    return "\n".join(out)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vlcurate report: {title}</title>
<style>{style}</style></head>
<body>
{body}
<script>{script}</script>
</body></html>
"""

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 2em 2em;color:#222;max-width:1200px}
header{border-bottom:1px solid #ccc;margin-bottom:1em} nav a{margin-right:1em}
table{border-collapse:collapse} th,td{padding:2px 8px;text-align:left;vertical-align:top}
td.n,th.n{text-align:right} tr:nth-child(even){background:#f6f6f6}
.bar{height:10px} .bar.ok,rect.ok{background:#3a7;fill:#3a7} .bar.bad,rect.bad{background:#d55;fill:#d55}
.bar.tag{background:#e93}
.warn{color:#b00;font-weight:bold} .note{color:#666;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:8px} .pair{display:inline-flex;gap:4px;margin:0 16px 8px 0;
padding:4px;border:1px solid #ddd}
figure{margin:0;width:120px;font-size:11px;word-wrap:break-word} figure img{display:block}
.noimg{width:112px;height:84px;background:#eee;color:#888;text-align:center;line-height:84px}
svg.hist text{font-size:11px;fill:#444} .axis{stroke:#444} line.threshold{stroke:#c00;stroke-width:2;
stroke-dasharray:4 2} text.threshold{fill:#c00}
.url{font-family:monospace;font-size:12px} pre{font-size:12px;background:#f6f6f6;padding:8px}
"""

# Marks the page once loaded: how many images it has and how many did not decode
# (the browser test reads these attributes back).
_SCRIPT = """window.addEventListener("load", function () {
  var imgs = document.images, broken = 0;
  for (var i = 0; i < imgs.length; i++) { if (!imgs[i].complete || imgs[i].naturalWidth === 0) broken++; }
  document.body.setAttribute("data-images", String(imgs.length));
  document.body.setAttribute("data-broken-images", String(broken));
});"""
