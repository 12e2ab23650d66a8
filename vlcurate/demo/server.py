"""A loopback HTTP server for the demo corpus, started and stopped by the demo itself."""

from __future__ import annotations

import contextlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

from vlcurate.demo.corpus import Served

DEFAULT_PORT = 8631  # fixed when free, so the demo's URLs (and so its bytes) repeat


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, Served] = {}
    delay: float = 0.0
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without this, each keep-alive request
    # waits for the client's delayed ACK (~40 ms).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.delay:
            time.sleep(self.delay)
        self.server.requests[self.path] = self.server.requests.get(self.path, 0) + 1  # type: ignore[attr-defined]
        served = self.files.get(self.path) or Served(404, "text/plain", b"not found")
        self.send_response(served.status)
        self.send_header("Content-Type", served.content_type)
        self.send_header("Content-Length", str(len(served.body)))
        self.end_headers()
        self.wfile.write(served.body)

    def log_message(self, *args) -> None:  # keep the demo's output readable
        pass


@contextlib.contextmanager
def serve(files: dict[str, Served], port: int = DEFAULT_PORT, delay: float = 0.0) -> Iterator[ThreadingHTTPServer]:
    """Serve ``files`` on 127.0.0.1 (``port``, or any free port if taken) until the block ends.

    ``delay`` seconds pass before each response (tests use it to slow a build down).
    ``server.requests`` counts requests per path; ``server.base_url`` is ``http://127.0.0.1:PORT``.
    """
    handler = type("DemoHandler", (_Handler,), {"files": files, "delay": delay})
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.requests = {}  # type: ignore[attr-defined]
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    with running(server):
        yield server


@contextlib.contextmanager
def running(server: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    """Serve on a background thread until the block ends, then shut down and close."""
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
