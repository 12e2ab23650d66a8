"""The compiled walk (vlcurate/interleave/_speedups.c) gives the nodes the Python walk
gives, node for node, on benchmark pages, the sample crawl, generated tag soups and the
image attributes its shortcuts read; where it was not built for the installed
selectolax, the Python walk runs."""

from __future__ import annotations

import random

import pytest

from vlcurate.interleave import extract as extract_module
from vlcurate.interleave.charset import decode_page
from vlcurate.interleave.extract import ImageRef, TextBlock, compiled_walk, compiled_walk_problem, extract

BASE = "https://example.org/dir/page.html"


def both(html: str, url: str = BASE):
    compiled = extract(html, url, compiled=True)
    assert compiled == extract(html, url, compiled=False), url
    return compiled.nodes


def test_the_compiled_walk_is_built():
    # make test builds it (setup.py); a failed build would leave the slow Python walk
    assert compiled_walk() is not None, compiled_walk_problem()


def test_same_nodes_on_benchmark_pages_and_the_sample_crawl(crawl):
    from vlcurate.demo.pages import varied_page

    rng = random.Random(5)
    pages = [(f"/v{i}.html", *varied_page(i, rng)) for i in range(300)]
    pages += [(rec.path, rec.body, rec.content_type) for rec in crawl.records
              if rec.record_type == "response" and rec.content_type.startswith("text/html")]
    images = blocks = 0
    for path, body, content_type in pages:
        nodes = both(decode_page(body, content_type).text, "https://site.example.org" + path)
        images += sum(isinstance(n, ImageRef) for n in nodes)
        blocks += sum(isinstance(n, TextBlock) for n in nodes)
    assert images > 3000 and blocks > 10000  # the comparison covered many of both


# pieces of tag soup: unclosed and stray tags, boilerplate markers, comments, entities,
# whitespace the collapse must treat as str.split does, and <img> attributes on and off
# the compiled shortcut (non-ASCII, dot segments, backslashes, srcset, placeholders)
_TAGS = ["p", "div", "span", "b", "a", "li", "ul", "td", "table", "h2", "section", "nav", "footer", "aside", "script",
         "style", "template", "br", "figure", "figcaption", "x-widget", "svg", "font", "center", "noscript"]
_ATTRS = ['class="nav"', 'class="main-content"', 'id="footer"', 'class="Share_bar"', 'role="navigation"',
          'role="MAIN"', "hidden", 'aria-hidden="TRUE"', 'style="display : none"', 'style="color:red"',
          'class="menu\u00a0x"', 'class="\u017fhare"', 'data-x="1"', 'title="t"']
_IMG_ATTRS = ['src="/a.jpg"', 'src=" /b c.jpg\x0c"', 'src="https://cdn.example.net/x.png#f"', 'src="rel/x.png"',
              'src="../up.png"', 'src="/a/./b.png"', 'src="/back\\slash.png"', 'src="//proto.example.net/p.png"',
              'src="https:///nohost.png"', 'src="http://"', 'src="data:image/gif;base64,R0"',
              'src="/\u00e9t\u00e9.jpg"',
              'src="\u3000/wide.jpg"', 'src', 'src=""', 'data-src="/lazy.jpg"', 'data-lazy-src="/lazy2.jpg"',
              'data-original="/orig.jpg"', 'data-lazy="/l3.jpg"', 'srcset="/s1.jpg 1x, /s2.jpg 2x"',
              'data-srcset="/d.jpg 300w"', 'srcset=""', 'srcset="data:x 2x"', 'alt="An  image\n of\x1ca cat"',
              'alt="\u00a0caf\u00e9\u2003au lait "', 'alt', 'alt=" "', 'width="300px"', 'width="\uff13\uff10\uff10"',
              'height=" 200"', 'height="9999999999999999999"', 'width="\t\n42"', 'class="logo"', 'SRC="/upper.jpg"',
              'src="/first.jpg" src="/second.jpg"', 'src="javascript:void(0)"', 'src="mailto:a@b.org"',
              # srcsets the compiled walk reads, and ones it leaves to _image_ref
              'srcset="/a.jpg 640w, /b.jpg 320w"', 'srcset="/c.jpg 0w, /d.jpg"', 'srcset="/e.jpg 1.5x,/f.jpg 1.50x"',
              'srcset="/g,.jpg 2x, /h.jpg, "', 'srcset="/i.jpg 640w 480h"', 'srcset="/j.jpg .5x, /k.jpg 1e1x"',
              'srcset=",,/l.jpg,,"', 'srcset="/m.jpg 1.x"', 'srcset="data:a 9x, /n.jpg 1x"', 'srcset="/o.jpg 00x"',
              'srcset="/z.jpg 0w"',
              'srcset="/q.jpg 123456789012345678w, /r.jpg 99999999999999w"', 'srcset="/\u00e9.jpg 2x"',
              'srcset="/p.jpg\x1c3x, /p2.jpg 2x"', 'data-srcset="/ds.jpg 2x, /ds1.jpg 1x"', 'srcset="data:x 1x"',
              'srcset="https://cdn.example.net/w.jpg 800w, rel/w.jpg 801w"', 'srcset="/s.jpg 2x, /t.jpg 2.0x"']
