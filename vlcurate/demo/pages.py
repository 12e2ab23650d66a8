"""The embedded sample crawl: web pages written into a WARC (warcio), and the images they
show, for the interleaved demo and the tests.

The pages cover what real crawls hold: normal articles with navigation, footers,
asides, scripts, cookie banners, tracking pixels and icons around the content; lazy
images and ``srcset``; relative URLs and ``<base href>``; broken markup; pages in
windows-1252 and Shift_JIS, with header and ``<meta>`` disagreeing, and a UTF-8 page
served as ISO-8859-1; a page without images; images that 404; a PDF; HTTP errors;
two captures of one URL; opt-outs; a very large page; request, metadata and revisit
records; and a record cut off at the end of the file.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field

from vlcurate.demo.corpus import Served


@dataclass(frozen=True)
class CrawlRecord:
    path: str  # URL path on the served host
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    record_type: str = "response"  # response | revisit | request | metadata


@dataclass(frozen=True)
class Crawl:
    records: list[CrawlRecord]
    images: dict[str, Served] = field(default_factory=dict)  # path -> served image


def _png(width: int, height: int, seed: int) -> bytes:
    from PIL import Image

    img = Image.new("RGB", (width, height), ((seed * 67) % 256, (seed * 131) % 256, (seed * 29) % 256))
    for x in range(0, width, 16):  # some structure, so images differ beyond their colour
        for y in range(0, height, 16):
            if (x // 16 + y // 16 + seed) % 3 == 0:
                img.paste((255 - (seed * 67) % 256, 80, 160), (x, y, min(width, x + 8), min(height, y + 8)))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


CHROME_TOP = """<header class="site-header"><a href="/">Home</a> | Subscribe to our newsletter today</header>
<nav><ul><li><a href="/a">World news</a></li><li><a href="/b">Sport pages</a></li></ul></nav>
<div class="cookie-banner">We use cookies to improve your experience on this site.</div>
<img src="/static/pixel.gif" width="1" height="1" alt="">
<img src="/static/logo.png" width="40" height="40" alt="Site logo">"""
CHROME_BOTTOM = """<aside class="sidebar"><h3>Related stories</h3><p>Ten other things you will click on now.</p></aside>
<footer>Copyright 2026 Example Media. All rights reserved worldwide.</footer>
<script>var tracker = "do not leak this script text";</script>
<!-- a comment that must not appear in documents -->"""


def _page(title: str, body: str, head: str = "", charset: str = "utf-8") -> str:
    return (f"<!DOCTYPE html><html><head><meta charset=\"{charset}\"><title>{title}</title>{head}"
            f"<style>body {{ color: red }}</style></head><body>{CHROME_TOP}<main>{body}</main>"
            f"{CHROME_BOTTOM}</body></html>")


IMAGE_NAMES = ("bread", "oven", "loaf", "garden", "tomato", "river", "bridge", "boat", "kyoto", "cafe", "market",
               "lazy1", "lazy2", "wide", "big-loaf")
SHAPES_SEED = 14_014  # the demo-domain images of /shapes.html (the demo corpus uses seed 0)


def shape_images() -> list:
    """Four demo-domain images (what the shipped CLIP knows): the first three are
    described on /shapes.html, the fourth is not."""
    from vlcurate.demo.domain import samples

    return samples(4, SHAPES_SEED)


def _shapes_page(shapes: list) -> bytes:
    a, b, c, d = shapes
    return _page("Shapes", f"""
