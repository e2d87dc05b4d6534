"""The seed's recommendation prompt, built under a token budget.

A conversation too long for ``max_length`` is cut — its beginning (the seeker's submission)
and its end (the latest comments) are kept — and never a candidate: the reference truncated
the whole prompt from its end, which silently dropped candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lavic.constants import (
    ITEM_TOKENS,
    RECOMMEND_CANDIDATE,
    RECOMMEND_CANDIDATE_TEXT_ONLY,
    RECOMMEND_PROMPT_HEAD,
    RECOMMEND_SUFFIX,
)
from lavic.errors import LavicError

CUT_MARKER = "\n[...]\n"
# Tokens kept free after the prompt for the answer (a 10-character ID and EOS).
ANSWER_RESERVE = 16


@dataclass(frozen=True)
class RecommendPrompt:
    text: str
    candidate_ids: tuple[str, ...]  # in prompt order; their tokens fill the placeholders in order
    truncated: bool  # the conversation was cut to fit
    conversation_tokens_dropped: int


def _check_text(text: str, what: str) -> None:
    """Free text of a prompt must be valid Unicode and hold no item-token placeholder (a
    special token that would take a visual token and break the count of items shown)."""
    if "<ItemImageEmb" in text:
        for token in ITEM_TOKENS:
            if token in text:
                raise LavicError(f"{what} holds the reserved item token {token!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LavicError(
            f"{what} is not valid Unicode (unpaired surrogate \\u{ord(text[exc.start]):04x})"
        ) from None


def _render(conversation: str, candidates: Sequence[tuple[str, str]], with_images: bool) -> str:
    line = RECOMMEND_CANDIDATE if with_images else RECOMMEND_CANDIDATE_TEXT_ONLY
    body = "".join(line.format(item_id=i, title=t) for i, t in candidates)
    return RECOMMEND_PROMPT_HEAD.format(conversation=conversation) + body + RECOMMEND_SUFFIX


def build_recommend_prompt(
    tokenizer,
    conversation: str,
    candidates: Sequence[tuple[str, str]],
    *,
    max_length: int,
    with_images: bool = True,
    answer_reserve: int = ANSWER_RESERVE,
) -> RecommendPrompt:
    """Render the prompt; cut the conversation's middle if the whole does not fit.

    Args:
        tokenizer: the backbone's tokenizer (holding the item tokens).
        conversation: the thread (``<submission>...</submission><comment>...</comment>``).
        candidates: ``(item_id, title)`` pairs, in the order shown.
        max_length: token budget of prompt + answer.
        with_images: include each candidate's five item tokens (False: text-only ablation).

    Raises:
        LavicError: when the candidates alone do not fit (no conversation budget left), or the
            conversation or a candidate line holds an item-token placeholder or an unpaired
            surrogate (one prompt's problem: a batch of others is not affected).
    """
    if not candidates:
        raise LavicError("a recommendation prompt needs at least one candidate")
    _check_text(conversation, "the conversation")
    for item_id, title in candidates:
        _check_text(f"{item_id}: {title}", f"candidate {item_id[:40]!r}")
    ids = tuple(i for i, _ in candidates)
    text = _render(conversation, candidates, with_images)
    budget = max_length - answer_reserve

    def count(s: str) -> int:
        return len(tokenizer(s, add_special_tokens=True)["input_ids"])

    total = count(text)
    if total <= budget:
        return RecommendPrompt(text, ids, False, 0)
    conv_ids = tokenizer(conversation, add_special_tokens=False)["input_ids"]
    fixed = count(_render("", candidates, with_images)) + count(CUT_MARKER)
    keep = budget - fixed
    if keep < 8:
        raise LavicError(
            f"{len(candidates)} candidates need {fixed} tokens, over max_length={max_length} "
            "with the answer reserve; raise --max_length (candidates are never cut)"
        )
    # Re-tokenising decoded pieces can shift a few tokens: shrink until it fits.
    while keep > 0:
        head = keep // 2
        tail = keep - head
        cut = (
            tokenizer.decode(conv_ids[:head])
            + CUT_MARKER
            + (tokenizer.decode(conv_ids[-tail:]) if tail else "")
        )
        text = _render(cut, candidates, with_images)
        if count(text) <= budget:
            return RecommendPrompt(text, ids, True, len(conv_ids) - keep)
        keep -= max(1, (count(text) - budget))
    raise LavicError(f"cannot fit the prompt into max_length={max_length}")
