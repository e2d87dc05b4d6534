"""``lavic serve``: the recommend API (FastAPI) and the chat page.

Endpoints:
    ``GET /``                      the chat page (static files shipped in the package, no CDN)
    ``POST /recommend``            ``{"conversation", "candidates"?, "top_k"?}`` -> the pick and
                                   the ranked candidates (the JSON of ``lavic recommend``)
    ``GET /items/{id}``            an item's title and whether it has an image
    ``GET /items/{id}/image``      the image file registered for that item in the catalogue
    ``GET /health``                liveness (503 if the batching loop died), catalogue size,
                                   queue depth and capacity, batching and shedding counters
    ``GET /docs``, ``/openapi.json``  the OpenAPI description

Every problem with a request is a 4xx with a one-line ``detail``: 400 malformed JSON, 404
unknown item, 413 body too large, 415 not JSON, 422 a body that does not validate (too many
candidates, unknown candidate ids, ...). No part of a request ever becomes a file path: items
are looked up in the catalogue dict, and the only file served for an item is the one the
index registered for it.

Under overload the service sheds work instead of queueing without end: a full queue
(``--max_queue``) or a request that waited ``--queue_timeout_s`` in it is answered 503 with a
``Retry-After`` header, a client that disconnects has its queued request dropped before the
model runs, and uvicorn itself answers 503 above ``--limit_concurrency`` connections.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lavic.config import InferenceArgs
from lavic.errors import LavicError
from lavic.serving.recommender import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_QUEUE_TIMEOUT_S,
    DEFAULT_TOP_K,
    MAX_CANDIDATES,
    MAX_CONVERSATION_CHARS,
    MicroBatcher,
    Query,
    Recommendation,
    Recommender,
    RequestError,
    Unavailable,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BODY_BYTES = 128 * 1024
MAX_ID_CHARS = 64
DEFAULT_LIMIT_CONCURRENCY = 256
CLIENT_CLOSED_REQUEST = 499  # nginx's code: logged, never seen by the client that left
STATIC_DIR = Path(str(resources.files("lavic.serving") / "static"))


@dataclass(kw_only=True)
class Args(InferenceArgs):
    """Options of ``lavic serve``."""

    model_dir: Path = field(metadata={"help": "tuned LaViC artefact (lavic tune's output)"})
    index_dir: Path = field(metadata={"help": "index directory built by `lavic index`"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8000, metadata={"help": "port to listen on"})
    max_batch: int = field(default=16, metadata={"help": "most requests per model call"})
    max_wait_ms: float = field(
        default=5.0,
        metadata={"help": "how long a request waits for others to share its model call"},
    )
    batch_size: int = field(default=8, metadata={"help": "conversations per model forward"})
    max_length: int | None = field(
        default=None,
        metadata={"help": "token budget of prompt + answer (default 2048, as lavic evaluate)"},
    )
    max_queue: int = field(
        default=DEFAULT_MAX_QUEUE,
        metadata={
            "help": "most requests waiting for the model; beyond it /recommend answers 503 "
            "with Retry-After at once. 64 is four full batches at the default --max_batch 16: "
            "a request at the back waits about four model calls, and a longer queue only "
            "makes every client wait longer for the same throughput"
        },
    )
    queue_timeout_s: float = field(
        default=DEFAULT_QUEUE_TIMEOUT_S,
        metadata={
            "help": "a request that waited this long in the queue without reaching the model "
            "gets 503 with Retry-After and is never run (0: no limit); 30 s is about when a "
            "browser or client would give up on its own"
        },
    )
    limit_concurrency: int = field(
        default=DEFAULT_LIMIT_CONCURRENCY,
        metadata={
            "help": "most connections and tasks uvicorn serves at once; above it uvicorn "
            "answers 503 itself (0: no limit). 256 leaves room for a full queue, the running "
            "batch, /health and page loads"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.port < 65536:
            raise ValueError("--port must be in 1..65535")
        if self.max_batch < 1 or self.batch_size < 1:
            raise ValueError("--max_batch and --batch_size must be >= 1")
        if self.max_wait_ms < 0:
            raise ValueError("--max_wait_ms must be >= 0")
        if self.max_queue < 1:
            raise ValueError("--max_queue must be >= 1")
        if self.queue_timeout_s < 0 or self.limit_concurrency < 0:
            raise ValueError("--queue_timeout_s and --limit_concurrency must be >= 0 (0: none)")


# ------------------------------------------------------------------------------------ schemas

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]


class RecommendBody(BaseModel):
    """A conversation to recommend for."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "conversation": "<submission>Looking for a sturdy red mug for my desk.</submission>\n"
                },
                {
                    "conversation": "A blue hoodie, please",
                    "candidates": ["B000000001", "B000000002"],
                },
            ]
        },
    )

    conversation: str = Field(
        min_length=1,
        max_length=MAX_CONVERSATION_CHARS,
        description="The thread: plain text (taken as the submission) or "
        "<submission>..</submission> followed by <comment>..</comment> replies.",
    )
    candidates: list[ItemId] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CANDIDATES,
        description="Catalogue item ids to choose from, in the order shown to the model; "
        "leave out to retrieve the top_k items of the catalogue.",
    )
    top_k: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CANDIDATES,
        description=f"Items to retrieve when no candidates are given (default {DEFAULT_TOP_K}).",
    )


