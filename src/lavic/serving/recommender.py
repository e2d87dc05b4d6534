"""The recommendation service's core: the tuned model loaded once, conversations ranked in batches.

A request is a conversation, optionally with its candidate item ids. Without candidates the
retriever proposes the top k of the catalogue. The candidates are then ranked by the tuned
model exactly as ``lavic evaluate --decoding score`` ranks them: the reference's prompt (each
candidate as ``ID: title`` + its five visual tokens from the item-token cache), and each
candidate's score is the log-likelihood of its ID (+ EOS) as the answer.

Concurrent requests are micro-batched (:class:`MicroBatcher`): an asyncio queue collects
requests for a few milliseconds, and one batched model call runs in a worker thread, so the
event loop keeps accepting requests while the model runs. The queue is bounded and a request
waits in it for a limited time: under overload the batcher refuses work (:class:`Unavailable`,
HTTP 503) instead of queueing without end.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from lavic.artifacts import read_config
from lavic.constants import MISSING_TITLE
from lavic.errors import LavicError
from lavic.serving.index import ITEM_TOKENS_DIR, Catalogue, read_catalogue
from lavic.serving.retrieval import RetrievalIndex

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 10
DEFAULT_MAX_LENGTH = 2048  # the reference's prompt budget (prompt + answer)
MAX_CANDIDATES = 50
MAX_CONVERSATION_CHARS = 20_000


class RequestError(LavicError):
    """A request the service refuses (HTTP 422): bad candidates, empty conversation, ..."""


class UnknownItemsError(RequestError):
    """Candidate ids that are not in the catalogue."""

    def __init__(self, item_ids: Sequence[str]):
        self.item_ids = list(item_ids)
        shown = ", ".join(repr(i[:40]) for i in self.item_ids[:5])
        more = f" and {len(self.item_ids) - 5} more" if len(self.item_ids) > 5 else ""
        super().__init__(f"unknown candidate item id(s): {shown}{more}")


def normalise_conversation(text: str) -> str:
    """A thread in the reference's format: plain text becomes ``<submission>text</submission>``.

    Text that already holds a ``<submission>`` tag (as the published data and the web page
    send) is kept byte for byte, so a conversation ranks exactly as ``lavic evaluate`` ranks it.
    """
    if "<submission>" in text:
        return text
    return f"<submission>{text.strip()}</submission>\n"


@dataclass(frozen=True)
class Query:
    """One recommendation request.

    Attributes:
        conversation: the thread (plain text, or ``<submission>..</submission><comment>..``).
        candidates: candidate item ids in the order shown to the model; None to retrieve.
        top_k: how many items to retrieve when ``candidates`` is None.
    """

    conversation: str
    candidates: tuple[str, ...] | None = None
    top_k: int = DEFAULT_TOP_K


@dataclass
class ScoredCandidate:
    item_id: str
    title: str
    score: float  # probability among the candidates (softmax of the log-likelihoods)
    log_likelihood: float  # log P(ID + EOS | prompt), the model's ranking score
    has_image: bool
    retrieval_score: float | None = None  # cosine to the conversation, when retrieved


@dataclass
class Recommendation:
    """The model's pick and the candidates it ranked, best first."""

    item_id: str
    title: str
    score: float
    candidates: list[ScoredCandidate]
    retrieved: bool  # candidates came from the retriever
    conversation_truncated: bool  # the conversation was cut to fit the prompt budget

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BatchStats:
    """Counts kept by the recommender (shown by ``GET /health``)."""

    requests: int = 0
    batches: int = 0
    model_seconds: float = 0.0
    batch_sizes: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "batches": self.batches,
            "mean_batch_size": self.requests / self.batches if self.batches else 0.0,
            "model_seconds": round(self.model_seconds, 3),
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
        }


