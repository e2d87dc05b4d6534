"""Every prompt LaViC shows a model, in one place.

* Stage 1 (distillation): :data:`DISTILL_PROMPT`, the reference's, with the five item-token
  placeholders. :func:`student_prompt` fills in a title; :func:`teacher_prompt` is the same
  prompt with LLaVA's ``<image>`` (:data:`IMAGE_TOKEN`) where the five tokens go: what the base
  model reads when it writes a description (``lavic describe``) or scores one (the teacher).
* Stage 2 (recommendation): :data:`RECOMMEND_PROMPT_HEAD` + one :data:`RECOMMEND_CANDIDATE` per
  candidate + :data:`RECOMMEND_SUFFIX`, the reference's; the text-only ablation
  (:data:`RECOMMEND_CANDIDATE_TEXT_ONLY`) drops the item tokens and keeps everything else.
  :func:`build_recommend_prompt` renders it under a token budget, cutting the conversation and
  never a candidate.
* :func:`text_selection_prompt`: the recommendation prompt with each candidate's look written in
  words (how the `tiny` stand-in's instruction skill is trained and measured).

Data text is cleaned of placeholder strings (:func:`clean_text`) before it enters a prompt, so a
title holding ``<ItemImageEmb1>`` or ``<image>`` cannot break the strict placeholder counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lavic.constants import ITEM_TOKENS, ITEM_TOKENS_TEXT
from lavic.errors import LavicError

# LLaVA's image placeholder: the processor expands it into the image's full feature tokens.
IMAGE_TOKEN = "<image>"

# ------------------------------------------------------------------------------ stage 1

# The reference's distillation prompt, verbatim. `{title}` is the product title.
DISTILL_PROMPT = (
    "You are a helpful assistant.\n"
    "Given an Amazon product's title and its image, please provide a detailed, visually grounded "
    "description of the product that would help someone decide whether to purchase it. "
    "Focus on the product's appearance, features, and any other visually informative aspects. "
    "Do not mention the product's title in your answer. "
    "This product's title is: {title}\n"
    f"{ITEM_TOKENS_TEXT}\n\n"
    "Assistant:"
)


def clean_text(text: str, image_token: str = IMAGE_TOKEN) -> str:
    """Remove the placeholder strings (item tokens, ``<image>``) from data text.

    A title or description containing ``<ItemImageEmb1>`` or ``<image>`` would otherwise
    tokenize as a placeholder and break the (strict) placeholder count of the prompt.
    """
    for token in (*ITEM_TOKENS, image_token):
        if token in text:
            text = text.replace(token, "")
    return text


def student_prompt(title: str) -> str:
    """The reference's distillation prompt, with the five item-token placeholders."""
    return DISTILL_PROMPT.format(title=clean_text(title))


def teacher_prompt(title: str, image_token: str = IMAGE_TOKEN) -> str:
    """The distillation prompt with ``image_token`` (full image tokens) in place of the five
    item tokens: what the base model reads when it writes or scores a description.

    Placeholder strings in ``title`` are removed first (as in :func:`student_prompt`).
    """
    return student_prompt(title).replace(ITEM_TOKENS_TEXT, image_token)


# ------------------------------------------------------------------------------ stage 2

# The reference's recommendation prompt, verbatim: instruction + conversation, then one
# RECOMMEND_CANDIDATE per candidate, then RECOMMEND_SUFFIX; the target is the candidate's ID.
RECOMMEND_PROMPT_HEAD = (
    "You are an AI assistant specialized in providing personalized product recommendations based "
    "on user conversations. You are given a conversation between a user seeking recommendation "
    "(denoted by <submission>) and other users providing comments (denoted by <comment>). "
    "You are also given a set of candidate products with their IDs, titles and images formatted as "
    '"ID: title" followed by an image. Among the candidates, recommend the most relevant product '
    "to the seeker. Only reply with its ID, and don't say anything else.\n\n"
    "Conversation:\n{conversation}\n\n"
    "Candidates:\n"
)
RECOMMEND_CANDIDATE = "{item_id}: {title}\n" + ITEM_TOKENS_TEXT + "\n"
# The text-only ablation (`--no_images`) drops the visual tokens and keeps everything else.
RECOMMEND_CANDIDATE_TEXT_ONLY = "{item_id}: {title}\n"
RECOMMEND_SUFFIX = "\nAssistant:"

