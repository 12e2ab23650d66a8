"""Fetch URLs over HTTP(S): keep-alive connection pools, SSRF guard, redirects,
opt-out headers, bounded bodies, retries with backoff. Plain Python, no Beam.

A `Fetcher` is thread-safe and meant to be built once per process. `fetch()`
never raises for a bad URL or a network problem: every URL becomes a
`FetchResult` whose `error_kind` is one of `ERROR_KINDS`.

Built on urllib3, whose PoolManager keeps keep-alive connections per (scheme,
host, port): that is the throughput when many URLs share a host. Its pools are
:mod:`vlcurate.download.guard`'s, whose connect step is the SSRF guard.
"""

from __future__ import annotations

import hashlib
import http.client
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from urllib.parse import urljoin

import certifi
import urllib3
from urllib3 import exceptions as ux

from vlcurate.download.guard import (
    PRIVATE_NETWORKS,
    AddressPolicy,
    BlockedAddressError,
    guarded_pools,
    parse_networks,
)
from vlcurate.download.robots import RobotsCache, RobotsFetch
from vlcurate.download.urls import InvalidURL, browser_url
from vlcurate.typed import bounded, check_bounds

USER_AGENT = "vlcurate/0.1"

ERROR_KINDS = (
    "http_error",  # the server answered with a non-2xx, non-redirect status
    "timeout",  # connect, first byte or whole body slower than FetchConfig.timeout
    "too_large",  # Content-Length or the streamed body exceeds FetchConfig.max_bytes
    "opted_out",  # X-Robots-Tag directive (body not downloaded) or robots.txt rule (not requested)
    "blocked_address",  # host resolves to / connected to a non-public address outside allow_networks
    "invalid_url",  # unparsable, no host, or a scheme other than http/https
    "transfer_error",  # connection broke or body was malformed after the status line
    "connection_error",  # DNS failure, refused, reset or TLS failure before a response
    "too_many_redirects",  # more than FetchConfig.max_redirects hops
)

# Kinds worth fetching again later (a --retry-failed run) and within one fetch:
# they describe the path to the server at one moment, not the resource.
# "http_error" is retryable only for the statuses below; use `is_retryable()`.
RETRYABLE = frozenset({"timeout", "connection_error", "transfer_error"})
# 408/429 and gateway/overload statuses (incl. Cloudflare's 52x) are transient;
# 500 is included because overloaded image servers often answer it.
RETRYABLE_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_DRAIN_LIMIT = 64 * 1024  # drain at most this much of an unwanted body to keep the connection
# X-Robots-Tag directives that take a value after ':' (so ':' is not an agent prefix).
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
# What the network layer raises for network problems; anything else is a bug and propagates.
_NETWORK_ERRORS = (ux.HTTPError, OSError, http.client.HTTPException, ValueError)


@dataclass(frozen=True)
class FetchConfig:
    """How to fetch. Validated on construction (ValueError)."""

    timeout: float = bounded(10.0, gt=0)  # per request (each hop) in seconds: connect, each read, whole body
    retries: int = bounded(2, ge=0)  # extra attempts for retryable errors (see is_retryable)
    backoff: float = bounded(0.5, ge=0)  # base delay; attempt n sleeps backoff * 2**(n-1) * [0.5, 1.5)
    max_redirects: int = bounded(5, ge=0)
    user_agent_token: str | None = None  # appended to UA: "vlcurate/0.1 (+token)"
    max_bytes: int = bounded(50_000_000, ge=1)  # cap on the body; larger -> too_large
    # X-Robots-Tag directives that mean "do not use"; an empty tuple disables the check.
    disallowed_header_directives: tuple[str, ...] = ("noai", "noimageai", "noindex", "noimageindex")
    # Networks (CIDR) reachable besides public addresses, e.g. ["127.0.0.0/8"] for a
    # loopback mirror; every other non-public address stays blocked, redirects included.
    allow_networks: tuple[str, ...] = ()
    # Shorthand adding guard.PRIVATE_NETWORKS (10/8, 172.16/12, 192.168/16, 127/8,
    # fc00::/7, ::1); never link-local, multicast or reserved addresses.
    allow_private: bool = False
    threads: int = bounded(32, ge=1)  # concurrent fetches in fetch_many
    # Honour robots.txt (RFC 9309; fetched once per host and cached): a disallowed URL
    # is opted_out with the rule. Off by default, like img2dataset.
    robots_txt: bool = False

    def __post_init__(self) -> None:
        check_bounds(self)
        parse_networks(self.allow_networks)  # ValueError naming a bad CIDR
        # Cooperative: a config inheriting from several configs validates them all.
        if (parent := getattr(super(), "__post_init__", None)) is not None:
            parent()


