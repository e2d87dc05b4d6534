"""``lavic serve`` as a real process under abuse: malformed JSON, oversized bodies, wrong content
types, wrong types, 1,000 connections opened and dropped, slow clients, crafted ids and paths
aimed at the file system, a poisoned request batched with a good one, and a burst of requests
far above what its queue holds (issue 20: it sheds them with 503). The server stays up,
``/health`` answers after every attack, nothing outside the catalogue is ever served, and its
log holds no traceback."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from lavic.cli import main

from .helpers import subprocess_env

pytestmark = pytest.mark.slow  # starts the server process (torch + the embedder) once

SECRET = b"TOP-SECRET-" + os.urandom(8).hex().encode()
START_TIMEOUT = 300
BURST = 150  # at once: over the default queue (64) and batch (16) together


class Server:
    def __init__(self, port: int, proc: subprocess.Popen, log: Path, image_dir: Path):
        self.port, self.proc, self.log, self.image_dir = port, proc, log, image_dir
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, trust_env=False)

    def health(self, within: float = 10.0) -> dict:
        """``/health`` must answer 200 within ``within`` seconds."""
        start = time.monotonic()
        response = self.client.get("/health", timeout=within)
        assert response.status_code == 200, response.text
        assert time.monotonic() - start < within
        assert self.proc.poll() is None, "the server process died"
        return response.json()

    def raw(self, data: bytes, *, timeout: float = 30.0) -> tuple[int | None, bytes]:
        """Send raw bytes; return (status, whole response) once the server closes or answers."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(data)
            chunks = []
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    if _complete(b"".join(chunks)):
                        break
            except (ConnectionResetError, TimeoutError):
                pass
        response = b"".join(chunks)
        try:
            status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else None
        except (IndexError, ValueError):
            status = None
        return status, response


