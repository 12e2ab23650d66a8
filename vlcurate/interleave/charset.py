"""Decode a page's bytes to text.

Rules, in order:

1. a byte-order mark wins (UTF-8, UTF-16 LE/BE);
2. the declared charsets (the HTTP ``Content-Type`` header, then the page's own
   ``<meta charset>`` / ``<meta http-equiv=Content-Type>``) are *candidates*, checked
   against the bytes, since either can be wrong on real pages. A candidate must decode
   the bytes without error; a single-byte Latin charset that is declared on bytes that
   are valid UTF-8 with non-ASCII characters (the common "ISO-8859-1" header on UTF-8
   pages) is refused. When several candidates decode, the one whose text looks least
   like mojibake (charset_normalizer's mess ratio) wins;
3. otherwise UTF-8 if the bytes are valid UTF-8, else detection (charset_normalizer),
   else windows-1252 with replacement characters (it maps every byte).

ISO-8859-1 and US-ASCII labels are read as windows-1252, as browsers do (WHATWG).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]+)", re.I)
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]+)", re.I)
# Browsers read these labels as windows-1252 (WHATWG Encoding Standard).
_ALIASES = {"iso-8859-1": "windows-1252", "iso8859-1": "windows-1252", "latin1": "windows-1252",
            "latin-1": "windows-1252", "l1": "windows-1252", "us-ascii": "windows-1252", "ascii": "windows-1252",
            "x-sjis": "shift_jis", "sjis": "shift_jis", "shift-jis": "shift_jis", "x-euc-jp": "euc-jp"}
_SINGLE_BYTE_LATIN = {"cp1252", "latin_1", "iso8859_15", "cp1250", "iso8859_2"}
# Detection picks among the charsets of most of the web (W3Techs' list minus UTF-8,
# which is checked before): on short pages, unrestricted detection prefers look-alikes
# (cp1250 for French, cp949 for Shift_JIS bytes).
DETECTED = ("cp1252", "shift_jis", "euc_jp", "gb18030", "big5", "euc_kr", "cp1251", "iso8859_2", "cp1250",
            "iso8859_15", "koi8_r", "cp1256", "iso8859_9", "cp874", "iso8859_7")
META_SCAN_BYTES = 4096  # where browsers look for a <meta charset> (the prescan reads 1024; pages exceed it)


@dataclass(frozen=True)
class DecodedPage:
    text: str
    charset: str  # the Python codec name used
    source: str  # bom | header | meta | utf-8 | detected | fallback
    declared: tuple[str, ...]  # the declared labels, as written (header first)


# Python codecs a label may name that are no page encoding (none is in the WHATWG
# Encoding Standard): they "decode" any bytes to nonsense, or fail with errors of their own.
_NOT_PAGE_CODECS = frozenset({"undefined", "punycode", "idna", "unicode-escape", "raw-unicode-escape", "utf-7"})


def _codec(label: str) -> str | None:
    label = label.strip().lower()
    try:
        name = codecs.lookup(_ALIASES.get(label, label)).name
    except LookupError:
        return None
    return None if name in _NOT_PAGE_CODECS else name


def declared_charsets(content_type: str | None, body: bytes) -> list[tuple[str, str]]:
    """``(source, label)`` of every declared charset: header first, then ``<meta>``."""
    found = []
    if content_type and (m := _HEADER_CHARSET.search(content_type)):
        found.append(("header", m.group(1)))
    if m := _META_CHARSET.search(body[:META_SCAN_BYTES]):
        found.append(("meta", m.group(1).decode("ascii", "replace")))
    return found


def _utf8_non_ascii(body: bytes) -> str | None:
    """The text of ``body`` when it is valid UTF-8 with non-ASCII characters, else None
    (kept, so that a page is decoded once)."""
    if body.isascii():
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _mess(text: str) -> float:
    from charset_normalizer.md import mess_ratio

    return mess_ratio(text[:20000], maximum_threshold=1.0)


def decode_page(body: bytes, content_type: str | None = None) -> DecodedPage:
    """The text of ``body`` by the module's rules; never raises."""
    declared = declared_charsets(content_type, body)
    labels = tuple(label for _, label in declared)
    for bom, codec in _BOMS:
        if body.startswith(bom):
            return DecodedPage(body[len(bom):].decode(codec, "replace"), codec, "bom", labels)
    utf8_text = _utf8_non_ascii(body)
    utf8 = utf8_text is not None
    fits: list[tuple[str, str, str]] = []  # (source, codec, text)
    for source, label in declared:
        codec = _codec(label)
        if codec is None or any(codec == c for _, c, _ in fits):
            continue
        if utf8 and codec in _SINGLE_BYTE_LATIN:
            continue  # a Latin label on valid UTF-8 bytes: the label is wrong
        if utf8 and codec == "utf-8":
            fits.append((source, codec, utf8_text))  # type: ignore[arg-type]
            continue
        try:
            fits.append((source, codec, body.decode(codec)))
        except (UnicodeError, LookupError):  # UnicodeError: "undefined", "punycode" and the like
            continue
    if len(fits) == 1 or (fits and body.isascii()):
        source, codec, text = fits[0]
        return DecodedPage(text, codec, source, labels)
    if fits:
        source, codec, text = min(fits, key=lambda f: _mess(f[2]))  # ties: the earlier (header) wins
        return DecodedPage(text, codec, source, labels)
    if utf8 or body.isascii():
        return DecodedPage(utf8_text if utf8 else body.decode("utf-8"), "utf-8", "utf-8", labels)  # type: ignore[arg-type]
    from charset_normalizer import from_bytes

    matches = list(from_bytes(body[:200000], cp_isolation=list(DETECTED)))
    least = min((m.chaos for m in matches), default=None)
    # among the (near-)least messy, the more common charset: short pages fit several
    close = [m for m in matches if least is not None and m.chaos <= least + 0.01 and _codec(m.encoding)]
    best = min(close, key=lambda m: DETECTED.index(m.encoding) if m.encoding in DETECTED else len(DETECTED),
               default=None)
    if best is not None and (codec := _codec(best.encoding)):
        return DecodedPage(body.decode(codec, "replace"), codec, "detected", labels)
    return DecodedPage(body.decode("cp1252", "replace"), "cp1252", "fallback", labels)