@dataclass(frozen=True)
class FetchResult:
    """Outcome of one URL. `data` is set exactly when `error_kind` is None."""

    data: bytes | None
    error_kind: str | None  # None on success; one of ERROR_KINDS
    error_message: str | None  # one line
    http_status: int | None  # status of the last response received, if any
    final_url: str | None  # URL of the last hop tried (after redirects)
    attempts: int  # 1 + retries actually made
    retry_after: float | None = None  # server's Retry-After (seconds) on 429/503, if any


def address_policy(config: FetchConfig) -> AddressPolicy:
    """The SSRF guard's policy for `config`: public addresses plus allow_networks
    (plus the private ranges when allow_private)."""
    cidrs = (*config.allow_networks, *(PRIVATE_NETWORKS if config.allow_private else ()))
    return AddressPolicy(parse_networks(cidrs))


def is_retryable(error_kind: str | None, http_status: int | None = None) -> bool:
    """True if a failure of this kind (and status) may succeed on a later attempt."""
    if error_kind == "http_error":
        return http_status in RETRYABLE_HTTP_STATUSES
    return error_kind in RETRYABLE


def _failure(kind: str, message: str, status: int | None, url: str | None,
             retry_after: float | None = None) -> FetchResult:
    one_line = " ".join(message.split())[:500]
    return FetchResult(None, kind, one_line, status, url, 1, retry_after)


def _classify(exc: BaseException, got_response: bool) -> tuple[str, str]:
    """(error_kind, message) for an exception. Order matters: in urllib3
    NewConnectionError subclasses ConnectTimeoutError."""
    if isinstance(exc, BlockedAddressError):
        return "blocked_address", str(exc)
    if isinstance(exc, ux.NameResolutionError):
        return "connection_error", f"DNS resolution failed: {exc}"
    if isinstance(exc, ux.NewConnectionError):
        return "connection_error", str(exc)
    if isinstance(exc, (ux.ConnectTimeoutError, ux.ReadTimeoutError, TimeoutError)):
        return "timeout", str(exc) or "timed out"
    if isinstance(exc, ux.SSLError):
        return "connection_error", f"TLS: {exc}"
    if isinstance(exc, (ux.LocationValueError, http.client.InvalidURL, UnicodeError)):
        return "invalid_url", str(exc)
    # Broken connection, bad status line, bad chunking, gzip errors...
    return ("transfer_error" if got_response else "connection_error"), f"{type(exc).__name__}: {exc}"


def _opted_out(values: list[str], agents: frozenset[str], disallowed: frozenset[str]) -> str | None:
    """The X-Robots-Tag directive that forbids our use, if any. A value is a comma
    list; `agent: d1, d2` scopes the directives after it to that agent (until the
    next prefix); directives for other agents (e.g. googlebot) don't apply to us."""
    for value in values:
        agent: str | None = None
        for part in value.split(","):
            head, sep, rest = part.partition(":")
            if sep and head.strip().lower() not in _VALUED_DIRECTIVES:
                agent, part = head.strip().lower(), rest
            directive = part.strip().lower()
            if directive in disallowed and (agent is None or agent in agents):
                return directive
    return None


