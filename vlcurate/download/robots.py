"""robots.txt (RFC 9309), optional: fetched once per host, cached, checked before an
image is requested. A disallowed URL is ``opted_out`` with the rule in the message.

Parsing follows the RFC (as Google's parser does): groups of ``user-agent`` lines
followed by ``allow``/``disallow`` rules; the groups naming our product token
(``user_agent_token`` first, then ``vlcurate``, case-insensitive) apply, else those
for ``*``; among the rules matching the URL's path and query (``*`` wildcard, ``$`` end
anchor) the longest wins and ``allow`` wins a tie; ``/robots.txt`` itself is always
allowed. What the fetch of robots.txt tells us:

- 2xx: its rules (the first 500 KiB, as the RFC requires at least);
- 4xx (404 above all): no rules, everything allowed;
- 5xx, or the host unreachable: the RFC says assume complete disallow; we fail the
  host's rows with the fetch's own error kind (retryable, so ``--retry-failed`` tries
  again later) and "robots.txt ..." in the message, rather than a permanent opt-out.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_ROBOTS_BYTES = 500 * 1024
MAX_HOSTS_CACHED = 10_000  # least recently used hosts beyond this are fetched again if seen again


@dataclass(frozen=True)
class Rule:
    allow: bool
    pattern: str
    line: str  # as written, for the message


@dataclass(frozen=True)
class RobotsRules:
    """The rules of the groups that apply to us (empty: everything allowed)."""

    rules: tuple[Rule, ...] = ()
    agent: str | None = None  # the user-agent line that selected them

    def blocking_rule(self, path: str) -> Rule | None:
        """The rule that disallows ``path`` (path and query), or None if allowed."""
        if path == "/robots.txt":
            return None
        best: Rule | None = None
        for rule in self.rules:
            if rule.pattern and _matches(rule.pattern, path):
                if (best is None or len(rule.pattern) > len(best.pattern)
                        or (len(rule.pattern) == len(best.pattern) and rule.allow)):
                    best = rule
        return best if best is not None and not best.allow else None


def _matches(pattern: str, path: str) -> bool:
    if "*" not in pattern and not pattern.endswith("$"):
        return path.startswith(pattern)
    anchored = pattern.endswith("$")
    body = pattern[:-1] if anchored else pattern
    regex = ".*".join(re.escape(part) for part in body.split("*"))
    return re.match(regex + ("$" if anchored else ""), path) is not None


def parse_robots(text: str, tokens: tuple[str, ...]) -> RobotsRules:
    """The rules for the first of ``tokens`` (lowercase product tokens) that has a
    group, else for ``*``."""
    groups: list[tuple[list[str], list[Rule]]] = []
    agents: list[str] = []
    rules: list[Rule] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key in ("user-agent", "useragent", "user agent"):
            if rules:  # a user-agent line after rules starts a new group
                groups.append((agents, rules))
                agents, rules = [], []
            agents.append(value.lower())
        elif key in ("allow", "disallow") and agents:
            rules.append(Rule(key == "allow", value, f"{key.capitalize()}: {value}"))
    if agents:
        groups.append((agents, rules))
    for token in (*tokens, "*"):
        chosen = [rule for names, group in groups if token in names for rule in group]
        if chosen or any(token in names for names, _ in groups):
            return RobotsRules(tuple(chosen), token)
    return RobotsRules()


@dataclass(frozen=True)
class RobotsFetch:
    """What fetching a robots.txt gave: a body (2xx), nothing (4xx), or a failure."""

    body: bytes | None
    status: int | None
    error_kind: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class Refusal:
    """Why a URL may not be fetched because of its host's robots.txt."""

    error_kind: str  # opted_out, or the kind that made robots.txt unreachable
    message: str
    http_status: int | None = None


class RobotsCache:
    """robots.txt verdicts per origin (scheme, host, port); each robots.txt is fetched
    once per process, the other threads asking for that host meanwhile wait for it."""

    def __init__(self, fetch: Callable[[str], RobotsFetch], tokens: tuple[str, ...]) -> None:
        self._fetch = fetch
        self._tokens = tuple(t.lower() for t in tokens)
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, RobotsRules | Refusal] = OrderedDict()
        self._fetching: dict[str, threading.Lock] = {}

    def refusal(self, url: str) -> Refusal | None:
        """Why ``url`` (normalised, http/https) may not be fetched, or None."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        verdict = self._verdict(origin)
        if isinstance(verdict, Refusal):
            return verdict
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        rule = verdict.blocking_rule(path)
        if rule is None:
            return None
        return Refusal("opted_out", f"robots.txt of {origin}: {rule.line!r} (user-agent: {verdict.agent})")

    def _verdict(self, origin: str) -> RobotsRules | Refusal:
        with self._lock:
            if origin in self._entries:
                self._entries.move_to_end(origin)
                return self._entries[origin]
            gate = self._fetching.setdefault(origin, threading.Lock())
        with gate:  # one fetch per origin; latecomers find the entry below
            with self._lock:
                if origin in self._entries:
                    return self._entries[origin]
            verdict = self._load(origin)
            with self._lock:
                self._entries[origin] = verdict
                self._fetching.pop(origin, None)
                while len(self._entries) > MAX_HOSTS_CACHED:
                    self._entries.popitem(last=False)
        return verdict

    def _load(self, origin: str) -> RobotsRules | Refusal:
        got = self._fetch(f"{origin}/robots.txt")
        if got.body is not None:
            return parse_robots(got.body[:MAX_ROBOTS_BYTES].decode("utf-8", "replace"), self._tokens)
        if got.error_kind is None:  # 4xx: no robots.txt, no restrictions
            return RobotsRules()
        return Refusal(got.error_kind, f"robots.txt of {origin} unreachable: {got.error_message}",
                       got.status)
