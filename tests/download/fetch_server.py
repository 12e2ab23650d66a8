"""The fetcher tests' HTTP server on 127.0.0.1: one path per behaviour, hits counted."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from PIL import Image

from vlcurate.demo.server import running


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 40, 40)).save(buf, "JPEG")
    return buf.getvalue()


JPEG = _jpeg()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is observable
    disable_nagle_algorithm = True  # else headers+body writes stall 40 ms on delayed ACKs

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        srv: _Server = self.server  # type: ignore[assignment]
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        with srv.lock:
            srv.hits[path] += 1
            hits = srv.hits[path]
            srv.log.append((path, self.client_address[1], self.headers.get("Host")))
        if path == "/robots.txt":  # what srv.robots_txt says: (status, body), None = 404
            time.sleep(srv.robots_delay)
            status, body = srv.robots_txt or (404, b"")
            self._send(status, body, {"Content-Type": "text/plain"})
        elif path.startswith("/ok"):
            self._send(200, JPEG, {"Content-Type": "image/jpeg"})
        elif path == "/ua":
            self._send(200, self.headers.get("User-Agent", "").encode())
        elif path == "/404":
            self._send(404, b"not here")
        elif path.startswith("/flaky"):  # 500 for the first `fail` requests, then the image
            fail = int(query.get("fail", ["2"])[0])
            self._send(500, b"oops") if hits <= fail else self._send(200, JPEG)
        elif path == "/429":
            self._send(429, b"slow down", {"Retry-After": "0"}) if hits == 1 else self._send(200, JPEG)
        elif path.startswith("/503-wait"):  # asks for a wait longer than any backoff the tests use
            self._send(503, b"busy", {"Retry-After": "2"}) if hits == 1 else self._send(200, JPEG)
        elif path == "/slow":
            time.sleep(1.0)
            self._send(200, JPEG)
        elif path == "/drip":  # headers at once, then a byte every 0.1 s: each read is quick
            self.send_response(200)
            self.send_header("Content-Length", "30")
            self.end_headers()
            for _ in range(30):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        elif path.startswith("/redirect/"):
            n = int(path.rsplit("/", 1)[1])
            target = f"/redirect/{n - 1}" if n > 1 else "../ok.jpg"  # relative Locations
            self._send(302, b"", {"Location": target})
        elif path == "/loop":
            self._send(301, b"", {"Location": "/loop"})
        elif path == "/to":  # redirect to an arbitrary absolute URL
            self._send(307, b"", {"Location": query["u"][0]})
        elif path == "/nolocation":
            self._send(302, b"")
        elif path == "/big-declared":
            self._send(200, b"x" * 5000)
        elif path == "/big-chunked":  # no Content-Length: only the streamed count can tell
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(5):
                self.wfile.write(b"3e8\r\n" + b"x" * 1000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/robots":
            self.send_response(200)
            for v in query["v"]:
                self.send_header("X-Robots-Tag", v)
            self.send_header("Content-Length", str(len(JPEG)))
            self.end_headers()
            self.wfile.write(JPEG)
        elif path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 500)
            self.wfile.flush()
            self.close_connection = True
        else:
            self._send(404)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # clients hang up on purpose
        pass

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        self.log: list[tuple[str, int, str | None]] = []
        self.robots_txt: tuple[int, bytes] | None = None
        self.robots_delay = 0.0

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server_address[1]}{path}"



def running_server() -> contextlib.AbstractContextManager[_Server]:
    """A fresh test server on 127.0.0.1 (a free port), served until the block ends."""
    return running(_Server())  # type: ignore[return-value]
