"""No SSRF (issue 20): the crawler refuses non-public addresses on every hop, before connecting;
caps the decoded body of a gzip bomb; and counts any PIL error as one bad image.

Everything runs against the local 127.0.0.1 server with ``allow_private_hosts`` left off (the
default); ``public.example`` is a public-looking name routed to that server (see
:func:`http_server.route_public_name`). Nothing connects to 10.x or 169.254.x: the refusal
comes before any connection, which the tests check by recording what reaches httpx's transport.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import shutil
import ssl
import struct
import subprocess
import time
import tracemalloc

import httpx
import pytest
from PIL import ImageFile

from lavic.cli import main as cli_main
from lavic.data import netguard
from lavic.data.crawl import (
    MANIFEST_NAME,
    CrawlOptions,
    FetchFailure,
    ImageTarget,
    crawl_images,
    decode_image,
)
from lavic.data.netguard import BodyTooLarge, CappedDecoder, UnsupportedEncoding, address_problem

from .http_server import (
    PUBLIC_NAME,
    LocalServer,
    gzip_route,
    image_bytes,
    ok,
    redirect,
    route_public_name,
)

# The guard on (the default): only the flag-free options.
GUARDED = CrawlOptions(concurrency=8, timeout=2.0, retries=1, backoff_base=0.01, progress=False)
HINT = "(use --allow_private_hosts to allow)"


@pytest.fixture
def sent(monkeypatch):
    """Hosts of the requests that reached httpx's transport (that is, got past the guard)."""
    hosts: list[str] = []
    send = httpx.AsyncHTTPTransport.handle_async_request

    async def record(self, request):
        hosts.append(request.url.host)
        return await send(self, request)

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", record)
    return hosts


def manifest(images_dir) -> dict[str, dict]:
    rows = [json.loads(x) for x in (images_dir / MANIFEST_NAME).read_text().splitlines()]
    return {row["file"]: row for row in rows}


# ----------------------------------------------------------------------------- the check


