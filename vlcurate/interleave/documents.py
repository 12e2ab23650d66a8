"""From extracted nodes to a document: image and text rules, document rules, and the
OBELICS row (parallel ``texts`` / ``images`` lists, exactly one non-null per position).

Defaults are OBELICS's: images 150-20,000 px on a side with aspect ratio at most 2
(judged here on the sizes the markup declares; the download stage judges the real
ones), text nodes of 4-1,000 words, documents with 1-30 images and 10-2,000 words.
Every image that is not kept, and every document that is not, has a reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from vlcurate.interleave.extract import ImageRef, TextBlock
from vlcurate.typed import bounded, check_bounds

# Path words of tracking pixels and of icons, logos and other page furniture. A path
# starts with "/", so a word at its start follows a separator too (and starting the
# patterns with a character class lets the regex engine scan for it).
_TRACKING_WORDS = "pixel|tracking|tracker|beacon|1x1|spacer|blank|transparent|clear"
_ICON_WORDS = ("favicon|icons?|logos?|sprites?|emoji|emoticons?|avatars?|badges?|buttons?|arrows?|bullets?|spinner"
               "|loader|loading|placeholder")
_TRACKING = re.compile(rf"[/_.-](?:{_TRACKING_WORDS})(?:[/_.-]|$)", re.I)
_ICON = re.compile(rf"[/_.-](?:{_ICON_WORDS})(?:[/_.-]|\d|$)", re.I)
_FURNITURE_LOWER = re.compile(rf"[/_.-](?:{_TRACKING_WORDS}|{_ICON_WORDS})")
# the same search in C (vlcurate/interleave/_speedups.c): its words, "s?" dropped (a
# search without an end boundary finds "icon" wherever it finds "icons")
_FURNITURE_WORDS = f"{_TRACKING_WORDS}|{_ICON_WORDS}".replace("s?", "").encode("ascii")
try:
    from vlcurate.interleave._speedups import plain_image as _plain_image
except ImportError:  # not built: image_problem judges every image
    _plain_image = None

_UNSUPPORTED = (".svg", ".ico", ".cur")
PAGE_TEXT_SEPARATOR = "\n\n"
_to_json = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode  # made once: json.dumps makes one a call


@dataclass(frozen=True)
class DocumentRules:
    """Image, text-node and document limits (OBELICS's values by default)."""

    min_image_size: int = bounded(150, ge=1)  # px, each side, when declared in the markup
    max_image_size: int = bounded(20000, ge=1)
    max_aspect_ratio: float = bounded(2.0, ge=1.0)
    min_node_words: int = bounded(4, ge=0)  # a text block with fewer words is left out
    max_node_words: int = bounded(1000, ge=1)
    min_images: int = bounded(1, ge=0)
    max_images: int = bounded(30, ge=0)
    min_words: int = bounded(10, ge=0)
    max_words: int = bounded(2000, ge=1)

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass(slots=True)  # not frozen, as the types of extract.py: one is made per image of every page
class ImageOutcome:
    """What became of one image of a page (``index``: its place among the page's images)."""

    index: int
    url: str | None
    src: str
    alt: str | None
    keep: bool
    reason: str | None = None
    detail: str | None = None


@dataclass
class Document:
    """A document as a list of nodes (text blocks and kept images) in reading order."""

    nodes: list[TextBlock | ImageRef] = field(default_factory=list)
    # counted while the nodes were chosen (removing images, as later stages do, keeps both)
    word_count: int | None = None
    text_count: int | None = None

    @property
    def images(self) -> list[ImageRef]:
        return [n for n in self.nodes if isinstance(n, ImageRef)]

    @property
    def image_count(self) -> int:
        if self.text_count is None:
            self.text_count = sum(isinstance(n, TextBlock) for n in self.nodes)
        return len(self.nodes) - self.text_count

    @property
    def words(self) -> int:
        if self.word_count is None:
            self.word_count = sum(len(n.text.split()) for n in self.nodes if isinstance(n, TextBlock))
        return self.word_count


def _path(url: str) -> str:
    """The path of an absolute URL: what ``urlsplit(url).path`` gives, without its cost."""
    host = url.find("//")
    start = host + 2 if host >= 0 else 0
    end = len(url)
    for mark in "?#":
        if 0 <= (k := url.find(mark, start)) < end:
            end = k
    slash = url.find("/", start, end)
    return url[slash:end] if slash >= 0 else ""


def image_problem(image: ImageRef, rules: DocumentRules) -> tuple[str, str] | None:
    """Why an image is not kept, from its URL and declared size, or None."""
    if image.url is None:
        return "bad_url", f"cannot make an http(s) URL of {image.src[:200]!r}"
    path = _path(image.url)
    lower = path.lower()
    if lower.endswith(_UNSUPPORTED):  # no "/" in them: the end of the path is the file name's
        return "unsupported_format", lower.rsplit("/", 1)[-1]
    w, h = image.width, image.height
    # On ASCII, the lower-cased path and a case-sensitive search find what ``re.I``
    # finds, at a third of its cost: most images skip both searches below.
    furniture = not path.isascii() or _FURNITURE_LOWER.search(lower) is not None
    if (w is not None and w <= 2) or (h is not None and h <= 2) or (furniture and _TRACKING.search(path)):
        return "tracking_image", f"{w}x{h} {path[-100:]}"
    if furniture and _ICON.search(path):
        return "icon_image", path[-100:]
    if w is not None and h is not None:
        small, large = (w, h) if w <= h else (h, w)
        if small < rules.min_image_size:
            return "too_small", f"{w}x{h} declared"
        if large > rules.max_image_size:
            return "too_large", f"{w}x{h} declared"
        if large / (small if small > 1 else 1) > rules.max_aspect_ratio:
            return "bad_aspect_ratio", f"{w}x{h} declared"
    elif (w or h or rules.min_image_size) < rules.min_image_size:
        return "too_small", f"{w or h}px declared"
    return None


def select_nodes(nodes: list[TextBlock | ImageRef], rules: DocumentRules, images_opted_out: str | None,
                 counts: dict[str, int]) -> tuple[Document, list[ImageOutcome]]:
    """The document's kept nodes, and an outcome for every image of the page.
    ``images_opted_out``: the directive that opts the page's images out, if any."""
    kept: list[TextBlock | ImageRef] = []
    outcomes: list[ImageOutcome] = []
    seen: set[str] = set()
    min_words, max_words, words_kept, too_short, too_long = rules.min_node_words, rules.max_node_words, 0, 0, 0
    texts_kept = 0
    min_size, max_size, ratio = rules.min_image_size, rules.max_image_size, rules.max_aspect_ratio
    for node in nodes:
        if type(node) is TextBlock:
            words = node.text.count(" ") + 1  # blocks are whitespace-collapsed: words = spaces + 1
            if min_words <= words <= max_words:
                kept.append(node)
                words_kept += words
                texts_kept += 1
            elif words < min_words:
                too_short += 1
            else:
                too_long += 1
            continue
        index = len(outcomes)
        if images_opted_out:
            problem: tuple[str, str | None] | None = ("opted_out", images_opted_out)
        elif _plain_image is not None and _plain_image(node.url, node.width, node.height, min_size, max_size,
                                                       ratio, _FURNITURE_WORDS):
            problem = None  # what image_problem finds too, at a tenth of its cost
        else:
            problem = image_problem(node, rules)
        if problem is None and node.url in seen:
            problem = ("duplicate_in_document", None)
        if problem is not None:
            outcomes.append(ImageOutcome(index, node.url, node.src, node.alt, False, *problem))
            continue
        seen.add(node.url)  # type: ignore[arg-type]
        outcomes.append(ImageOutcome(index, node.url, node.src, node.alt, True))
        kept.append(node)
    for name, n in (("text_nodes.too_short", too_short), ("text_nodes.too_long", too_long)):
        if n:
            counts[name] = counts.get(name, 0) + n
    return Document(kept, words_kept, texts_kept), outcomes


def document_problem(doc: Document, rules: DocumentRules) -> tuple[str, str] | None:
    n, words = doc.image_count, doc.words
    if n < rules.min_images:
        return "too_few_images", f"{n} images"
    if n > rules.max_images:
        return "too_many_images", f"{n} images"
    if words < rules.min_words:
        return "too_few_words", f"{words} words"
    if words > rules.max_words:
        return "too_many_words", f"{words} words"
    return None


def document_page(key: str, doc: Document, general: dict, rules: DocumentRules) -> dict:
    """The page row of a page that became a document, its document rules checked: status
    ``document``, or ``dropped`` with the rule's reason and detail."""
    page = {"key": key, "url": general.get("url"), "source": general.get("source", ""),
            "offset": int(general.get("warc_record_offset", 0)), "record_type": "document",
            "status": "document", "images": doc.image_count, "words": doc.words}
    if problem := document_problem(doc, rules):
        page.update(status="dropped", reason=problem[0], detail=problem[1])
    return page


_json_str = json.encoder.c_encode_basestring or json.encoder.py_encode_basestring  # what _to_json writes a str as


def obelics_row(key: str, doc: Document, general: dict, image_keys: list[str]) -> dict:
    """The OBELICS row of a document: consecutive text blocks are joined by a blank
    line, so ``texts`` and ``images`` alternate; ``image_keys``: one per kept image.

    ``metadata`` is ``_to_json`` of a list with one dict per position (None at text
    positions), written here directly: the same string, at a third of the encoder's
    cost for the image dicts (tests/interleave/test_documents.py compares them)."""
    texts: list[str | None] = []
    images: list[str | None] = []
    meta: list[str] = []
    keys = iter(image_keys)
    document_url = "null" if (page_url := general.get("url")) is None else _json_str(page_url)
    run: list[str] = []  # the text blocks since the last image
    for node in doc.nodes:
        if type(node) is TextBlock:
            run.append(node.text)
        else:
            if run:
                texts.append(PAGE_TEXT_SEPARATOR.join(run))
                images.append(None)
                meta.append("null")
                run.clear()
            texts.append(None)
            images.append(node.url)
            # the keys in sorted order, as _to_json (sort_keys) writes them
            alt, h, w, url = node.alt, node.height, node.width, node.url  # str | None, int | None
            meta.append(f'{{"alt_text": {"null" if alt is None else _json_str(alt)}, '
                        f'"declared_height": {"null" if h is None else int.__repr__(h)}, '
                        f'"declared_width": {"null" if w is None else int.__repr__(w)}, '
                        f'"document_url": {document_url}, "image_key": {_json_str(next(keys))}, '
                        f'"src": {"null" if url is None else _json_str(url)}, '
                        f'"unformatted_src": {_json_str(node.src)}}}')
    if run:
        texts.append(PAGE_TEXT_SEPARATOR.join(run))
        images.append(None)
        meta.append("null")
    return {"key": key, "images": images, "metadata": f"[{', '.join(meta)}]",
            "general_metadata": _to_json(general), "texts": texts}


def document_from_row(row: dict) -> tuple[Document, list[dict]]:
    """A stored OBELICS row back as nodes (a text entry is one block), with each image's
    metadata in order."""
    doc = Document()
    metas = []
    for text, url, meta in zip(row["texts"], row["images"], json.loads(row["metadata"])):
        if text is not None:
            doc.nodes.append(TextBlock(text))
        else:
            doc.nodes.append(ImageRef(url, meta.get("unformatted_src", url), meta.get("alt_text"),
                                      meta.get("declared_width"), meta.get("declared_height")))
            metas.append(meta)
    return doc, metas
