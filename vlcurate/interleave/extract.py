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
resiliparse's Lexbor binding. With selectolax the walk runs compiled (``_speedups.c``)
where that module was built for the installed selectolax release, and in Python
otherwise; both give the same nodes (tests/interleave/test_compiled_walk.py).
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass, field
from importlib.metadata import version
from operator import attrgetter
from typing import Any, Literal

from vlcurate.interleave.image_attrs import declared_size, image_source, resolve_url

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


# The extraction's value types are made for every block and image of every page: not
# frozen, since a frozen dataclass's __init__ costs several times a plain one with slots
# (benchmarks/README.md, Interleaved documents). Nothing changes them after they are made.
@dataclass(slots=True)
class TextBlock:
    text: str


@dataclass(slots=True)
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


# --- parser adapters ---------------------------------------------------------------
# Each gives the walk the parse, the node accessors (C-level property getters where the
# binding has them, so reading a node costs no Python call of ours) and ``kinds``: what
# the walk does with a node, looked up by ``key(node)``.

OTHER, TEXT, SKIP, IMAGE, BLOCK = range(5)


def _kinds_by_name(text: str, comment: str) -> dict[str, int]:
    return {**dict.fromkeys(SKIP_TAGS, SKIP), **dict.fromkeys(BLOCK_TAGS, BLOCK), "img": IMAGE, text: TEXT,
            comment: SKIP}


class _Selectolax:
    first_child, next, attrs = attrgetter("first_child"), attrgetter("next"), attrgetter("attributes")
    key = attrgetter("tag_id")  # Lexbor's number of the tag: no name string is made per node
    _kinds: dict[int, int] | None = None

    @staticmethod
    def parse(html: str) -> Any:
        from selectolax.lexbor import LexborHTMLParser

        return LexborHTMLParser(html)

    @staticmethod
    def head_body(tree: Any) -> tuple[Any, Any]:
        return tree.head, tree.body

    text = attrgetter("text_content")  # None for an empty text node

    @staticmethod
    def tag(node: Any) -> str | None:
        return node.tag

    @classmethod
    def kinds(cls) -> dict[int, int]:
        """By tag id. Lexbor's ids of the standard tags are fixed; other elements get
        ids of their own per document, which are none of these (so ``OTHER``)."""
        if cls._kinds is None:
            from selectolax.lexbor import LexborHTMLParser

            tree = LexborHTMLParser("<p>text<!-- comment --></p>")
            text = tree.css_first("p").first_child
            ids = {"-text": text.tag_id, "-comment": text.next.tag_id}
            cls._kinds = {ids[name] if name in ids else tree.create_node(name).tag_id: kind
                          for name, kind in _kinds_by_name("-text", "-comment").items()}
        return cls._kinds

    _table: bytes | None = None

    @classmethod
    def kind_table(cls) -> bytes:
        """``kinds`` for the compiled walk: the kind of tag id ``i`` at ``[i]``."""
        if cls._table is None:
            kinds = cls.kinds()
            table = bytearray(max(kinds) + 1)  # OTHER is 0
            for tag_id, kind in kinds.items():
                table[tag_id] = kind
            cls._table = bytes(table)
        return cls._table


@functools.cache
def _compiled() -> tuple[Any, str | None]:
    """The compiled walk, or None and why there is none."""
    try:
        from vlcurate.interleave import _speedups as module  # type: ignore[attr-defined]
    except ImportError as e:
        return None, f"vlcurate.interleave._speedups was not built ({e})"
    installed = version("selectolax")
    if module.SELECTOLAX_VERSION != installed:
        warnings.warn(f"vlcurate.interleave._speedups was built for selectolax {module.SELECTOLAX_VERSION}, not the "
                      f"installed {installed}: the interleave extraction runs the slower Python walk; reinstall "
                      "vlcurate to rebuild it", RuntimeWarning, stacklevel=3)
        return None, f"built for selectolax {module.SELECTOLAX_VERSION}, {installed} is installed"
    tree = _Selectolax.parse(_PROBE)
    got: list[TextBlock | ImageRef] = []
    want: list[TextBlock | ImageRef] = []
    module.walk_tree(tree.body.mem_id, _PROBE_URL, _Selectolax.kind_table(), TextBlock, ImageRef, _image_ref,
                _is_boilerplate, got)
    _walk(_Selectolax, tree.body.first_child, _PROBE_URL, want)
    if got != want:
        warnings.warn("vlcurate.interleave._speedups walks a probe page differently from the Python walk: the "
                      "interleave extraction runs the Python walk", RuntimeWarning, stacklevel=3)
        return None, "its walk differs from the Python walk on a probe page"
    return module.walk_tree, None