@pytest.mark.parametrize(
    "address, problem",
    [
        ("127.0.0.1", "a loopback address"),
        ("127.8.9.10", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),  # IPv4-mapped IPv6
        ("64:ff9b::7f00:1", "a loopback address"),  # NAT64 of 127.0.0.1
        ("10.0.0.1", "a private address"),
        ("172.16.5.4", "a private address"),
        ("192.168.1.1", "a private address"),
        ("::ffff:192.168.1.1", "a private address"),
        ("fd00::1", "a private address"),
        ("169.254.169.254", "a link-local address"),  # cloud metadata
        ("fe80::1", "a link-local address"),
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
        ("0.0.0.0", "an unspecified address"),
        ("::", "an unspecified address"),
        ("100.64.0.1", "not a public address"),  # shared address space (carrier NAT)
        ("8.8.8.8", None),
        ("93.184.215.14", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_problem_names_each_kind(address, problem):
    assert address_problem(ipaddress.ip_address(address)) == problem


def test_a_name_with_any_private_address_is_refused():
    with pytest.raises(netguard.HostRefused) as info:
        netguard.check_addresses("http://mixed.example/a", "mixed.example", ["8.8.8.8", "10.1.2.3"])
    assert str(info.value) == (
        f"refused http://mixed.example/a: mixed.example resolves to 10.1.2.3, "
        f"a private address {HINT}"
    )
    assert netguard.check_addresses("http://p.example/", "p.example", ["8.8.8.8"]) == "8.8.8.8"


# ----------------------------------------------------------------------------- the crawler


@pytest.mark.timeout(30)
def test_private_targets_are_refused_before_connecting(server, sent, tmp_path):
    """127.0.0.1 (and its other spellings), 10.0.0.1 and 169.254.169.254: each is refused and
    reported; nothing reaches the transport, so nothing connects, and nothing is written."""
    server.add("/a.jpg", ok(image_bytes()))
    port = server.port
    urls = {
        "LOOP_0.jpg": server.url("/a.jpg"),
        "NAME_0.jpg": f"http://localhost:{port}/a.jpg",
        "SHORT_0.jpg": f"http://127.1:{port}/a.jpg",
        "DECIMAL_0.jpg": f"http://2130706433:{port}/a.jpg",
        "V6_0.jpg": f"http://[::1]:{port}/a.jpg",
        "MAPPED_0.jpg": f"http://[::ffff:127.0.0.1]:{port}/a.jpg",
        "ZERO_0.jpg": f"http://0.0.0.0:{port}/a.jpg",
        "TEN_0.jpg": "http://10.0.0.1/a.jpg",
        "META_0.jpg": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "TLS_0.jpg": "https://10.0.0.1/a.jpg",
    }
    targets = [ImageTarget(url, name) for name, url in urls.items()]
    started = time.monotonic()
    report = crawl_images(targets, tmp_path / "images", GUARDED)
    elapsed = time.monotonic() - started

    assert {r.file: (r.status, r.reason) for r in report.records} == {
        name: ("failed", "refused") for name in urls
    }
    errors = {r.file: r.error for r in report.records}
    assert errors["LOOP_0.jpg"] == (
        f"refused {urls['LOOP_0.jpg']}: 127.0.0.1 is a loopback address {HINT}"
    )
    assert "localhost resolves to " in errors["NAME_0.jpg"]
    assert "2130706433 resolves to 127.0.0.1, a loopback address" in errors["DECIMAL_0.jpg"]
    assert "::ffff:127.0.0.1 is a loopback address" in errors["MAPPED_0.jpg"]
    assert "10.0.0.1 is a private address" in errors["TEN_0.jpg"]
    assert "169.254.169.254 is a link-local address" in errors["META_0.jpg"]
    assert all(error.endswith(HINT) for error in errors.values())
    assert server.total() == 0 and sent == []  # refused before connecting: nothing sent
    assert report.requests == len(urls)  # one attempt each: a refusal is never retried
    assert elapsed < 10
    rows = manifest(tmp_path / "images")
    assert rows["META_0.jpg"]["reason"] == "refused" and rows["META_0.jpg"]["sha256"] is None
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [MANIFEST_NAME]
    assert "refused: 10" in report.summary()


@pytest.mark.timeout(30)
def test_a_redirect_to_loopback_is_refused_on_the_second_hop(server, monkeypatch, tmp_path):
    """public.example (a public address, really the local server) answers with redirects to
    127.0.0.1, localhost and 169.254.169.254: the first hop is fetched, the second refused;
    the local server's target path is never requested. Its image is fetched through the guard
    (pinned to the checked address, Host header kept)."""
    secret = server.add("/secret.jpg", ok(image_bytes(seed=5)))
    server.add("/to-loopback", redirect(secret))
    server.add("/to-localhost", redirect(f"http://localhost:{server.port}/secret.jpg"))
    server.add("/to-metadata", redirect("http://169.254.169.254/latest/meta-data/"))
    server.add("/hop", redirect("/to-loopback"))  # a relative hop first: still public
    server.add("/ok.jpg", ok(image_bytes(seed=6)))
    sent = route_public_name(monkeypatch, server)
    base = f"http://{PUBLIC_NAME}"
    targets = [
        ImageTarget(f"{base}/to-loopback", "A_0.jpg"),
        ImageTarget(f"{base}/to-localhost", "B_0.jpg"),
        ImageTarget(f"{base}/to-metadata", "C_0.jpg"),
        ImageTarget(f"{base}/hop", "D_0.jpg"),
        ImageTarget(f"{base}/ok.jpg", "OK_0.jpg"),
    ]
    report = crawl_images(targets, tmp_path / "images", GUARDED)

    status = {r.file: (r.status, r.reason) for r in report.records}
    assert status == {
        "A_0.jpg": ("failed", "refused"),
        "B_0.jpg": ("failed", "refused"),
        "C_0.jpg": ("failed", "refused"),
        "D_0.jpg": ("failed", "refused"),
        "OK_0.jpg": ("saved", None),
    }
    errors = {r.file: r.error for r in report.records}
    assert errors["A_0.jpg"] == f"refused {secret}: 127.0.0.1 is a loopback address {HINT}"
    assert "169.254.169.254 is a link-local address" in errors["C_0.jpg"]
    assert server.count("/secret.jpg") == 0  # the target of the redirect: never requested
    for path in ("/to-loopback", "/to-localhost", "/to-metadata", "/hop", "/ok.jpg"):
        assert server.count(path) == (2 if path == "/to-loopback" else 1), path
    # What got past the guard: only the public name, sent to its checked address.
    assert set(sent) == {("93.184.215.14", PUBLIC_NAME)}
    assert server.request_headers["/ok.jpg"][0]["Host"] == PUBLIC_NAME
    assert (tmp_path / "images" / "OK_0.jpg").read_bytes() == image_bytes(seed=6)


@pytest.mark.timeout(30)
def test_the_flag_lets_the_crawl_reach_a_private_host(server, tmp_path, capsys):
    server.add("/a.jpg", ok(image_bytes()))
    meta = tmp_path / "meta.jsonl"
    meta.write_text(json.dumps({"image": server.url("/a.jpg"), "image_name": "A_0.jpg"}) + "\n")
    argv = ["crawl", "--item_meta_path", str(meta), "--retries", "0", "--timeout", "5"]
    assert cli_main([*argv, "--images_dir", str(tmp_path / "off")]) == 1  # nothing fetched
    assert "refused: 1" in capsys.readouterr().out
    assert manifest(tmp_path / "off")["A_0.jpg"]["reason"] == "refused"
    assert server.total() == 0
    assert cli_main([*argv, "--images_dir", str(tmp_path / "on"), "--allow_private_hosts"]) == 0
    assert manifest(tmp_path / "on")["A_0.jpg"]["status"] == "saved"
    assert server.total() == 1


# ----------------------------------------------------------------------------- decoded caps


def test_capped_decoder_stops_a_gzip_bomb_at_the_cap():
    bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MiB of zeros in ~64 KiB
    assert len(bomb) < 100_000
    decoder = CappedDecoder("gzip", 1 << 20)
    pieces = []
    with pytest.raises(BodyTooLarge):
        for start in range(0, len(bomb), 65536):
            for piece in decoder.feed(bomb[start : start + 65536]):
                pieces.append(len(piece))
    assert decoder.total == (1 << 20) + 1  # decoded no further than one byte past the cap
    assert max(pieces) <= CappedDecoder.PIECE and sum(pieces) == 1 << 20
    body = image_bytes(size=(40, 40))
    for encoding, packed in (
        ("gzip", gzip.compress(body)),
        ("deflate", __import__("zlib").compress(body)),
        ("identity", body),
        (None, body),
    ):
        decoder = CappedDecoder(encoding, len(body))
        decoded = b"".join([*decoder.feed(packed[:10]), *decoder.feed(packed[10:])])
        assert decoded + decoder.flush() == body
    with pytest.raises(UnsupportedEncoding):
        CappedDecoder("br", 10)
    with pytest.raises(UnsupportedEncoding):
        list(CappedDecoder("gzip", 10).feed(b"not gzip at all"))


@pytest.mark.timeout(60)
def test_a_gzip_bomb_is_capped_on_the_decoded_stream(server, tmp_path):
    """64 KiB of gzip that inflates to 64 MiB, under a 2 MiB cap: refused as too large, and
    the crawler holds about the cap, no more (it used to inflate a whole 64 KiB read into
    64 MiB before checking). Gzip and deflate images still decode."""
    cap = 2 << 20
    server.add("/bomb.jpg", gzip_route(b"\0" * (64 << 20)))
    server.add("/small.jpg", gzip_route(image_bytes(size=(48, 48), seed=2)))
    server.add("/deflated.png", gzip_route(image_bytes("PNG", seed=3), "image/png", "deflate"))
    options = CrawlOptions(**{**GUARDED.__dict__, "max_bytes": cap, "allow_private_hosts": True})
    # The good ones first: they also import everything, so the peak below is the bomb's alone.
    good = [
        ImageTarget(server.url("/small.jpg"), "S_0.jpg"),
        ImageTarget(server.url("/deflated.png"), "P_0.jpg"),
    ]
    assert crawl_images(good, tmp_path / "images", options).counts()["saved"] == 2
    assert (tmp_path / "images" / "S_0.jpg").read_bytes() == image_bytes(size=(48, 48), seed=2)
    assert server.request_headers["/small.jpg"][0]["Accept-Encoding"] == "gzip, deflate"

    tracemalloc.start()
    try:
        bomb = [ImageTarget(server.url("/bomb.jpg"), "BOMB_0.jpg")]
        report = crawl_images(bomb, tmp_path / "images", options)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(r.status, r.reason) for r in report.records] == [("failed", "too_large")]
    assert server.count("/bomb.jpg") == 1  # not retried
    assert peak < cap + (3 << 20), f"peak {peak / 2**20:.1f} MiB"  # was 64 MiB and more


# ----------------------------------------------------------------------------- odd PIL errors


def test_an_unexpected_pil_error_is_one_bad_image(server, tmp_path, monkeypatch):
    """A parser error of a type outside decode_image's list (here struct.error, which PIL's
    parsers raise on some hostile files) fails that one image; the crawl goes on."""
    load = ImageFile.ImageFile.load

    def fragile_load(self):
        if self.size == (13, 7):
            raise struct.error("unpack requires a buffer of 4 bytes")
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", fragile_load)
    odd = image_bytes(size=(13, 7))
    with pytest.raises(FetchFailure) as info:
        decode_image(odd)
    assert info.value.reason == "not_image" and "struct.error" in info.value.message

    server.add("/odd.jpg", ok(odd))
    for i in range(3):
        server.add(f"/{i}.jpg", ok(image_bytes(seed=i)))
    targets = [ImageTarget(server.url("/odd.jpg"), "ODD_0.jpg")]
    targets += [ImageTarget(server.url(f"/{i}.jpg"), f"I{i}_0.jpg") for i in range(3)]
    options = CrawlOptions(**{**GUARDED.__dict__, "allow_private_hosts": True})
    report = crawl_images(targets, tmp_path / "images", options)
    assert report.counts() == {"present": 0, "saved": 3, "failed": 1}
    assert report.failures_by_reason() == {"not_image": 1}
    assert server.count("/odd.jpg") == 1


# ----------------------------------------------------------------------------- TLS when pinned


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_a_pinned_https_request_still_checks_the_certificate_against_the_name(
    monkeypatch, tmp_path
):
    """The guard sends the request to the checked address, not the name: TLS must still use
    the name (SNI and the certificate check), or every HTTPS image would fail to verify."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={PUBLIC_NAME}",
         "-addext", f"subjectAltName=DNS:{PUBLIC_NAME}"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    with LocalServer() as server:
        server.add("/ok.jpg", ok(image_bytes()))
        server._server.socket = server_tls.wrap_socket(server._server.socket, server_side=True)
        sent = route_public_name(monkeypatch, server)
        trust = ssl.create_default_context(cafile=str(cert))
        with netguard.client(verify=trust, trust_env=False) as client:
            response = client.get(f"https://{PUBLIC_NAME}/ok.jpg")
        assert response.status_code == 200 and response.content == image_bytes()
        assert sent == [("93.184.215.14", PUBLIC_NAME)]  # pinned to the checked address
        # Without the name the certificate does not verify: the name is what made it pass.
        with (
            httpx.Client(verify=trust, trust_env=False) as plain,
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            plain.get(server.url("/ok.jpg").replace("http:", "https:"))


@pytest.mark.timeout(30)
def test_through_a_proxy_the_target_is_still_checked(server, monkeypatch, tmp_path):
    """With HTTP_PROXY set (here the local server plays the proxy) the guard still checks the
    target's own address before the proxy is asked: 10.0.0.1 and 169.254.169.254 never reach
    it, a public name does (not pinned: the proxy resolves it)."""
    sent = route_public_name(monkeypatch, server)
    monkeypatch.setenv("HTTP_PROXY", server.url(""))
    server.add(f"http://{PUBLIC_NAME}/ok.jpg", ok(image_bytes(seed=4)))  # as a proxy sees it
    targets = [
        ImageTarget(f"http://{PUBLIC_NAME}/ok.jpg", "OK_0.jpg"),
        ImageTarget("http://10.0.0.1/a.jpg", "TEN_0.jpg"),
        ImageTarget("http://169.254.169.254/latest/meta-data/", "META_0.jpg"),
    ]
    report = crawl_images(targets, tmp_path / "images", GUARDED)
    assert {r.file: (r.status, r.reason) for r in report.records} == {
        "OK_0.jpg": ("saved", None),
        "TEN_0.jpg": ("failed", "refused"),
        "META_0.jpg": ("failed", "refused"),
    }
    assert server.total() == 1 and sent == [(PUBLIC_NAME, PUBLIC_NAME)]
