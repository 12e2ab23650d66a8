"""Per-host politeness: a cap on concurrent requests per host, an optional request rate
per host, and a pause after ``Retry-After``; rows handed out so that hosts are spread.

A :class:`HostGate` is per process (the download stage holds one): it counts the
requests in flight per host (``scheme://host:port``) and when each host may next be
asked. A :class:`HostScheduler` is per shard: it hands the shard's rows to worker
threads one host at a time, round-robin over the hosts with rows left, skipping
hosts that are at their cap or paused. So a URL list dominated by a few hosts neither
hammers them nor parks every thread on one slow host: the other hosts' rows go on at
their own speed. Outcomes are stored by row index, so the output keeps input order.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from vlcurate.download.urls import InvalidURL, browser_url


@dataclass(frozen=True)
class PolitenessConfig:
    """How hard one worker process may press one host (``scheme://host:port``)."""

    # Requests in flight per host per process (0 = no cap). With W worker processes a
    # host sees up to W x this many connections at once.
    max_connections_per_host: int = 8
    host_rate: float = 0.0  # request starts per second per host per process (0 = no limit)
    max_host_pause: float = 60.0  # longest pause a Retry-After (429/503) imposes on a host

    def __post_init__(self) -> None:
        if self.max_connections_per_host < 0 or self.host_rate < 0 or self.max_host_pause < 0:
            raise ValueError("PolitenessConfig: max_connections_per_host, host_rate, max_host_pause >= 0")
        if (parent := getattr(super(), "__post_init__", None)) is not None:
            parent()


def host_key(url: object) -> str | None:
    """``scheme://host[:port]`` of the URL as a browser reads it; None when it has none
    (such rows fail without a request, so no cap applies)."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(browser_url(url))
    except InvalidURL:
        return None
    return f"{parts.scheme}://{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


class HostGate:
    """Requests in flight and next allowed start per host, shared by the threads of a
    process. Thread-safe; schedulers wait on ``cond``."""

    def __init__(self, config: PolitenessConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.rate, self.max_pause = (config.max_connections_per_host, config.host_rate,
                                                 config.max_host_pause)
        self.clock = clock
        self.cond = threading.Condition()
        self.active: Counter[str] = Counter()
        self.not_before: dict[str, float] = {}

    def blocked_until(self, key: str | None, now: float) -> float | None:
        """None when a request to ``key`` may start now; else when it may (inf: when a
        request in flight ends). Call with ``cond`` held."""
        if key is None:
            return None
        if self.limit and self.active[key] >= self.limit:
            return math.inf
        until = self.not_before.get(key, 0.0)
        return until if until > now else None

    def start(self, key: str | None, now: float) -> None:
        if key is None:
            return
        self.active[key] += 1
        if self.rate:
            self.not_before[key] = max(self.not_before.get(key, 0.0), now + 1.0 / self.rate)

    def release(self, key: str | None) -> None:
        """A request to ``key`` ended."""
        if key is None:
            return
        with self.cond:
            self.active[key] -= 1
            if self.active[key] <= 0:
                del self.active[key]
            self.cond.notify_all()

    def pause(self, url: str, seconds: float) -> None:
        """A 429/503 from ``url``'s host said Retry-After ``seconds``: start no new
        request there before then (at most ``max_host_pause``)."""
        key = host_key(url)
        if key is None or seconds <= 0:
            return
        with self.cond:
            until = self.clock() + min(seconds, self.max_pause)
            self.not_before[key] = max(self.not_before.get(key, 0.0), until)
            self.cond.notify_all()


class HostScheduler:
    """Hands out one shard's rows: round-robin over hosts, within a host in input order,
    never starting a request the gate does not allow. Thread-safe."""

    def __init__(self, gate: HostGate, keys: list[str | None]) -> None:
        self.gate = gate
        self._rows: dict[str | None, deque[int]] = {}
        for index, key in enumerate(keys):
            self._rows.setdefault(key, deque()).append(index)
        self._ready: deque[str | None] = deque(self._rows)
        self._waiting: set[str | None] = set()

    def take(self) -> tuple[int, str | None] | None:
        """(row index, host key) of the next row to fetch, waiting while every host with
        rows left is at its cap or paused; None when no rows are left. The caller must
        ``gate.release(key, ...)`` when that row's request is over."""
        gate = self.gate
        with gate.cond:
            while True:
                now = gate.clock()
                for key in [k for k in self._waiting if gate.blocked_until(k, now) is None]:
                    self._waiting.discard(key)
                    self._ready.append(key)
                while self._ready:
                    key = self._ready.popleft()
                    if gate.blocked_until(key, now) is not None:
                        self._waiting.add(key)
                        continue
                    rows = self._rows[key]
                    index = rows.popleft()
                    if rows:
                        self._ready.append(key)
                    else:
                        del self._rows[key]
                    gate.start(key, now)
                    return index, key
                if not self._waiting:
                    return None
                times = [gate.blocked_until(k, now) for k in self._waiting]
                wake = min((t for t in times if t is not None and t != math.inf), default=None)
                gate.cond.wait(None if wake is None else max(0.0, wake - now))