def _softmax(values: Sequence[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


class Recommender:
    """Ranks candidates for conversations with a tuned LaViC model (thread-safe, one at a time).

    Args:
        backbone: the tuned backbone (adapters merged), in eval mode.
        cache: the item visual-token cache covering every catalogue item.
        catalogue: the items that may be recommended.
        retrieval: the retrieval index over the same items.
        max_length: prompt + answer token budget (a long conversation is cut, never a candidate).
        with_images: show each candidate's five visual tokens (False: the text-only ablation).
        batch_size: conversations per model forward.
        max_candidates: most candidates a request may give or retrieve.
    """

    def __init__(
        self,
        backbone,
        cache,
        catalogue: Catalogue,
        retrieval: RetrievalIndex,
        *,
        max_length: int = DEFAULT_MAX_LENGTH,
        with_images: bool = True,
        batch_size: int = 8,
        max_candidates: int = MAX_CANDIDATES,
    ):
        self.backbone = backbone
        self.cache = cache
        self.catalogue = catalogue
        self.retrieval = retrieval
        self.max_length = max_length
        self.with_images = with_images
        self.batch_size = batch_size
        self.max_candidates = max_candidates
        self.stats = BatchStats()
        self._lock = threading.Lock()  # one model call at a time, whoever calls
        missing = [i for i in retrieval.item_ids if i not in catalogue]
        if missing:
            raise LavicError(
                f"retrieval index holds {len(missing)} item(s) missing from the "
                f"catalogue (e.g. {missing[0]!r}): rebuild it with `lavic index`"
            )

    # -- loading

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike[str],
        index_dir: str | os.PathLike[str],
        *,
        embedder=None,
        backbone=None,
        max_length: int | None = None,
        with_images: bool | None = None,
        batch_size: int = 8,
        max_candidates: int = MAX_CANDIDATES,
        device: str | None = None,
        dtype: str = "auto",
    ) -> Recommender:
        """Load the tuned model, the retrieval index and the item-token cache once.

        ``model_dir`` is a tune artefact or the FINETUNE_OUTPUT_DIR holding it, as for
        ``lavic evaluate``; the model is loaded as the evaluator loads it (``device`` /
        ``dtype`` ``auto``: CUDA in bfloat16 if present, else CPU in float32, under bf16 autocast
        on a CPU with native bf16 that passes the check; see :mod:`lavic.model.inference`). ``max_length``
        defaults to the reference's 2,048 tokens (the evaluator's default); the prompt shows the
        visual tokens unless the model was tuned text-only (``no_images`` in its config).
        Items whose visual tokens are not cached for this model's vision adapter (another
        model, a grown catalogue) are encoded now.

        Raises:
            LavicError: if the model or the index directory cannot be read.
        """
        from lavic.cache import adapter_fingerprint, build_item_token_cache
        from lavic.data.images import ImageStats
        from lavic.model.inference import load_model, resolve_model_dir

        catalogue = read_catalogue(index_dir)
        retrieval = RetrievalIndex.load(index_dir, embedder=embedder)
        model_dir = resolve_model_dir(Path(model_dir))
        if max_length is None:
            max_length = DEFAULT_MAX_LENGTH
        if max_length < 1:
            raise LavicError(f"max_length must be >= 1, got {max_length}")
        if with_images is None:
            # The prompt the model was tuned with: text-only if its run had --no_images.
            with_images = not bool(read_config(model_dir).get("no_images", False))
        if backbone is None:
            # The evaluator's loader: same device and dtype choice, so picks match it.
            backbone = load_model(model_dir, device=device or "auto", dtype=dtype)
        stats = ImageStats()
        cache = build_item_token_cache(
            backbone,
            list(catalogue.items),
            catalogue.image_dir,
            Path(index_dir) / ITEM_TOKENS_DIR,
            fingerprint=adapter_fingerprint(model_dir),
            batch_size=16,
            stats=stats,
        )
        log.info(
            "recommender ready: %d items, max_length=%d, images=%s",
            len(catalogue),
            max_length,
            with_images,
        )
        return cls(
            backbone,
            cache,
            catalogue,
            retrieval,
            max_length=max_length,
            with_images=with_images,
            batch_size=batch_size,
            max_candidates=max_candidates,
        )

    # -- requests

    def title(self, item_id: str) -> str:
        item = self.catalogue.items.get(item_id)
        return item.title if item is not None and item.title is not None else MISSING_TITLE

    def check(self, query: Query) -> Query:
        """Validate a query before it is queued; returns it with the conversation normalised.

        Raises:
            RequestError: empty or over-long conversation, bad ``top_k``, duplicate or too
                many candidates; :class:`UnknownItemsError` for ids not in the catalogue.
        """
        if not query.conversation.strip():
            raise RequestError("the conversation is empty")
        if len(query.conversation) > MAX_CONVERSATION_CHARS:
            raise RequestError(
                f"the conversation has {len(query.conversation)} characters; "
                f"at most {MAX_CONVERSATION_CHARS} are accepted"
            )
        if query.candidates is None:
            if not 1 <= query.top_k <= self.max_candidates:
                raise RequestError(f"top_k must be between 1 and {self.max_candidates}")
            if not len(self.retrieval):
                raise RequestError("the catalogue is empty: give candidates")
        else:
            if not query.candidates:
                raise RequestError(
                    "candidates is empty: give at least one, or leave it out to retrieve them"
                )
            if len(query.candidates) > self.max_candidates:
                raise RequestError(
                    f"{len(query.candidates)} candidates given; at most "
                    f"{self.max_candidates} are accepted"
                )
            repeated = [i for i, n in Counter(query.candidates).items() if n > 1]
            if repeated:
                raise RequestError(f"candidate id {repeated[0][:40]!r} is given twice")
            unknown = [i for i in query.candidates if i not in self.catalogue]
            if unknown:
                raise UnknownItemsError(unknown)
        return Query(normalise_conversation(query.conversation), query.candidates, query.top_k)

    def recommend(
        self, conversation: str, candidates: Sequence[str] | None = None, top_k: int = DEFAULT_TOP_K
    ) -> Recommendation:
        """Rank ``candidates`` (or the top ``top_k`` retrieved items) for one conversation.

        Raises:
            RequestError: see :meth:`check`; LavicError if the prompt cannot fit.
        """
        query = Query(conversation, tuple(candidates) if candidates is not None else None, top_k)
        result = self.recommend_batch([self.check(query)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def recommend_batch(self, queries: Sequence[Query]) -> list[Recommendation | LavicError]:
        """Rank a batch of checked queries; a query that fails gets its error in its place.

        Retrieval embeds every query that needs it in one call; the model then runs in chunks
        of ``batch_size`` prompts.
        """
        with self._lock:
            start = time.perf_counter()
            try:
                return self._recommend_batch(queries)
            finally:
                self.stats.requests += len(queries)
                self.stats.batches += 1
                self.stats.batch_sizes[len(queries)] += 1
                self.stats.model_seconds += time.perf_counter() - start

    def _recommend_batch(self, queries: Sequence[Query]) -> list[Recommendation | LavicError]:
        from lavic.prompts import build_recommend_prompt

        results: list[Recommendation | LavicError | None] = [None] * len(queries)
        retrieved: dict[int, list[tuple[str, float]]] = {}
        need = [i for i, q in enumerate(queries) if q.candidates is None]
        if need:
            k = max(queries[i].top_k for i in need)
            hits = self.retrieval.search([queries[i].conversation for i in need], k)
            for i, row in zip(need, hits, strict=True):
                retrieved[i] = row[: queries[i].top_k]
        prompts = []
        for i, q in enumerate(queries):
            ids = list(q.candidates) if q.candidates is not None else [h[0] for h in retrieved[i]]
            try:
                prompt = build_recommend_prompt(
                    self.backbone.tokenizer,
                    q.conversation,
                    [(c, self.title(c)) for c in ids],
                    max_length=self.max_length,
                    with_images=self.with_images,
                )
            except LavicError as exc:
                results[i] = exc
                continue
            prompts.append((i, prompt))
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            scores = self._score([p for _, p in chunk])
            for (i, prompt), row in zip(chunk, scores, strict=True):
                results[i] = self._result(prompt, row, retrieved.get(i))
        return results  # type: ignore[return-value]

    def _score(self, prompts) -> list[dict[str, float]]:
        """Per prompt, ``{item_id: log P(ID + EOS | prompt)}`` (one batched forward)."""
        from lavic.model.decoding import prepare_prompts, score_candidates

        model, tokenizer = self.backbone.model, self.backbone.tokenizer
        embeds = [
            self.cache.get(list(p.candidate_ids)) if self.with_images else None for p in prompts
        ]
        with self.backbone.autocast():  # CPU bf16 when `--dtype auto` chose it, as evaluate
            batch = prepare_prompts(
                model, tokenizer, [p.text for p in prompts], embeds, max_length=self.max_length
            )
            return score_candidates(
                model, tokenizer, batch, [list(p.candidate_ids) for p in prompts]
            )

    def _result(
        self, prompt, scores: dict[str, float], retrieved: list[tuple[str, float]] | None
    ) -> Recommendation:
        from lavic.model.decoding import rank

        ranking = rank(scores)
        probs = dict(zip(ranking, _softmax([scores[c] for c in ranking]), strict=True))
        cosine = dict(retrieved) if retrieved is not None else {}
        candidates = [
            ScoredCandidate(
                item_id=c,
                title=self.title(c),
                score=probs[c],
                log_likelihood=scores[c],
                has_image=self.catalogue.image_path(c) is not None,
                retrieval_score=cosine.get(c),
            )
            for c in ranking
        ]
        best = candidates[0]
        return Recommendation(
            best.item_id,
            best.title,
            best.score,
            candidates,
            retrieved is not None,
            prompt.truncated,
        )


# --------------------------------------------------------------------------------------------
# Micro-batching
# --------------------------------------------------------------------------------------------

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_MAX_QUEUE = 64  # four full batches at the default max_batch of 16
DEFAULT_QUEUE_TIMEOUT_S = 30.0


class Unavailable(RuntimeError):
    """The batcher cannot take or finish a request now: the service answers 503.

    Attributes:
        retry_after_s: whole seconds after which a retry may succeed (the ``Retry-After``
            header).
    """

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFull(Unavailable):
    """The queue holds ``max_queue`` requests already: refused at once, before any work."""


class QueueTimeout(Unavailable):
    """The request waited ``queue_timeout_s`` in the queue without reaching the model."""


@dataclass(eq=False)
class _Entry(Generic[T]):
    item: T
    future: asyncio.Future
    started: bool = False  # taken into a batch that is running (or ran) the model


class MicroBatcher(Generic[T, R]):
    """Collects concurrent requests for up to ``max_wait_ms`` and runs them as one batch.

    ``fn(items) -> results`` runs in one worker thread, one batch at a time; a result that is
    an ``Exception`` is raised to that request's caller alone. While a batch runs, new requests
    queue up and form the next batch, so the batch size grows with the load by itself.

    Under overload it sheds work instead of queueing without end:

    * the queue holds at most ``max_queue`` requests; :meth:`submit` raises :class:`QueueFull`
      at once beyond that;
    * a request that waits ``queue_timeout_s`` without reaching the model raises
      :class:`QueueTimeout` and is dropped (a request already in a running batch waits for it);
    * a request whose caller is cancelled (its client went away) is dropped before its batch
      runs: the batcher skips cancelled futures;
    * if the batching loop dies, every waiting request and every later one raises
      :class:`Unavailable` instead of waiting forever, and :attr:`error` says why.

    Args:
        fn: the batched function (e.g. :meth:`Recommender.recommend_batch`).
        max_batch: most requests per batch.
        max_wait_ms: how long the first request of a batch waits for company.
        max_queue: most requests waiting for the model (not counting the running batch).
        queue_timeout_s: most seconds a request waits in the queue; None for no limit.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R | Exception]],
        *,
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        max_queue: int = DEFAULT_MAX_QUEUE,
        queue_timeout_s: float | None = DEFAULT_QUEUE_TIMEOUT_S,
    ):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        if queue_timeout_s is not None and queue_timeout_s <= 0:
            raise ValueError("queue_timeout_s must be > 0 (or None for no limit)")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.error: str | None = None  # why the loop died, if it did
        # Requests answered without running the model: queue_full, timed_out, cancelled.
        self.shed: Counter[str] = Counter()
        self._queue: asyncio.Queue[_Entry[T]] | None = None
        self._running_batch: list[_Entry[T]] = []
        self._batch_seconds = 0.0  # the last batch's time, for Retry-After
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        """The batching loop is alive (started, not stopped, not crashed)."""
        return self._task is not None and not self._task.done()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def health(self) -> dict[str, Any]:
        """Whether the loop is alive, the queue's depth and capacity, and what was shed."""
        return {
            "alive": self.running,
            "error": self.error,
            "queue_depth": self.queue_depth,
            "queue_capacity": self.max_queue,
            "queue_timeout_s": self.queue_timeout_s,
            "shed": {k: self.shed[k] for k in ("queue_full", "timed_out", "cancelled")},
        }

    async def start(self) -> None:
        if self.running:
            return
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lavic-model")
        self._stopping, self.error = False, None
        self._task = asyncio.create_task(self._loop(), name="lavic-micro-batcher")
        self._task.add_done_callback(self._on_loop_exit)

    async def stop(self) -> None:
        """Stop collecting; requests still queued or in the running batch get an error."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})  # cancelled, or dead already: raises neither
            self._task = None
        self._fail_all(Unavailable("the service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely drained: its batches times the last batch's."""
        batches = self.queue_depth / self.max_batch + 1
        return min(60, max(1, math.ceil(batches * self._batch_seconds)))

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its result (raises the item's own error).

        Raises:
            QueueFull: ``max_queue`` requests are waiting already (nothing was queued).
            QueueTimeout: it waited ``queue_timeout_s`` in the queue (it will not be run).
            Unavailable: the batching loop is not running.
        """
        if not self.running or self._queue is None:
            raise Unavailable(
                f"the micro-batcher is not running ({self.error or 'not started'})",
                retry_after_s=self.retry_after_s(),
            )
        entry = _Entry(item, asyncio.get_running_loop().create_future())
        if self._queue.full():
            self._purge_done()  # cancelled or timed-out entries hold no place
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.shed["queue_full"] += 1
            raise QueueFull(
                f"the service is overloaded: {self.max_queue} requests are waiting already",
                retry_after_s=self.retry_after_s(),
            ) from None
        try:
            await asyncio.wait({entry.future}, timeout=self.queue_timeout_s)
            if not entry.future.done() and not entry.started:
                self.shed["timed_out"] += 1
                raise QueueTimeout(
                    f"the request waited {self.queue_timeout_s:g} s in the queue without "
                    "reaching the model",
                    retry_after_s=self.retry_after_s(),
                )
            return await entry.future  # done, or in the running batch: wait for its answer
        except asyncio.CancelledError:  # the caller went away
            if not entry.started:
                self.shed["cancelled"] += 1
            raise
        finally:
            # Timed out or cancelled: the batcher skips a done future, the model never sees it.
            entry.future.cancel()

    def _purge_done(self) -> None:
        """Drop queued entries whose caller stopped waiting (the order of the rest is kept)."""
        assert self._queue is not None
        keep = []
        while not self._queue.empty():
            entry = self._queue.get_nowait()
            if not entry.future.done():
                keep.append(entry)
        for entry in keep:
            self._queue.put_nowait(entry)

    def _fail_all(self, exc: Exception) -> None:
        """Every queued request and the running batch's get ``exc``."""
        waiting = list(self._running_batch)
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for entry in waiting:
            if not entry.future.done():
                entry.future.set_exception(exc)
        self._running_batch = []

    def _on_loop_exit(self, task: asyncio.Task) -> None:
        if self._stopping:
            return
        # The loop must never end on its own: whatever killed it, nobody may wait forever.
        reason = "cancelled" if task.cancelled() else repr(task.exception())
        self.error = f"the batching loop died: {reason}"
        log.error("%s; /recommend answers 503 until the service is restarted", self.error)
        self._fail_all(Unavailable(f"the model worker stopped ({reason}): restart the service"))

    async def _collect(self) -> list[_Entry[T]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            # Whatever is already queued joins at once; then wait out the window.
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [e for e in batch if not e.future.done()]  # skip timed-out and cancelled
            if not live:
                continue
            for entry in live:
                entry.started = True
            # Kept until answered: if the loop is cancelled or dies in the model call,
            # stop() or _on_loop_exit() answers these callers.
            self._running_batch = live
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor, self.fn, [e.item for e in live]
                )
                if len(results) != len(live):
                    raise RuntimeError(f"batch of {len(live)} gave {len(results)} results")
            except Exception as exc:  # the whole batch failed: every caller hears why
                log.exception("batched model call failed")
                results = [exc] * len(live)
            self._batch_seconds = time.perf_counter() - start
            self._running_batch = []
            for entry, result in zip(live, results, strict=True):
                if entry.future.done():
                    continue
                if isinstance(result, Exception):
                    entry.future.set_exception(result)
                else:
                    entry.future.set_result(result)


__all__ = [
    "MAX_CANDIDATES",
    "MAX_CONVERSATION_CHARS",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_QUEUE_TIMEOUT_S",
    "MicroBatcher",
    "Query",
    "QueueFull",
    "QueueTimeout",
    "Recommendation",
    "Recommender",
    "RequestError",
    "ScoredCandidate",
    "Unavailable",
    "UnknownItemsError",
    "normalise_conversation",
]
