"""A malformed attribute on one image never loses the page: a bad ``srcset`` candidate
is passed over (the other candidates and ``src`` still count), a bad ``width`` or
``height`` is an unknown size, as if the attribute were missing."""

from __future__ import annotations

import pytest

from vlcurate.interleave.extract import ImageRef, TextBlock, extract
from vlcurate.interleave.image_attrs import best_srcset, srcset_candidates

PARSERS = ("selectolax", "resiliparse")
BASE = "https://example.org/post/"
WORDS = "A long walk along the river brought us to the old mill and its garden."

# descriptors a page may write that are no valid ``w``/``x``/``h`` descriptor
BAD_DESCRIPTORS = [
    ".w", ". w", ".x", "x", "w", "1.2.3x", "1..2x", "abcw", "12abw", "nanx", "NaNw", "infx", "Infinityw", "-1x",
    "-300w", "0w", "1.5w", "1e400x", "9" * 400 + "w", "9" * 5000 + "w", "+2x", "1.x", "2x 3x", "300w 2x",
    "\u00b2x", "\u0663w", "300w foo", "1xx", "1 x",
]


@pytest.mark.parametrize("descriptor", BAD_DESCRIPTORS)
def test_a_malformed_candidate_is_passed_over(descriptor):
    assert srcset_candidates(f"bad.jpg {descriptor}") == []
    # alone it names nothing; beside a good candidate the good one is taken, even a
    # smaller one, and even where the bad one comes last (taken when sizes tie)
    assert best_srcset(f"bad.jpg {descriptor}") is None
    assert best_srcset(f"small.jpg 1x, bad.jpg {descriptor}") == "small.jpg"
    assert best_srcset(f"bad.jpg {descriptor}, small.jpg 10w, tiny.jpg 5w") == "small.jpg"


def test_valid_descriptors_still_count():
    assert srcset_candidates("a.jpg 300w, b.jpg 1.5x, c.jpg .5x, d.jpg 2e1x, e.jpg, f.jpg 0x, g.jpg 640w 480h") == [
        ("a.jpg", 300.0), ("b.jpg", 1.5), ("c.jpg", 0.5), ("d.jpg", 20.0), ("e.jpg", 1.0), ("f.jpg", 0.0),
        ("g.jpg", 640.0)]
    assert srcset_candidates(" a.jpg  300w ,b.jpg\t2x,, ,c.jpg,") == [("a.jpg", 300.0), ("b.jpg", 2.0), ("c.jpg", 1.0)]
    assert srcset_candidates("") == [] and srcset_candidates(" , ,") == []


def _page(images: str) -> str:
    return f"<html><body><article><p>{WORDS}</p>{images}<p>{WORDS}</p></article></body></html>"


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("descriptor", [".w", ". w", "1.2.3x", "abcw", "x", "nanx", "-2x", "9" * 5000 + "w"])
def test_pages_with_malformed_srcsets_keep_their_images(parser, descriptor):
    html = _page(f'<img srcset="/bad.jpg {descriptor}" src="/fallback.jpg" alt="one">'
                 f'<img srcset="/bad.jpg {descriptor}, /good-640.jpg 640w, /good-320.jpg 320w" src="/small.jpg">'
                 f'<img data-srcset="/lazy.jpg {descriptor}" data-src="/lazy-src.jpg" src="data:image/gif;base64,R0">')
    got = extract(html, BASE, parser)
    assert got.nodes == [
        TextBlock(WORDS),
        ImageRef("https://example.org/fallback.jpg", "/fallback.jpg", "one", None, None),
        ImageRef("https://example.org/good-640.jpg", "/good-640.jpg", None, None, None),
        ImageRef("https://example.org/lazy-src.jpg", "/lazy-src.jpg", None, None, None),
        TextBlock(WORDS),
    ]


# widths a page may write: (value, what the walk makes of it)
SIZES = [
    ("\u00b2", None), ("\u00b2\u00b3", None), ("\u2460", None), ("\u0663\u0660\u0660", None), ("\uff13\uff10\uff10", None),
    ("", None), ("  ", None), ("abc", None), ("-300", None), ("+300", None), ("nan", None), ("inf", None),
    (".5", None), ("9" * 5000, None), ("9" * 19, None), ("3\u00b2", 3), ("300px", 300), (" 300 ", 300),
    ("300.7", 300), ("50%", 50), ("0300", 300), ("300", 300), ("123456789012345678", 123456789012345678),
]


