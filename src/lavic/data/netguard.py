"""What the fetching commands refuse: non-public addresses (SSRF) and oversized decoded bodies.

A catalogue is untrusted input, and so is every URL in it. Without a guard a product URL (or a
redirect from one) could make ``lavic crawl``, ``lavic import-catalogue`` or ``lavic
download-data`` request ``http://127.0.0.1:...``, a host on the private network or the cloud
metadata address ``169.254.169.254``, and whatever answered would land in the manifest (the
failure message) or, if it decodes as an image, in the images folder that ``lavic serve`` serves.

The guard, one for every command that fetches:

* :func:`address_problem` says why an address is not public: loopback, private, link-local,
  multicast, reserved, unspecified, or otherwise not globally routable (100.64.0.0/10...).
  IPv4-mapped (``::ffff:127.0.0.1``) and NAT64 (``64:ff9b::/96``) IPv6 addresses are judged by
  the IPv4 address inside them.
* :class:`GuardedTransport` / :class:`AsyncGuardedTransport` wrap httpx's transport, so every
  request the client sends passes through them: the first one and each redirect hop. Each
  resolves the host once (``getaddrinfo``; a literal address as written, ``2130706433`` and
  ``127.1`` as the system reads them), refuses the request with :class:`HostRefused` when
  *any* address is not public, and otherwise sends it to the checked address itself: the URL's
  host becomes that address, while the ``Host`` header and the TLS server name
  (httpcore's ``sni_hostname``) stay the name, so certificates are still checked against the
  name. The address connected to is the address checked: a DNS answer that changes between
  the check and the connection (DNS rebinding) cannot slip through.
* :func:`client` / :func:`async_client` build an httpx client with these transports (and a
  plain one with ``--allow_private_hosts``, for people crawling their own intranet).

Not covered: through a proxy from the environment (``HTTP(S)_PROXY``) the proxy resolves and
connects, so the name is checked with this machine's DNS but the request cannot be pinned to
the checked address (and the proxy itself may well sit on a private address: it is not
checked); a name this machine cannot resolve fails as a connection error even when the proxy
could resolve it (refusing what cannot be checked). A pinned request uses the first address the resolver gives, without trying the
others (no "happy eyeballs" fallback).

:class:`CappedDecoder` is the other half: it decodes a gzip/deflate body a bounded piece at a
time, so a small compressed body (a "gzip bomb") cannot grow past a byte cap in memory.
"""

from __future__ import annotations

import ipaddress
import socket
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx

from lavic.errors import LavicError

ALLOW_FLAG = "--allow_private_hosts"
# How long a checked resolution is reused by one transport (one crawl worker). The request is
# still pinned to the cached, checked address, so the cache cannot be used to rebind.
RESOLVE_TTL = 60.0
# IPv6 prefix of NAT64 (RFC 6052): the last 32 bits are the IPv4 address a gateway connects to.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class HostRefused(LavicError):
    """A request to a non-public address, refused before connecting (one line, naming the URL).

    Attributes:
        url: the URL refused (the redirect hop, when a redirect led there).
        reason: why, e.g. ``127.0.0.1 is a loopback address``.
    """

    def __init__(self, url: str, reason: str):
        self.url = url
        self.reason = reason
        super().__init__(f"refused {url}: {reason} (use {ALLOW_FLAG} to allow)")


def address_problem(address: IPAddress) -> str | None:
    """Why ``address`` may not be fetched from (``"a loopback address"``...), or None if public."""
    inner: IPAddress = address
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            inner = address.ipv4_mapped
        elif address in _NAT64:
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    # Order matters: 127.0.0.1 is also "private", 0.0.0.0 and 240.0.0.1 too; name the most
    # specific kind.
    checks = (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_reserved", "a reserved address"),
        ("is_private", "a private address"),
    )
    for attribute, words in checks:
        if getattr(inner, attribute):
            return words
    if not inner.is_global:
        return "not a public address"  # e.g. 100.64.0.0/10, shared address space
    return None


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order (a literal gives itself).

    Raises:
        httpx.ConnectError: the name does not resolve (a connection failure, as httpx says).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise httpx.ConnectError(f"cannot resolve {host!r}: {exc}") from None
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        if sockaddr[0] not in addresses:
            addresses.append(sockaddr[0])
    if not addresses:
        raise httpx.ConnectError(f"cannot resolve {host!r}: no address")
    return addresses


