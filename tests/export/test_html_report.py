"""The HTML report of the demo version: self-contained (no http(s) reference, every
image a data: URI that decodes), every section present and telling the truth about
the version (funnel counts, duplicate pairs, error kinds, thresholds); and it opens
in headless Chromium with no console message."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from vlcurate.cli import main
from vlcurate.export.html_report import CSP, SECTIONS, ReportOptions, default_out, write_report
from vlcurate.report import funnel

# Attributes whose value the browser fetches or follows.
URL_ATTRS = {"src", "href", "srcset", "action", "formaction", "poster", "data", "xlink:href", "background",
             "cite", "manifest", "ping", "longdesc", "codebase", "archive", "usemap", "lowsrc", "dynsrc"}


class Page(HTMLParser):
    """Every element's attributes, the text of <style> and <script>, and the page's
    figures, pairs and error rows as the tests need them."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.styles: list[str] = []
        self._in: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        self._in = tag if tag in ("style", "script") else None

    def handle_data(self, data):
        if self._in == "style":
            self.styles.append(data)

    def find(self, tag: str | None = None, **attrs) -> list[dict[str, str]]:
        return [a for t, a in self.elements if (tag is None or t == tag)
                and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]


def external_references(text: str) -> list[str]:
    """What in the page would make the browser reach beyond the page itself."""
    page = Page(text)
    found = []
    for tag, attrs in page.elements:
        for name, value in attrs.items():
            if name in URL_ATTRS and not value.startswith(("#", "data:")):
                found.append(f"<{tag} {name}={value!r}>")
            if name == "style" and re.search(r"url\s*\(|@import", value):
                found.append(f"<{tag} style={value!r}>")
        if tag in ("link", "iframe", "object", "embed", "base", "frame", "audio", "video", "source"):
            found.append(f"<{tag}>")
        if tag == "meta" and attrs.get("http-equiv", "").lower() == "refresh":
            found.append("<meta refresh>")
    for css in page.styles:
        if re.search(r"url\s*\(|@import", css):
            found.append(f"<style> {css[:60]!r}")
    return found


def decode_data_uri(uri: str) -> Image.Image:
    header, _, payload = uri.partition(",")
    assert header.startswith("data:image/") and header.endswith(";base64"), header
    img = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
    img.load()
    return img


@pytest.fixture(scope="module")
def report(demo_version, tmp_path_factory) -> Path:
    return Path(write_report(demo_version, tmp_path_factory.mktemp("report") / "demo.html"))


@pytest.fixture(scope="module")
def page(report) -> Page:
    return Page(report.read_text())


def manifest(version: Path) -> dict:
    return json.loads((version / "manifest.json").read_text())


# --- browser-free ---------------------------------------------------------------------

def test_no_http_reference_and_a_policy_that_forbids_any(report, page):
    text = report.read_text()
    assert external_references(text) == []
    assert page.find("meta", http_equiv="Content-Security-Policy") == [
        {"http-equiv": "Content-Security-Policy", "content": CSP}]
    # the check itself catches what it must
    assert external_references('<img src="https://x.org/a.png"><a href="http://x">x</a>') == [
        "<img src='https://x.org/a.png'>", "<a href='http://x'>"]
    assert external_references('<div style="background:url(http://x/a.png)"></div>')
    assert external_references("<style>@import 'http://x/a.css';</style>")


def test_every_embedded_image_decodes(page):
    images = page.find("img")
    assert len(images) > 40
    for img in images:
        decoded = decode_data_uri(img["src"])
        assert 0 < max(decoded.size) <= ReportOptions().thumb_px


def test_every_section_present(page):
    ids = [a.get("id") for _, a in page.elements if "id" in a]
    assert [s for s in SECTIONS if s in ids] == list(SECTIONS)
    assert {a["href"] for a in page.find("a")} >= {f"#{s}" for s in SECTIONS}


def test_funnel_rows_are_the_manifest_funnel(report, demo_version):
    text = report.read_text()
    rows = re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td><td class=\"n\">(\d+)</td>", text)
    assert [(s, o, int(c)) for s, o, c in rows] == funnel(manifest(demo_version))


