"""``vlcurate report``: one self-contained HTML page a person can check a version by.

The page needs no network when opened: images are ``data:`` URIs, charts are inline
SVG, and a Content-Security-Policy forbids every other source. Its size is bounded
whatever the version's size: counts come from the manifest (summed from the stats
markers), and everything per sample (score histograms, thumbnails, duplicate pairs,
example URLs) from a seeded sample of at most ``max_shards`` shards, with a fixed
number of thumbnails per group. The same version, options and seed give the same
bytes.

Sections (each a ``<section id=...>``): ``funnel``, ``scores``, ``kept``, ``dropped``,
``duplicates``, ``errors``, ``provenance``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import random
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import pyarrow.compute as pc

from vlcurate.io import storage
from vlcurate.io.parquet import read_parquet
from vlcurate.io.tar import iter_tar_files
from vlcurate.pipelines.keyed import shard_of
from vlcurate.pipelines.progress import Ticker
from vlcurate.pipelines.samples import DECISION
from vlcurate.pipelines.stage import Layout
from vlcurate.report import funnel, weights_notes
from vlcurate.versions import load_manifest, version_layout

SECTIONS = ("funnel", "scores", "kept", "dropped", "duplicates", "errors", "provenance")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# Every source other than the page itself and data: images is refused by the browser.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
DUPLICATE_SUFFIX = "duplicate"  # reasons of dedup filters: duplicate, near_duplicate, semantic_duplicate


@dataclass(frozen=True)
class ReportOptions:
    """What the page samples; every limit bounds its size."""

    seed: int = 0
    max_shards: int = 64  # shards read for histograms, thumbnails and examples
    kept: int = 24  # thumbnails of kept samples
    per_reason: int = 8  # thumbnails per drop reason
    pairs: int = 6  # duplicate pairs
    urls_per_kind: int = 3  # example URLs per download error kind
    thumb_px: int = 112
    bins: int = 30


@dataclass
class _Sampled:
    """What the sampled shards hold, before images are read."""

    shards: list[int] = field(default_factory=list)
    scores: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)  # stage -> (score, kept)
    kept: list[tuple[int, str]] = field(default_factory=list)  # (shard, key)
    dropped: dict[tuple[str, str], list[tuple[int, str, str | None]]] = field(default_factory=dict)
    pairs: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)  # stage -> (shard, key, representative)
    errors: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # kind -> (url, message)
    captions: dict[str, str] = field(default_factory=dict)


def default_out(version_dir: str | os.PathLike) -> str:
    """``ROOT/NAME/VERSION.report.html``: beside the version, which is immutable."""
    loc = os.fspath(version_dir).rstrip("/")
    return storage.join(storage.parent(loc), storage.basename(loc) + ".report.html")


def write_report(version_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 options: ReportOptions = ReportOptions(), log: Callable[[str], None] | None = None) -> str:
    """Write the report of ``version_dir`` to ``out`` (atomically) and return where."""
    manifest = load_manifest(version_dir)
    page = render(version_dir, manifest, options, log)
    target = os.fspath(out) if out is not None else default_out(version_dir)
    storage.write_bytes(target, page.encode())
    return target


def render(version_dir: str | os.PathLike, manifest: dict, options: ReportOptions = ReportOptions(),
           log: Callable[[str], None] | None = None) -> str:
    layout = version_layout(version_dir, manifest)
    sampled = _choose(_sample(layout, manifest, options, log), manifest, options)
    thumbs = _thumbnails(layout, sampled, options)
    title = f"{manifest['name']}/{manifest['version']}"
    body = [
        f"<header><h1>vlcurate report: {_e(title)}</h1>",
        f"<p>{_e(_headline(manifest))}; per-sample parts from {len(sampled.shards)} of "
        f"{_num_shards(manifest)} shards (seed {options.seed}).</p>",
        *(f'<p class="warn">{_e(note)}</p>' for note in weights_notes(manifest) if "RANDOM" in note),
        "<nav>" + " ".join(f'<a href="#{s}">{s}</a>' for s in SECTIONS) + "</nav></header>",
        _funnel_section(manifest),
        _scores_section(manifest, sampled, options),
        _kept_section(sampled, thumbs),
        _dropped_section(manifest, sampled, thumbs),
        _duplicates_section(sampled, thumbs),
        _errors_section(manifest, sampled),
        _provenance_section(manifest),
    ]
    return _PAGE.format(csp=_e(CSP), title=_e(title), style=_STYLE, body="\n".join(body), script=_SCRIPT)


# --- sampling -----------------------------------------------------------------------

def _num_shards(manifest: dict) -> int:
    return manifest["stages"][0]["shards"] if manifest["stages"] else 0


def _sample(layout: Layout, manifest: dict, options: ReportOptions,
            log: Callable[[str], None] | None) -> _Sampled:
    rng = random.Random(options.seed)
    order = list(range(_num_shards(manifest)))
    rng.shuffle(order)
    sampled = _Sampled(shards=sorted(order[: options.max_shards]))
    with Ticker("report: shards read", len(sampled.shards), log=log) as ticker:
        for shard in sampled.shards:
            _read_shard(layout, shard, sampled, options)
            ticker.advance(1)
    return sampled


def _read_shard(layout: Layout, shard: int, sampled: _Sampled, options: ReportOptions) -> None:
    rows = read_parquet(layout.samples_parquet(shard),
                        columns=["key", "url", "caption", "status", "error_kind", "error_message"]).to_pylist()
    for r in rows:
        if r["status"] != "ok":
            examples = sampled.errors.setdefault(r["error_kind"] or "unknown", [])
            if len(examples) < options.urls_per_kind:
                examples.append((r["url"] or "", r["error_message"] or ""))
    dropped: set[str] = set()
    for loc in layout.sidecars(shard, DECISION):
        d = read_parquet(loc, columns=["key", "stage", "keep", "reason", "score", "detail"])
        scored = d.filter(pc.is_valid(d.column("score")))
        if scored.num_rows:
            sampled.scores.setdefault(d.column("stage")[0].as_py(), []).extend(
                zip(scored.column("score").to_pylist(), scored.column("keep").to_pylist()))
        for r in d.filter(pc.invert(d.column("keep"))).to_pylist():
            dropped.add(r["key"])
            sampled.dropped.setdefault((r["stage"], r["reason"]), []).append((shard, r["key"], r["detail"]))
            if r["reason"].endswith(DUPLICATE_SUFFIX) and r["detail"]:
                sampled.pairs.setdefault(r["stage"], []).append((shard, r["key"], r["detail"]))
    ok = [r for r in rows if r["status"] == "ok"]
    sampled.kept += [(shard, r["key"]) for r in ok if r["key"] not in dropped]
    sampled.captions.update((r["key"], r["caption"] or "") for r in ok)


def _choose(sampled: _Sampled, manifest: dict, options: ReportOptions) -> _Sampled:
    """The samples the page shows: a seeded draw of ``options``' size from each group,
    groups in pipeline order."""
    rng = random.Random(options.seed + 1)
    order = {s["name"]: i for i, s in enumerate(manifest["stages"])}

    def pick(items: list, n: int) -> list:
        return sorted(rng.sample(items, n)) if len(items) > n else sorted(items)

    return replace(
        sampled, kept=pick(sampled.kept, options.kept),
        dropped={g: pick(v, options.per_reason)
                 for g, v in sorted(sampled.dropped.items(), key=lambda kv: (order.get(kv[0][0], -1), kv[0]))},
        pairs={s: pick(v, options.pairs)
               for s, v in sorted(sampled.pairs.items(), key=lambda kv: (order.get(kv[0], -1), kv[0]))})


def _thumbnails(layout: Layout, sampled: _Sampled, options: ReportOptions) -> dict[str, str]:
    """key -> data URI of its thumbnail, for every sample the page shows (a
    representative from an unsampled shard included)."""
    wanted: dict[int, set[str]] = {}
    for shard, key in sampled.kept:
        wanted.setdefault(shard, set()).add(key)
    for items in sampled.dropped.values():
        for shard, key, _ in items:
            wanted.setdefault(shard, set()).add(key)
    for items in sampled.pairs.values():
        for shard, key, representative in items:
            wanted.setdefault(shard, set()).add(key)
            try:
                wanted.setdefault(shard_of(representative), set()).add(representative)
            except ValueError:
                pass  # not a <shard>_<row> key: shown without its image
    thumbs: dict[str, str] = {}
    for shard, keys in sorted(wanted.items()):
        tar = layout.samples_tar(shard)
        if not storage.exists(tar):
            continue
        for key, _, payload in iter_tar_files(tar, IMAGE_EXTS, keys):
            uri = _thumbnail(payload, options.thumb_px)
            if uri:
                thumbs[key] = uri
    return thumbs


def _thumbnail(payload: bytes, px: int) -> str | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(payload)) as img:
            img = img.convert("RGB")
            img.thumbnail((px, px))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=80)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


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


def _scores_section(manifest: dict, sampled: _Sampled, options: ReportOptions) -> str:
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


def _kept_section(sampled: _Sampled, thumbs: dict[str, str]) -> str:
    figures = "".join(_figure(k, thumbs, sampled.captions.get(k)) for _, k in sampled.kept)
    return (f'<section id="kept"><h2>Kept samples</h2><p>{len(sampled.kept)} samples every filter kept, '
            f'drawn at random from the sampled shards.</p><div class="grid">{figures}</div></section>')


def _dropped_section(manifest: dict, sampled: _Sampled, thumbs: dict[str, str]) -> str:
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


def _duplicates_section(sampled: _Sampled, thumbs: dict[str, str]) -> str:
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


def _errors_section(manifest: dict, sampled: _Sampled) -> str:
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
