"""The recommender against the evaluator's ranking (the oracle), its checks, and micro-batching."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time

import pytest
import torch

from lavic.errors import LavicError
from lavic.serving.recommender import (
    MicroBatcher,
    Query,
    QueueFull,
    QueueTimeout,
    RequestError,
    Unavailable,
    UnknownItemsError,
    normalise_conversation,
)

from .conftest import CONVERSATIONS, ITEM_IDS
from .stubs import GatedModel, until


def evaluator_scores(recommender, conversation: str, candidates: list[str]) -> dict[str, float]:
    """The evaluator's own path (decode_conversations, batch of one) for one conversation."""
    from lavic.data.records import Conversation, ItemMeta
    from lavic.evaluation.evaluate import decode_conversations

    meta = {i: ItemMeta(i, e.title, ()) for i, e in recommender.catalogue.items.items()}
    conv = Conversation(
        context=conversation,
        context_items=(),
        gt="",
        gt_items=("x",),
        candidates={"candidates_st": tuple(candidates)},
        source="mem",
        line=1,
        raw={},
    )
    tokens = dict(zip(candidates, recommender.cache.get(candidates), strict=True))
    result = decode_conversations(
        recommender.backbone,
        [conv],
        "candidates_st",
        meta,
        tokens,
        decoding="score",
        max_length=recommender.max_length,
        batch_size=1,
    )
    d = result.decoded[0]
    return dict(zip(d.ranking, d.scores, strict=True))


def test_ranking_equals_the_evaluators(recommender):
    conversation, _ = CONVERSATIONS[1]
    candidates = ITEM_IDS[:8]
    result = recommender.recommend(conversation, candidates)
    oracle = evaluator_scores(recommender, conversation, candidates)
    assert [c.item_id for c in result.candidates] == list(oracle)
    for c in result.candidates:
        assert c.log_likelihood == pytest.approx(oracle[c.item_id], abs=1e-4)
    assert result.item_id == result.candidates[0].item_id
    assert not result.retrieved and all(c.retrieval_score is None for c in result.candidates)
    # score: a softmax over the candidates' log-likelihoods.
    assert sum(c.score for c in result.candidates) == pytest.approx(1.0)
    top, second = result.candidates[:2]
    assert top.score / second.score == pytest.approx(
        math.exp(top.log_likelihood - second.log_likelihood), rel=1e-6
    )


def test_a_batch_ranks_as_one_at_a_time(recommender):
    queries = [
        recommender.check(Query(c, tuple(ITEM_IDS[i : i + 5])))
        for i, (c, _) in enumerate(CONVERSATIONS)
    ]
    batched = recommender.recommend_batch(queries)
    for query, got in zip(queries, batched, strict=True):
        alone = recommender.recommend(query.conversation, query.candidates)
        assert [c.item_id for c in got.candidates] == [c.item_id for c in alone.candidates]
        for a, b in zip(got.candidates, alone.candidates, strict=True):
            assert a.log_likelihood == pytest.approx(b.log_likelihood, abs=1e-4)


def test_cpu_bf16_autocast_ranks_as_float32(
    recommender, tuned_dir, index_dir, embedder, force_cpu_bf16, tmp_path
):
    """The CPU bf16 path (what `--dtype auto` picks on a CPU with native bf16; emulated here if
    this CPU has none) against the float32 recommender: the same picks, log-likelihoods within
    bf16's rounding (8 bits of mantissa, ~1e-3 on a sum of ~10 token log-probabilities); and,
    like with like, a bf16 batch ranks as bf16 one at a time."""
    import shutil

    from lavic.serving.recommender import Recommender

    shutil.copytree(index_dir, tmp_path / "index")  # its item-token cache is keyed by dtype
    bf16 = Recommender.load(tuned_dir, tmp_path / "index", embedder=embedder, device="cpu")
    assert bf16.backbone.autocast_dtype == torch.bfloat16
    assert recommender.backbone.autocast_dtype is None
    queries = [
        bf16.check(Query(c, tuple(ITEM_IDS[i : i + 5]))) for i, (c, _) in enumerate(CONVERSATIONS)
    ]
    batched = bf16.recommend_batch(queries)
    for query, got in zip(queries, batched, strict=True):
        alone = bf16.recommend(query.conversation, query.candidates)
        fp32 = recommender.recommend(query.conversation, query.candidates)
        assert got.item_id == alone.item_id == fp32.item_id
        by_id = {c.item_id: c.log_likelihood for c in fp32.candidates}
        for a, b in zip(got.candidates, alone.candidates, strict=True):
            assert a.item_id == b.item_id
            assert a.log_likelihood == pytest.approx(b.log_likelihood, abs=5e-3)
            assert a.log_likelihood == pytest.approx(by_id[a.item_id], rel=2e-2, abs=2e-2)
            assert a.log_likelihood != by_id[a.item_id]  # it did run in bf16