<h2>Shapes we drew this week for the gallery</h2>
<img src="/img/shape-0.{a.fmt.lower()}" alt="first">
<p>We drew these pictures with a ruler and a compass. {c.caption.capitalize()}.</p>
<img src="/img/shape-1.{b.fmt.lower()}" alt="second">
<p>{a.caption.capitalize()}. It took the longest of all to draw.</p>
<img src="/img/shape-2.{c.fmt.lower()}" alt="third">
<img src="/img/shape-3.{d.fmt.lower()}" alt="fourth">
<p>{b.caption.capitalize()}. That one was the easiest.</p>""").encode()


def crawl() -> Crawl:
    """The sample crawl's records (paths only: the WARC writer adds the host)."""
    images = {f"/img/{name}.png": Served(200, "image/png", _png(480 if name == "big-loaf" else 320,
                                                                360 if name == "big-loaf" else 240, i))
              for i, name in enumerate(IMAGE_NAMES)}
    shapes = shape_images()
    for i, shape in enumerate(shapes):
        images[f"/img/shape-{i}.{shape.fmt.lower()}"] = Served(200, f"image/{shape.fmt.lower()}", shape.body)
    r = []
    r.append(CrawlRecord("/shapes.html", _shapes_page(shapes)))
    r.append(CrawlRecord("/articles/bread.html", _page("Baking bread", """
<h1>Baking bread at home</h1>
<p>Good bread needs flour, water, salt and a lot of patience from the baker.</p>
<figure><img src="/img/bread.png" width="320" height="240" alt="A round loaf"><figcaption>A round loaf cooling on the rack.</figcaption></figure>
<p>Knead the dough for ten minutes until it feels smooth and elastic.</p>
<img src="/img/oven.png" alt="The oven">
<p>Bake it in a very hot oven for about forty minutes.</p>
<img src="/static/icons/share-twitter.png" alt="share">""").encode()))
    r.append(CrawlRecord("/articles/garden.html", _page("Garden", """
<h2>Growing tomatoes in a small garden</h2>
<p>Tomatoes love sun, warm soil and regular watering through the summer.</p>
<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" data-src="/img/garden.png" alt="The garden">
<p>Stake the plants early so that the stems do not break under the fruit.</p>
<img src="/img/placeholder.gif" data-srcset="/img/tomato.png 320w" alt="Ripe tomatoes">
<p>Pick the fruit when it is deep red and slightly soft to the touch.</p>
<picture><img srcset="/img/loaf.png 1x, /img/big-loaf.png 2x" src="/img/loaf.png" alt="A loaf"></picture>
<p>Share the harvest with your neighbours, they will thank you for it.</p>""").encode()))
    r.append(CrawlRecord("/travel/bridges/index.html", _page("Bridges", """
<p>The old stone bridge crosses the river just below the town walls.</p>
<img src="../../img/bridge.png" alt="Stone bridge">
<p>Boats pass under its arches every morning on their way to the market.</p>
<img src="boat.png" alt="A boat">""", head='<base href="/img/">').encode()))
    r.append(CrawlRecord("/broken.html", b"""<html><body><div><p>This page has broken markup with tags that never close
<p>A second paragraph starts before the first one closed <b>bold <i>and italic</b> text</i>
<img src="/img/river.png" alt="River"><div><div><span>Deeply nested text that still reads fine here.
</table></td> stray closing tags do not stop the parser from going on.
<p>The end of the page comes without any closing html tag at all"""))
    r.append(CrawlRecord("/cafe-1252.html", _page("Caf\u00e9", """
<p>Le caf\u00e9 \u201cchez Andr\u00e9\u201d sert des cr\u00eapes d\u00e9licieuses chaque matin.</p>
<img src="/img/cafe.png" alt="Caf\u00e9 terrace">
<p>On y parle fran\u00e7ais, et les g\u00e2teaux sont faits maison.</p>""", charset="windows-1252")
                         .encode("cp1252"), "text/html; charset=windows-1252"))
    r.append(CrawlRecord("/kyoto-sjis.html", _page("\u4eac\u90fd", """
<p>\u4eac\u90fd\u306e\u53e4\u3044\u5bfa\u3092\u8a2a\u306d\u307e\u3057\u305f \u6625\u306e\u685c\u304c\u3068\u3066\u3082\u7f8e\u3057\u304b\u3063\u305f\u3067\u3059 \u307e\u305f\u884c\u304d\u305f\u3044 \u3068\u601d\u3044\u307e\u3059</p>
<img src="/img/kyoto.png" alt="\u4eac\u90fd\u306e\u5bfa">
<p>\u304a\u8336 \u3068 \u548c\u83d3\u5b50 \u3092 \u3044\u305f\u3060\u304d \u307e\u3057\u305f \u3068\u3066\u3082 \u304a\u3044\u3057\u304b\u3063\u305f</p>""",
                                                      charset="Shift_JIS").encode("shift_jis"),
                         "text/html; charset=windows-1252"))  # the header is wrong, the <meta> right
    r.append(CrawlRecord("/market-utf8.html", _page("Market", """
<p>The market sells jam\u00f3n, cr\u00e8me fra\u00eeche and \u00e5kerb\u00e6r every Saturday morning.</p>
<img src="/img/market.png" alt="Market stalls">""").encode(), "text/html; charset=ISO-8859-1"))
    r.append(CrawlRecord("/no-images.html", _page("Words only", """
<p>This page has plenty of words in it but not a single picture anywhere.</p>
<p>So it cannot become an interleaved document and is dropped with its reason.</p>""").encode()))
    r.append(CrawlRecord("/missing-images.html", _page("Missing", """
<p>The images of this page are gone from the server and answer with not found.</p>
<img src="/img/gone-1.png" alt="Gone">
<p>Documents keep them until the download stage finds out that they are missing.</p>
<img src="/img/gone-2.png" alt="Also gone">""").encode()))
    r.append(CrawlRecord("/report.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", "application/pdf"))
    r.append(CrawlRecord("/server-error.html", b"<html><body>Internal error</body></html>", status=500))
    r.append(CrawlRecord("/not-found.html", b"<html><body>Not found</body></html>", status=404))
    lazy = _page("Lazy", """
<p>A page captured twice by the crawler: only its first capture becomes a document.</p>
<img data-src="/img/lazy1.png" alt="First lazy image">
<p>Lazy loading puts the real address in a data attribute instead of the source.</p>
<img data-lazy-src="/img/lazy2.png" src="/img/spacer.gif" alt="Second lazy image">""").encode()
    r.append(CrawlRecord("/lazy.html", lazy))
    r.append(CrawlRecord("/lazy.html", lazy.replace(b"twice", b"again")))  # the second capture
    r.append(CrawlRecord("/lazy.html", b"", record_type="revisit"))
    r.append(CrawlRecord("/lazy.html", b"", record_type="request"))
    r.append(CrawlRecord("/noai.html", _page("No AI", """
<p>The author of this page does not want it used to train models at all.</p>
<img src="/img/wide.png" alt="Wide">""", head='<meta name="robots" content="noai, noimageai">').encode()))
    r.append(CrawlRecord("/noimageai.html", _page("No images for AI", """
<p>The text of this page may be used, but its images may not be used for training.</p>
<img src="/img/boat.png" alt="Boat">""").encode(), headers=(("X-Robots-Tag", "noimageai"),)))
    big = "".join(f"<p>Paragraph {i} of a very large page that goes on and on for many megabytes of text.</p>\n"
                  for i in range(70000))
    r.append(CrawlRecord("/huge.html", _page("Huge", big + '<img src="/img/river.png">').encode()))
    r.append(CrawlRecord("/lazy.html", b"crawl metadata: fetched twice", "application/json",
                         record_type="metadata"))
    return Crawl(r, images)


