"""Stage-2 samples: the ground-truth placement rule, prompt rendering and the collator."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch

from lavic.constants import IGNORE_INDEX, ITEM_TOKENS
from lavic.data.records import Conversation
from lavic.model.tiny_random import build_tiny_random
from lavic.tune.data import (
    RecommendCollator,
    RecommendDataset,
    make_samples,
    narrow_candidates,
    place_ground_truth,
)


def conversation(line: int, gt: tuple[str, ...], candidates: tuple[str, ...]) -> Conversation:
    raw = {
        "context": "c",
        "context_items": [],
        "gt": "g",
        "gt_items": list(gt),
        "candidates_st": list(candidates),
    }
    return Conversation(
        context=f"<submission>thread {line}</submission>",
        context_items=(),
        gt="g",
        gt_items=gt,
        candidates={"candidates_st": candidates},
        source="train.jsonl",
        line=line,
        raw=raw,
    )


def test_ground_truth_already_a_candidate_is_left_alone():
    cands = ("A", "B", "C")
    assert place_ground_truth(cands, "B", seed=42, key="1:0") == (cands, None)


def test_ground_truth_replaces_one_seeded_candidate():
    cands = ("A", "B", "C", "D")
    placed, index = place_ground_truth(cands, "Z", seed=42, key="7:0")
    assert len(placed) == 4 and placed[index] == "Z"
    assert [c for k, c in enumerate(placed) if k != index] == [
        c for k, c in enumerate(cands) if k != index
    ]
    # Deterministic per sample: the same (seed, key) always picks the same slot ...
    assert place_ground_truth(cands, "Z", seed=42, key="7:0") == (placed, index)
    # ... and across samples every slot is used, roughly uniformly.
    slots = Counter(place_ground_truth(cands, "Z", seed=42, key=f"{n}:0")[1] for n in range(4000))
    assert set(slots) == {0, 1, 2, 3} and min(slots.values()) > 850
    # The seed matters.
    picks = [place_ground_truth(cands, "Z", seed=s, key="7:0")[1] for s in range(20)]
    assert len(set(picks)) > 1


def test_make_samples_one_per_ground_truth_without_mutating():
    convs = [
        conversation(1, ("A",), ("A", "B", "C")),
        conversation(2, ("Z", "B", "Z"), ("A", "B", "C")),
    ]
    before = copy.deepcopy([(c.candidates, c.raw) for c in convs])
    samples = make_samples(convs, "candidates_st", seed=42)
    assert [s.target for s in samples] == ["A", "Z", "B", "Z"]
    assert [s.line for s in samples] == [1, 2, 2, 2]
    assert samples[0].candidates == ("A", "B", "C") and samples[0].replaced is None
    assert samples[2].candidates == ("A", "B", "C") and samples[2].replaced is None
    for s in (samples[1], samples[3]):
        assert "Z" in s.candidates and s.replaced is not None and len(s.candidates) == 3
    assert [(c.candidates, c.raw) for c in convs] == before
    # Same data, other order: the same samples (the draw depends on the sample, not the order).
    again = make_samples(list(reversed(convs)), "candidates_st", seed=42)
    assert sorted(again, key=lambda s: (s.line, s.target)) == sorted(
        samples, key=lambda s: (s.line, s.target)
    )


def test_narrow_candidates_keeps_the_answer_and_the_order():
    convs = [conversation(n, ("C",), ("A", "B", "C", "D", "E", "F")) for n in range(200)]
    samples = make_samples(convs, "candidates_st", seed=3)
    two = narrow_candidates(samples, 2, seed=3)
    four = narrow_candidates(samples, 4, seed=3)
    pairs = [(s, n, 2) for s, n in zip(samples, two, strict=True)]
    pairs += [(s, n, 4) for s, n in zip(samples, four, strict=True)]
    for full, narrowed, k in pairs:
        assert len(narrowed.candidates) == k and "C" in narrowed.candidates
        assert [c for c in full.candidates if c in narrowed.candidates] == list(
            narrowed.candidates
        )  # prompt order kept
        assert (narrowed.target, narrowed.line, narrowed.conversation) == (
            full.target,
            full.line,
            full.conversation,
        )
    # every other candidate is drawn, per sample, the same way again
    assert {c for n in two for c in n.candidates} == set("ABCDEF")
    assert narrow_candidates(list(reversed(samples)), 2, seed=3) == list(reversed(two))
    assert narrow_candidates(samples, 2, seed=4) != two
    # a list already that short is left alone; a stage of one candidate teaches nothing
    short = make_samples([conversation(1, ("A",), ("A", "B"))], "candidates_st", seed=3)
    assert narrow_candidates(short, 4, seed=3) == short
    with pytest.raises(ValueError, match="at least 2"):
        narrow_candidates(samples, 1, seed=3)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_random().tokenizer


def test_long_conversation_is_cut_never_a_candidate(tokenizer):
    long = conversation(3, ("C",), ("A", "B", "C"))
    long = Conversation(**{**long.__dict__, "context": "<submission>" + "red mug " * 400})
    short = conversation(4, ("A",), ("A", "B", "C"))
    samples = make_samples([long, short], "candidates_st", seed=0)
    ds = RecommendDataset(
        samples, tokenizer, lambda i: f"title of {i}", max_length=512, progress=False
    )
    assert ds.truncated == 1 and ds.tokens_dropped > 0
    for row in ds:
        for i in ("A", "B", "C"):
            assert f"{i}: title of {i}\n{''.join(ITEM_TOKENS)}" in row.prompt
        assert len(tokenizer(row.prompt)["input_ids"]) <= 512 - 16
    assert ds.item_ids() == ["A", "B", "C"]


class FakeCache:
    """Returns, for item ``X``, tokens filled with ``ord(X)`` so the order is checkable."""

    def get(self, ids):
        return torch.stack([torch.full((5, 4), float(ord(i))) for i in ids])


def test_collator_labels_per_row_and_tokens_in_reading_order(tokenizer):
    samples = make_samples(
        [conversation(1, ("B",), ("A", "B", "C")), conversation(2, ("D",), ("D", "E"))],
        "candidates_st",
        seed=0,
    )
    ds = RecommendDataset(samples, tokenizer, lambda i: i, max_length=512, progress=False)
    batch = RecommendCollator(tokenizer, FakeCache(), max_length=512)([ds[0], ds[1]])
    assert batch["num_samples"] == 2 and batch["truncated_targets"] == 0
    assert batch["item_tokens"][:, 0, 0].tolist() == [ord(c) for c in "ABCDE"]
    for row, target in enumerate(("B", "D")):
        ids = batch["input_ids"][row]
        labelled = batch["labels"][row] != IGNORE_INDEX
        # Exactly the row's own target + EOS is labelled (the shorter row too).
        expected = tokenizer(target, add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        assert ids[labelled].tolist() == expected
        assert batch["labels"][row][labelled].tolist() == expected
        real = int(batch["attention_mask"][row].sum())
        assert labelled.nonzero().max().item() == real - 1
    text_only = RecommendDataset(
        samples, tokenizer, lambda i: i, max_length=512, with_images=False, progress=False
    )
    batch = RecommendCollator(tokenizer, None, max_length=512)([text_only[0]])
    assert batch["item_tokens"] is None
    assert not torch.isin(
        batch["input_ids"], torch.tensor(tokenizer.convert_tokens_to_ids(list(ITEM_TOKENS)))
    ).any()