class CandidateOut(BaseModel):
    item_id: str
    title: str
    score: float = Field(
        description="probability among the candidates (softmax of the log-likelihoods)"
    )
    log_likelihood: float = Field(description="log P(ID + EOS | prompt): the ranking score")
    has_image: bool
    retrieval_score: float | None = Field(
        description="cosine to the conversation, when the candidate was retrieved"
    )


class RecommendOut(BaseModel):
    item_id: str = Field(description="the recommended item")
    title: str
    score: float
    candidates: list[CandidateOut] = Field(description="every candidate, best first")
    retrieved: bool
    conversation_truncated: bool


class ItemOut(BaseModel):
    item_id: str
    title: str
    has_image: bool
    image_url: str | None


class Problem(BaseModel):
    detail: str


# ------------------------------------------------------------------------------- body limits


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class BodyGuard:
    """ASGI middleware for request bodies: JSON only, at most ``max_bytes``.

    It reads the body itself (counting streamed chunks, whatever Content-Length claims) before
    the app sees it, so an oversized body is refused with 413 without being parsed.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int = MAX_BODY_BYTES,
        methods: tuple[str, ...] = ("POST", "PUT", "PATCH"),
    ):
        self.app = app
        self.max_bytes = max_bytes
        self.methods = methods

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in self.methods:
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            shown = media or "none"
            await _problem(415, f"content type must be application/json, got {shown}")(
                scope, receive, send
            )
            return
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await _problem(400, "invalid Content-Length header")(scope, receive, send)
                return
            if int(declared) > self.max_bytes:
                await _problem(
                    413, f"request body of {declared} bytes is over the {self.max_bytes}-byte limit"
                )(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _problem(413, f"request body is over the {self.max_bytes}-byte limit")(
                    scope, receive, send
                )
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _validation_detail(exc: RequestValidationError) -> tuple[int, str]:
    """(status, one-line message) for FastAPI's validation errors (400 for unparsable JSON)."""
    errors = exc.errors()
    for err in errors:
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            reason = ctx.get("error", "invalid JSON")
            return 400, f"malformed JSON body: {reason}"
    if (
        len(errors) == 1
        and errors[0].get("type") == "missing"
        and tuple(errors[0].get("loc", ())) == ("body",)
    ):
        return 422, "the request body is empty: send a JSON object with a 'conversation'"
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "; ".join(parts) + more


# --------------------------------------------------------------------------- disconnections


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _client_gone(receive: Receive) -> None:
    """Return once the client has disconnected.

    Called after the body has been read, so the server's next ASGI message is
    ``http.disconnect``: uvicorn sends it when the connection drops, and test clients when the
    response is complete. Waiting for it costs nothing, unlike polling ``is_disconnected()``.
    """
    while (await receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)  # not expected once the body is read; never spin


