"""HTML -> text blocks and images in reading order.

The DOM is walked depth first in document order (iteratively: broken markup nests
deeply). Subtrees that are boilerplate are skipped whole: navigation, headers,
footers, asides, forms, scripts, styles, comments, hidden elements, and elements
whose role, class or id says they are menus, sidebars, cookie banners, share bars or
ads. Text is gathered per block element (paragraph, heading, list item, cell, ...),
whitespace collapsed; an image ends the text before it, so it lands between the
paragraphs it sits between. Image URLs come from ``srcset`` (its largest candidate),
the lazy-loading attributes (``data-srcset``, ``data-src``, ``data-lazy-src``,
``data-original``) or ``src``, in that order, ``data:`` placeholders skipped, and are
resolved against ``<base href>`` (itself resolved against the page URL) or the page
URL.

Two parsers are supported behind one small node interface: selectolax's Lexbor
(the default, chosen by measurement: benchmarks/README.md, Interleaved documents) and
resiliparse's Lexbor binding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

PARSERS = ("selectolax", "resiliparse")
Parser = Literal["selectolax", "resiliparse"]

SKIP_TAGS = frozenset({
    "script", "style", "noscript", "nav", "header", "footer", "aside", "form", "iframe", "svg", "template",
    "button", "select", "textarea", "head", "menu", "object", "embed", "canvas", "video", "audio", "map",
    "dialog", "label", "input", "title", "meta", "link",
})
BLOCK_TAGS = frozenset({
    "p", "div", "section", "article", "main", "h1", "h2", "h3", "h4", "h5", "h6", "li", "ul", "ol", "dl", "dt",
    "dd", "table", "tr", "td", "th", "blockquote", "pre", "figure", "figcaption", "br", "hr", "address", "center",
    "caption", "tbody", "thead", "tfoot", "body", "html", "details", "summary",
})
BOILERPLATE_ROLES = frozenset({"navigation", "banner", "contentinfo", "complementary", "menu", "menubar", "search",
                               "dialog", "alert"})
_BOILERPLATE_NAME = re.compile(
    r"(?:^|[\s_-])(?:nav|navbar|navigation|menu|footer|sidebar|breadcrumbs?|cookies?|consent|share|sharing|social"
    r"|related|advert|advertisement|ads?|sponsored|promo|popup|modal|newsletter|subscribe|skip-link)(?:[\s_-]|$)",
    re.I)
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)
_SPACE = re.compile(r"\s+")
_LAZY_ATTRS = ("data-src", "data-lazy-src", "data-original", "data-lazy")


@dataclass(frozen=True)
class TextBlock:
    text: str


@dataclass(frozen=True)
class ImageRef:
    url: str | None  # absolute http(s) URL, None when none could be made
    src: str  # the attribute value it came from, as written
    alt: str | None
    width: int | None  # declared in the markup
    height: int | None


@dataclass
class Extracted:
    nodes: list[TextBlock | ImageRef] = field(default_factory=list)
    robots: str | None = None  # <meta name="robots"> content
    title: str | None = None
    base_url: str | None = None  # what relative URLs were resolved against


# --- parser adapters: first_child / next / kind / attr / text ---------------------

class _Selectolax:
    @staticmethod
    def parse(html: str) -> Any:
        from selectolax.lexbor import LexborHTMLParser

        return LexborHTMLParser(html)

    @staticmethod
    def head_body(tree: Any) -> tuple[Any, Any]:
        return tree.head, tree.body

    @staticmethod
    def first_child(node: Any) -> Any:
        return node.child

    @staticmethod
    def next(node: Any) -> Any:
        return node.next

    @staticmethod
    def kind(node: Any) -> str:
        return node.tag  # '-text', '-comment' or the element name

    TEXT, COMMENT = "-text", "-comment"

    @staticmethod
    def attrs(node: Any) -> dict:
        return node.attributes

    @staticmethod
    def text(node: Any) -> str:
        return node.text_content or ""


class _Resiliparse:
    @staticmethod
    def parse(html: str) -> Any:
        from resiliparse.parse.html import HTMLTree

        return HTMLTree.parse(html)

    @staticmethod
    def head_body(tree: Any) -> tuple[Any, Any]:
        return tree.head, tree.body

    @staticmethod
    def first_child(node: Any) -> Any:
        return node.first_child

    @staticmethod
    def next(node: Any) -> Any:
        return node.next

    @staticmethod
    def kind(node: Any) -> str:
        return node.tag  # '#text', '#comment' or the element name

    TEXT, COMMENT = "#text", "#comment"

    @staticmethod
    def attrs(node: Any) -> dict:
        return {name: node.getattr(name) for name in node.attrs}

    @staticmethod
    def text(node: Any) -> str:
        return node.text or ""


_ADAPTERS = {"selectolax": _Selectolax, "resiliparse": _Resiliparse}


def _int(value: str | None) -> int | None:
    if not value:
        return None
    if value.isdigit():
        return int(value)
    m = re.match(r"\s*(\d+)", value)
    return int(m.group(1)) if m else None


_BOILERPLATE_KEYS = frozenset({"hidden", "aria-hidden", "style", "role", "class", "id"})


def _lexbor_text(node: Any) -> str:
    return node.text_content or ""


def _is_boilerplate(attrs: dict) -> bool:
    if "hidden" in attrs or (attrs.get("aria-hidden") or "").lower() == "true":
        return True
    if _HIDDEN_STYLE.search(attrs.get("style") or ""):
        return True
    if (attrs.get("role") or "").lower() in BOILERPLATE_ROLES:
        return True
    names = f"{attrs.get('class') or ''} {attrs.get('id') or ''}"
    return bool(names.strip()) and bool(_BOILERPLATE_NAME.search(names))


def srcset_candidates(srcset: str) -> list[tuple[str, float]]:
    """``(url, size)`` of each candidate, parsed as the HTML standard says: a URL runs to
    whitespace (commas inside it stay; trailing ones end it), then descriptors to the
    next comma; size is the ``w`` or ``x`` value, 1 when there is none."""
    out, i, n = [], 0, len(srcset)
    while i < n:
        while i < n and (srcset[i].isspace() or srcset[i] == ","):
            i += 1
        j = i
        while j < n and not srcset[j].isspace():
            j += 1
        url = srcset[i:j]
        i = j
        descriptor = ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            k = srcset.find(",", i)
            k = n if k < 0 else k
            descriptor, i = srcset[i:k].strip(), k + 1
        if not url:
            continue
        m = re.match(r"([\d.]+)[wx]$", descriptor.split()[0]) if descriptor else None
        out.append((url, float(m.group(1)) if m else 1.0))
    return out


def best_srcset(srcset: str) -> str | None:
    """The largest candidate of a ``srcset`` (by its ``w`` or ``x`` descriptor; the last
    of equals), or None when it names none."""
    best, best_size = None, -1.0
    for url, size in srcset_candidates(srcset):
        if size >= best_size:
            best, best_size = url, size
    return best


def image_source(attrs: dict) -> str | None:
    """The attribute value naming the image: srcset's largest, lazy-loading attributes,
    then ``src``; ``data:`` placeholders are passed over."""
    for name in ("srcset", "data-srcset"):
        if (value := attrs.get(name)) and (url := best_srcset(value)) and not url.startswith("data:"):
            return url
    for name in (*_LAZY_ATTRS, "src"):
        value = (attrs.get(name) or "").strip()
        if value and not value.startswith("data:"):
            return value
    return None


def resolve_url(base: str, src: str) -> str | None:
    """``src`` resolved against ``base``: an absolute http(s) URL without its fragment,
    or None. Absolute and root-relative sources without dot segments or backslashes
    (most of them) take a shortcut that gives what ``urljoin`` gives."""
    src = src.strip()
    if "/." not in src and "\\" not in src:
        if src.startswith(("https://", "http://")):
            if src.split("/", 3)[2]:
                return src.split("#", 1)[0]
        elif src.startswith("/") and not src.startswith("//") and base.startswith(("https://", "http://")):
            origin = "/".join(base.split("/", 3)[:3])
            if len(origin) > len("https://"):
                return (origin + src).split("#", 1)[0]
    try:
        url = urljoin(base, src)
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return url.split("#", 1)[0]


def _head_info(adapter: Any, head: Any, page_url: str) -> tuple[str, str | None, str | None]:
    base, robots, title = page_url, None, None
    node = adapter.first_child(head) if head is not None else None
    while node is not None:
        tag = adapter.kind(node)
        if tag == "base" and base == page_url and (href := adapter.attrs(node).get("href")):
            base = resolve_url(page_url, href) or page_url
        elif tag == "meta":
            attrs = adapter.attrs(node)
            if (attrs.get("name") or "").lower() == "robots":
                robots = ", ".join(filter(None, [robots, attrs.get("content") or ""]))
        elif tag == "title" and title is None:
            child = adapter.first_child(node)
            title = _SPACE.sub(" ", adapter.text(child)).strip() if child is not None else None
        node = adapter.next(node)
    return base, robots, title


def extract(html: str, page_url: str, parser: Parser = "selectolax") -> Extracted:
    """Text blocks and images of ``html`` in reading order (see the module doc).

    One walk for both parsers, through the adapters; with selectolax the node
    accessors are bound directly (the walk is where the time goes: benchmarks/README.md).
    A variant that did the boilerplate removal, image and block markers and the text
    in Lexbor's C code (css queries, ``insert_before``/``after``, one ``text()`` call)
    was measured 15% slower than this walk and removed."""
    adapter = _ADAPTERS[parser]
    tree = adapter.parse(html)
    head, body = adapter.head_body(tree)
    base, robots, title = _head_info(adapter, head, page_url)
    out = Extracted(robots=robots, title=title, base_url=base)
    if body is None:
        return out
    text_kind, comment_kind = adapter.TEXT, adapter.COMMENT
    first_child, nxt, kind, attrs_of, text_of = (adapter.first_child, adapter.next, adapter.kind, adapter.attrs,
                                                 adapter.text)
    if parser == "selectolax":  # the same accessors without a Python call each
        first_child, nxt, kind, attrs_of, text_of = (attrgetter("child"), attrgetter("next"), attrgetter("tag"),
                                                     attrgetter("attributes"), _lexbor_text)
    parts: list[str] = []
    nodes = out.nodes

    def flush() -> None:
        if parts:
            text = " ".join("".join(parts).split())
            parts.clear()
            if text:
                nodes.append(TextBlock(text))

    # A stack of nodes to visit; None marks the end of a block element's subtree.
    stack: list[Any] = [body]
    while stack:
        node = stack.pop()
        if node is None:
            flush()
            continue
        tag = kind(node)
        if tag == text_kind:
            parts.append(text_of(node))
            continue
        if tag == comment_kind or tag in SKIP_TAGS:
            continue
        attrs = attrs_of(node)
        if attrs and node is not body and not _BOILERPLATE_KEYS.isdisjoint(attrs) and _is_boilerplate(attrs):
            continue
        if tag == "img":
            src = image_source(attrs)
            if src is None:
                continue
            flush()
            alt = attrs.get("alt")
            nodes.append(ImageRef(resolve_url(base, src), src, _SPACE.sub(" ", alt).strip() if alt else None,
                                  _int(attrs.get("width")), _int(attrs.get("height"))))
            continue
        block = tag in BLOCK_TAGS
        if block:
            flush()
            stack.append(None)
        children = []
        child = first_child(node)
        while child is not None:
            children.append(child)
            child = nxt(child)
        stack.extend(reversed(children))
    flush()
    return out


def bare_text(html: str, parser: Parser = "selectolax") -> str:
    """The benchmark's floor: parse, remove script/style/nav, take the text."""
    if parser == "selectolax":
        tree = _Selectolax.parse(html)
        tree.strip_tags(["script", "style", "nav"])
        return tree.body.text(separator=" ") if tree.body is not None else ""
    tree = _Resiliparse.parse(html)
    for node in tree.body.query_selector_all("script, style, nav") if tree.body is not None else []:
        node.decompose()
    return tree.body.text if tree.body is not None else ""
