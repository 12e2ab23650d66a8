"""URLs as a browser reads them (the WHATWG URL standard, for http and https).

Web-scraped URL lists are full of URLs a browser shows fine but a strict parser
refuses or mangles: surrounding whitespace, line breaks pasted inside, spaces and
non-ASCII letters in the path, internationalised host names, backslashes, numeric
hosts. :func:`browser_url` turns one into the request a browser would send; the
input row keeps the URL exactly as written (the sample row's ``url``).

What it does, in the standard's order:
- strips leading/trailing C0 controls and spaces, removes every tab, CR and LF;
- scheme lowercased, ``\\`` read as ``/``, any number of slashes after ``http:``;
- host percent-decoded, then: IPv6 literal checked; IPv4 in any form a browser
  accepts (``0x7f.1``, ``2130706433``) written as a dotted quad; a name mapped
  with UTS #46 (non-transitional: ``faß.de`` stays ``ß``) and Punycode-encoded;
- the default port dropped; ``.``/``..`` path segments resolved;
- path and query percent-encoded with the standard's sets (space, ``"``, ``<``,
  ``>``, non-ASCII as UTF-8, ...), existing ``%XX`` kept; the fragment dropped (never
  sent). One deliberate difference: a ``%`` not followed by two hex digits is sent as
  ``%25`` (urllib3 would otherwise re-encode every ``%`` in that component).
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote

import idna

SCHEMES = {"http": 80, "https": 443}
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_TAB_OR_NEWLINE = re.compile(r"[\t\n\r]")
_C0_OR_SPACE = "".join(chr(c) for c in range(0x21))
# The standard's percent-encode sets (C0 controls and non-ASCII are always encoded).
_QUERY_SET = frozenset(' "#<>\'')  # the "special-query" set
_PATH_SET = _QUERY_SET - {"'"} | frozenset("?`{}^|")
_USERINFO_SET = _PATH_SET | frozenset("/;=@[\\]")
# Code points a host may not contain (the standard's "forbidden domain code points").
_FORBIDDEN_HOST = frozenset("\x00\t\n\r #/:<>?@[\\]^|%\x7f") | frozenset(chr(c) for c in range(0x20))
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


class InvalidURL(ValueError):
    """Not a URL a browser would fetch over http(s); the message says why."""


def browser_url(raw: str) -> str:
    """The http(s) URL a browser would request for ``raw`` (see the module notes).
    Raises InvalidURL with a short reason."""
    text = _TAB_OR_NEWLINE.sub("", raw.strip(_C0_OR_SPACE))
    if not text:
        raise InvalidURL("empty url")
    match = _SCHEME.match(text)
    if not match:
        raise InvalidURL("no scheme")
    scheme = match.group(1).lower()
    if scheme not in SCHEMES:
        raise InvalidURL(f"unsupported scheme {scheme!r}")
    rest = text[match.end():].replace("\\", "/").lstrip("/")
    rest, _, _fragment = rest.partition("#")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, rest = rest[:end], rest[end:]
    path, question, query = rest.partition("?")
    userinfo, at, hostport = authority.rpartition("@")
    host, port = _split_port(hostport)
    host = _host(host)
    if port is not None and port == SCHEMES[scheme]:
        port = None
    out = f"{scheme}://{_encode(userinfo, _USERINFO_SET) + '@' if at else ''}{host}"
    out += f":{port}" if port is not None else ""
    out += _encode(_remove_dot_segments(path or "/"), _PATH_SET)
    if question:
        out += "?" + _encode(query, _QUERY_SET)
    return out


def _split_port(hostport: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise InvalidURL("unclosed IPv6 literal")
        host, tail = hostport[:close + 1], hostport[close + 1:]
    else:
        host, colon, port_text = hostport.partition(":")
        tail = colon + port_text
    if not tail:
        return host, None
    if not tail.startswith(":") or not tail[1:].isdigit() and tail != ":":
        raise InvalidURL(f"bad port {tail[1:]!r}")
    if tail == ":":
        return host, None
    port = int(tail[1:])
    if port > 65535:
        raise InvalidURL(f"port {port} out of range")
    return host, port


def _host(host: str) -> str:
    if not host:
        raise InvalidURL("no host")
    if host.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            raise InvalidURL(f"bad IPv6 literal {host!r}") from None
    name = unquote(host, errors="strict") if "%" in host else host
    if name.isascii():
        name = name.lower()
    else:
        try:
            name = idna.encode(name, uts46=True, transitional=False).decode("ascii")
        except (idna.IDNAError, UnicodeError) as e:
            raise InvalidURL(f"bad internationalised host {host!r}: {e}") from None
    if bad := sorted(set(name) & _FORBIDDEN_HOST):
        raise InvalidURL(f"host {host!r} contains {''.join(bad)!r}")
    ipv4 = _ipv4(name)
    return ipv4 if ipv4 is not None else name


def _ipv4(name: str) -> str | None:
    """A browser's IPv4 reading of ``name`` (decimal, octal, hex parts; 1 to 4 of
    them), None when ``name`` is a domain, InvalidURL when it is a broken number."""
    parts = name.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    last = parts[-1]
    if not (last.isdigit() or re.fullmatch(r"0[xX][0-9A-Fa-f]*", last)):
        return None
    if len(parts) > 4:
        raise InvalidURL(f"bad IPv4 host {name!r}")
    numbers = []
    for part in parts:
        try:
            if part[:2].lower() == "0x":
                numbers.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                numbers.append(int(part[1:], 8))
            else:
                numbers.append(int(part, 10))
        except ValueError:
            raise InvalidURL(f"bad IPv4 host {name!r}") from None
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise InvalidURL(f"bad IPv4 host {name!r}")
    value = numbers[-1] + sum(n << (8 * (3 - i)) for i, n in enumerate(numbers[:-1]))
    return str(ipaddress.IPv4Address(value))


def _remove_dot_segments(path: str) -> str:
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        lowered = segment.lower()
        if lowered in (".", "%2e"):
            if last:
                out.append("")
        elif lowered in ("..", ".%2e", "%2e.", "%2e%2e"):
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def _encode(text: str, encode_set: frozenset[str]) -> str:
    text = _LONE_PERCENT.sub("%25", text)
    if text.isascii() and not any(c in encode_set or c < " " or c == "\x7f" for c in text):
        return text
    out = []
    for c in text:
        if c in encode_set or c < " " or c == "\x7f" or not c.isascii():
            out.append("".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")))
        else:
            out.append(c)
    return "".join(out)