# A page that takes the walk's paths, run by both walks before the compiled one is used:
# blocks and inline text, skipped and boilerplate subtrees, images from src, lazy
# attributes and srcset, absolute, root-relative and relative URLs, non-ASCII text.
_PROBE_URL = "https://probe.example.org/x/page.html"
_PROBE = ("<html><head><title>t</title></head><body><nav><p>menu here</p></nav><article><h1>A title</h1>"
          "<p>First <b>bold</b> paragraph\u00a0text.</p><img src='/a.jpg' alt=' An  image ' width='300' height='20x'>"
          "<div class='share-bar'><p>share it</p></div><p>Second\tparagraph</p><!-- c -->"
          "<img data-src='rel/b.jpg' srcset='/c.jpg 1x, /d.jpg 2x'><script>x()</script><ul><li>one</li><li>two</li>"
          "</ul><img src='https://cdn.example.net/e.png#f' alt='caf\u00e9'><img data-srcset='f.jpg 2x, g.jpg .5x'>"
          "</article></body></html>")


def compiled_walk() -> Any:
    """The compiled walk (``_speedups.c``) when it was built for the installed selectolax."""
    return _compiled()[0]


def compiled_walk_problem() -> str | None:
    """Why there is no compiled walk, or None."""
    return _compiled()[1]


class _Resiliparse:
    first_child, next, text = attrgetter("first_child"), attrgetter("next"), attrgetter("text")
    key = tag = attrgetter("tag")  # '#text', '#comment' or the element name

    @staticmethod
    def parse(html: str) -> Any:
        from resiliparse.parse.html import HTMLTree

        return HTMLTree.parse(html)

    @staticmethod
    def head_body(tree: Any) -> tuple[Any, Any]:
        return tree.head, tree.body

    @staticmethod
    def attrs(node: Any) -> dict:
        return {name: node.getattr(name) for name in node.attrs}

    @staticmethod
    def kinds() -> dict[str, int]:
        return _KINDS_BY_NAME


_KINDS_BY_NAME = _kinds_by_name("#text", "#comment")
_ADAPTERS = {"selectolax": _Selectolax, "resiliparse": _Resiliparse}


_BOILERPLATE_KEYS = frozenset({"hidden", "aria-hidden", "style", "role", "class", "id"})


def _is_boilerplate(attrs: dict) -> bool:
    if "hidden" in attrs or (attrs.get("aria-hidden") or "").lower() == "true":
        return True
    if _HIDDEN_STYLE.search(attrs.get("style") or ""):
        return True
    if (attrs.get("role") or "").lower() in BOILERPLATE_ROLES:
        return True
    names = f"{attrs.get('class') or ''} {attrs.get('id') or ''}"
    return bool(names.strip()) and bool(_BOILERPLATE_NAME.search(names))


def _head_info(adapter: Any, head: Any, page_url: str) -> tuple[str, str | None, str | None]:
    base, robots, title = page_url, None, None
    node = adapter.first_child(head) if head is not None else None
    while node is not None:
        tag = adapter.tag(node)
        if tag == "base" and base == page_url and (href := adapter.attrs(node).get("href")):
            base = resolve_url(page_url, href) or page_url
        elif tag == "meta":
            attrs = adapter.attrs(node)
            if (attrs.get("name") or "").lower() == "robots":
                robots = ", ".join(filter(None, [robots, attrs.get("content") or ""]))
        elif tag == "title" and title is None:
            child = adapter.first_child(node)
            title = " ".join((adapter.text(child) or "").split()) if child is not None else None
        node = adapter.next(node)
    return base, robots, title


