"""Stage-2 training samples, their prompts, and the collator that adds cached item tokens.

One sample per ground-truth item of a conversation (as the reference): the candidates are the
conversation's list under ``--candidate_type``; a ground truth that is not among them replaces
one candidate chosen at random -- seeded per sample, so the same data and seed always give the
same prompts whatever the order or subset loaded, and the loaded conversation is never changed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from lavic.cache.store import ItemTokenCache
from lavic.data.records import Conversation
from lavic.model.inputs import build_batch
from lavic.prompts import build_recommend_prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneSample:
    """One (conversation, ground-truth item) training example.

    Attributes:
        conversation: The thread text (``context``), verbatim.
        candidates: Candidate ids in prompt order; ``target`` is always among them.
        target: The ground-truth item id the model learns to answer.
        source: File the conversation came from.
        line: Its line there.
        replaced: Index of the candidate the target replaced, or None if it was already there.
    """

    conversation: str
    candidates: tuple[str, ...]
    target: str
    source: str
    line: int
    replaced: int | None = None


def place_ground_truth(
    candidates: Sequence[str], target: str, *, seed: int, key: str
) -> tuple[tuple[str, ...], int | None]:
    """The candidate list with ``target`` in it (the reference's rule), without changing the input.

    If ``target`` is already a candidate the list is returned unchanged; otherwise it replaces
    the candidate at an index drawn from ``random.Random(f"{seed}:{key}")`` -- a string seed,
    hashed by SHA-512, so the draw is the same in every process and Python version.

    Returns:
        ``(candidates, replaced_index_or_None)``.
    """
    candidates = tuple(candidates)
    if not candidates:
        raise ValueError("no candidates")
    if target in candidates:
        return candidates, None
    index = random.Random(f"{seed}:{key}").randrange(len(candidates))
    return candidates[:index] + (target,) + candidates[index + 1 :], index


def make_samples(
    conversations: Sequence[Conversation], candidate_type: str, *, seed: int
) -> list[TuneSample]:
    """One :class:`TuneSample` per ground-truth item of each conversation, in file order.

    A ground-truth id listed twice in a conversation gives two samples (the reference's counting).
    """
    samples = []
    for conversation in conversations:
        candidates = conversation.candidate_list(candidate_type)
        for k, target in enumerate(conversation.gt_items):
            placed, replaced = place_ground_truth(
                candidates, target, seed=seed, key=f"{conversation.line}:{k}"
            )
            samples.append(
                TuneSample(
                    conversation=conversation.context,
                    candidates=placed,
                    target=target,
                    source=conversation.source,
                    line=conversation.line,
                    replaced=replaced,
                )
            )
    return samples


def narrow_candidates(samples: Sequence[TuneSample], k: int, *, seed: int) -> list[TuneSample]:
    """The samples with at most ``k`` candidates each: the target and ``k - 1`` of the others,
    kept in prompt order (a curriculum stage: fewer candidates are easier to tell apart).

    The kept candidates are drawn from ``random.Random(f"{seed}:{k}:{source}:{line}:{target}")``,
    so a sample narrows the same way whatever the order or subset loaded.
    """
    if k < 2:
        raise ValueError(f"a curriculum stage needs at least 2 candidates, got {k}")
    narrowed = []
    for s in samples:
        others = [i for i, c in enumerate(s.candidates) if c != s.target]
        if len(others) >= k:
            rng = random.Random(f"{seed}:{k}:{s.source}:{s.line}:{s.target}")
            keep = set(rng.sample(others, k - 1))
            cands = tuple(c for i, c in enumerate(s.candidates) if i in keep or c == s.target)
            s = replace(s, candidates=cands, replaced=None)
        narrowed.append(s)
    return narrowed


@dataclass(frozen=True)
class PromptedSample:
    """A sample rendered into the reference's recommendation prompt (within the token budget)."""

    prompt: str
    target: str
    candidate_ids: tuple[str, ...]  # their item tokens fill the prompt's placeholders in order
    truncated: bool  # the conversation was cut to fit max_length
    tokens_dropped: int


class RecommendDataset(Dataset):
    """Samples rendered once into prompts (so truncations are counted once, not per epoch).

    Args:
        samples: From :func:`make_samples`.
        tokenizer: The backbone's tokenizer (with the item tokens).
        title_of: item id -> title shown in the prompt.
        max_length: Token budget of prompt + answer.
        with_images: Put each candidate's five item tokens in the prompt (False: text-only).
        progress: Show a progress bar while rendering.
    """

    def __init__(
        self,
        samples: Sequence[TuneSample],
        tokenizer,
        title_of: Callable[[str], str],
        *,
        max_length: int,
        with_images: bool = True,
        progress: bool = True,
        desc: str = "rendering prompts",
    ):
        self.with_images = with_images
        self.rows: list[PromptedSample] = []
        for sample in tqdm(samples, desc=desc, unit="sample", disable=not progress):
            prompt = build_recommend_prompt(
                tokenizer,
                sample.conversation,
                [(i, title_of(i)) for i in sample.candidates],
                max_length=max_length,
                with_images=with_images,
            )
            self.rows.append(
                PromptedSample(
                    prompt=prompt.text,
                    target=sample.target,
                    candidate_ids=prompt.candidate_ids,
                    truncated=prompt.truncated,
                    tokens_dropped=prompt.conversation_tokens_dropped,
                )
            )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> PromptedSample:
        return self.rows[index]

    @property
    def truncated(self) -> int:
        """Samples whose conversation was cut to fit ``max_length``."""
        return sum(r.truncated for r in self.rows)

    @property
    def tokens_dropped(self) -> int:
        """Conversation tokens cut, over all samples."""
        return sum(r.tokens_dropped for r in self.rows)

    def item_ids(self) -> list[str]:
        """Every candidate id shown, first-seen order, without repeats."""
        return list(dict.fromkeys(i for r in self.rows for i in r.candidate_ids))


class RecommendCollator:
    """Rows -> a padded batch with per-row target labels and the candidates' cached tokens.

    Returns dicts of ``input_ids``/``attention_mask``/``labels`` ``(B, T)``, ``item_tokens``
    ``(M, 5, D)`` (the M candidates of the batch in reading order; None for text-only),
    ``num_samples`` and ``truncated_targets``. It runs in the data loader, never inside a step,
    and it reads tokens from the cache: the vision tower is not involved.
    """

    def __init__(self, tokenizer, cache: ItemTokenCache | None, *, max_length: int):
        self.tokenizer = tokenizer
        self.cache = cache
        self.max_length = max_length

    def __call__(self, rows: Sequence[PromptedSample]) -> dict[str, Any]:
        batch = build_batch(
            self.tokenizer,
            [r.prompt for r in rows],
            [r.target for r in rows],
            max_length=self.max_length,
        )
        item_tokens: torch.Tensor | None = None
        if self.cache is not None:
            item_tokens = self.cache.get([i for r in rows for i in r.candidate_ids])
        return {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "labels": batch.labels,
            "item_tokens": item_tokens,
            "num_samples": len(rows),
            "truncated_targets": batch.truncated_targets,
        }