_TEXT = ["Words of a paragraph here and there", "caf\u00e9 cr\u00e8me", "\u4eac\u90fd\u306e\u5bfa", "a\x1cb\x1dc",
         "&amp; &lt;tag&gt; &nbsp; x", "\u00a0\u2002spaced\u3000out\u00a0", "\t\n  \r", "\x00nul", "\ufeffbom",
         "<!-- a comment -->", "<![CDATA[ data ]]>", "&#x1F600; &#0; &#xD800;"]


def _soup(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(5, 60)):
        r = rng.random()
        if r < 0.35:
            out.append(rng.choice(_TEXT))
        elif r < 0.55:
            attrs = " ".join(rng.sample(_IMG_ATTRS, rng.randint(0, 4)))
            out.append(f"<img {attrs}>")
        elif r < 0.85:
            tag = rng.choice(_TAGS)
            attrs = " ".join(rng.sample(_ATTRS, rng.randint(0, 2)))
            out.append(f"<{tag} {attrs}>")
        else:
            out.append(f"</{rng.choice(_TAGS)}>")
    head = rng.choice(["", '<base href="/other/">', '<base href="https://b\u00fccher.example/x/">',
                       '<base href="ftp://files.example.org/">', '<base href="https://ho#st.example/">'])
    return f"<html><head>{head}</head><body>{''.join(out)}</body></html>"


def test_same_nodes_on_tag_soups():
    rng = random.Random(11)
    images = 0
    for i in range(3000):
        url = BASE if i % 4 else rng.choice(["https://\u00fcml\u00e4ut.example/p", "http://e.org", "https://e.org/a#b"])
        images += sum(isinstance(n, ImageRef) for n in both(_soup(rng), url))
    assert images > 2000  # unclosed script, style, svg and template tags swallow the rest of many soups


@pytest.mark.parametrize("img,want", [
    ('<img src="/a.jpg" alt=" An\n image " width="300px" height=" 200">',
     ImageRef("https://example.org/a.jpg", "/a.jpg", "An image", 300, 200)),
    ('<img src=" https://cdn.example.net/x.png#frag ">',
     ImageRef("https://cdn.example.net/x.png", "https://cdn.example.net/x.png#frag", None, None, None)),
    ('<img src="data:image/gif;base64,R0" data-src="/lazy.jpg">',
     ImageRef("https://example.org/lazy.jpg", "/lazy.jpg", None, None, None)),
    ('<img src="rel.png" alt="">', ImageRef("https://example.org/dir/rel.png", "rel.png", None, None, None)),
    ('<img src="/x/../y.png" alt=" ">', ImageRef("https://example.org/y.png", "/x/../y.png", "", None, None)),
    ('<img src="/\u00e9t\u00e9.jpg" width="\uff13\uff10\uff10">',
     ImageRef("https://example.org/\u00e9t\u00e9.jpg", "/\u00e9t\u00e9.jpg", None, None, None)),
    ('<img srcset="/z.jpg 0w" src="/s.jpg">',  # a zero width is no candidate
     ImageRef("https://example.org/s.jpg", "/s.jpg", None, None, None)),
    ('<img srcset="/s1.jpg 1x, /s2.jpg 2x" src="/s.jpg">',
     ImageRef("https://example.org/s2.jpg", "/s2.jpg", None, None, None)),
    # no host: not the shortcut's; urljoin takes the page's
    ('<img src="https:///nohost.png">', ImageRef("https://example.org/nohost.png", "https:///nohost.png", None, None,
                                                 None)),
    ('<img src="/big.jpg" width="1234567890123456789">',
     ImageRef("https://example.org/big.jpg", "/big.jpg", None, None, None)),
])
def test_image_attributes(img, want):
    assert both(f"<html><body><p>Some words before it</p>{img}</body></html>") == [
        TextBlock("Some words before it"), want]


def test_an_error_in_a_rule_reaches_the_caller(monkeypatch):
    def broken(attrs: dict) -> bool:
        raise ValueError("a broken rule")

    monkeypatch.setattr(extract_module, "_is_boilerplate", broken)
    with pytest.raises(ValueError, match="a broken rule"):
        extract('<body><p>text</p><div class="x"><p>more</p></div></body>', BASE, compiled=True)


def test_built_for_another_selectolax_the_python_walk_runs(monkeypatch):
    monkeypatch.setattr(extract_module, "version", lambda name: "0.0.1")
    extract_module._compiled.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="built for selectolax .* not the installed 0.0.1"):
            assert compiled_walk() is None
        assert "0.0.1 is installed" in compiled_walk_problem()
        html = "<body><p>one two three four</p><img src='/a.jpg'></body>"
        assert extract(html, BASE).nodes == extract(html, BASE, compiled=False).nodes
        with pytest.raises(RuntimeError, match="no compiled walk"):
            extract(html, BASE, compiled=True)
    finally:
        extract_module._compiled.cache_clear()


def test_a_compiled_walk_that_differs_on_the_probe_page_is_not_used(monkeypatch):
    # as a module built against another Lexbor layout would: the Python walk runs instead
    python_walk = extract_module._walk

    def other_walk(adapter, node, base, nodes):
        python_walk(adapter, node, base, nodes)
        nodes.pop()

    monkeypatch.setattr(extract_module, "_walk", other_walk)
    extract_module._compiled.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="probe page differently"):
            assert compiled_walk() is None
        assert "differs from the Python walk" in compiled_walk_problem()
    finally:
        extract_module._compiled.cache_clear()