def check_addresses(url: str, host: str, addresses: list[str]) -> str:
    """The address to connect to, once every address of ``host`` is known to be public.

    Raises:
        HostRefused: one of the addresses is not public (a name that resolves to both a public
            and a private address is refused: the private one could be the one used).
    """
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
        problem = address_problem(address)
        if problem is not None:
            literal = host.strip("[]") == text
            where = f"{text} is" if literal else f"{host} resolves to {text},"
            raise HostRefused(url, f"{where} {problem}")
    return addresses[0]


def check_url(url: str) -> None:
    """Resolve and check the host of ``url`` now (a fail-fast check before a command starts).

    Raises:
        HostRefused: the host is not public.
        httpx.ConnectError: the name does not resolve.
    """
    parsed = httpx.URL(url)
    check_addresses(url, parsed.host, resolve(parsed.host, parsed.port or _default_port(parsed)))


def _default_port(url: httpx.URL) -> int:
    return 443 if url.scheme == "https" else 80


class _Guard:
    """Resolution, the check and pinning, shared by the sync and async transports."""

    def __init__(self, pin: bool):
        self.pin = pin
        self._cache: dict[tuple[str, int], tuple[float, str]] = {}

    def cached(self, host: str, port: int) -> str | None:
        entry = self._cache.get((host, port))
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        return None

    def remember(self, host: str, port: int, address: str) -> None:
        self._cache[(host, port)] = (time.monotonic() + RESOLVE_TTL, address)

    def target(self, request: httpx.Request, address: str) -> httpx.Request:
        """The request to send: ``request`` itself, or a copy addressed to ``address``."""
        if not self.pin or request.url.host == address:
            return request
        extensions = dict(request.extensions)
        if request.url.scheme == "https":
            # TLS still names the host: SNI and the certificate check use the name.
            extensions.setdefault("sni_hostname", request.url.host)
        # A new Request, not a changed one: the client builds the next redirect from the
        # original URL. Its Host header (set from the name) is kept.
        return httpx.Request(
            request.method,
            request.url.copy_with(host=address),
            headers=request.headers,
            stream=request.stream,
            extensions=extensions,
        )


class GuardedTransport(httpx.BaseTransport):
    """An httpx transport that refuses non-public addresses, checked on every request.

    Args:
        inner: the transport that sends the checked request (an ``httpx.HTTPTransport``).
        pin: send the request to the checked address (False through a proxy, which resolves
            the name itself).
    """

    def __init__(self, inner: httpx.BaseTransport, pin: bool = True):
        self.inner = inner
        self._guard = _Guard(pin)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host, port = request.url.host, request.url.port or _default_port(request.url)
        address = self._guard.cached(host, port)
        if address is None:
            address = check_addresses(str(request.url), host, resolve(host, port))
            self._guard.remember(host, port, address)
        return self.inner.handle_request(self._guard.target(request, address))

    def close(self) -> None:
        self.inner.close()


class AsyncGuardedTransport(httpx.AsyncBaseTransport):
    """The asyncio face of :class:`GuardedTransport` (the resolver runs in a worker thread)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, pin: bool = True):
        self.inner = inner
        self._guard = _Guard(pin)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        import anyio.to_thread

        host, port = request.url.host, request.url.port or _default_port(request.url)
        address = self._guard.cached(host, port)
        if address is None:
            addresses = await anyio.to_thread.run_sync(resolve, host, port)
            address = check_addresses(str(request.url), host, addresses)
            self._guard.remember(host, port, address)
        return await self.inner.handle_async_request(self._guard.target(request, address))

    async def aclose(self) -> None:
        await self.inner.aclose()


def _environment_proxies(trust_env: bool) -> dict[str, str | None]:
    """httpx's reading of ``HTTP(S)_PROXY``/``NO_PROXY`` (URL pattern -> proxy or None)."""
    if not trust_env:
        return {}
    try:
        # httpx ignores the environment's proxies once a transport is given, so the guarded
        # client mounts them itself, read exactly as httpx reads them.
        from httpx._utils import get_environment_proxies
    except ImportError:  # pragma: no cover (a future httpx moved it: no proxies then)
        return {}
    return get_environment_proxies()


def client(allow_private_hosts: bool = False, **kwargs: Any) -> httpx.Client:
    """An ``httpx.Client`` whose every request (redirects included) goes through the guard.

    Args:
        allow_private_hosts: no guard at all (a plain client), for one's own intranet.
        **kwargs: ``httpx.Client`` arguments; ``verify``, ``limits`` and ``trust_env`` also
            configure the guarded transports.
    """
    if allow_private_hosts:
        return httpx.Client(**kwargs)
    direct, mounts = _guarded_transports(kwargs, httpx.HTTPTransport, GuardedTransport)
    return httpx.Client(transport=direct, mounts=mounts, **kwargs)


