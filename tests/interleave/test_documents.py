"""The OBELICS row and the image rules' URL path, against what the json module and
urllib write for them."""

from __future__ import annotations

import json
import random
from urllib.parse import urlsplit

import pytest

from vlcurate.interleave.charset import decode_page
from vlcurate.interleave.documents import Document, DocumentRules, _path, obelics_row, select_nodes
from vlcurate.interleave.extract import ImageRef, TextBlock, extract


def _metadata(doc: Document, general: dict, keys: list[str]) -> list[dict | None]:
    """One dict per position, None at text positions: what the row's metadata says."""
    out: list[dict | None] = []
    keys_left = iter(keys)
    for node in doc.nodes:
        if isinstance(node, TextBlock):
            if not out or out[-1] is not None:
                out.append(None)
        else:
            out.append({"document_url": general.get("url"), "unformatted_src": node.src, "src": node.url,
                        "alt_text": node.alt, "declared_width": node.width, "declared_height": node.height,
                        "image_key": next(keys_left)})
    return out


def _check(doc: Document, general: dict, keys: list[str]) -> None:
    row = obelics_row("k", doc, general, keys)
    assert row["metadata"] == json.dumps(_metadata(doc, general, keys), ensure_ascii=False, sort_keys=True)
    assert row["general_metadata"] == json.dumps(general, ensure_ascii=False, sort_keys=True)
    assert len(row["texts"]) == len(row["images"]) == len(json.loads(row["metadata"]))
    assert all((t is None) != (i is None) for t, i in zip(row["texts"], row["images"]))


def test_metadata_is_what_the_json_module_writes_on_benchmark_pages():
    from vlcurate.demo.pages import varied_page

    rng = random.Random(8)
    for i in range(200):
        body, content_type = varied_page(i, rng)
        url = f"https://site.example.org/a/{i}.html"
        extracted = extract(decode_page(body, content_type).text, url)
        doc, outcomes = select_nodes(extracted.nodes, DocumentRules(), None, {})
        _check(doc, {"url": url, "title": extracted.title}, [f"k_{o.index:03d}" for o in outcomes if o.keep])


@pytest.mark.parametrize("general", [{"url": None}, {"url": 'https://\u00e9.example/"q"\\'}, {}])
def test_metadata_with_characters_json_escapes(general):
    doc = Document([TextBlock("a"), TextBlock("b"),
                    ImageRef('https://x.org/\u00e9"\\\n\u2028\x7f', "s\x00\ud800", 'alt "q" \u00e9\t', 0, 10**20),
                    ImageRef("https://x.org/2.png", "/2.png", None, None, 640), TextBlock("c")])
    _check(doc, general, ["k\u00e9\n", '"'])
    _check(Document([]), general, [])


@pytest.mark.parametrize("url", [
    "https://a.org", "https://a.org/", "https://a.org/p/q.png", "https://a.org?x=/y", "https://a.org/p?q#f",
    "https://a.org#f/x", "https://a.org/a#b?c/d", "http://user@h:80/a/b.ico?x", "https://a.org/\u00e9/logo.png",
    "https://a.org//double/slash.png", "https://a.org/x;param.png",
])
def test_path_is_urlsplits(url):
    assert _path(url) == urlsplit(url).path


def test_plain_image_passes_only_what_image_problem_passes():
    """The compiled filter (``_speedups.plain_image``) says True only for images
    ``image_problem`` keeps; images it leaves are judged in Python."""
    from vlcurate.interleave.documents import _FURNITURE_WORDS, _plain_image, image_problem

    assert _plain_image is not None, "make test builds vlcurate.interleave._speedups"
    rng = random.Random(4)
    words = ["photo", "ICON", "icons", "Logo", "pixel", "1x1", "trackinG", "track", "clearance", "cleared",
             "\u00e9t\u00e9",
             "sprite3", "x", "emoji_", "placeholders", "a.b", "Button", "SPACER", "", "bullets"]
    seps = ["/", "_", "-", ".", "", "%2F", "?", "#", "?x=/", "//"]
    ends = ["", ".jpg", ".SVG", ".ico", ".Cur", ".png?v=1", ".svg#x", "/", ".webp"]
    sizes = [None, 0, 1, 2, 3, 149, 150, 151, 300, 301, 600, 601, 20000, 20001, 10**18, 2**53 + 1]
    rule_sets = [DocumentRules(), DocumentRules(min_image_size=1, max_aspect_ratio=1.0),
                 DocumentRules(min_image_size=300, max_image_size=600, max_aspect_ratio=2.5)]
    passed = 0
    for _ in range(20000):
        path = "".join(rng.choice(seps) + rng.choice(words) for _ in range(rng.randint(0, 4))) + rng.choice(ends)
        url = rng.choice(["https://h.example.org", "http://cdn.x.net:8080", "https://a.org?q=1", "https://"]) + path
        image = ImageRef(rng.choice([url, url, None]), "s", None, rng.choice(sizes), rng.choice(sizes))
        rules = rng.choice(rule_sets)
        if _plain_image(image.url, image.width, image.height, rules.min_image_size, rules.max_image_size,
                        rules.max_aspect_ratio, _FURNITURE_WORDS):
            passed += 1
            assert image_problem(image, rules) is None, (image, rules)
    assert passed > 1000  # and it does pass many


def test_plain_image_passes_most_images_of_benchmark_pages():
    from vlcurate.demo.pages import varied_page
    from vlcurate.interleave.documents import _FURNITURE_WORDS, _plain_image, image_problem

    rng = random.Random(9)
    images = [n for i in range(100) for n in extract(decode_page(*varied_page(i, rng)).text, "https://s.org/a/").nodes
              if isinstance(n, ImageRef)]
    rules = DocumentRules()
    plain = [_plain_image(i.url, i.width, i.height, rules.min_image_size, rules.max_image_size,
                          rules.max_aspect_ratio, _FURNITURE_WORDS) for i in images]
    assert sum(plain) > 0.7 * len(images)
    assert all(image_problem(i, rules) is None for i, p in zip(images, plain) if p)
