"""The HTTP API: every endpoint, every kind of bad request, and no file outside the catalogue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient

from lavic.serving.app import MAX_BODY_BYTES, STATIC_DIR, create_app

from .conftest import CONVERSATIONS, ITEM_IDS
from .stubs import GatedModel, StubRecommender, recommendation, until

# ----------------------------------------------------------------- files opened, via audit hook

_opened: list[str] | None = None


def _audit(event: str, args) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], str | bytes):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # process-wide and permanent, but records only inside `files_opened`


class files_opened:  # noqa: N801 - a context manager read like a phrase
    def __enter__(self) -> list[str]:
        global _opened
        _opened = []
        return _opened

    def __exit__(self, *exc) -> None:
        global _opened
        _opened = None


def _inside(path: str, roots: list[Path]) -> bool:
    resolved = Path(path).resolve()
    return any(resolved == r or r in resolved.parents for r in roots)


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def client(recommender):
    with TestClient(create_app(recommender, max_wait_ms=2)) as c:
        yield c


@pytest.fixture(scope="module")
def app_and_client(recommender):
    app = create_app(recommender, max_wait_ms=2)
    with TestClient(app) as c:
        yield app, c


def raw_request(
    app, method: str, raw_path: str, *, body_chunks=(b"",), headers=()
) -> tuple[int, dict]:
    """Call the ASGI app directly with ``raw_path`` exactly as a client could send it (no
    URL normalisation on the way), the body in the given chunks."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "headers": [(b"host", b"testserver"), *[(k.encode(), v.encode()) for k, v in headers]],
    }
    chunks = list(body_chunks)
    sent: list[dict] = []

    async def receive():
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {"raw": body}


def post(client, payload, **kwargs):
    return client.post("/recommend", json=payload, **kwargs)


# ------------------------------------------------------------------------------ good requests


def test_health(client):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["items"] == len(ITEM_IDS)
    assert body["batching"]["max_batch"] == 16
    assert body["batcher"]["alive"] is True and body["batcher"]["queue_capacity"] == 64
    # built on tiny-random: the page shows its stand-in notice (app.js reads this flag)
    assert body["base_model"] == "tiny-random" and body["stand_in"] is True
    page = client.get("/").text
    assert 'id="stand-in"' in page and "not meaningful" in page


def test_recommend_with_candidates(client, recommender):
    conversation, _ = CONVERSATIONS[0]
    r = post(client, {"conversation": conversation, "candidates": ITEM_IDS[:6]})
    assert r.status_code == 200, r.text
    body = r.json()
    direct = recommender.recommend(conversation, ITEM_IDS[:6]).to_json()
    assert body["item_id"] == direct["item_id"] == body["candidates"][0]["item_id"]
    assert [c["item_id"] for c in body["candidates"]] == [
        c["item_id"] for c in direct["candidates"]
    ]
    assert set(body["candidates"][0]) >= {"item_id", "title", "score"}
    assert body["retrieved"] is False


