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


def _may_be_furniture(path: str) -> bool:
    """False when ``path`` has no tracking or icon word, so that most images skip the two
    searches above. On ASCII, lower-casing and a case-sensitive search find what
    ``re.I`` finds, at a third of its cost; other paths are left to the searches."""
    return not path.isascii() or _FURNITURE_LOWER.search(path.lower()) is not None
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
    word_count: int | None = None  # counted while the nodes were chosen (removing images keeps it)

    @property
    def images(self) -> list[ImageRef]:
        return [n for n in self.nodes if isinstance(n, ImageRef)]

    @property
    def words(self) -> int:
        if self.word_count is None:
            self.word_count = sum(len(n.text.split()) for n in self.nodes if isinstance(n, TextBlock))
        return self.word_count


def _path(url: str) -> str:
    """The path of an absolute URL (what ``urlsplit(url).path`` gives, without its cost)."""
    rest = url.split("//", 1)[-1]
    slash = rest.find("/")
    if slash < 0:
        return ""
    return rest[slash:].split("?", 1)[0].split("#", 1)[0]


def image_problem(image: ImageRef, rules: DocumentRules) -> tuple[str, str] | None:
    """Why an image is not kept, from its URL and declared size, or None."""
    if image.url is None:
        return "bad_url", f"cannot make an http(s) URL of {image.src[:200]!r}"
    path = _path(image.url)
    name = path.rsplit("/", 1)[-1].lower()
    if name.endswith(_UNSUPPORTED):
        return "unsupported_format", name
    w, h = image.width, image.height
    furniture = _may_be_furniture(path)
    if (w is not None and w <= 2) or (h is not None and h <= 2) or (furniture and _TRACKING.search(path)):
        return "tracking_image", f"{w}x{h} {path[-100:]}"
    if furniture and _ICON.search(path):
        return "icon_image", path[-100:]
    if w is not None and h is not None:
        if min(w, h) < rules.min_image_size:
            return "too_small", f"{w}x{h} declared"
        if max(w, h) > rules.max_image_size:
            return "too_large", f"{w}x{h} declared"
        if max(w, h) / max(1, min(w, h)) > rules.max_aspect_ratio:
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
    min_words, max_words, words_kept = rules.min_node_words, rules.max_node_words, 0
    for node in nodes:
        if isinstance(node, TextBlock):
            words = node.text.count(" ") + 1  # blocks are whitespace-collapsed: words = spaces + 1
            if words < min_words:
                counts["text_nodes.too_short"] = counts.get("text_nodes.too_short", 0) + 1
            elif words > max_words:
                counts["text_nodes.too_long"] = counts.get("text_nodes.too_long", 0) + 1
            else:
                kept.append(node)
                words_kept += words
            continue
        index = len(outcomes)
        problem = ("opted_out", images_opted_out) if images_opted_out else image_problem(node, rules)
        if problem is None and node.url in seen:
            problem = ("duplicate_in_document", None)
        if problem is not None:
            outcomes.append(ImageOutcome(index, node.url, node.src, node.alt, False, *problem))
            continue
        seen.add(node.url)  # type: ignore[arg-type]
        outcomes.append(ImageOutcome(index, node.url, node.src, node.alt, True))
        kept.append(node)
    return Document(kept, words_kept), outcomes


def document_problem(doc: Document, rules: DocumentRules) -> tuple[str, str] | None:
    n, words = len(doc.images), doc.words
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
            "status": "document", "images": len(doc.images), "words": doc.words}
    if problem := document_problem(doc, rules):
        page.update(status="dropped", reason=problem[0], detail=problem[1])
    return page


def obelics_row(key: str, doc: Document, general: dict, image_keys: list[str]) -> dict:
    """The OBELICS row of a document: consecutive text blocks are joined by a blank
    line, so ``texts`` and ``images`` alternate; ``image_keys``: one per kept image."""
    texts: list[str | None] = []
    images: list[str | None] = []
    meta: list[dict | None] = []
    keys = iter(image_keys)
    for node in doc.nodes:
        if isinstance(node, TextBlock):
            if texts and texts[-1] is not None:
                texts[-1] += PAGE_TEXT_SEPARATOR + node.text
            else:
                texts.append(node.text)
                images.append(None)
                meta.append(None)
        else:
            texts.append(None)
            images.append(node.url)
            meta.append({"document_url": general.get("url"), "unformatted_src": node.src, "src": node.url,
                         "alt_text": node.alt, "declared_width": node.width, "declared_height": node.height,
                         "image_key": next(keys)})
    return {"key": key, "images": images, "metadata": _to_json(meta), "general_metadata": _to_json(general),
            "texts": texts}


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