def write_warc(records: list[CrawlRecord], base_url: str, gzip: bool = True, truncate_last: bool = False) -> bytes:
    """The records as WARC bytes (gzip members per record when ``gzip``). With
    ``truncate_last`` a further response record is appended cut off mid-payload, as a
    crawl killed while writing leaves it."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    import uuid

    def fixed(i: int, url: str) -> dict[str, str]:
        """Record id and date fixed by position and URL, so the same records give the same bytes."""
        return {"WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{i}:{url}')}>",
                "WARC-Date": "2026-01-01T00:00:00Z"}

    out = io.BytesIO()
    writer = WARCWriter(out, gzip=gzip)
    writer.write_record(writer.create_warc_record("", "warcinfo", payload=io.BytesIO(b"software: vlcurate demo\r\n"),
                                                  warc_content_type="application/warc-fields",
                                                  warc_headers_dict=fixed(-1, "warcinfo")))
    for i, rec in enumerate(records):
        url = base_url + rec.path
        head = fixed(i, url)
        if rec.record_type == "response":
            headers = [("Content-Type", rec.content_type), ("Content-Length", str(len(rec.body))), *rec.headers]
            reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}.get(rec.status, "Status")
            http = StatusAndHeaders(f"{rec.status} {reason}", headers, protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(rec.body),
                                                          http_headers=http, warc_headers_dict=head))
        elif rec.record_type == "request":
            http = StatusAndHeaders(f"GET {rec.path} HTTP/1.1", [("Host", base_url.split("//")[1])],
                                    is_http_request=True)
            writer.write_record(writer.create_warc_record(url, "request", payload=io.BytesIO(b""), http_headers=http,
                                                          warc_headers_dict=head))
        elif rec.record_type == "revisit":
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
            writer.write_record(writer.create_revisit_record(url, "sha1:AAAA", url, "2026-01-01T00:00:00Z",
                                                             http_headers=http, warc_headers_dict=head))
        else:
            writer.write_record(writer.create_warc_record(url, rec.record_type, payload=io.BytesIO(rec.body),
                                                          warc_content_type=rec.content_type, warc_headers_dict=head))
    data = out.getvalue()
    if truncate_last:
        tail = io.BytesIO()
        WARCWriter(tail, gzip=gzip).write_record(WARCWriter(tail, gzip=gzip).create_warc_record(
            base_url + "/cut-off.html", "response", payload=io.BytesIO(b"<html><body>" + b"x" * 5000),
            http_headers=StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1"),
            warc_headers_dict=fixed(len(records), base_url + "/cut-off.html")))
        data += tail.getvalue()[: len(tail.getvalue()) // 2]
    return data


def served_files(c: Crawl) -> dict[str, Served]:
    """What the loopback server answers: the pages as crawled and the images (the
    images of ``/missing-images.html`` answer 404)."""
    files = dict(c.images)
    for rec in c.records:
        if rec.record_type == "response":
            files.setdefault(rec.path, Served(rec.status, rec.content_type, rec.body))
    return files


WORDS = ("river bridge boat market bread garden tomato city train station museum painting music concert "
         "mountain lake forest village harbour island festival kitchen recipe oven flour coffee tea school "
         "library book author history science planet engine bicycle street window door garden light").split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def varied_page(i: int, rng: random.Random) -> tuple[bytes, str]:
    """A generated page of ~7 KB (article, navigation, footer, aside, script, lists,
    tables, figures, lazy images, srcset, a tracking pixel, an icon; every tenth in
    windows-1252) and its content type: the benchmark's pages."""
    parts = [f"<header class='site-header'><a href='/'>Site {i % 17}</a> {sentence(rng, 6)}</header>",
             "<nav><ul>" + "".join(f"<li><a href='/s{j}'>{rng.choice(WORDS)}</a></li>" for j in range(12)) +
             "</ul></nav>", "<div class='cookie-banner'>We use cookies on this site.</div>",
             "<img src='/t/pixel.gif' width='1' height='1'>", "<img src='/static/logo.png' width='40' height='40'>",
             "<main><article>", f"<h1>{sentence(rng, 7)}</h1>"]
    for j in range(rng.randint(18, 28)):
        parts.append(f"<p>{' '.join(sentence(rng, rng.randint(6, 16)) for _ in range(rng.randint(1, 3)))}</p>")
        kind = rng.random()
        if kind < 0.25:
            parts.append(f"<figure><img src='/img/{i}-{j}.jpg' width='640' height='480' alt='{sentence(rng, 4)}'>"
                         f"<figcaption>{sentence(rng, 8)}</figcaption></figure>")
        elif kind < 0.4:
            parts.append(f"<img data-src='/img/{i}-{j}.jpg' src='data:image/gif;base64,R0lGOD' alt='lazy'>")
        elif kind < 0.5:
            parts.append(f"<img srcset='/img/{i}-{j}-s.jpg 320w, /img/{i}-{j}-l.jpg 1024w' src='/img/{i}-{j}.jpg'>")
        elif kind < 0.6:
            parts.append("<ul>" + "".join(f"<li>{sentence(rng, 6)}</li>" for _ in range(4)) + "</ul>")
        elif kind < 0.65:
            parts.append("<table>" + "".join(f"<tr><td>{rng.choice(WORDS)}</td><td>{rng.randint(1, 99)}</td></tr>"
                                             for _ in range(5)) + "</table>")
    parts += ["</article></main>", f"<aside class='sidebar'><h3>Related</h3><p>{sentence(rng, 12)}</p></aside>",
              f"<footer><p>Copyright {2000 + i % 26}. {sentence(rng, 10)}</p></footer>",
              "<script>window.dataLayer = window.dataLayer || []; function gtag(){dataLayer.push(arguments);}</script>",
              "<style>.x { color: red } .y { margin: 0 }</style><!-- generated -->"]
    body = "".join(parts)
    encoding = "utf-8" if i % 10 else "windows-1252"
    html = (f"<!DOCTYPE html><html><head><meta charset='{encoding}'><title>{sentence(rng, 5)}</title>"
            f"<link rel='stylesheet' href='/s.css'></head><body>{body}</body></html>")
    if encoding == "windows-1252":
        html = html.replace("river", "rivi\u00e8re")
    return html.encode("cp1252" if encoding == "windows-1252" else "utf-8"), f"text/html; charset={encoding}"
