"""What an ``<img>``'s attributes say, read as the HTML standard reads them: its source
(``srcset``'s largest candidate, the lazy-loading attributes, then ``src``), that
source resolved to an absolute http(s) URL, and its declared width and height. A bad
attribute is an unknown value, never an error: one malformed image must not lose its
page.
"""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

_SOURCE_ATTRS = ("data-src", "data-lazy-src", "data-original", "data-lazy", "src")  # lazy-loading ones first

_LEADING_DIGITS = re.compile(r"[\t\n\f\r ]*([0-9]+)")
_MAX_SIZE_DIGITS = 18  # more is no image's size (and int() refuses past 4300 digits)


def declared_size(value: str | None) -> int | None:
    """A declared ``width``/``height``: the ASCII digits after leading whitespace (as
    HTML's dimension values are read: ``300px`` is 300), or None, the same as a missing
    attribute, when there are none or too many of them. Other digits ``str.isdigit``
    takes (superscripts, other scripts' digits) are none: a page's bad size is an unknown
    size, never an error."""
    if not value:
        return None
    if value.isascii() and value.isdigit():
        digits = value
    elif m := _LEADING_DIGITS.match(value):
        digits = m.group(1)
    else:
        return None
    return int(digits) if len(digits) <= _MAX_SIZE_DIGITS else None


_INF = float("inf")
_SRCSET_URL = re.compile(r"[\s,]*(\S*)")  # separators, then a URL: it runs to whitespace
# one descriptor: a width (a positive integer), a density (a non-negative floating-point
# number, as HTML writes them: no "+", no "1.", no "nan") or a height (with a width only)
_DESCRIPTOR = re.compile(r"([0-9]+)w|(-?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)x|([0-9]+)h")


def _candidate_size(descriptor: str) -> float | None:
    """The size a candidate's descriptors give (1 when there are none), or None when they
    are not valid ones: the HTML standard drops such a candidate, so the walk does too."""
    if m := _DESCRIPTOR.fullmatch(descriptor):  # the common case: one descriptor
        if m.lastindex == 1:
            width = float(m.group(1))
            return width if 0 < width < _INF else None
        if m.lastindex == 2:
            density = float(m.group(2))
            return density if 0 <= density < _INF else None
        return None  # a height alone
    width = density = height = None
    for token in descriptor.split():
        m = _DESCRIPTOR.fullmatch(token)
        if m is None:
            return None
        w, x, h = m.groups()
        if w is not None:
            if width is not None or density is not None:
                return None
            width = float(w)
            if width == 0:
                return None
        elif x is not None:
            if width is not None or density is not None or height is not None:
                return None
            density = float(x)
            if density < 0:
                return None
        else:
            if height is not None or density is not None or float(h) == 0:
                return None
            height = h
    if height is not None and width is None:
        return None
    size = width if width is not None else density if density is not None else 1.0
    return size if size < _INF else None  # a number past a float's range is no size


def srcset_candidates(srcset: str) -> list[tuple[str, float]]:
    """``(url, size)`` of each candidate, parsed as the HTML standard says: a URL runs to
    whitespace (commas inside it stay; trailing ones end it), then descriptors to the
    next comma; size is the ``w`` or ``x`` value, 1 when there is none. A candidate
    whose descriptors are not valid ones (``.w``, ``1.2.3x``, ``abcw``, ``nanx``, ``-1x``,
    a number past a float's range) is left out, the others stand."""
    out, i, n = [], 0, len(srcset)
    while i < n:
        m = _SRCSET_URL.match(srcset, i)
        url, i = m.group(1), m.end()  # type: ignore[union-attr]  # it matches everywhere
        descriptor = ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            k = srcset.find(",", i)
            k = n if k < 0 else k
            descriptor, i = srcset[i:k].strip(), k + 1
        if not url:
            continue
        size = _candidate_size(descriptor) if descriptor else 1.0
        if size is not None:
            out.append((url, size))
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
    for name in _SOURCE_ATTRS:
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
