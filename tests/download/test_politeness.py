"""Per-host politeness through the download stage, against loopback hosts that count
what they see: a cap on concurrent connections per host that the server never sees
exceeded, hosts spread so a slow dominant host does not hold every thread, output in
input order, Retry-After pausing a host, and the per-host rate."""

from __future__ import annotations

import contextlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.download.fetch_server import JPEG
from vlcurate.demo.server import running
from vlcurate.download.hosts import HostGate, HostScheduler, PolitenessConfig, host_key
from vlcurate.download.stage import DownloadConfig, DownloadStage
from vlcurate.pipelines.stage import Layout


class _Counting(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args: object) -> None:
        pass

    def handle(self) -> None:  # one call per TCP connection (keep-alive requests inside)
        srv: CountingServer = self.server  # type: ignore[assignment]
        with srv.lock:
            srv.open_now += 1
            srv.max_open = max(srv.max_open, srv.open_now)
        try:
            super().handle()
        finally:
            with srv.lock:
                srv.open_now -= 1

    def do_GET(self) -> None:  # noqa: N802
        srv: CountingServer = self.server  # type: ignore[assignment]
        with srv.lock:
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
            srv.started.append(time.monotonic())
            busy = srv.busy_once and len(srv.started) == 1
        if not busy:
            time.sleep(srv.delay)
        if busy:  # the first request is told at once to come back later
            body, status, headers = b"busy", 429, {"Retry-After": str(srv.busy_once)}
        else:
            body, status, headers = JPEG, 200, {"Content-Type": "image/jpeg"}
        with srv.lock:
            srv.in_flight -= 1
            srv.finished.append(time.monotonic())
            if busy:
                srv.busy_sent = srv.finished[-1]
        self.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


class CountingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, delay: float, busy_once: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), _Counting)
        self.delay, self.busy_once = delay, busy_once
        self.lock = threading.Lock()
        self.open_now = self.max_open = self.in_flight = self.max_in_flight = 0
        self.started: list[float] = []
        self.finished: list[float] = []
        self.busy_sent: float | None = None  # when the 429 went out

    def handle_error(self, request, client_address) -> None:
        pass

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


@contextlib.contextmanager
def serving(*servers: CountingServer):
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(running(s)) for s in servers]


def run_download(tmp_path: Path, urls: list[str], **settings) -> list[dict]:
    layout = Layout(tmp_path / "v")
    Path(layout.input_shard(0)).parent.mkdir(parents=True)
    pq.write_table(pa.table({"url": urls, "caption": ["c"] * len(urls)}), layout.input_shard(0))
    config = DownloadConfig(allow_networks=("127.0.0.0/8",), image_size=16, retries=1, backoff=0.0,
                            **settings)
    stage = DownloadStage(config, layout)
    stage.setup()
    try:
        stage.run_shard(0)
    finally:
        stage.pool.shutdown()
        stage.fetcher.close()
    return pq.read_table(layout.samples_parquet(0)).to_pylist()


def test_a_slow_dominant_host_neither_exceeds_its_cap_nor_holds_the_others(tmp_path):
    slow, fast_a, fast_b = CountingServer(0.15), CountingServer(0.0), CountingServer(0.0)
    with serving(slow, fast_a, fast_b):
        # 80% of the rows on the slow host, and all of them first in input order: a
        # FIFO would start the others only once the slow host's rows were nearly done.
        urls = ([slow.url(f"s{i}.jpg") for i in range(16)] + [fast_a.url(f"a{i}.jpg") for i in range(2)]
                + [fast_b.url(f"b{i}.jpg") for i in range(2)])
        rows = run_download(tmp_path, urls, threads=8, max_connections_per_host=2)
    assert [r["url"] for r in rows] == urls  # output in input order
    assert {r["status"] for r in rows} == {"ok"}
    # Counted at the server: never more than the cap, connections or requests.
    assert slow.max_open <= 2 and slow.max_in_flight <= 2
    assert slow.max_open == 2  # and the cap was used
    # The fast hosts were done while the slow host had finished only a few of its 16
    # (it needs 16 x 0.15 s / 2 = 1.2 s in all).
    fast_done = max(fast_a.finished + fast_b.finished)
    assert sum(t <= fast_done for t in slow.finished) <= 4
    assert fast_done - min(slow.started) < 0.6


