"""A scriptable HTTP server on 127.0.0.1 for the crawler and download tests (and the bench).

Each path gets a *route*: a function ``(handler, n) -> None`` that answers the ``n``-th request
(0-based) to that path. The server counts requests per path, and when each started and
finished, so tests can check retries, waits and what was (not) requested again.

Example:
    >>> with LocalServer() as server:
    ...     server.add("/a.jpg", ok(jpeg_bytes))
    ...     server.add("/flaky.jpg", sequence(status(500), ok(jpeg_bytes)))
    ...     httpx.get(server.url("/a.jpg"))
    ...     server.count("/a.jpg")
    1
"""

from __future__ import annotations

import collections
import io
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Route = Callable[[BaseHTTPRequestHandler, int], None]


# ------------------------------------------------------------------------------- routes


def ok(body: bytes, content_type: str = "image/jpeg", delay: float = 0.0) -> Route:
    """200 with ``body``, after ``delay`` seconds."""

    def route(h: BaseHTTPRequestHandler, n: int) -> None:
        if delay:
            time.sleep(delay)
        _send(h, 200, body, {"Content-Type": content_type})

    return route


def status(code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Route:
    """``code`` with an optional body and headers (e.g. Retry-After)."""

    def route(h: BaseHTTPRequestHandler, n: int) -> None:
        _send(
            h,
            code,
            body or f"error {code}\n".encode(),
            {"Content-Type": "text/plain", **(headers or {})},
        )

    return route


def redirect(location: str, code: int = 302) -> Route:
    def route(h: BaseHTTPRequestHandler, n: int) -> None:
        _send(h, code, b"", {"Location": location})

    return route


def cut(body: bytes, send: int, content_type: str = "image/jpeg") -> Route:
    """Declare ``len(body)`` bytes, send the first ``send``, then close the connection."""

    def route(h: BaseHTTPRequestHandler, n: int) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(body[:send])
        h.wfile.flush()
        h.close_connection = True

    return route


def trickle(body: bytes, chunks: int, interval: float, content_type: str = "image/jpeg") -> Route:
    """Send ``body`` in ``chunks`` pieces, ``interval`` seconds apart (a slow transfer)."""

    def route(h: BaseHTTPRequestHandler, n: int) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        step = max(1, -(-len(body) // chunks))
        for start in range(0, len(body), step):
            time.sleep(interval)
            h.wfile.write(body[start : start + step])
            h.wfile.flush()

    return route


def sequence(*routes: Route) -> Route:
    """The ``n``-th request gets ``routes[n]``; later ones get the last route."""

    def route(h: BaseHTTPRequestHandler, n: int) -> None:
        routes[min(n, len(routes) - 1)](h, n)

    return route


def ranged(body: bytes, content_type: str = "application/octet-stream") -> Route:
    """Serve ``body`` honouring a ``Range: bytes=N-`` header with 206 (as GitHub raw does)."""

    def route(h: BaseHTTPRequestHandler, n: int) -> None:
        spec = h.headers.get("Range")
        if spec and spec.startswith("bytes=") and spec.endswith("-"):
            start = int(spec[len("bytes=") : -1])
            if start >= len(body):
                _send(h, 416, b"", {"Content-Range": f"bytes */{len(body)}"})
                return
            _send(
                h,
                206,
                body[start:],
                {
                    "Content-Type": content_type,
                    "Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}",
                },
            )
            return
        _send(h, 200, body, {"Content-Type": content_type})

    return route


def _send(h: BaseHTTPRequestHandler, code: int, body: bytes, headers: dict[str, str]) -> None:
    h.send_response(code)
    for key, value in headers.items():
        h.send_header(key, value)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


# ------------------------------------------------------------------------------- server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle + delayed ACK
    # would add ~40 ms to every response.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        n = self.server.owner._start(path, dict(self.headers))
        route = self.server.owner.routes.get(path)
        try:
            if route is None:
                _send(self, 404, b"not found\n", {"Content-Type": "text/plain"})
            else:
                route(self, n)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (a timeout or a kill)
        finally:
            self.server.owner._finish(path)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256  # a crawl opens dozens of connections at once
    owner: LocalServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that drops a keep-alive connection (a cancelled download, a pool
        # closing) is normal traffic here; socketserver's default prints a traceback
        # to stderr, which would pollute the CLI output the tests read.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) with per-path routes and counters."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.finished: collections.Counter[str] = collections.Counter()
        self.times: dict[str, list[float]] = collections.defaultdict(list)
        self.request_headers: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
        self.in_flight = 0
        self.max_in_flight = 0
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, route: Route) -> str:
        """Serve ``route`` at ``path``; returns the full URL."""
        self.routes[path] = route
        return self.url(path)

    def count(self, path: str) -> int:
        with self._lock:
            return self.counts[path]

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def total_finished(self) -> int:
        with self._lock:
            return sum(self.finished.values())

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.finished.clear()
            self.times.clear()
            self.request_headers.clear()
            self.max_in_flight = 0

    def _start(self, path: str, headers: dict[str, str]) -> int:
        with self._lock:
            n = self.counts[path]
            self.counts[path] += 1
            self.times[path].append(time.monotonic())
            self.request_headers[path].append(headers)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return n

    def _finish(self, path: str) -> None:
        with self._lock:
            self.finished[path] += 1
            self.in_flight -= 1

    def start(self) -> LocalServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------- images


def image_bytes(
    fmt: str = "JPEG", size: tuple[int, int] = (32, 24), mode: str = "RGB", seed: int = 0
) -> bytes:
    """A small deterministic image (a colour gradient varying with ``seed``) in ``fmt``."""
    from PIL import Image

    width, height = size
    im = Image.new("RGB", size)
    im.putdata(
        [
            ((x * 7 + seed * 31) % 256, (y * 11 + seed * 17) % 256, (x + y + seed) % 256)
            for y in range(height)
            for x in range(width)
        ]
    )
    if mode == "P":
        im = im.quantize(colors=16)
    elif mode != "RGB":
        im = im.convert(mode)
    out = io.BytesIO()
    im.save(out, format=fmt)
    return out.getvalue()


# ------------------------------------------------------------------------------- a public name

PUBLIC_NAME = "public.example"
# A globally routable address (example.com's): the guard lets it through. Nothing ever connects
# to it: `route_public_name` sends what is addressed to it to the local server instead.
PUBLIC_ADDRESS = "93.184.215.14"


def route_public_name(monkeypatch: Any, server: LocalServer) -> list[tuple[str, str]]:
    """Make ``http://public.example/...`` a public host that is really the local server.

    The guard's resolver (``lavic.data.netguard.resolve``) answers :data:`PUBLIC_ADDRESS` for
    :data:`PUBLIC_NAME`, so the guard checks a public address and pins the request to it; httpx's
    transports (under the guard) then deliver a request for that address to the local server.
    Every other name resolves as usual, so a redirect to ``127.0.0.1`` or ``localhost`` meets
    the real check.

    Returns:
        ``(host the transport was asked to connect to, Host header)`` per request sent, in
        order: what got past the guard.
    """
    import httpx

    from lavic.data import netguard

    real_resolve = netguard.resolve
    sent: list[tuple[str, str]] = []

    def resolve(host: str, port: int) -> list[str]:
        return [PUBLIC_ADDRESS] if host == PUBLIC_NAME else real_resolve(host, port)

    def to_server(request: httpx.Request) -> httpx.Request:
        sent.append((request.url.host, request.headers.get("host", "")))
        if request.url.host != PUBLIC_ADDRESS:
            return request
        return httpx.Request(
            request.method,
            request.url.copy_with(host="127.0.0.1", port=server.port),
            headers=request.headers,
            stream=request.stream,
            extensions=request.extensions,
        )

    sync_send = httpx.HTTPTransport.handle_request
    async_send = httpx.AsyncHTTPTransport.handle_async_request

    def handle_request(self: Any, request: httpx.Request) -> httpx.Response:
        return sync_send(self, to_server(request))

    async def handle_async_request(self: Any, request: httpx.Request) -> httpx.Response:
        return await async_send(self, to_server(request))

    monkeypatch.setattr(netguard, "resolve", resolve)
    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", handle_request)
    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", handle_async_request)
    return sent


def gzip_route(body: bytes, content_type: str = "image/jpeg", encoding: str = "gzip") -> Route:
    """200 with ``body`` sent compressed (``Content-Encoding: gzip`` or ``deflate``)."""
    import gzip
    import zlib

    packed = gzip.compress(body, mtime=0) if encoding == "gzip" else zlib.compress(body)

    def route(h: BaseHTTPRequestHandler, n: int) -> None:
        _send(h, 200, packed, {"Content-Type": content_type, "Content-Encoding": encoding})

    return route