@pytest.mark.parametrize("parser", PARSERS)
def test_malformed_sizes_are_unknown(parser):
    images = "".join(f'<img src="/i{i}.jpg" width="{value}" height="{value}">' for i, (value, _) in enumerate(SIZES))
    images += '<img src="/bare.jpg" width height>'  # attributes without a value
    got = extract(_page(images), BASE, parser)
    want = [ImageRef(f"https://example.org/i{i}.jpg", f"/i{i}.jpg", None, size, size)
            for i, (_, size) in enumerate(SIZES)]
    want.append(ImageRef("https://example.org/bare.jpg", "/bare.jpg", None, None, None))
    assert got.nodes == [TextBlock(WORDS), *want, TextBlock(WORDS)]


def test_the_page_becomes_a_document_with_its_images():
    """Through the stage: the page that used to drop as ``extraction_error``."""
    from vlcurate.interleave.pages import PageRecord
    from vlcurate.interleave.stage import InterleaveConfig, InterleaveStage
    from vlcurate.pipelines.stage import Layout

    html = _page('<img srcset="/photo-small.jpg 400w, /photo-broken.jpg . w, /photo-large.jpg 1200w" '
                 'src="/photo.jpg" width="\u00b2" height="600" alt="The mill">'
                 '<img srcset="/garden.jpg 1.2.3x" src="/garden-src.jpg" width="800" height="\u00b3">'
                 '<img src="/river.jpg" width="800" height="NaN">')
    for parser in PARSERS:
        stage = InterleaveStage(InterleaveConfig(parser=parser), Layout("/nowhere"))
        record = PageRecord(7, "response", BASE, "x.warc.gz", 200, "text/html; charset=utf-8", body=html.encode())
        out = stage.process_page(0, record, None, {})
        assert (out.page["status"], out.page.get("reason"), out.page["images"]) == ("document", None, 3), parser
        assert out.document is not None
        assert out.document["images"] == [
            None, "https://example.org/photo-large.jpg", "https://example.org/garden-src.jpg",
            "https://example.org/river.jpg", None]
        assert [row["keep"] for row in out.images] == [True, True, True]


@pytest.mark.parametrize("label", ["undefined", "punycode", "idna", "hex", "rot13", "unicode_escape", "raw-unicode-escape", "utf-7", "nonsense"])
def test_a_charset_label_naming_no_page_encoding_is_passed_over(label):
    """Python codecs that are no page encoding fail to decode with errors of their own
    (``undefined`` and ``punycode`` raise UnicodeError): the label is passed over, as
    an unknown one is, and the page is read from its bytes."""
    from vlcurate.interleave.charset import decode_page

    text = "Le caf\u00e9 \u201cchez Andr\u00e9\u201d sert des cr\u00eapes d\u00e9licieuses. " * 3
    html = f'<html><head><meta charset="{label}"></head><body><p>{text}</p></body></html>'
    for codec in ("utf-8", "cp1252"):
        body = html.encode(codec)
        for got in (decode_page(body, None), decode_page(body, f"text/html; charset={label}")):
            assert text in got.text and got.charset == codec, (codec, got.charset)


def test_a_page_declaring_the_undefined_codec_is_a_document():
    """``decode_page`` runs outside the stage's per-page guard: its error lost the shard."""
    from vlcurate.interleave.pages import PageRecord
    from vlcurate.interleave.stage import InterleaveConfig, InterleaveStage
    from vlcurate.pipelines.stage import Layout

    html = _page('<img src="/mill.jpg" width="640" height="480">').replace(
        "<html>", '<html><head><meta charset="undefined"></head>')
    stage = InterleaveStage(InterleaveConfig(), Layout("/nowhere"))
    record = PageRecord(7, "response", BASE, "x.warc.gz", 200, "text/html; charset=punycode", body=html.encode())
    out = stage.process_page(0, record, None, {})
    assert (out.page["status"], out.page["charset"], out.page["images"]) == ("document", "utf-8", 1)
