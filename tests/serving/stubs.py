"""Stand-ins for the model in the overload tests: a batched function that blocks until told,
and a recommender around it, so a test decides when the "model" is busy without loading one."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

from lavic.serving.recommender import BatchStats, Query, Recommendation


class Crash(BaseException):
    """Not an ``Exception``: the batcher's per-batch handler lets it through, so it kills the
    batching loop the way an unforeseen bug would."""


class GatedModel:
    """A batched function that records every batch it is given and blocks in it until
    :meth:`open` (bounded by ``timeout``: a broken test fails, it never hangs the suite).

    Args:
        answer: what each item becomes (the identity by default).
        crash: raise :class:`Crash` from the first call instead of answering.
        timeout: longest a call waits for the gate.
    """

    def __init__(self, answer=lambda x: x, *, crash: bool = False, timeout: float = 30.0):
        self.answer, self.crash, self.timeout = answer, crash, timeout
        self.calls: list[list] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self, items: list) -> list:
        self.calls.append(list(items))
        self.entered.set()
        if self.crash:
            raise Crash("the batching loop's bug")
        self.gate.wait(self.timeout)
        return [self.answer(x) for x in items]

    def open(self) -> None:
        self.gate.set()

    def close(self) -> None:
        """Block the next calls again."""
        self.gate.clear()

    @property
    def scored(self) -> list:
        """Every item the model was given, in order."""
        return [x for call in self.calls for x in call]

    async def busy(self) -> None:
        """Wait (at most 10 s) until a batch is inside the model."""
        assert await asyncio.to_thread(self.entered.wait, 10), "the model was never called"


async def until(condition, timeout: float = 10.0) -> None:
    """Poll ``condition()`` every 5 ms until it holds (fails after ``timeout`` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.005)


def recommendation(query: Query) -> Recommendation:
    """A valid answer for ``query`` without a model: its first candidate."""
    item = query.candidates[0] if query.candidates else "B000MUG001"
    return Recommendation(item, "stub", 1.0, [], False, False)


class StubRecommender:
    """What ``create_app`` uses of a :class:`Recommender`, with ``model`` as its batched call.

    Pass it as ``create_app(lambda: stub)`` (a loader), so no model or index is needed.
    """

    def __init__(self, model: GatedModel):
        self.recommend_batch = model
        self.catalogue = {"B000MUG001": None, "B000MUG002": None}
        self.backbone = SimpleNamespace(name="stub", base_model="stub", is_stand_in=False)
        self.max_length, self.with_images = 2048, True
        self.stats = BatchStats()

    def check(self, query: Query) -> Query:
        return query
