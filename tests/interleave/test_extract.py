"""Charset rules and the DOM walk, as plain functions."""

from __future__ import annotations

import codecs

import pytest

from vlcurate.interleave.charset import decode_page
from vlcurate.interleave.extract import ImageRef, TextBlock, extract
from vlcurate.interleave.image_attrs import best_srcset

JAPANESE = "\u4eac\u90fd\u306e\u53e4\u3044\u5bfa\u3092\u8a2a\u306d\u307e\u3057\u305f\u3002\u685c\u304c\u7f8e\u3057\u3044\u3002"
FRENCH = "Le caf\u00e9 \u201cchez Andr\u00e9\u201d sert des cr\u00eapes d\u00e9licieuses."


def page(text: str, meta: str = "") -> str:
    return f"<html><head>{meta}</head><body><p>{text}</p></body></html>"


def test_a_byte_order_mark_wins_over_every_declaration():
    body = codecs.BOM_UTF8 + page(FRENCH, '<meta charset="shift_jis">').encode()
    got = decode_page(body, "text/html; charset=iso-8859-1")
    assert (got.source, got.charset) == ("bom", "utf-8") and FRENCH in got.text


def test_a_latin_header_on_utf8_bytes_is_refused():
    got = decode_page(page(FRENCH).encode(), "text/html; charset=ISO-8859-1")
    assert got.charset == "utf-8" and FRENCH in got.text


def test_header_and_meta_disagreeing_the_bytes_decide():
    body = page(JAPANESE, '<meta charset="Shift_JIS">').encode("shift_jis")
    got = decode_page(body, "text/html; charset=windows-1252")
    assert (got.source, got.charset) == ("meta", "shift_jis") and JAPANESE in got.text
    # and the other way round: a right header, a wrong <meta>
    body = page(FRENCH, '<meta charset="utf-8">').encode("cp1252")
    got = decode_page(body, "text/html; charset=windows-1252")
    assert got.source == "header" and FRENCH in got.text


@pytest.mark.parametrize("codec", ["cp1252", "shift_jis", "utf-8"])
def test_undeclared_pages_are_detected(codec):
    text = FRENCH * 3 if codec == "cp1252" else JAPANESE * 3
    got = decode_page(page(text).encode(codec), None)
    assert text in got.text


def test_srcset_takes_the_largest_candidate():
    assert best_srcset("a.jpg 320w, b.jpg 1024w, c.jpg 640w") == "b.jpg"
    assert best_srcset("a.jpg, b.jpg 2x") == "b.jpg"
    assert best_srcset("https://x.org/a,b.jpg 100w") == "https://x.org/a,b.jpg"


@pytest.mark.parametrize("parser", ["selectolax", "resiliparse"])
def test_reading_order_base_href_and_boilerplate(parser):
    html = """<html><head><base href="https://cdn.example.org/media/"><meta name="robots" content="noimageai">
    <title>T</title></head><body>
    <div class="site-nav">Home About</div><div id="cookie-consent">Accept cookies</div>
    <article><h1>Title here</h1><p>First <b>bold</b> words.</p>
    <img src="a.png" alt=" An   image "><p hidden>secret</p><p style="display:none">gone</p>
    <p>Second para</p><img src="/abs.png" data-src="https://other.org/real.png"><noscript>no js</noscript>
    <img src="javascript:void(0)"></article><aside>side</aside></body></html>"""
    got = extract(html, "https://example.org/page.html", parser)
    assert got.robots == "noimageai" and got.title == "T" and got.base_url == "https://cdn.example.org/media/"
    assert got.nodes == [
        TextBlock("Title here"), TextBlock("First bold words."),
        ImageRef("https://cdn.example.org/media/a.png", "a.png", "An image", None, None),
        TextBlock("Second para"),
        ImageRef("https://other.org/real.png", "https://other.org/real.png", None, None, None),
        ImageRef(None, "javascript:void(0)", None, None, None),
    ]