def test_recommend_retrieves_without_candidates(client):
    r = post(client, {"conversation": "a bright backpack for cycling", "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["retrieved"] is True and len(body["candidates"]) == 3
    r = post(client, {"conversation": "a mug"})
    assert len(r.json()["candidates"]) == 10  # the default top_k


def test_concurrent_requests_share_model_calls(recommender):
    import httpx

    async def main():
        app = create_app(recommender, max_batch=8, max_wait_ms=50)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://t") as c,
        ):
            before = recommender.stats.batches
            rs = await asyncio.gather(
                *(
                    c.post("/recommend", json={"conversation": conv, "candidates": ITEM_IDS[:4]})
                    for conv, _ in CONVERSATIONS
                )
            )
            return rs, recommender.stats.batches - before

    responses, batches = asyncio.run(main())
    assert all(r.status_code == 200 for r in responses)
    assert batches < len(CONVERSATIONS)  # five requests, fewer model calls
    for r, (conv, _) in zip(responses, CONVERSATIONS, strict=True):
        assert r.json()["item_id"] == recommender.recommend(conv, ITEM_IDS[:4]).item_id


def test_item_and_its_image(client, catalogue_files):
    _, image_dir = catalogue_files
    r = client.get("/items/B000MUG001")
    assert r.status_code == 200
    assert r.json() == {
        "item_id": "B000MUG001",
        "title": "Stoneware coffee mug 350 ml",
        "has_image": True,
        "image_url": "/items/B000MUG001/image",
    }
    r = client.get("/items/B000MUG001/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content == (image_dir / "B000MUG001_0.jpg").read_bytes()
    # An item without an image file, and one without a title.
    assert client.get("/items/B000NOIMG1").json()["has_image"] is False
    r = client.get("/items/B000NOIMG1/image")
    assert r.status_code == 404 and "no image" in r.json()["detail"]
    assert client.get("/items/B000NOTITL").json()["title"] == "No Title"


def test_page_and_static_files_are_local(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js">' in r.text and "/static/style.css" in r.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    for path in STATIC_DIR.iterdir():  # no CDN, no external font or script
        text = path.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text, path.name


def test_openapi_and_docs(client):
    schema = client.get("/openapi.json").json()
    assert {"/recommend", "/items/{item_id}", "/items/{item_id}/image", "/health"} <= set(
        schema["paths"]
    )
    body = schema["components"]["schemas"]["RecommendBody"]
    assert body["properties"]["candidates"]["anyOf"][0]["maxItems"] == 50
    r = client.get("/docs")
    assert r.status_code == 200 and "/openapi.json" in r.text
    # swagger-ui-bundle is a dependency of the serve extra: installed, /docs is served locally.
    import swagger_ui_bundle  # noqa: F401  (an ImportError here is a missing install step)

    assert "/docs-assets/swagger-ui-bundle.js" in r.text and "cdn" not in r.text
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_docs_fall_back_to_the_cdn_without_swagger_ui_bundle(recommender, monkeypatch):
    monkeypatch.setitem(sys.modules, "swagger_ui_bundle", None)  # `import` now raises
    with TestClient(create_app(recommender, max_wait_ms=2)) as c:
        r = c.get("/docs")
        assert r.status_code == 200 and "/openapi.json" in r.text
        assert "/docs-assets/" not in r.text and "cdn" in r.text
        assert c.get("/docs-assets/swagger-ui-bundle.js").status_code == 404


# ------------------------------------------------------------------------------- bad requests


def test_malformed_json_is_400(client):
    r = client.post(
        "/recommend",
        content=b'{"conversation": "mug"',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and "malformed JSON" in r.json()["detail"]


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
def test_wrong_content_type_is_415(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/recommend", content=b'{"conversation": "mug"}', headers=headers)
    assert r.status_code == 415
    assert "application/json" in r.json()["detail"]


def test_json_with_charset_is_accepted(client):
    r = client.post(
        "/recommend",
        content=json.dumps({"conversation": "mug", "top_k": 2}),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 200


def test_oversized_body_is_413(client, app_and_client):
    big = {"conversation": "x" * (MAX_BODY_BYTES + 10)}
    r = post(client, big)
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    # Streamed in chunks with no Content-Length: counted as it arrives, refused all the same.
    app, _ = app_and_client
    chunk = b" " * 65536
    status, body = raw_request(
        app,
        "POST",
        "/recommend",
        body_chunks=[b"{"] + [chunk] * 3,
        headers=[("content-type", "application/json")],
    )
    assert status == 413 and "limit" in body["detail"]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"conversation": "mug", "candidates": [f"B{i:09d}" for i in range(51)]}, "at most 50"),
        (
            {"conversation": "mug", "candidates": ["B000MUG001", "NOPE000001"]},
            "unknown candidate item id(s): 'NOPE000001'",
        ),
        ({"conversation": "mug", "candidates": ["../../etc/passwd"]}, "unknown candidate"),
        (
            {"conversation": "mug", "candidates": ["%2e%2e%2f%2e%2e%2fetc%2fpasswd"]},
            "unknown candidate",
        ),
        ({"conversation": "mug", "candidates": ["B000MUG001", "B000MUG001"]}, "twice"),
        ({"conversation": "mug", "candidates": []}, "candidates"),
        ({"conversation": "mug", "candidates": [""]}, "candidates.0"),
        ({"conversation": "mug", "candidates": ["x" * 65]}, "candidates.0"),
        ({"conversation": "mug", "candidates": "B000MUG001"}, "candidates"),
        ({"conversation": ""}, "conversation"),
        ({"conversation": "   "}, "empty"),
        ({"conversation": "x" * 20_001}, "conversation"),
        ({"conversation": 42}, "conversation"),
        ({"candidates": ["B000MUG001"]}, "conversation: Field required"),
        ({"conversation": "mug", "top_k": 0}, "top_k"),
        ({"conversation": "mug", "top_k": 51}, "top_k"),
        ({"conversation": "mug", "top_k": "5"}, "top_k"),
        ({"conversation": "mug", "top_k": 2.5}, "top_k"),
        ({"conversation": "mug", "colour": "red"}, "colour: Extra inputs are not permitted"),
        (["mug"], "body"),
        (None, "body"),
    ],
)
def test_invalid_bodies_are_422_with_a_clear_message(client, payload, fragment):
    r = client.post(
        "/recommend", content=json.dumps(payload), headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and fragment in detail
    assert "x" * 100 not in detail  # the input is not echoed back


def test_unknown_items_are_404(client):
    for path in ("/items/NOPE000001", "/items/NOPE000001/image"):
        r = client.get(path)
        assert r.status_code == 404 and "unknown item id 'NOPE000001'" in r.json()["detail"]


def test_unknown_endpoint_and_method(client):
    assert client.get("/nope").status_code == 404
    assert client.get("/recommend").status_code == 405


TRAVERSALS = [
    "/items/../../etc/passwd",
    "/items/../../etc/passwd/image",
    "/items/..%2F..%2Fetc%2Fpasswd/image",
    "/items/%2e%2e%2f%2e%2e%2fetc%2fpasswd/image",
    "/items/%2e%2e/image",
    "/items/../secret.txt/image",
    "/items/..%2Fsecret.txt/image",
    "/items/secret.txt/image",
    "/items/B000MUG001_0.jpg/image",  # a real file name, but not an item id
    "/items/%2Fetc%2Fpasswd/image",
    "/items/..%5C..%5Csecret.txt/image",
    "/static/../../../../etc/passwd",
    "/static/%2e%2e/%2e%2e/secret.txt",
    "/docs-assets/../../secret.txt",
]


def test_traversal_ids_never_touch_files_outside_the_catalogue(app_and_client, catalogue_files):
    app, client = app_and_client
    _, image_dir = catalogue_files
    secret = image_dir.parent / "secret.txt"
    secret.write_text("do not serve me")
    client.get("/items/B000MUG001/image")  # warm up lazy imports before recording
    allowed = [
        image_dir.resolve(),
        STATIC_DIR.resolve(),
        Path(sys.prefix).resolve(),
        Path(sys.base_prefix).resolve(),
        Path(__file__).resolve().parents[2] / "src",
    ]
    with files_opened() as opened:
        for path in TRAVERSALS:
            status, body = raw_request(app, "GET", path)
            assert status == 404, (path, status, body)
            assert b"do not serve me" not in json.dumps(body).encode()
            assert "root:" not in json.dumps(body)
        for path in TRAVERSALS[:4]:  # through a real HTTP client too (it may normalise)
            r = client.get(path)
            assert r.status_code == 404 and b"root:" not in r.content
        # The hook does see the files the app opens: the registered image of a real item.
        assert raw_request(app, "GET", "/items/B000MUG001/image")[0] == 200
    assert str((image_dir / "B000MUG001_0.jpg").resolve()) in [
        str(Path(p).resolve()) for p in opened
    ]
    assert not [p for p in opened if "passwd" in p or "secret" in p]
    assert all(_inside(p, allowed) for p in opened), opened


def test_catalogue_never_serves_a_linked_file_outside_its_folder(tmp_path):
    from lavic.serving.index import Catalogue, CatalogueItem

    images = tmp_path / "images"
    images.mkdir()
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"secret")
    (images / "LINK_0.jpg").symlink_to(outside)
    (images / "OK_0.jpg").write_bytes(b"jpeg")
    catalogue = Catalogue(
        images,
        {
            "LINK": CatalogueItem("LINK", "t", "LINK_0.jpg"),
            "OK": CatalogueItem("OK", "t", "OK_0.jpg"),
            "EVIL": CatalogueItem("EVIL", "t", "../outside.jpg"),
        },
    )
    assert catalogue.image_path("OK") == (images / "OK_0.jpg").resolve()
    assert catalogue.image_path("LINK") is None
    assert catalogue.image_path("EVIL") is None
    assert catalogue.image_path("../outside.jpg") is None


# ------------------------------------------------------------------------ CLI = API (same JSON)


def test_cli_prints_the_api_json(client, tuned_dir, index_dir, capsys, tmp_path):
    from lavic.cli import main

    conversation = CONVERSATIONS[2][0]
    path = tmp_path / "conversation.txt"
    path.write_text(conversation, encoding="utf-8")
    code = main(
        [
            "recommend",
            "--model_dir",
            str(tuned_dir),
            "--index_dir",
            str(index_dir),
            "--conversation_file",
            str(path),
            "--candidates",
            *ITEM_IDS[:5],
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    api = post(client, {"conversation": conversation, "candidates": ITEM_IDS[:5]}).json()
    assert set(printed) == set(api)
    assert printed["item_id"] == api["item_id"]
    assert [c["item_id"] for c in printed["candidates"]] == [
        c["item_id"] for c in api["candidates"]
    ]
    for a, b in zip(printed["candidates"], api["candidates"], strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "exactly one of --conversation and --conversation_file"),
        (["--conversation", "a", "--conversation_file", "f"], "exactly one"),
        (["--conversation", "mug", "--candidates", "NOPE000001"], "unknown candidate"),
        (["--conversation_file", "/nonexistent/conv.txt"], "no such file"),
    ],
)
def test_cli_errors_are_one_line(tuned_dir, index_dir, capsys, extra, message):
    from lavic.cli import main

    code = main(["recommend", "--model_dir", str(tuned_dir), "--index_dir", str(index_dir), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


# ------------------------------------------------------------------- overload (issue 20)

BODY = {"conversation": "a red mug", "candidates": ["B000MUG001", "B000MUG002"]}


@contextlib.asynccontextmanager
async def stub_app(model: GatedModel, **kwargs):
    """The app around a stub model (no model or index loaded), with an in-process client."""
    import httpx

    app = create_app(lambda: StubRecommender(model), **kwargs)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as client,
    ):
        try:
            yield app, client
        finally:
            model.open()  # never leave the model thread blocked at shutdown


def assert_shed(response) -> None:
    """503 with a whole number of seconds in Retry-After and a one-line JSON detail."""
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail


async def post_then_leave(app, leave: asyncio.Event) -> int:
    """POST ``BODY`` to the ASGI app straight; the client disconnects once ``leave`` is set.
    Returns the status the app answered (no one reads it)."""
    body = json.dumps(BODY).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/recommend",
        "raw_path": b"/recommend",
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json")],
    }
    delivered, sent = False, []

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def test_full_queue_is_503_with_retry_after_at_once():
    model = GatedModel(recommendation)

    async def main():
        async with stub_app(model, max_batch=1, max_wait_ms=0, max_queue=2) as (app, c):
            first = asyncio.create_task(c.post("/recommend", json=BODY))
            await model.busy()
            queued = [asyncio.create_task(c.post("/recommend", json=BODY)) for _ in range(2)]
            await until(lambda: app.state.batcher.queue_depth == 2)
            start = time.perf_counter()
            refused = await c.post("/recommend", json=BODY)
            elapsed, scored = time.perf_counter() - start, len(model.scored)
            model.open()
            served = await asyncio.gather(first, *queued)
            return refused, elapsed, scored, served, (await c.get("/health")).json()

    refused, elapsed, scored, served, health = asyncio.run(main())
    assert_shed(refused)
    assert "overloaded" in refused.json()["detail"]
    assert elapsed < 1.0 and scored == 1  # answered while the model was busy, without it
    assert [r.status_code for r in served] == [200, 200, 200]
    assert len(model.scored) == 3
    assert health["batcher"]["shed"]["queue_full"] == 1


def test_a_request_that_waits_too_long_is_503_and_never_scored():
    model = GatedModel(recommendation)

    async def main():
        async with stub_app(model, max_batch=1, max_wait_ms=0, queue_timeout_s=0.2) as (app, c):
            first = asyncio.create_task(c.post("/recommend", json=BODY))
            await model.busy()
            start = time.perf_counter()
            late = await c.post("/recommend", json=BODY)
            waited = time.perf_counter() - start
            model.open()
            return late, waited, await first, (await c.get("/health")).json()

    late, waited, first, health = asyncio.run(main())
    assert_shed(late)
    assert "waited 0.2 s in the queue" in late.json()["detail"]
    assert 0.15 <= waited < 2.0
    assert first.status_code == 200  # past the timeout too, but it had reached the model
    assert len(model.scored) == 1  # the late request was never scored
    assert health["batcher"]["shed"]["timed_out"] == 1


def test_a_client_that_leaves_has_its_queued_work_skipped():
    """Both ways a client goes: the server reports the disconnect (``http.disconnect``), or the
    task serving it is cancelled. Neither request reaches the model."""
    model = GatedModel(recommendation)

    async def main():
        async with stub_app(model, max_batch=1, max_wait_ms=0) as (app, c):
            first = asyncio.create_task(c.post("/recommend", json=BODY))
            await model.busy()
            leave = asyncio.Event()
            disconnecting = asyncio.create_task(post_then_leave(app, leave))
            cancelled = asyncio.create_task(c.post("/recommend", json=BODY))
            await until(lambda: app.state.batcher.queue_depth == 2)
            leave.set()
            status = await asyncio.wait_for(disconnecting, 5)  # answered without the model
            cancelled.cancel()
            await asyncio.gather(cancelled, return_exceptions=True)
            await until(lambda: app.state.batcher.shed["cancelled"] == 2)
            model.open()
            after = await c.post("/recommend", json=BODY)
            return status, await first, after, (await c.get("/health")).json()

    status, first, after, health = asyncio.run(main())
    assert status == 499  # "client closed request": logged, never seen by the client
    assert first.status_code == after.status_code == 200
    assert len(model.scored) == 2  # the first request and the one after: not the two that left
    assert health["batcher"]["shed"] == {"queue_full": 0, "timed_out": 0, "cancelled": 2}


def test_health_says_whether_the_batcher_is_alive():
    model = GatedModel(recommendation, crash=True)

    async def main():
        async with stub_app(model, max_batch=1, max_wait_ms=0, max_queue=5) as (app, c):
            alive = await c.get("/health")
            crashed = await c.post("/recommend", json=BODY)  # its batch kills the loop
            dead = await c.get("/health")
            start = time.perf_counter()
            refused = await c.post("/recommend", json=BODY)
            return alive, crashed, dead, refused, time.perf_counter() - start

    alive, crashed, dead, refused, elapsed = asyncio.run(main())
    assert alive.status_code == 200
    assert alive.json()["status"] == "ok"
    assert alive.json()["batcher"] == {
        "alive": True,
        "error": None,
        "queue_depth": 0,
        "queue_capacity": 5,
        "queue_timeout_s": 30.0,
        "shed": {"queue_full": 0, "timed_out": 0, "cancelled": 0},
    }
    assert_shed(crashed)  # the request in the dying batch is answered, not left hanging
    assert dead.status_code == 503
    assert dead.json()["status"] == "batcher down"
    assert dead.json()["batcher"]["alive"] is False and "Crash" in dead.json()["batcher"]["error"]
    assert_shed(refused)
    assert "not running" in refused.json()["detail"] and elapsed < 1.0
    assert len(model.scored) == 1


def test_load_then_a_burst_over_capacity():
    """40 requests at 8 concurrent: no errors. Then, the model busy, a burst of 60 at once:
    all but the batch in the model (at most 4) and those the queue holds (at most 8) get 503
    while the model is still busy; those are then served, and so is the next normal request."""
    model = GatedModel(recommendation)
    model.open()

    async def main():
        async with stub_app(model, max_batch=4, max_wait_ms=1, max_queue=8) as (app, c):
            limit = asyncio.Semaphore(8)

            async def one():
                async with limit:
                    return await c.post("/recommend", json=BODY)

            load = await asyncio.gather(*(one() for _ in range(40)))
            model.close()
            before = len(model.scored)
            start = time.perf_counter()
            burst = [asyncio.create_task(c.post("/recommend", json=BODY)) for _ in range(60)]
            in_model = lambda: len(model.scored) - before  # noqa: E731
            waiting = lambda: app.state.batcher.queue_depth  # noqa: E731
            # Every request is answered but those in the busy model and those queued.
            await until(
                lambda: (
                    in_model() > 0 and sum(t.done() for t in burst) == 60 - in_model() - waiting()
                )
            )
            shed_in = time.perf_counter() - start
            shed = [t.result() for t in burst if t.done()]
            model.open()
            rest = await asyncio.gather(*(t for t in burst if not t.done()))
            after = await c.post("/recommend", json=BODY)
            return load, shed, shed_in, rest, after, (await c.get("/health")).json()

    load, shed, shed_in, rest, after, health = asyncio.run(main())
    assert [r.status_code for r in load] == [200] * 40
    assert len(shed) >= 60 - 8 - 4
    for response in shed:
        assert_shed(response)
    assert shed_in < 5.0  # while the model was blocked: no request waited for it
    assert [r.status_code for r in rest] == [200] * len(rest)
    assert after.status_code == 200
    assert health["batcher"]["queue_depth"] == 0
    assert health["batcher"]["shed"]["queue_full"] == len(shed)