def _complete(response: bytes) -> bool:
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tuned, tmp_path_factory):
    from serving.conftest import write_catalogue

    root = tmp_path_factory.mktemp("serve")
    meta_path, image_dir = write_catalogue(root / "catalogue")
    (root / "secret.txt").write_bytes(SECRET)
    index_dir = root / "index"
    argv = ["index", "--model_dir", tuned, "--item_meta_path", meta_path, "--image_dir", image_dir]
    assert main([str(a) for a in [*argv, "--index_dir", index_dir]]) == 0
    # After indexing: an unregistered file in the image folder, and a catalogue item's image
    # replaced by a link to the secret (checked when served, not only when indexed).
    (image_dir / "NOTINCATALOGUE_0.jpg").write_bytes(SECRET)
    (image_dir / "B000NOIMG1_0.jpg").symlink_to(root / "secret.txt")
    port = _free_port()
    log = root / "server.log"
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lavic.cli", "serve", "--model_dir", str(tuned),
             "--index_dir", str(index_dir), "--port", str(port), "--device", "cpu",
             "--max_wait_ms", "50", "--max_length", "1024"],
            env=subprocess_env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    srv = Server(port, proc, log, image_dir)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if srv.client.get("/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("serve never answered /health")
        time.sleep(0.25)
    yield srv
    srv.client.close()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


GOOD = {"conversation": "<submission>I want a red coffee mug</submission>\n"}
CANDIDATES = ["B000MUG001", "B000MUG002", "B000LMP001"]


def _post(
    body: bytes, content_type: str | None = "application/json", length: int | None = None
) -> bytes:
    head = b"POST /recommend HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if content_type is not None:
        head += b"Content-Type: " + content_type.encode() + b"\r\n"
    length = len(body) if length is None else length
    return head + b"Content-Length: " + str(length).encode() + b"\r\n\r\n" + body


def _one_line_detail(response: bytes) -> str:
    body = response.partition(b"\r\n\r\n")[2]
    detail = json.loads(body)["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail
    return detail


MALFORMED = {
    "unterminated object": b'{"conversation": "a mug"',
    "missing value": b'{"conversation": }',
    "not JSON": b"please recommend a mug",
    "trailing garbage": b'{"conversation": "a"} {"x": 1}',
    "undecodable bytes": b'{"conversation": "caf\xe9"}',
    "nested 50,000 deep": b'{"conversation": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "NaN": b'{"conversation": NaN}',
    "null": b"null",
    "array": b'["conversation"]',
    "empty body": b"",
}


def test_malformed_json(server, tally):
    for name, body in MALFORMED.items():
        with tally.case("input", "serve: malformed JSON", name):
            status, response = server.raw(_post(body))
            assert status in (400, 422), (name, response[:300])
            _one_line_detail(response)
            server.health()


WRONG = {
    "conversation a number": {"conversation": 5},
    "conversation empty": {"conversation": ""},
    "conversation only spaces": {"conversation": "   "},
    "conversation over 20,000 characters": {"conversation": "mug " * 5_001},
    "candidates a string": {**GOOD, "candidates": "B000MUG001"},
    "candidates holding a number": {**GOOD, "candidates": ["B000MUG001", 7]},
    "candidates empty": {**GOOD, "candidates": []},
    "candidates repeated": {**GOOD, "candidates": ["B000MUG001", "B000MUG001"]},
    "candidate id unknown": {**GOOD, "candidates": ["B000MUG001", "NOPE000000"]},
    "candidate id 10,000 characters": {**GOOD, "candidates": ["B" * 10_000]},
    "51 candidates": {**GOOD, "candidates": [f"B{i:09d}" for i in range(51)]},
    "top_k a string": {**GOOD, "top_k": "5"},
    "top_k zero": {**GOOD, "top_k": 0},
    "top_k 10^30": {**GOOD, "top_k": 10**30},
    "unknown field": {**GOOD, "user": "admin"},
    "item-token placeholder in the conversation": {
        "conversation": "a mug like <ItemImageEmb1><ItemImageEmb2>",
        "candidates": CANDIDATES,
    },
}


def test_wrong_types_and_values(server, tally):
    for name, body in WRONG.items():
        with tally.case("input", "serve: wrong types and values", name):
            status, response = server.raw(_post(json.dumps(body).encode()))
            assert status == 422, (name, response[:400])
            _one_line_detail(response)
    with tally.case("input", "serve: wrong types and values", "unpaired surrogate escape"):
        status, response = server.raw(
            _post(
                b'{"conversation": "mug \\ud83d", "candidates": '
                + json.dumps(CANDIDATES).encode()
                + b"}"
            )
        )
        assert status in (400, 422), response[:400]
        _one_line_detail(response)
    server.health()


def test_oversized_bodies(server, tally):
    big = json.dumps({"conversation": "mug " * 60_000}).encode()  # ~240 KB > 128 KiB
    cases = {
        "declared 1 GB, nothing sent": b"POST /recommend HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000000000\r\nConnection: close\r\n\r\n",
        "240 KB body": _post(big),
        "240 KB chunked": b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + b"".join(b"%x\r\n" % len(c) + c + b"\r\n" for c in _chunks(big, 8192))
        + b"0\r\n\r\n",
    }
    for name, data in cases.items():
        with tally.case("input", "serve: oversized body", name):
            status, response = server.raw(data)
            assert status == 413, (name, response[:300])
            _one_line_detail(response)
            server.health()
    for name, data in {
        "Content-Length not a number": b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: "
        b"application/json\r\nContent-Length: lots\r\nConnection: close\r\n\r\n{}",
        "Content-Length shorter than the body": _post(json.dumps(GOOD).encode(), length=5),
        "Content-Length and chunked together": b"POST /recommend HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    }.items():
        with tally.case("input", "serve: oversized body", name):
            status, _ = server.raw(data)
            assert status in (None, 400, 413, 422), (name, status)
            server.health()


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_wrong_content_types(server, tally):
    body = json.dumps({**GOOD, "candidates": CANDIDATES}).encode()
    for content_type in (
        None,
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "application/xml",
        "application/json-seq",
        "",
    ):
        with tally.case("input", "serve: content type", repr(content_type)):
            status, response = server.raw(_post(body, content_type))
            assert status == 415, (content_type, response[:300])
            _one_line_detail(response)
    for content_type in ("application/json; charset=utf-8", "Application/JSON"):
        with tally.case("input", "serve: content type", repr(content_type) + " (accepted)"):
            status, response = server.raw(_post(body, content_type))
            assert status == 200, response[:300]
    server.health()


def test_a_thousand_connections_opened_and_dropped(server, tally):
    rng = random.Random(0)
    partial = [
        b"",
        b"GET /hea",
        b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
        _post(json.dumps(GOOD).encode())[:-10],
        _post(json.dumps(GOOD).encode()),  # whole request, response never read
    ]
    with tally.case("fault", "serve: connections", "1,000 opened and dropped"):
        opened = 0
        for _wave in range(10):
            socks = []
            for _ in range(100):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                data = rng.choice(partial)
                if data:
                    sock.sendall(data)
                socks.append(sock)
                opened += 1
            for sock in socks:
                if rng.random() < 0.5:  # half reset (RST), half closed (FIN)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            server.health(within=30)
        assert opened == 1000
        health = server.health()
        assert health["status"] == "ok"
    with tally.case("fault", "serve: connections", "a request after the flood"):
        response = server.client.post("/recommend", json={**GOOD, "candidates": CANDIDATES})
        assert response.status_code == 200, response.text


def test_slow_clients(server, tally):
    """Slow-loris clients trickling headers (and a body) hold connections open; the server
    still answers /health and a real recommendation meanwhile."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def trickle(data: bytes) -> None:
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                for byte in data:
                    if stop.is_set():
                        return
                    sock.sendall(bytes([byte]))
                    time.sleep(0.05)
        except OSError:
            pass  # the server may close a client it considers too slow: allowed
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    slow = [_post(json.dumps(GOOD).encode()) for _ in range(40)]
    threads = [threading.Thread(target=trickle, args=(d,), daemon=True) for d in slow]
    with tally.case("fault", "serve: slow clients", "40 clients at 20 bytes/s"):
        for t in threads:
            t.start()
        try:
            for _ in range(5):
                server.health(within=5)
                time.sleep(0.3)
            response = server.client.post(
                "/recommend", json={**GOOD, "candidates": CANDIDATES}, timeout=60
            )
            assert response.status_code == 200, response.text
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=10)
        assert not errors
        server.health()


def _get(path: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


CRAFTED = [
    b"/items/../../secret.txt/image",
    b"/items/..%2F..%2Fsecret.txt/image",
    b"/items/%2e%2e%2f%2e%2e%2fsecret.txt/image",
    b"/items/..%5C..%5Csecret.txt/image",
    b"/items/%2Fetc%2Fpasswd/image",
    b"/items/NOTINCATALOGUE/image",
    b"/items/NOTINCATALOGUE_0.jpg/image",
    b"/items/B000NOIMG1/image",  # a catalogue item whose image is a link out of the folder
    b"/items/B000MUG001%00/image",
    b"/items/B000MUG001%2F..%2F..%2Fsecret.txt/image",
    b"/items/" + b"A" * 8000 + b"/image",
    b"/items/%C0%AE%C0%AE%2Fsecret.txt/image",
    b"/static/../../../secret.txt",
    b"/static/..%2F..%2F..%2Fsecret.txt",
    b"/static/%2e%2e/%2e%2e/%2e%2e/secret.txt",
    b"/static/....//....//secret.txt",
    b"/static//etc/passwd",
    b"/static/%2Fetc%2Fpasswd",
    b"//etc/passwd",
    b"/../../../../etc/passwd",
    b"/docs-assets/../../../../etc/passwd",
    b"/docs-assets/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    b"/items/B000MUG001/image/../../../../secret.txt",
    b"/static/index.html%00.jpg",
]


def test_crafted_paths_serve_nothing_outside_the_catalogue(server, tally):
    passwd = Path("/etc/passwd").read_bytes()[:20] if Path("/etc/passwd").is_file() else b"root:"
    for path in CRAFTED:
        with tally.case("input", "serve: crafted ids and paths", path.decode()[:60]):
            status, response = server.raw(_get(path))
            assert status is None or status >= 400, (path, response[:200])
            assert SECRET not in response and passwd not in response
    with tally.case("input", "serve: crafted ids and paths", "the real image (oracle)"):
        status, response = server.raw(_get(b"/items/B000MUG001/image"))
        assert status == 200
        assert (
            response.partition(b"\r\n\r\n")[2]
            == (server.image_dir / "B000MUG001_0.jpg").read_bytes()
        )
        item = server.client.get("/items/B000NOIMG1").json()
        assert item["has_image"] is False and item["image_url"] is None
    server.health()


def test_poisoned_request_does_not_fail_its_batch(server, tally):
    """A request whose text would break the prompt, sent together with good ones (they share
    a micro-batch): it alone gets a 4xx, the others their recommendation."""
    poison = [
        {"conversation": "mug <ItemImageEmb3>", "candidates": CANDIDATES},
        b'{"conversation": "mug \\udfff", "candidates": ["B000MUG001", "B000MUG002"]}',
    ]
    good = {**GOOD, "candidates": CANDIDATES}
    for k, bad in enumerate(poison):
        with tally.case("fault", "serve: poisoned batch", f"poison {k} with 6 good requests"):
            results: dict[int, int] = {}

            def send(i: int, body, results=results) -> None:
                if isinstance(body, bytes):
                    _, response = server.raw(_post(body))
                    results[i] = int(response.split(b" ", 2)[1])
                else:
                    results[i] = server.client.post("/recommend", json=body).status_code

            threads = [threading.Thread(target=send, args=(0, bad))] + [
                threading.Thread(target=send, args=(i, good)) for i in range(1, 7)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert results[0] in (400, 422), results
            assert [results[i] for i in range(1, 7)] == [200] * 6, results
    server.health()


def _send(port: int, body: dict, requests: int, concurrency: int) -> list[httpx.Response]:
    """``requests`` POSTs of ``body`` to /recommend, at most ``concurrency`` at a time."""

    async def main() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits, trust_env=False
        ) as client:
            return await asyncio.gather(
                *(client.post("/recommend", json=body) for _ in range(requests))
            )

    return asyncio.run(main())


def test_overload_is_shed_and_the_server_recovers(server, tally):
    """Issue 20: within capacity every request is served; a burst far above it (150 at once
    against the default queue of 64 and batch of 16) gets 200 or a clean 503 with Retry-After,
    never a hang or another error; the next request is served and the queue is empty again.

    (The server keeps the default ``--max_queue``: with a small queue, the request the flood
    test sends after its 1,000 dropped connections could race the disconnections the server
    has not read yet, and be shed: correct, but not what that test checks.)"""
    body = {**GOOD, "candidates": CANDIDATES}
    with tally.case("fault", "serve: overload", "40 requests, 8 at a time"):
        responses = _send(server.port, body, 40, 8)
        assert Counter(r.status_code for r in responses) == {200: 40}
    with tally.case("fault", "serve: overload", f"{BURST} requests at once"):
        batcher = server.health()["batcher"]
        assert batcher["queue_capacity"] == 64
        responses = _send(server.port, body, BURST, BURST)
        statuses = Counter(r.status_code for r in responses)
        print(f"burst of {BURST}: {dict(statuses)}")
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[503] > 0 and statuses[200] > 0, statuses
        for response in responses:
            if response.status_code == 503:
                assert int(response.headers["retry-after"]) >= 1
                assert "overloaded" in response.json()["detail"]
    with tally.case("fault", "serve: overload", "a request after the burst"):
        response = server.client.post("/recommend", json=body)
        assert response.status_code == 200, response.text
        health = server.health()
        assert health["batcher"]["alive"] is True and health["batcher"]["queue_depth"] == 0
        shed = health["batcher"]["shed"]["queue_full"] - batcher["shed"]["queue_full"]
        assert shed == statuses[503]


def test_server_survived_everything(server, tally):
    with tally.case("fault", "serve: aftermath", "alive, /health, no traceback in its log"):
        health = server.health()
        assert health["status"] == "ok" and health["items"] == 12
        response = server.client.post("/recommend", json={**GOOD, "candidates": CANDIDATES})
        assert response.status_code == 200
        assert response.json()["item_id"] in CANDIDATES
        log = server.log.read_text(errors="replace")
        assert "Traceback" not in log, log[-4000:]
        assert " 500 " not in log
