"""On the synthetic catalogue, the served picks are ``lavic evaluate``'s picks, one for one.

The evaluator runs its own path (one conversation per forward, item tokens encoded in memory,
no cache); the service answers the same conversations and candidate lists over HTTP,
concurrently, so they are micro-batched with left padding and read the tokens from the index's
cache. Picks and Recall@1 must be identical.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

CATEGORY = "synthetic_home"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from lavic.data.synthetic import write_catalogue

    root = tmp_path_factory.mktemp("synthetic")
    write_catalogue(
        root,
        seed=5,
        categories=[CATEGORY],
        num_train=8,
        num_valid=4,
        num_test=16,
        num_candidates=6,
        min_items_per_kind=7,
        num_distill_valid=2,
        max_image_side=400,
    )
    return root


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bf16-autocast"])
def test_served_picks_match_the_evaluator(synthetic, tuned_dir, embedder, tmp_path, dtype, request):
    """Like with like: in float32 the service micro-batches (a padded batch scores as one
    conversation to ~1e-6); on the CPU bf16 path (what `--dtype auto` picks on a CPU with native
    bf16, forced here on any CPU) a batch differs from one conversation by a few 1e-4, so the
    service scores one request per batch, the evaluator's shape, and must agree to float noise."""
    import httpx

    from lavic.data.loaders import load_split
    from lavic.evaluation.evaluate import evaluate_split
    from lavic.metrics import recall_at_1
    from lavic.serving.app import create_app
    from lavic.serving.index import Args, build_index
    from lavic.serving.recommender import Recommender

    bf16 = dtype == "bf16-autocast"
    if bf16:
        request.getfixturevalue("force_cpu_bf16")
    load_dtype = "auto" if bf16 else "float32"  # auto: the CPU bf16 path, forced above
    meta_path, image_dir = synthetic / "item2meta_train.json", synthetic / "train_images"
    index_dir = tmp_path / "index"
    summary = build_index(
        Args(
            model_dir=tuned_dir,
            item_meta_path=meta_path,
            image_dir=image_dir,
            index_dir=index_dir,
            eval_data_dir=synthetic,
            category=CATEGORY,
        ),
        embedder=embedder,
    )
    assert 0.0 <= summary["retrieval_recall@10"] <= 1.0

    metrics = evaluate_split(
        model_dir=tuned_dir,
        data_dir=synthetic,
        category=CATEGORY,
        candidate_type="candidates_st",
        split="test",
        item_meta_path=meta_path,
        image_dir=image_dir,
        output_dir=tmp_path / "eval",
        decoding="score",
        batch_size=1,
        device="cpu",
        dtype=load_dtype,
    )
    with open(metrics["output_file"], encoding="utf-8") as handle:
        evaluated = [json.loads(line) for line in handle]
    conversations = load_split(synthetic, CATEGORY, "test")
    assert len(evaluated) == len(conversations) == 16

    recommender = Recommender.load(
        tuned_dir, index_dir, embedder=embedder, device="cpu", dtype=load_dtype
    )
    assert recommender.backbone.autocast_dtype == (torch.bfloat16 if bf16 else None)
    max_batch = 1 if bf16 else 8

    async def serve_all():
        app = create_app(recommender, max_batch=max_batch, max_wait_ms=20)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as client,
        ):
            return await asyncio.gather(
                *(
                    client.post(
                        "/recommend",
                        json={
                            "conversation": c.context,
                            "candidates": list(c.candidates["candidates_st"]),
                        },
                    )
                    for c in conversations
                )
            )

    batches_before = recommender.stats.batches
    responses = asyncio.run(serve_all())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    if not bf16:
        assert recommender.stats.batches - batches_before < len(conversations)  # micro-batched

    served = [r.json() for r in responses]
    assert [s["item_id"] for s in served] == [e["recommended_st"] for e in evaluated]
    assert [[c["item_id"] for c in s["candidates"]] for s in served] == [
        e["ranking_st"] for e in evaluated
    ]
    for s, e in zip(served, evaluated, strict=True):
        assert [c["log_likelihood"] for c in s["candidates"]] == pytest.approx(
            e["scores_st"], abs=1e-4
        )
    accuracy = recall_at_1([s["item_id"] for s in served], [c.gt_items for c in conversations])
    assert accuracy == metrics["recall@1"]