def extract(html: str, page_url: str, parser: Parser = "selectolax", compiled: bool | None = None) -> Extracted:
    """Text blocks and images of ``html`` in reading order (see the module doc).

    One walk for both parsers, through the adapters (``_walk``), and its compiled twin
    for selectolax (``_speedups.c``), which follows it step for step. The walk is where
    the time went (benchmarks/README.md, Interleaved documents), so it is written for
    that: a node's
    kind is one dict lookup on its tag (Lexbor's tag id with selectolax: no name string
    per node), it goes from a node to its next sibling and keeps on a stack only where
    to go on after a subtree, and what it skips by tag it skips unread. A variant that did
    the boilerplate removal, image and block markers and the text in Lexbor's C code
    (css queries, ``insert_before``/``after``, one ``text()`` call) was measured 15%
    slower than the walk and removed: each css query costs 15-20 us a page, and each
    marker is still one Python call.

    ``compiled``: None (the default) runs the compiled walk where there is one, False
    the Python walk, True the compiled one or an error."""
    adapter = _ADAPTERS[parser]
    tree = adapter.parse(html)
    head, body = adapter.head_body(tree)
    base, robots, title = _head_info(adapter, head, page_url)
    out = Extracted(robots=robots, title=title, base_url=base)
    if body is None:
        return out
    # the body is a block whose attributes do not count: the walk starts at its children
    if compiled is not False and parser == "selectolax" and (walk := compiled_walk()) is not None:
        walk(body.mem_id, base, _Selectolax.kind_table(), TextBlock, ImageRef, _image_ref, _is_boilerplate, out.nodes)
    elif compiled:
        raise RuntimeError(f"no compiled walk for the {parser} parser here: {compiled_walk_problem()}")
    else:
        _walk(adapter, adapter.first_child(body), base, out.nodes)
    return out


def _image_ref(attrs: dict, base: str) -> ImageRef | None:
    """The image an ``<img>`` with ``attrs`` names, or None when it names none."""
    if (src := image_source(attrs)) is None:
        return None
    alt = attrs.get("alt")
    return ImageRef(resolve_url(base, src), src, " ".join(alt.split()) if alt else None,
                    declared_size(attrs.get("width")), declared_size(attrs.get("height")))


_END = object()  # on the walk's stack: a block element's subtree ends here


def _walk(adapter: Any, node: Any, base: str, nodes: list[TextBlock | ImageRef]) -> None:
    """Append the blocks and images of ``node``, its next siblings and their subtrees.
    Iterative (broken markup nests deeply): the stack holds where to go on after a
    subtree, and ``_END`` where a block's subtree ends."""
    first_child, nxt, attrs_of, text_of, key = adapter.first_child, adapter.next, adapter.attrs, adapter.text, \
        adapter.key
    kind_of = adapter.kinds().get
    parts: list[str] = []
    add_text = parts.append
    stack: list[Any] = []
    push, pop = stack.append, stack.pop

    def flush() -> None:
        text = " ".join("".join(parts).split())
        parts.clear()
        if text:
            nodes.append(TextBlock(text))

    while True:
        if node is None:
            if not stack:
                break
            node = pop()
            if node is _END:
                if parts:
                    flush()
                node = pop()
            continue
        kind = kind_of(key(node), OTHER)
        if kind == TEXT:
            add_text(text_of(node) or "")
            node = nxt(node)
            continue
        if kind == SKIP:
            node = nxt(node)
            continue
        attrs = attrs_of(node)
        if attrs and not _BOILERPLATE_KEYS.isdisjoint(attrs) and _is_boilerplate(attrs):
            node = nxt(node)
            continue
        if kind == IMAGE:
            if (image := _image_ref(attrs, base)) is not None:
                if parts:
                    flush()
                nodes.append(image)
            node = nxt(node)
            continue
        child = first_child(node)
        if kind == BLOCK and parts:
            flush()
        if child is None:
            node = nxt(node)
            continue
        push(nxt(node))
        if kind == BLOCK:
            push(_END)
        node = child
    if parts:
        flush()


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
