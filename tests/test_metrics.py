"""Metrics against hand-derived values and brute-force oracles."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from lavic.metrics import (
    gt_in_candidates,
    hit_rate_at_k,
    mrr,
    ndcg_at_k,
    recall_at_1,
    recall_at_1_ceiling,
    validity_at_1,
)

# Four conversations; 1 + 3 + 1 + 2 = 7 ground-truth items.
GTS = [["A"], ["B", "C", "D"], ["E"], ["F", "F"]]
CANDIDATES = [["A", "X"], ["Y", "C", "D"], ["Z"], ["F", "W"]]


def test_recall_at_1_by_hand():
    # hits: A (1), C is one of 3 gts (1), E absent (0), F repeated -> the reference counts 2
    assert recall_at_1(["A", "C", "Z", "F"], GTS) == pytest.approx(4 / 7)
    assert recall_at_1([None, None, None, None], GTS) == 0.0
    assert recall_at_1(["A", None, "E", None], GTS) == pytest.approx(2 / 7)
    assert recall_at_1([], []) == 0.0
    assert recall_at_1(["A"], [[]]) == 0.0  # no gt items: nothing to recall


def test_recall_at_1_matches_the_reference_loop():
    rng = random.Random(0)
    ids = list("ABCDEFG")
    for _ in range(200):
        gts = [
            [rng.choice(ids) for _ in range(rng.randint(0, 3))] for _ in range(rng.randint(0, 6))
        ]
        preds = [rng.choice([*ids, None]) for _ in gts]
        hits = total = 0
        # the reference's code, verbatim in spirit
        for rec, gt_list in zip(preds, gts, strict=True):
            for gt in gt_list:
                if rec == gt:
                    hits += 1
                total += 1
        assert recall_at_1(preds, gts) == (hits / total if total else 0.0)


def test_ceiling_and_gt_share_by_hand():
    # reachable conversations: 1st (A), 2nd (C or D, one prediction -> 1), 4th (F) = 3 of 7 gt
    assert recall_at_1_ceiling(CANDIDATES, GTS) == pytest.approx(3 / 7)
    # gt items inside their list: A, C, D, F, F = 5 of 7
    assert gt_in_candidates(CANDIDATES, GTS) == pytest.approx(5 / 7)
    assert recall_at_1_ceiling([], []) == 0.0 and gt_in_candidates([], []) == 0.0


def test_ceiling_is_the_best_recall_of_any_choice_brute_force():
    rng = random.Random(1)
    ids = list("ABCDEFGH")
    for _ in range(100):
        n = rng.randint(1, 4)
        # distinct gt ids per conversation: then the ceiling is exactly the best achievable
        gts = [rng.sample(ids, rng.randint(1, 3)) for _ in range(n)]
        lists = [rng.sample(ids, rng.randint(1, 3)) for _ in range(n)]
        best = max(recall_at_1(list(choice), gts) for choice in itertools.product(*lists))
        assert recall_at_1_ceiling(lists, gts) == pytest.approx(best)


def test_repeated_gt_can_beat_the_ceiling_as_documented():
    # one conversation whose gt list repeats the id: the reference's metric counts 2 hits
    assert recall_at_1(["F"], [["F", "F"]]) == 1.0
    assert recall_at_1_ceiling([["F"]], [["F", "F"]]) == 0.5


def test_validity_at_1():
    assert validity_at_1(["A", "Q", None, "W"], CANDIDATES) == pytest.approx(2 / 4)
    assert validity_at_1([], []) == 0.0


def test_length_mismatch_and_bad_k():
    with pytest.raises(ValueError, match="length mismatch"):
        recall_at_1(["A"], GTS)
    with pytest.raises(ValueError, match="length mismatch"):
        recall_at_1_ceiling(CANDIDATES[:2], GTS)
    with pytest.raises(ValueError, match="length mismatch"):
        validity_at_1(["A"], CANDIDATES)
    with pytest.raises(ValueError, match="k must be"):
        hit_rate_at_k([["A"]], [["A"]], 0)
    with pytest.raises(ValueError, match="k must be"):
        ndcg_at_k([["A"]], [["A"]], 0)


RANKINGS = [["X", "A"], ["C", "Y", "D"], ["Z"], ["W", "F"]]
# ranks per gt item: A 2; B absent, C 1, D 3; E absent; F 2, F 2


def test_ranking_metrics_by_hand():
    assert hit_rate_at_k(RANKINGS, GTS, 1) == pytest.approx(1 / 7)  # C
    assert hit_rate_at_k(RANKINGS, GTS, 2) == pytest.approx(4 / 7)  # A, C, F, F
    assert hit_rate_at_k(RANKINGS, GTS, 10) == pytest.approx(5 / 7)
    assert mrr(RANKINGS, GTS) == pytest.approx((1 / 2 + 1 + 1 / 3 + 1 / 2 + 1 / 2) / 7)
    expected = (1 / math.log2(3) + 1 + 2 / math.log2(3)) / 7  # D at rank 3 is cut at k=2
    assert ndcg_at_k(RANKINGS, GTS, 2) == pytest.approx(expected)
    assert ndcg_at_k(RANKINGS, GTS, 3) == pytest.approx(expected + 0.5 / 7)
    assert mrr([["A", "A", "B"]], [["B"]]) == pytest.approx(1 / 3)  # rank counts positions


def _oracle(rankings, gts, k):
    """Brute force: explicit relevance vectors, DCG sums, first-hit search."""
    hit = rr = ndcg = 0.0
    total = 0
    for ranking, gt_list in zip(rankings, gts, strict=True):
        for gt in gt_list:
            total += 1
            relevance = [1.0 if item == gt else 0.0 for item in ranking]
            first = next((i for i, r in enumerate(relevance) if r), None)
            if first is not None:
                rr += 1.0 / (first + 1)
                hit += first < k
                ndcg += sum(
                    (r if i == first else 0.0) / math.log2(i + 2)
                    for i, r in enumerate(relevance[:k])
                )
    return (hit / total, rr / total, ndcg / total) if total else (0.0, 0.0, 0.0)


def test_ranking_metrics_against_brute_force():
    rng = random.Random(2)
    ids = list("ABCDEFGHIJ")
    for _ in range(200):
        n = rng.randint(0, 5)
        gts = [[rng.choice(ids) for _ in range(rng.randint(0, 3))] for _ in range(n)]
        rankings = [rng.sample(ids, rng.randint(0, 6)) for _ in range(n)]
        k = rng.randint(1, 7)
        hit, rr, ndcg = _oracle(rankings, gts, k)
        assert hit_rate_at_k(rankings, gts, k) == pytest.approx(hit)
        assert mrr(rankings, gts) == pytest.approx(rr)
        assert ndcg_at_k(rankings, gts, k) == pytest.approx(ndcg)
        top1 = [r[0] if r else None for r in rankings]
        assert hit_rate_at_k(rankings, gts, 1) == pytest.approx(recall_at_1(top1, gts))
