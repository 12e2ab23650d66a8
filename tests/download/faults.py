"""A small fault-injecting image corpus and its loopback server, for download-stage tests.

Our own equivalent of ``shared/bench/download`` (make_corpus.py + serve.py), small and
fast, so the tests never depend on files outside the repository. The URL path prefix
is the behaviour:

  /ok/F  /404/F  /500/F  /slow/F (answers after ``slow`` s)  /trunc/F (full
  Content-Length, half the body, then hang up)  /corrupt/F (half a file, consistent
  length)  /html/F  /redirect/F (302 -> /ok/F)  /noai/F (X-Robots-Tag: noai)
  /flaky/F (503 on the first request for that path, the image afterwards)
  /bomb/F (1-bit PNG, 40000 x 40000)  /midbomb/F (20000 x 20000)

``server.requests`` counts requests per path (query string dropped),
``server.agents`` collects the User-Agent headers seen.
"""

from __future__ import annotations

import contextlib
import io
import random
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image, ImageDraw

from vlcurate.demo.server import running

# Rows per kind of the standard corpus (150 rows).
KINDS = {"ok": 90, "404": 8, "500": 6, "slow": 4, "trunc": 6, "corrupt": 6, "html": 6,
         "redirect": 8, "noai": 6, "flaky": 6, "bomb": 2, "midbomb": 2}
# What the download stage must make of each kind: (status, error_kind).
EXPECTED = {
    "ok": ("ok", None), "redirect": ("ok", None), "slow": ("ok", None),
    "404": ("failed", "http_error"), "500": ("failed", "http_error"),
    "flaky": ("failed", "http_error"),  # first request only; a retry succeeds
    "trunc": ("failed", "transfer_error"), "corrupt": ("failed", "decode_error"),
    "html": ("failed", "not_an_image"), "noai": ("failed", "opted_out"),
    "bomb": ("failed", "bomb"), "midbomb": ("failed", "bomb"),
}
BOMB_SIDES = {"bomb.png": 40000, "midbomb.png": 20000}
_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
_HTML = b"<html><body><h1>Not an image</h1></body></html>"


def bomb_png(side: int) -> bytes:
    """An all-black 1-bit PNG of side x side pixels: small on the wire, side**2/8 bytes decoded."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = b"\x00" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(1)  # fast; still ~1 MB for 40000^2
    idat = b"".join(comp.compress(row * 1000) for _ in range(side // 1000))
    idat += comp.compress(row * (side % 1000)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def picture(rng: random.Random, fmt: str) -> bytes:
    w, h = rng.randint(48, 320), rng.randint(48, 320)
    seed = Image.frombytes("RGB", (4, 4), bytes(rng.randrange(256) for _ in range(48)))
    img = seed.resize((w, h), Image.Resampling.BICUBIC)
    x, y = rng.randrange(w), rng.randrange(h)
    ImageDraw.Draw(img).ellipse([x, y, x + w // 3, y + h // 3], fill=(rng.randrange(256), 0, 0))
    buf = io.BytesIO()
    img.save(buf, {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt], quality=85)
    return buf.getvalue()


@dataclass(frozen=True)
class FaultCorpus:
    files: dict[str, bytes]  # file name -> bytes, served under any kind prefix
    rows: list[dict]  # path (no host), caption, kind


def make_fault_corpus(kinds: dict[str, int] = KINDS, seed: int = 0) -> FaultCorpus:
    """Rows of each kind in a deterministic shuffled order; images 48-320 px, jpg/png/webp."""
    rng = random.Random(seed)
    order = [k for k, n in kinds.items() for _ in range(n)]
    rng.shuffle(order)
    files = {name: bomb_png(side) for name, side in BOMB_SIDES.items()
             if kinds.get(name.removesuffix(".png"))}
    rows = []
    for i, kind in enumerate(order):
        if kind in ("bomb", "midbomb"):
            name = f"{kind}.png"
        else:
            ext = rng.choice(["jpg", "jpg", "png", "webp"])
            name = f"{i:04d}.{ext}"
            files[name] = picture(rng, ext)
        rows.append({"path": f"/{kind}/{name}", "caption": f"{kind} picture number {i}", "kind": kind})
    return FaultCorpus(files, rows)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each keep-alive response waits for a delayed ACK

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None,
              length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        srv: FaultServer = self.server  # type: ignore[assignment]
        path = self.path.split("?", 1)[0]
        with srv.lock:
            srv.requests[path] += 1
            count = srv.requests[path]
            srv.agents.append(self.headers.get("User-Agent", ""))
        _, kind, name = (path.split("/", 2) + ["", ""])[:3]
        data = srv.files.get(name)
        ctype = _TYPES.get(name.rsplit(".", 1)[-1], "application/octet-stream")
        if kind in ("404", "500") or (data is None and kind not in ("html", "redirect")):
            return self._send(int(kind) if kind in ("404", "500") else 404, b"no", "text/plain")
        if kind == "html":
            return self._send(200, _HTML, "text/html; charset=utf-8")
        if kind == "redirect":
            return self._send(302, b"", "text/plain", {"Location": f"/ok/{name}"})
        if kind == "flaky" and count == 1:
            return self._send(503, b"busy", "text/plain")
        if kind == "slow":
            time.sleep(srv.slow)
        if kind == "trunc":  # announce the whole file, send half, hang up
            self.close_connection = True
            return self._send(200, data[: len(data) // 2], ctype, length=len(data))
        if kind == "corrupt":
            return self._send(200, data[: len(data) // 2], ctype)
        return self._send(200, data, ctype, {"X-Robots-Tag": "noai"} if kind == "noai" else None)


class FaultServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes], slow: float) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files, self.slow = files, slow
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.agents: list[str] = []
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address) -> None:  # clients hang up on purpose
        pass


@contextlib.contextmanager
def serve_faults(files: dict[str, bytes], slow: float = 0.3) -> Iterator[FaultServer]:
    """Serve ``files`` with the fault behaviours on 127.0.0.1 (a free port) until the block ends."""
    with running(FaultServer(files, slow)) as server:
        yield server