def test_retrieval_supplies_top_k_candidates(recommender):
    conversation = "<submission>I need a waterproof backpack for cycling</submission>\n"
    result = recommender.recommend(conversation, None, top_k=4)
    assert result.retrieved and len(result.candidates) == 4
    retrieved = recommender.retrieval.search([conversation], 4)[0]
    assert {c.item_id for c in result.candidates} == {i for i, _ in retrieved}
    assert all(c.retrieval_score is not None for c in result.candidates)
    # The model then ranks exactly those candidates in retrieval order.
    oracle = evaluator_scores(recommender, conversation, [i for i, _ in retrieved])
    assert result.item_id == next(iter(oracle))


def test_plain_text_is_the_submission():
    assert normalise_conversation("  red mug ") == "<submission>red mug</submission>\n"
    thread = "<submission>a</submission>\n<comment>b</comment>\n"
    assert normalise_conversation(thread) == thread  # kept byte for byte


@pytest.mark.parametrize(
    ("query", "error", "message"),
    [
        (Query("   "), RequestError, "empty"),
        (Query("x" * 20_001), RequestError, "20001 characters"),
        (Query("mug", top_k=0), RequestError, "top_k"),
        (Query("mug", top_k=51), RequestError, "top_k"),
        (Query("mug", ()), RequestError, "candidates is empty"),
        (Query("mug", ("B000MUG001", "B000MUG001")), RequestError, "twice"),
        (Query("mug", tuple(f"X{i}" for i in range(51))), RequestError, "at most 50"),
        (Query("mug", ("B000MUG001", "../../etc/passwd")), UnknownItemsError, "'../../etc/passwd'"),
    ],
)
def test_check_refuses_bad_queries(recommender, query, error, message):
    with pytest.raises(error, match=message):
        recommender.check(query)


def test_candidates_that_do_not_fit_the_budget_are_an_error(recommender):
    small = type(recommender)(
        recommender.backbone,
        recommender.cache,
        recommender.catalogue,
        recommender.retrieval,
        max_length=64,
    )
    with pytest.raises(LavicError, match="max_length"):
        small.recommend("mug", ITEM_IDS[:10])


# ------------------------------------------------------------------------------- micro-batching


def run(coro):
    return asyncio.run(coro)


def test_micro_batcher_groups_concurrent_requests():
    calls: list[list[int]] = []
    threads: set[str] = set()

    def square(items):
        calls.append(list(items))
        threads.add(threading.current_thread().name)
        time.sleep(0.02)  # a model call: requests arriving meanwhile form the next batch
        return [x * x for x in items]

    async def main():
        batcher = MicroBatcher(square, max_batch=8, max_wait_ms=20)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(i) for i in range(30)))
        finally:
            await batcher.stop()

    results = run(main())
    assert results == [i * i for i in range(30)]
    assert sorted(x for call in calls for x in call) == list(range(30))
    assert max(len(c) for c in calls) == 8
    assert len(calls) <= 5  # 30 requests at once: full batches, not 30 calls
    assert len(threads) == 1 and next(iter(threads)).startswith("lavic-model")