def _header_text(value: str) -> str:
    """A header value as its sender meant it: http.client decodes header bytes as
    Latin-1, browsers read a Location's bytes as UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _discard(response: urllib3.BaseHTTPResponse, drain: bool) -> None:
    """Finish with an unwanted body: drain a small one so the keep-alive
    connection can be reused, otherwise close the connection."""
    remaining = getattr(response, "length_remaining", None)
    if drain and remaining is not None and remaining <= _DRAIN_LIMIT:
        try:
            response.drain_conn()
            return
        except _NETWORK_ERRORS:  # a broken body just means: close it
            pass
    response.close()


class Fetcher:
    """Fetches URLs with per-host keep-alive pools. Thread-safe; use as a context
    manager or call close()."""

    def __init__(self, config: FetchConfig,
                 on_retry_after: Callable[[str, float], None] | None = None) -> None:
        """`on_retry_after(url, seconds)` is called as soon as a 429/503 with a
        Retry-After arrives (the download stage pauses that host)."""
        self.config = config
        self._on_retry_after = on_retry_after
        token = config.user_agent_token
        self._headers = {
            "User-Agent": f"{USER_AGENT} (+{token})" if token else USER_AGENT,
            "Accept": "image/avif,image/webp,image/*,*/*;q=0.8",
            "Accept-Encoding": "identity",  # images are compressed already
        }
        self._agents = frozenset({"*", "vlcurate"} | ({token.lower()} if token else set()))
        self._disallowed = frozenset(d.lower() for d in config.disallowed_header_directives)
        # Certificates are always verified, against certifi's bundle (a requests
        # dependency; slim OS images often lack a current one).
        # maxsize = threads: every worker may keep a connection to the same host.
        # num_pools bounds how many hosts keep idle connections open (LRU).
        self._pool = urllib3.PoolManager(num_pools=max(64, 4 * config.threads), maxsize=config.threads,
                                         block=False, retries=False, ca_certs=certifi.where())
        self._pool.pool_classes_by_scheme = guarded_pools(address_policy(config))
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        tokens = (token, "vlcurate") if token else ("vlcurate",)
        self._robots = RobotsCache(self._fetch_robots, tokens) if config.robots_txt else None

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop worker threads and close pooled connections."""
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None
        self._pool.clear()

    def fetch(self, url: str) -> FetchResult:
        """Fetch one URL, retrying retryable failures with backoff. Never raises
        for a bad URL or a network problem."""
        if (refused := self._robots_refusal(url)) is not None:
            return refused  # cached per host: trying again now would say the same
        return self._fetch_retrying(url, robots=True)

    def _fetch_retrying(self, url: str, robots: bool) -> FetchResult:
        attempt = 0
        while True:
            attempt += 1
            result = self._fetch_once(url, robots)
            if result.retry_after is not None and self._on_retry_after is not None:
                self._on_retry_after(result.final_url or url, result.retry_after)
            if (result.error_kind is None or attempt > self.config.retries
                    or not is_retryable(result.error_kind, result.http_status)):
                return replace(result, attempts=attempt)
            time.sleep(self._backoff_delay(url, attempt, result.retry_after))

    def _robots_refusal(self, url: str) -> FetchResult | None:
        """The failure for a URL its host's robots.txt refuses (or that we could not
        learn because robots.txt is unreachable); None when allowed or not checked."""
        if self._robots is None:
            return None
        try:
            normalised = browser_url(url)
        except (InvalidURL, TypeError):
            return None  # _fetch_once reports it
        refusal = self._robots.refusal(normalised)
        if refusal is None:
            return None
        return _failure(refusal.error_kind, refusal.message, refusal.http_status, normalised)

    def _fetch_robots(self, url: str) -> RobotsFetch:
        result = self._fetch_retrying(url, robots=False)
        if result.error_kind is None:
            return RobotsFetch(result.data, result.http_status)
        if result.error_kind == "http_error" and 400 <= (result.http_status or 0) < 500:
            return RobotsFetch(None, result.http_status)  # no robots.txt: no rules
        return RobotsFetch(None, result.http_status, result.error_kind, result.error_message)

    def fetch_many(self, urls: Iterable[str]) -> Iterator[tuple[int, FetchResult]]:
        """Fetch concurrently with `config.threads` workers; yield (index, result) in
        completion order. At most 2*threads URLs are in flight, so a huge (even
        lazy) input is consumed gradually and memory stays bounded."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.config.threads, "vlcurate-fetch")
            executor = self._executor
        source = iter(enumerate(urls))
        pending: dict[Future[FetchResult], int] = {}
        window = 2 * self.config.threads
        try:
            while True:
                for index, url in source:
                    pending[executor.submit(self.fetch, url)] = index
                    if len(pending) >= window:
                        break
                if not pending:
                    return
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield pending.pop(future), future.result()
        finally:  # consumer stopped early: don't leave queued work behind
            for future in pending:
                future.cancel()

    def _backoff_delay(self, url: str, attempt: int, retry_after: float | None) -> float:
        # Jitter from a hash of (url, attempt): spreads retries of different URLs
        # apart, yet a rerun sleeps exactly the same (reproducible timings/tests).
        digest = hashlib.sha256(f"{url}\n{attempt}".encode()).digest()
        jitter = 0.5 + int.from_bytes(digest[:4], "big") / 2**32
        delay = self.config.backoff * 2 ** (attempt - 1) * jitter
        if retry_after is not None:  # honour the server, but never wait past one timeout
            delay = max(delay, min(retry_after, self.config.timeout))
        return delay

    def _fetch_once(self, url: str, robots: bool = True) -> FetchResult:
        """One attempt: follow redirects (each hop checked against robots.txt when
        `robots` and enabled), then stream the body."""
        timeout = urllib3.Timeout(connect=self.config.timeout, read=self.config.timeout)
        current = url if isinstance(url, str) else ""
        for _hop in range(self.config.max_redirects + 1):
            try:  # each hop read as a browser would (the Location header too)
                current = browser_url(current)
            except InvalidURL as e:
                return _failure("invalid_url", f"{e}: {current!r}", None, current or None)
            if robots and _hop and (refused := self._robots_refusal(current)) is not None:
                return refused
            started = time.monotonic()
            try:
                response = self._pool.urlopen("GET", current, headers=self._headers, redirect=False,
                                              retries=False, preload_content=False, timeout=timeout)
            except (BlockedAddressError, *_NETWORK_ERRORS) as e:
                kind, message = _classify(e, got_response=False)
                return _failure(kind, message, None, current)
            try:
                if (status := response.status) in _REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    _discard(response, drain=True)
                    if not location:
                        return _failure("http_error", f"HTTP {status} without Location", status, current)
                    current = urljoin(current, _header_text(location).strip())
                    continue
                return self._read_final(response, current, started, opt_out=robots)
            finally:
                response.release_conn()
        return _failure("too_many_redirects",
                        f"more than {self.config.max_redirects} redirects", None, current)

    def _read_final(self, response: urllib3.BaseHTTPResponse, url: str, started: float,
                    opt_out: bool = True) -> FetchResult:
        status, cap = response.status, self.config.max_bytes
        if not (200 <= status < 300) or status in (204, 205):
            _discard(response, drain=True)
            reason = getattr(response, "reason", "") or ""
            wait_s = response.headers.get("Retry-After", "").strip()  # HTTP-date form ignored
            asked = float(wait_s) if wait_s.isdigit() and status in (429, 503) else None
            return _failure("http_error", f"HTTP {status} {reason}".strip(), status, url, asked)
        problem = self._refusal(response.headers, opt_out)
        chunks: list[bytes] = []
        size = 0
        try:
            while problem is None:
                # read1: whatever one recv brings (read() would block until the
                # whole chunk arrived, defeating the deadline check below).
                chunk = response.read1(_CHUNK, decode_content=True)
                if not chunk:
                    return FetchResult(b"".join(chunks), None, None, status, url, 1)
                size += len(chunk)
                chunks.append(chunk)
                if size > cap:
                    problem = ("too_large", f"body exceeds {cap} bytes")
                elif time.monotonic() - started > self.config.timeout:  # a slow drip
                    problem = ("timeout", f"body not received within {self.config.timeout}s")
        except _NETWORK_ERRORS as e:
            problem = _classify(e, got_response=True)
        _discard(response, drain=False)  # close, don't drain: we must not download it
        return _failure(*problem, status, url)

    def _refusal(self, headers: urllib3.HTTPHeaderDict, opt_out: bool) -> tuple[str, str] | None:
        """Reasons to refuse a 2xx response from its headers alone (`opt_out`: the
        X-Robots-Tag check, which does not apply to robots.txt itself)."""
        if self._disallowed and opt_out:
            directive = _opted_out(headers.getlist("X-Robots-Tag"), self._agents, self._disallowed)
            if directive:
                return "opted_out", f"X-Robots-Tag: {directive}"
        length = headers.get("Content-Length", "")
        if length.strip().isdigit() and int(length) > self.config.max_bytes:
            return "too_large", f"Content-Length {length} > {self.config.max_bytes}"
        return None