def test_dropped_thumbnails_per_reason_are_samples_dropped_for_it(page, demo_version):
    decisions = pl.concat([pl.read_parquet(str(demo_version / s / "*.parquet"))
                           for s in ("caption_filter", "exact_dedup", "clip_score")])
    groups = page.find("div", **{"class": "reason"})
    shown = {(g["data-stage"], g["data-reason"]) for g in groups}
    assert shown == {("caption_filter", "no_caption"), ("caption_filter", "caption_too_short"),
                     ("exact_dedup", "duplicate"), ("clip_score", "low_clip_score")}
    dropped = {(r["stage"], r["reason"], r["key"]) for r in decisions.filter(~pl.col("keep")).iter_rows(named=True)}
    # figures follow their group's div in document order
    current = None
    checked = 0
    for tag, attrs in page.elements:
        if tag == "div" and attrs.get("class") == "reason":
            current = (attrs["data-stage"], attrs["data-reason"])
        elif tag == "section":
            current = None
        elif tag == "figure" and current:
            assert (*current, attrs["data-key"]) in dropped
            checked += 1
    assert checked == 4 + 4 + 8 + 8  # every caption drop, 8 of the 14 duplicates and of the 15 low scores


def test_kept_thumbnails_are_kept_samples(page, demo_version):
    samples = pl.read_parquet(str(demo_version / "samples" / "*.parquet")).filter(pl.col("status") == "ok")
    decisions = pl.concat([pl.read_parquet(str(demo_version / s / "*.parquet"))
                           for s in ("caption_filter", "exact_dedup", "clip_score")])
    kept = set(samples["key"]) - set(decisions.filter(~pl.col("keep"))["key"])
    section = [a for t, a in _section_elements(page, "kept") if t == "figure"]
    assert len(section) == ReportOptions().kept and {a["data-key"] for a in section} <= kept


def _section_elements(page: Page, section: str):
    inside = False
    for tag, attrs in page.elements:
        if tag == "section":
            inside = attrs.get("id") == section
        elif inside:
            yield tag, attrs


def test_duplicate_pairs_show_the_representative_the_decision_names(page, demo_version):
    dedup = pl.read_parquet(str(demo_version / "exact_dedup" / "*.parquet")).filter(~pl.col("keep"))
    representative = dict(zip(dedup["key"], dedup["detail"]))
    pairs = page.find("div", **{"class": "pair"})
    assert len(pairs) == ReportOptions().pairs
    images = {}
    for tag, attrs in _section_elements(page, "duplicates"):
        if tag == "figure":
            current = attrs["data-key"]
        elif tag == "img":
            images[current] = np.asarray(decode_data_uri(attrs["src"]))
    for pair in pairs:
        assert representative[pair["data-key"]] == pair["data-representative"]
        # exact duplicates: the same stored image, so the same thumbnail
        assert np.array_equal(images[pair["data-key"]], images[pair["data-representative"]])


def test_errors_by_kind_with_example_urls_of_that_kind(report, demo_version):
    rows = pl.read_parquet(str(demo_version / "samples" / "*.parquet")).filter(pl.col("status") == "failed")
    kinds = dict(rows.group_by("error_kind").len().iter_rows())
    text = report.read_text()
    section = text[text.index('<section id="errors">'):text.index('<section id="provenance">')]
    for kind, count in kinds.items():
        row = re.search(rf'<tr data-kind="{kind}"><td>{kind}</td><td class="n">(\d+)</td><td><ul>(.*?)</ul>',
                        section)
        assert row and int(row.group(1)) == count
        urls = re.findall(r'<span class="url">([^<]+)</span>', row.group(2))
        assert 1 <= len(urls) <= ReportOptions().urls_per_kind
        assert set(urls) <= set(rows.filter(pl.col("error_kind") == kind)["url"])


def test_histogram_marks_the_clip_threshold_and_provenance_warns_of_random_weights(report, page, demo_version):
    threshold = next(s["clip_score"]["min_score"] for s in manifest(demo_version)["recipe"]["stages"]
                     if "clip_score" in s)
    svg = page.find("svg", **{"class": "hist", "data-stage": "clip_score"})
    assert svg
    assert [a["data-threshold"] for a in page.find("line", **{"class": "threshold"})] == [f"{threshold:g}"]
    text = report.read_text()
    assert "region_features ran with RANDOM weights" in text
    assert "vit_features, clip_score ran with demo-domain weights" in text