async def _unless_client_gone(work: Awaitable[T], receive: Receive) -> T:
    """Await ``work``, or cancel it and raise :class:`ClientGone` if the client leaves first.

    Cancelling :meth:`MicroBatcher.submit` drops the request from the queue, so a client that
    left costs no model work unless its batch had already started.
    """
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_client_gone(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise ClientGone
    finally:  # also when this handler is itself cancelled
        watch.cancel()
        task.cancel()


# ---------------------------------------------------------------------------------------- app


def create_app(
    recommender: Recommender | Callable[[], Recommender],
    *,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_queue: int = DEFAULT_MAX_QUEUE,
    queue_timeout_s: float | None = DEFAULT_QUEUE_TIMEOUT_S,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The FastAPI application.

    Args:
        recommender: a loaded :class:`Recommender`, or a function that loads one (called once,
            in a worker thread, when the app starts).
        max_batch: most requests per batched model call.
        max_wait_ms: how long a request waits for others to join its batch.
        max_queue: most requests waiting for the model; beyond it 503 at once.
        queue_timeout_s: most seconds a request waits in the queue (None: no limit).
        max_body_bytes: largest accepted request body.
    """
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        rec = (
            recommender
            if isinstance(recommender, Recommender)
            else await asyncio.to_thread(recommender)
        )
        batcher: MicroBatcher[Query, Recommendation] = MicroBatcher(
            rec.recommend_batch,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            queue_timeout_s=queue_timeout_s,
        )
        await batcher.start()
        state["recommender"] = rec
        app.state.batcher = batcher  # here, not in `state`: tests and operators read it too
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="LaViC recommendation service",
        description="Recommends one catalogue item for a conversation, reading each candidate's "
        "title and five visual tokens.",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodyGuard, max_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError):
        status, detail = _validation_detail(exc)
        return _problem(status, detail)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path[:100]}"
        return JSONResponse(
            {"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    def rec() -> Recommender:
        return state["recommender"]

    errors = {
        400: {"model": Problem},
        413: {"model": Problem},
        415: {"model": Problem},
        422: {"model": Problem},
        503: {
            "model": Problem,
            "description": "overloaded (the queue is full, or the request waited too long "
            "in it) or the model worker is down; retry after the Retry-After header's seconds",
        },
    }

    @app.post(
        "/recommend",
        response_model=RecommendOut,
        responses=errors,
        summary="Recommend an item for a conversation",
    )
    async def recommend(body: RecommendBody, request: Request):
        query = Query(
            body.conversation,
            tuple(body.candidates) if body.candidates is not None else None,
            body.top_k if body.top_k is not None else DEFAULT_TOP_K,
        )
        try:
            query = rec().check(query)
            result = await _unless_client_gone(app.state.batcher.submit(query), request.receive)
        except RequestError as exc:
            return _problem(422, str(exc))
        except LavicError as exc:  # e.g. the candidates do not fit the prompt budget
            return _problem(422, str(exc))
        except Unavailable as exc:  # shed: full queue, waited too long, or the worker is down
            return _problem(503, str(exc), headers={"Retry-After": str(exc.retry_after_s)})
        except ClientGone:
            return _problem(CLIENT_CLOSED_REQUEST, "the client closed the request")
        return result.to_json()

    def known(item_id: str):
        item = rec().catalogue.items.get(item_id)
        if item is None:
            raise StarletteHTTPException(404, f"unknown item id {item_id[:MAX_ID_CHARS]!r}")
        return item

    @app.get(
        "/items/{item_id}",
        response_model=ItemOut,
        responses={404: {"model": Problem}},
        summary="An item of the catalogue",
    )
    async def item(item_id: str):
        entry = known(item_id)
        has_image = rec().catalogue.image_path(entry.item_id) is not None
        return ItemOut(
            item_id=entry.item_id,
            title=rec().title(entry.item_id),
            has_image=has_image,
            image_url=f"/items/{entry.item_id}/image" if has_image else None,
        )

    @app.get(
        "/items/{item_id}/image",
        responses={404: {"model": Problem}},
        response_class=FileResponse,
        summary="The image registered for an item",
    )
    async def item_image(item_id: str):
        entry = known(item_id)
        # The catalogue entry's id, not the request's text, picks the file.
        path = rec().catalogue.image_path(entry.item_id)
        if path is None:
            raise StarletteHTTPException(404, f"item {entry.item_id!r} has no image")
        return FileResponse(
            path, media_type=_image_type(path), headers={"Cache-Control": "public, max-age=3600"}
        )

    @app.get(
        "/health",
        summary="Liveness and counters",
        responses={503: {"description": "the batching loop died: /recommend answers 503"}},
    )
    async def health():
        r, batcher = rec(), app.state.batcher
        queue = batcher.health()
        body = {
            "status": "ok" if queue["alive"] else "batcher down",
            "items": len(r.catalogue),
            "model": str(r.backbone.name),
            "base_model": r.backbone.base_model,
            # the offline `tiny` stand-in: the page says its picks on photos mean nothing
            "stand_in": r.backbone.is_stand_in,
            "max_length": r.max_length,
            "images": r.with_images,
            "batcher": queue,
            "batching": {"max_batch": max_batch, "max_wait_ms": max_wait_ms, **r.stats.as_dict()},
        }
        return JSONResponse(body, status_code=200 if queue["alive"] else 503)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _mount_docs(app)
    return app


def _image_type(path: Path) -> str:
    """The image's media type from its first bytes (files are named .jpg whatever they hold)."""
    with open(path, "rb") as handle:
        head = handle.read(12)
    if head.startswith(b"\x89PNG"):
        return "image/png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"GIF8"):
        return "image/gif"
    return "image/jpeg"


def _mount_docs(app: FastAPI) -> None:
    """Swagger UI at /docs, from local files when the swagger-ui-bundle package is installed."""
    from fastapi.openapi.docs import get_swagger_ui_html

    try:
        import swagger_ui_bundle

        assets = Path(swagger_ui_bundle.swagger_ui_path)
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")
        urls = {
            "swagger_js_url": "/docs-assets/swagger-ui-bundle.js",
            "swagger_css_url": "/docs-assets/swagger-ui.css",
            "swagger_favicon_url": "/docs-assets/favicon-32x32.png",
        }
    except ImportError:
        log.info("swagger-ui-bundle not installed: /docs loads Swagger UI from its CDN")
        urls = {}

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="LaViC API", **urls)


# ------------------------------------------------------------------------------------ command


def run(args: Args) -> int:
    import uvicorn

    # Fail on a bad model or index before the server starts listening.
    recommender = Recommender.load(
        args.model_dir,
        args.index_dir,
        batch_size=args.batch_size,
        max_length=args.max_length,
        device=args.device,
        dtype=args.dtype,
    )
    app = create_app(
        recommender,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        queue_timeout_s=args.queue_timeout_s or None,
    )
    log.info("serving on http://%s:%d/ (API docs at /docs)", args.host, args.port)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        limit_concurrency=args.limit_concurrency or None,  # uvicorn answers 503 above it
    )
    return 0