def test_micro_batcher_waits_for_company_then_goes():
    calls: list[list[int]] = []

    async def main():
        batcher = MicroBatcher(
            lambda items: calls.append(list(items)) or items, max_batch=16, max_wait_ms=50
        )
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(1))
            await asyncio.sleep(0.01)  # inside the 50 ms window: joins the first batch
            second = asyncio.create_task(batcher.submit(2))
            await asyncio.gather(first, second)
            start = time.perf_counter()
            await batcher.submit(3)  # alone: goes after the window, not later
            return time.perf_counter() - start
        finally:
            await batcher.stop()

    alone = run(main())
    assert calls == [[1, 2], [3]]
    assert 0.04 <= alone < 1.0


def test_micro_batcher_errors_reach_only_their_caller():
    def fn(items):
        if "boom" in items:
            raise RuntimeError("model failed")
        return [ValueError(f"bad {x}") if x < 0 else x for x in items]

    async def main():
        batcher = MicroBatcher(fn, max_batch=4, max_wait_ms=10)
        await batcher.start()
        try:
            good, bad = await asyncio.gather(
                batcher.submit(1), batcher.submit(-1), return_exceptions=True
            )
            whole = await asyncio.gather(
                batcher.submit("boom"), batcher.submit(2), return_exceptions=True
            )
            after = await batcher.submit(5)  # the loop survived a failed batch
            return good, bad, whole, after
        finally:
            await batcher.stop()

    good, bad, whole, after = run(main())
    assert good == 1 and isinstance(bad, ValueError) and str(bad) == "bad -1"
    assert all(isinstance(e, RuntimeError) for e in whole)
    assert after == 5


def test_micro_batcher_refuses_work_when_stopped():
    async def main():
        batcher = MicroBatcher(lambda items: items)
        with pytest.raises(RuntimeError, match="not running"):
            await batcher.submit(1)

    run(main())


def test_text_only_model_is_served_text_only(recommender, tuned_dir, index_dir, embedder, tmp_path):
    import shutil

    import yaml

    from lavic.data.records import Conversation, ItemMeta
    from lavic.evaluation.evaluate import decode_conversations
    from lavic.serving.recommender import Recommender

    text_only = tmp_path / "text_only"
    shutil.copytree(tuned_dir, text_only)
    config = yaml.safe_load((text_only / "config.yaml").read_text())
    (text_only / "config.yaml").write_text(yaml.safe_dump({**config, "no_images": True}))
    parent = (tuned_dir / json.loads((tuned_dir / "lavic.json").read_text())["parent"]).resolve()
    info = json.loads((text_only / "lavic.json").read_text())
    (text_only / "lavic.json").write_text(json.dumps({**info, "parent": str(parent)}))
    served = Recommender.load(
        text_only, index_dir, embedder=embedder, device="cpu", backbone=recommender.backbone
    )
    assert served.with_images is False
    conversation, candidates = CONVERSATIONS[3][0], ITEM_IDS[:6]
    result = served.recommend(conversation, candidates)
    meta = {i: ItemMeta(i, e.title, ()) for i, e in recommender.catalogue.items.items()}
    conv = Conversation(
        context=conversation,
        context_items=(),
        gt="",
        gt_items=("x",),
        candidates={"candidates_st": tuple(candidates)},
        source="mem",
        line=1,
        raw={},
    )
    oracle = decode_conversations(
        recommender.backbone,
        [conv],
        "candidates_st",
        meta,
        None,
        decoding="score",
        max_length=2048,
        batch_size=1,
    ).decoded[0]
    assert [c.item_id for c in result.candidates] == oracle.ranking
    assert [c.log_likelihood for c in result.candidates] == pytest.approx(oracle.scores, abs=1e-4)
    # ... and differs from the same model reading the images (the tokens matter).
    with_images = recommender.recommend(conversation, candidates)
    assert {c.item_id: c.log_likelihood for c in with_images.candidates} != pytest.approx(
        {c.item_id: c.log_likelihood for c in result.candidates}, abs=1e-3
    )


# ------------------------------------------------------------------ shedding load (issue 20)