CUT_MARKER = "\n[...]\n"
# Tokens kept free after the prompt for the answer (a 10-character ID and EOS).
ANSWER_RESERVE = 16


@dataclass(frozen=True)
class RecommendPrompt:
    """A rendered recommendation prompt and what rendering it cost."""

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


def render_recommend_prompt(
    conversation: str, candidates: Sequence[tuple[str, str]], with_images: bool = True
) -> str:
    """The reference's prompt for ``(item_id, title)`` candidates, with no token budget."""
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

    A conversation too long for ``max_length`` keeps its beginning (the seeker's submission)
    and its end (the latest comments); a candidate is never cut (the reference truncated the
    whole prompt from its end, which silently dropped candidates).

    Args:
        tokenizer: the backbone's tokenizer (holding the item tokens).
        conversation: the thread (``<submission>...</submission><comment>...</comment>``).
        candidates: ``(item_id, title)`` pairs, in the order shown.
        max_length: token budget of prompt + answer.
        with_images: include each candidate's five item tokens (False: text-only ablation).
        answer_reserve: tokens kept free for the answer.

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
    text = render_recommend_prompt(conversation, candidates, with_images)
    budget = max_length - answer_reserve

    def count(s: str) -> int:
        return len(tokenizer(s, add_special_tokens=True)["input_ids"])

    total = count(text)
    if total <= budget:
        return RecommendPrompt(text, ids, False, 0)
    conv_ids = tokenizer(conversation, add_special_tokens=False)["input_ids"]
    fixed = count(render_recommend_prompt("", candidates, with_images)) + count(CUT_MARKER)
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
        text = render_recommend_prompt(cut, candidates, with_images)
        if count(text) <= budget:
            return RecommendPrompt(text, ids, True, len(conv_ids) - keep)
        keep -= max(1, (count(text) - budget))
    raise LavicError(f"cannot fit the prompt into max_length={max_length}")


def text_selection_prompt(
    conversation: str, candidates: Sequence[tuple[str, str, str]], *, chat_tokenizer=None
) -> str:
    """The reference's recommendation prompt with each candidate's look written in words.

    Args:
        conversation: the thread.
        candidates: ``(item_id, title, description)`` in the order shown.
        chat_tokenizer: wrap the prompt in this tokenizer's chat template (the user turn),
            instead of the reference's raw ``Assistant:`` suffix.
    """
    body = "".join(
        RECOMMEND_CANDIDATE_TEXT_ONLY.format(item_id=i, title=t) + d + "\n"
        for i, t, d in candidates
    )
    text = RECOMMEND_PROMPT_HEAD.format(conversation=conversation) + body
    if chat_tokenizer is None:
        return text + RECOMMEND_SUFFIX
    return chat_tokenizer.apply_chat_template(
        [{"role": "user", "content": text.rstrip("\n")}], tokenize=False, add_generation_prompt=True
    )


__all__ = [
    "ANSWER_RESERVE",
    "CUT_MARKER",
    "DISTILL_PROMPT",
    "IMAGE_TOKEN",
    "RECOMMEND_CANDIDATE",
    "RECOMMEND_CANDIDATE_TEXT_ONLY",
    "RECOMMEND_PROMPT_HEAD",
    "RECOMMEND_SUFFIX",
    "RecommendPrompt",
    "build_recommend_prompt",
    "clean_text",
    "render_recommend_prompt",
    "student_prompt",
    "teacher_prompt",
    "text_selection_prompt",
]