def test_both_parsers_agree_on_the_sample_crawl_and_benchmark_pages(crawl):
    import random

    from vlcurate.demo.pages import varied_page

    rng = random.Random(3)
    pages = [(rec.path, rec.body, rec.content_type) for rec in crawl.records
             if rec.record_type == "response" and rec.content_type.startswith("text/html") and len(rec.body) < 10**6]
    pages += [(f"/b{i}.html", *varied_page(i, rng)) for i in range(40)]
    for path, body, content_type in pages:
        text = decode_page(body, content_type).text
        got = extract(text, "https://example.org" + path, "selectolax")
        assert got.nodes, path
        assert got == extract(text, "https://example.org" + path, "resiliparse"), path


def test_deep_nesting_does_not_overflow():
    html = "<div>" * 20000 + "<p>deep text here now</p>" + "</div>" * 10
    for parser in ("selectolax", "resiliparse"):
        assert extract(html, "https://example.org/", parser).nodes == [TextBlock("deep text here now")]


@pytest.mark.parametrize("src,want", [
    ("https://a.org/x.png#frag", "https://a.org/x.png"), ("/x/y.png", "https://b.org/x/y.png"),
    ("//c.org/z.png", "https://c.org/z.png"), ("../up.png", "https://b.org/up.png"), ("/a/../b.png", "https://b.org/b.png"),
    ("rel.png", "https://b.org/dir/rel.png"), ("http://", None), ("mailto:x@y.org", None), ("  /s.png ", "https://b.org/s.png"),
])
def test_url_resolution(src, want):
    from vlcurate.interleave.image_attrs import resolve_url
    from urllib.parse import urljoin

    assert resolve_url("https://b.org/dir/page.html", src) == want
    if want:
        assert want == urljoin("https://b.org/dir/page.html", src.strip()).split("#")[0]


def test_a_page_the_parser_fails_on_is_a_row_not_a_lost_shard(monkeypatch):
    from vlcurate.interleave import stage as stage_module
    from vlcurate.interleave.pages import PageRecord
    from vlcurate.interleave.stage import InterleaveConfig, InterleaveStage
    from vlcurate.pipelines.stage import Layout

    def boom(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(stage_module, "extract", boom)
    stage = InterleaveStage(InterleaveConfig(), Layout("/nowhere"))
    record = PageRecord(7, "response", "https://example.org/", "x.warc.gz", 200, "text/html", body=b"<p>hi</p>")
    out = stage.process_page(0, record, None, {})
    assert (out.page["status"], out.page["reason"]) == ("dropped", "extraction_error")
    assert "RecursionError" in out.page["detail"] and out.document is None


def test_lexbor_tag_ids_classify_nodes_as_their_names_do():
    """The selectolax walk looks a node's kind up by Lexbor's tag id; on a page holding
    every tag the walk names (and custom elements, whose ids are made per document),
    each node's kind by id is its kind by name."""
    from selectolax.lexbor import LexborHTMLParser

    from vlcurate.interleave.extract import BLOCK_TAGS, OTHER, SKIP_TAGS, _kinds_by_name, _Selectolax

    by_name, by_id = _kinds_by_name("-text", "-comment"), _Selectolax.kinds()
    names = sorted(SKIP_TAGS | BLOCK_TAGS | {"img", "span", "a", "x-widget", "my-card"})
    seen = set()
    for html in ("".join(f"<{n}>text<!-- c --></{n}>" for n in names),
                 "".join(f"<div><{n} class='x'>t</{n}></div>" for n in names)):
        for node in LexborHTMLParser(html).root.traverse(include_text=True):
            seen.add(node.tag)
            assert by_id.get(node.tag_id, OTHER) == by_name.get(node.tag, OTHER), node.tag
    assert {"img", "p", "nav", "-text", "-comment", "x-widget"} <= seen