def test_retry_after_pauses_the_host(tmp_path):
    busy = CountingServer(0.2, busy_once=1)
    with serving(busy):
        urls = [busy.url(f"r{i}.jpg") for i in range(7)]
        rows = run_download(tmp_path, urls, threads=4, max_connections_per_host=4, max_host_pause=5.0)
    assert {r["status"] for r in rows} == {"ok"}  # the 429 was retried
    # Four requests go out at once (the connection cap); the first is told 429
    # (Retry-After: 1) at once. The three others were sent before the client could know,
    # so they may start whenever the machine gets to them; everything sent after the
    # 429 (three more rows and the retry) is held back a second from it. Without the
    # pause they would start as soon as a connection is free, ~0.2 s after it. (Timed
    # from the 429, not from the first request: on a loaded machine the first four need
    # not start together.)
    assert len(busy.started) == 8
    assert all(t - busy.busy_sent >= 0.9 for t in sorted(busy.started)[4:])


def test_host_rate(tmp_path):
    server = CountingServer(0.0)
    with serving(server):
        run_download(tmp_path, [server.url(f"q{i}.jpg") for i in range(5)], threads=4, host_rate=10.0)
    gaps = [b - a for a, b in zip(server.started, server.started[1:])]
    assert len(server.started) == 5 and min(gaps) >= 0.08  # 10/s: 0.1 s apart (timer slack)


def test_two_shards_at_once_share_the_threads_and_the_next_fills_the_tail(tmp_path):
    """As the local runner runs them (shards_at_once = 2): shard 1 starts while shard 0
    waits on its slow URL, on the threads shard 0 no longer needs, never more than
    ``threads`` requests in all; each shard's output in its input order."""
    slow, fast = CountingServer(1.0), CountingServer(0.05)
    layout = Layout(tmp_path / "v")
    Path(layout.input_shard(0)).parent.mkdir(parents=True)
    urls = {0: [slow.url("s.jpg")] + [fast.url(f"a{i}.jpg") for i in range(7)],
            1: [fast.url(f"b{i}.jpg") for i in range(8)]}
    for shard, shard_urls in urls.items():
        pq.write_table(pa.table({"url": shard_urls, "caption": ["c"] * 8}), layout.input_shard(shard))
    stage = DownloadStage(DownloadConfig(allow_networks=("127.0.0.0/8",), image_size=16, retries=0,
                                         threads=4, max_connections_per_host=0), layout)
    stage.setup()
    try:
        with serving(slow, fast):
            first = threading.Thread(target=stage.run_shard, args=(0,))
            first.start()
            while not slow.started:  # shard 0 has queued its workers
                time.sleep(0.01)
            second = threading.Thread(target=stage.run_shard, args=(1,))
            second.start()
            first.join(10)
            second.join(10)
    finally:
        stage.pool.shutdown()
        stage.fetcher.close()
    for shard, shard_urls in urls.items():
        rows = pq.read_table(layout.samples_parquet(shard)).to_pylist()
        assert [r["url"] for r in rows] == shard_urls and {r["status"] for r in rows} == {"ok"}
    assert fast.max_in_flight <= 3  # the slow request held the fourth thread throughout
    # Shard 1 ran entirely within shard 0's slow tail: its 8 rows on the 3 free threads.
    assert max(fast.finished) < slow.finished[0]
    assert len(fast.started) == 15


def test_scheduler_spreads_hosts_and_respects_the_cap():
    keys = ["http://a:80"] * 4 + ["http://b:80"] * 2 + [None] + ["http://c:80"]
    gate = HostGate(PolitenessConfig(max_connections_per_host=1))
    scheduler = HostScheduler(gate, keys)
    order = [scheduler.take() for _ in range(4)]
    assert [i for i, _ in order] == [0, 4, 6, 7]  # one per host while a's first is in flight
    gate.release("http://a:80")
    gate.release("http://b:80")
    assert scheduler.take() == (1, "http://a:80")
    assert scheduler.take() == (5, "http://b:80")
    gate.release("http://a:80")
    gate.pause("http://a/x.jpg", 30.0)  # a Retry-After: a waits, nothing else is left
    clock = [gate.clock()]
    gate.clock = lambda: clock[0]
    waiter = threading.Thread(target=lambda: order.append(scheduler.take()))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # held back by the pause
    clock[0] += 31.0
    with gate.cond:
        gate.cond.notify_all()
    waiter.join(2.0)
    assert order[-1] == (2, "http://a:80")


@pytest.mark.parametrize(("url", "key"), [("http://Example.com/a", "http://example.com:80"),
                                          ("https://x.org:8443/a", "https://x.org:8443"),
                                          ("https://x.org/a", "https://x.org:443"), (None, None), ("nope", None)])
def test_host_key(url, key):
    assert host_key(url) == key