def test_same_seed_same_bytes_and_bounded_by_the_options(demo_version, report, tmp_path):
    again = write_report(demo_version, tmp_path / "again.html")
    assert Path(again).read_bytes() == report.read_bytes()
    small = Page(Path(write_report(demo_version, tmp_path / "small.html",
                                   ReportOptions(max_shards=1, kept=3, per_reason=1, pairs=1))).read_text())
    figures = [a["data-key"] for t, a in small.elements if t == "figure"]
    kept = [a for t, a in _section_elements(small, "kept") if t == "figure"]
    assert len(kept) == 3
    # one shard read: every sample shown comes from it (a pair's representative may not)
    reps = {a["data-representative"] for a in small.find("div", **{"class": "pair"})}
    assert len({k.split("_")[0] for k in figures if k not in reps}) == 1
    assert report.stat().st_size < 1_000_000


def test_cli_report_default_location_and_bad_input(demo_version, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(demo_version), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"report written: {out}"
    assert out.read_bytes() == Path(write_report(demo_version, tmp_path / "same.html")).read_bytes()
    assert default_out(demo_version) == str(demo_version.parent / f"{demo_version.name}.report.html")
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlcurate: error: version ") and "no such directory" in err and "\n" not in err
    assert not (tmp_path / "missing.report.html").exists()
    (tmp_path / "adir").mkdir()
    assert main(["report", str(demo_version), "--out", str(tmp_path / "adir")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"vlcurate: error: output {tmp_path / 'adir'}: is a directory (name the .html file to write)"
    assert list((tmp_path / "adir").iterdir()) == []


# --- headless Chromium -----------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium; "
                                                             ".ci/run installs it)")


def open_in_chromium(path: Path, profile: Path) -> tuple[str, list[str]]:
    """The DOM after the page's load event, and every console message (a page that
    logs nothing, breaks no policy and raises nothing has none)."""
    run = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", "--dump-dom", path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout, [line for line in run.stderr.splitlines() if ":CONSOLE" in line]


@needs_chromium
def test_chromium_sees_a_broken_page_as_broken(tmp_path):
    """The check below would notice a page that reaches out or fails."""
    bad = tmp_path / "bad.html"
    bad.write_text(f'<!doctype html><meta http-equiv="Content-Security-Policy" content="{CSP}">'
                   '<body><img src="http://127.0.0.1:9/a.png"><script>undefined_function()</script>')
    _, console = open_in_chromium(bad, tmp_path / "profile")
    assert any("Content Security Policy" in line for line in console)
    assert any("undefined_function" in line for line in console)


@needs_chromium
def test_report_opens_in_chromium_with_no_console_message(report, tmp_path):
    dom, console = open_in_chromium(report, tmp_path / "profile")
    assert console == []
    body = re.search(r"<body[^>]*>", dom).group(0)
    images = int(re.search(r'data-images="(\d+)"', body).group(1))  # set by the page's load handler
    assert images == len(Page(report.read_text()).find("img")) > 40
    assert 'data-broken-images="0"' in body
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom


def test_a_version_where_every_download_failed(demo_server, tmp_path):
    """No image, no filter, no score: every section still there, saying so."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.conftest import make_recipe
    from vlcurate.pipelines.build import build
    from vlcurate.recipe import load_recipe

    urls = [f"{demo_server.base_url}/missing/{i}.jpg" for i in range(5)]
    pq.write_table(pa.table({"url": urls, "caption": ["a red square"] * 5, "kind": ["404"] * 5}),
                   tmp_path / "urls.parquet")
    recipe = make_recipe(tmp_path, tmp_path / "urls.parquet", stages=[
        {"download": {"allow_networks": ["127.0.0.0/8"], "retries": 0}}])
    version = Path(build(load_recipe(recipe), log=lambda s: None).version_dir)
    text = Path(write_report(version)).read_text()
    page = Page(text)
    assert [s for s in SECTIONS if page.find("section", id=s)] == list(SECTIONS)
    assert page.find("img") == [] and external_references(text) == []
    assert "No stage recorded scores." in text and "No duplicates in the sampled shards." in text
    row = re.search(r'<tr data-kind="http_error"><td>http_error</td><td class="n">5</td><td><ul>(.*?)</ul>', text)
    assert row and len(re.findall(r'<span class="url">', row.group(1))) == ReportOptions().urls_per_kind
