"""Pure ranking metrics for candidate-based recommendation, per ground-truth item.

Every metric here is averaged over *ground-truth items*, not conversations, as the reference's
Recall@1 is::

    for gt in gts:
        if rec == gt:
            hits += 1
        total += 1

So a conversation with 3 gt items adds 3 to the denominator and, with one prediction, at most 1
hit (2 if its gt list repeats the predicted id: the published data repeats an id when a comment
links the same product twice, and the reference counts both). A conversation with no gt items adds
nothing. Each ranking metric scores every gt item as if it were the conversation's only relevant
item and averages those scores over all gt items; with one gt item per conversation they are
the textbook definitions. All functions return 0.0 when there is no gt item at all, and raise
``ValueError`` when their sequences differ in length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _check_lengths(**sequences: Sequence) -> None:
    lengths = {name: len(seq) for name, seq in sequences.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"length mismatch: {lengths}")


def _first_ranks(ranking: Sequence[str]) -> dict[str, int]:
    """id -> 1-based rank of its first occurrence."""
    ranks: dict[str, int] = {}
    for rank, item in enumerate(ranking, start=1):
        ranks.setdefault(item, rank)
    return ranks


def _per_gt_mean(rankings, gt_items, score) -> float:
    _check_lengths(rankings=rankings, gt_items=gt_items)
    total = 0
    value = 0.0
    for ranking, gts in zip(rankings, gt_items, strict=True):
        ranks = _first_ranks(ranking)
        for gt in gts:
            rank = ranks.get(gt)
            if rank is not None:
                value += score(rank)
            total += 1
    return value / total if total else 0.0


def recall_at_1(predictions: Sequence[str | None], gt_items: Sequence[Sequence[str]]) -> float:
    """The reference's Recall@1: hits of the one prediction over all ground-truth items.

    Args:
        predictions: One predicted item id per conversation; None for no valid answer.
        gt_items: The ground-truth ids of each conversation.

    Returns:
        ``sum(#{gt == prediction}) / sum(len(gt_items))``, 0.0 if there are no gt items.
    """
    _check_lengths(predictions=predictions, gt_items=gt_items)
    hits = total = 0
    for prediction, gts in zip(predictions, gt_items, strict=True):
        for gt in gts:
            if prediction is not None and prediction == gt:
                hits += 1
            total += 1
    return hits / total if total else 0.0


def recall_at_1_ceiling(
    candidate_lists: Sequence[Sequence[str]], gt_items: Sequence[Sequence[str]]
) -> float:
    """The best Recall@1 a picker limited to the candidate list can get, one hit per conversation.

    Per conversation 1 if any of its gt items is in its candidate list, else 0; summed and
    divided by the number of gt items (the reference's denominator). This equals the best
    :func:`recall_at_1` of any choice of candidates unless a conversation's gt list repeats the
    id it could hit, which the reference's metric would count more than once.
    """
    _check_lengths(candidate_lists=candidate_lists, gt_items=gt_items)
    reachable = total = 0
    for candidates, gts in zip(candidate_lists, gt_items, strict=True):
        pool = set(candidates)
        reachable += any(gt in pool for gt in gts)
        total += len(gts)
    return reachable / total if total else 0.0


def gt_in_candidates(
    candidate_lists: Sequence[Sequence[str]], gt_items: Sequence[Sequence[str]]
) -> float:
    """Share of ground-truth items that are in their conversation's candidate list."""
    _check_lengths(candidate_lists=candidate_lists, gt_items=gt_items)
    inside = total = 0
    for candidates, gts in zip(candidate_lists, gt_items, strict=True):
        pool = set(candidates)
        inside += sum(gt in pool for gt in gts)
        total += len(gts)
    return inside / total if total else 0.0


def validity_at_1(
    predictions: Sequence[str | None], candidate_lists: Sequence[Sequence[str]]
) -> float:
    """Share of conversations whose prediction is one of its candidates (None is invalid)."""
    _check_lengths(predictions=predictions, candidate_lists=candidate_lists)
    if not predictions:
        return 0.0
    valid = sum(
        prediction is not None and prediction in candidates
        for prediction, candidates in zip(predictions, candidate_lists, strict=True)
    )
    return valid / len(predictions)


def hit_rate_at_k(
    rankings: Sequence[Sequence[str]], gt_items: Sequence[Sequence[str]], k: int
) -> float:
    """Share of ground-truth items ranked in the top ``k`` of their conversation's ranking.

    ``hit_rate_at_k(rankings, gt, 1) == recall_at_1([r[0] for r in rankings], gt)``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return _per_gt_mean(rankings, gt_items, lambda rank: 1.0 if rank <= k else 0.0)


def mrr(rankings: Sequence[Sequence[str]], gt_items: Sequence[Sequence[str]]) -> float:
    """Mean reciprocal rank of each ground-truth item (0 when it is not in the ranking)."""
    return _per_gt_mean(rankings, gt_items, lambda rank: 1.0 / rank)


def ndcg_at_k(
    rankings: Sequence[Sequence[str]], gt_items: Sequence[Sequence[str]], k: int
) -> float:
    """nDCG@k of each ground-truth item as the single relevant item: ``1 / log2(rank + 1)``
    if its rank is at most ``k``, else 0 (the ideal DCG is 1), averaged over gt items."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return _per_gt_mean(
        rankings, gt_items, lambda rank: 1.0 / math.log2(rank + 1) if rank <= k else 0.0
    )