def test_micro_batcher_refuses_beyond_a_full_queue_at_once():
    model = GatedModel()

    async def main():
        batcher = MicroBatcher(model, max_batch=1, max_wait_ms=0, max_queue=2)
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit("a"))
            await model.busy()  # "a" is in the model, out of the queue
            queued = [asyncio.create_task(batcher.submit(x)) for x in "bc"]
            await until(lambda: batcher.queue_depth == 2)
            start = time.perf_counter()
            with pytest.raises(QueueFull, match="overloaded") as refused:
                await batcher.submit("d")
            elapsed = time.perf_counter() - start
            scored_while_full = model.scored
            model.open()
            answers = await asyncio.gather(first, *queued)
            return refused.value, elapsed, scored_while_full, answers, batcher.health()
        finally:
            model.open()
            await batcher.stop()

    refused, elapsed, scored_while_full, answers, health = run(main())
    assert elapsed < 1.0 and scored_while_full == ["a"]  # no model work for the refusal
    assert refused.retry_after_s >= 1
    assert answers == ["a", "b", "c"] and model.scored == ["a", "b", "c"]
    assert health["shed"] == {"queue_full": 1, "timed_out": 0, "cancelled": 0}
    assert health["queue_capacity"] == 2 and health["queue_depth"] == 0


def test_micro_batcher_times_out_a_queued_request_and_never_runs_it():
    model = GatedModel()

    async def main():
        batcher = MicroBatcher(model, max_batch=1, max_wait_ms=0, queue_timeout_s=0.2)
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit("a"))
            await model.busy()
            start = time.perf_counter()
            with pytest.raises(QueueTimeout, match="waited 0.2 s") as late:
                await batcher.submit("b")
            waited = time.perf_counter() - start
            await asyncio.sleep(0.3)  # "a" is past the timeout too, but already in the model
            model.open()
            answer = await first
            after = await batcher.submit("c")
            return late.value, waited, answer, after, batcher.health()
        finally:
            model.open()
            await batcher.stop()

    late, waited, answer, after, health = run(main())
    assert 0.15 <= waited < 2.0 and late.retry_after_s >= 1
    assert answer == "a" and after == "c"  # a started request waits for its answer
    assert model.scored == ["a", "c"]  # "b" never reached the model
    assert health["shed"]["timed_out"] == 1


def test_micro_batcher_skips_a_cancelled_request():
    model = GatedModel()

    async def main():
        batcher = MicroBatcher(model, max_batch=1, max_wait_ms=0, max_queue=1)
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit("a"))
            await model.busy()
            gone = asyncio.create_task(batcher.submit("b"))
            await until(lambda: batcher.queue_depth == 1)
            gone.cancel()  # its client went away
            await asyncio.gather(gone, return_exceptions=True)
            # The cancelled entry holds no place: the full queue takes "c".
            third = asyncio.create_task(batcher.submit("c"))
            await until(lambda: batcher.queue_depth == 1)
            model.open()
            return await asyncio.gather(first, third), gone.cancelled(), batcher.health()
        finally:
            model.open()
            await batcher.stop()

    answers, cancelled, health = run(main())
    assert cancelled and answers == ["a", "c"]
    assert model.scored == ["a", "c"]  # "b" was dropped before its batch ran
    assert health["shed"] == {"queue_full": 0, "timed_out": 0, "cancelled": 1}


def test_micro_batcher_that_dies_answers_everyone_and_says_so():
    model = GatedModel(crash=True)

    async def main():
        batcher = MicroBatcher(model, max_batch=1, max_wait_ms=0)
        await batcher.start()
        try:
            alive = batcher.health()["alive"]
            results = await asyncio.gather(
                batcher.submit("a"), batcher.submit("b"), return_exceptions=True
            )
            start = time.perf_counter()
            with pytest.raises(Unavailable, match="not running"):
                await batcher.submit("c")
            return alive, results, time.perf_counter() - start, batcher.health()
        finally:
            await batcher.stop()

    alive, results, refused_in, health = run(main())
    assert alive is True
    # The request in the model and the one queued behind it: an error each, not a hang.
    assert [type(r) for r in results] == [Unavailable, Unavailable]
    assert "stopped" in str(results[0])
    assert refused_in < 1.0
    assert health["alive"] is False and "Crash" in health["error"]
    assert model.scored == ["a"]