def async_client(allow_private_hosts: bool = False, **kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose every request goes through the guard (see :func:`client`)."""
    if allow_private_hosts:
        return httpx.AsyncClient(**kwargs)
    direct, mounts = _guarded_transports(kwargs, httpx.AsyncHTTPTransport, AsyncGuardedTransport)
    return httpx.AsyncClient(transport=direct, mounts=mounts, **kwargs)


def _guarded_transports(kwargs: dict[str, Any], transport: type, guard: type) -> tuple[Any, dict]:
    """The guarded direct transport and one per environment proxy (``pattern -> transport``).

    ``transport`` is httpx's (sync or async) transport class, ``guard`` ours around it. The
    transport's own arguments (``verify``, ``limits``) are taken out of ``kwargs``: a client
    given a transport ignores them.
    """
    settings = {"trust_env": kwargs.get("trust_env", True)}
    for name in ("verify", "limits"):
        if name in kwargs:
            settings[name] = kwargs.pop(name)

    def guarded(proxy: str | None):
        return guard(transport(**settings, proxy=proxy), pin=proxy is None)

    direct = guarded(None)
    mounts = {
        pattern: direct if proxy is None else guarded(proxy)
        for pattern, proxy in _environment_proxies(settings["trust_env"]).items()
    }
    return direct, mounts


# --------------------------------------------------------------------------------------------
# Decoding a body under a cap
# --------------------------------------------------------------------------------------------


class BodyTooLarge(Exception):
    """The decoded body passed its cap (raised as soon as it does, not after decoding it all)."""


class UnsupportedEncoding(Exception):
    """A ``Content-Encoding`` other than identity, gzip or deflate (or a corrupt one)."""


class CappedDecoder:
    """Decode a body's ``Content-Encoding`` piece by piece, never holding more than the cap.

    httpx's own decoder inflates a whole network read at once: 64 KiB of gzip can become
    64 MiB before any cap is checked. Here ``zlib`` is asked for at most :attr:`PIECE` bytes
    at a time and never more than the cap still allows (``max_length``), so a gzip bomb stops
    at ``cap + 1`` decoded bytes and the caller holds about the cap, not a multiple of it.

    Feed it the raw bytes (``response.iter_raw()``); it yields the decoded ones in pieces.

    Raises:
        UnsupportedEncoding: on construction for an encoding it does not know (the request
            should have said ``Accept-Encoding: gzip, deflate``), or while decoding bad data.
        BodyTooLarge: past ``cap`` decoded bytes.
    """

    ACCEPT_ENCODING = "gzip, deflate"
    PIECE = 256 * 1024

    def __init__(self, content_encoding: str | None, cap: int):
        self.cap = cap
        self.total = 0
        codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
        codings = [c for c in codings if c and c != "identity"]
        self._zlib: Any = None
        self._deflate = False
        if len(codings) > 1:
            raise UnsupportedEncoding(f"layered Content-Encoding {content_encoding!r}")
        if codings and codings[0] in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif codings and codings[0] == "deflate":
            # "deflate" is zlib-wrapped by the standard, raw by some servers: tried in turn.
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS)
            self._deflate = True
        elif codings:
            raise UnsupportedEncoding(f"unsupported Content-Encoding {codings[0]!r}")

    def _count(self, piece: bytes) -> bytes:
        self.total += len(piece)
        if self.total > self.cap:
            raise BodyTooLarge(f"decoded body exceeds {self.cap} bytes")
        return piece

    def feed(self, raw: bytes) -> Iterator[bytes]:
        """The decoded bytes of the next raw piece, in pieces of at most :attr:`PIECE`."""
        if self._zlib is None:
            yield self._count(raw)
            return
        data = raw
        while data and not self._zlib.eof:
            try:
                piece = self._zlib.decompress(data, min(self.PIECE, self.cap - self.total + 1))
            except zlib.error as exc:
                if self._deflate and self.total == 0:
                    self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate
                    self._deflate = False
                    continue
                raise UnsupportedEncoding(f"corrupt compressed body: {exc}") from None
            self._deflate = False
            yield self._count(piece)
            data = self._zlib.unconsumed_tail

    def flush(self) -> bytes:
        """What the decoder still holds once the raw body has ended."""
        if self._zlib is None:
            return b""
        return self._count(self._zlib.flush())
