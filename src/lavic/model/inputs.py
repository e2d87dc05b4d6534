"""Token batches for prompt -> target training and for scoring, with per-row label masking."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lavic.constants import IGNORE_INDEX
from lavic.errors import LavicError


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T), 1 for real tokens
    labels: torch.Tensor | None  # (B, T), IGNORE_INDEX on prompt and padding
    prompt_lengths: list[int]  # tokens of each row's prompt (before its target)
    truncated_targets: int = 0  # rows whose target was cut to fit max_length


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt ids, with the tokenizer's BOS if it adds one."""
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def encode_target(tokenizer, target: str) -> list[int]:
    """Target ids followed by EOS: the model learns to stop (the EOS is a trained label)."""
    return tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def build_batch(
    tokenizer,
    prompts: Sequence[str | Sequence[int]],
    targets: Sequence[str | Sequence[int]] | None = None,
    *,
    max_length: int | None,
    padding_side: str = "right",
    pad_id: int | None = None,
) -> TokenBatch:
    """Tokenize prompt (+ target) per row and pad; labels only on each row's own target.

    The one padded-batch builder: stage 1's student and teacher, stage 2, decoding's prompts
    and the stand-in's pretraining all batch through it.

    Each row's prompt length is measured on that row (the reference used the padded width
    of the whole batch, wrong for every row but the longest), and padding is found from the
    attention mask, never from the pad id, so an EOS target stays a label when pad == eos.

    A target that does not fit is cut from its end and counted; a prompt that alone does not
    fit raises (prompts are budgeted upstream by cutting the conversation, never a candidate).

    Args:
        tokenizer: encodes the text rows (:func:`encode_prompt`, :func:`encode_target`) and
            gives the pad id (its pad token, else EOS); may be None when every row is given
            as token ids and ``pad_id`` is given.
        prompts, targets: text, or token ids used as they are (no BOS or EOS added): rows
            another tool encoded, e.g. the processor's expansion of ``<image>``.
        max_length: the token budget of a row; None: no budget (nothing cut or refused).
        padding_side: ``right`` (training) or ``left`` (prompts to continue).
        pad_id: the id written on padding (default: the tokenizer's, see above).
    """
    rows: list[list[int]] = []
    label_rows: list[list[int]] = []
    prompt_lengths: list[int] = []
    truncated = 0
    for i, prompt in enumerate(prompts):
        p = encode_prompt(tokenizer, prompt) if isinstance(prompt, str) else list(prompt)
        if max_length is not None and len(p) >= max_length + (targets is None):
            raise LavicError(f"prompt of {len(p)} tokens does not fit max_length={max_length}")
        t: list[int] = []
        if targets is not None:
            target = targets[i]
            t = encode_target(tokenizer, target) if isinstance(target, str) else list(target)
        if max_length is not None and len(p) + len(t) > max_length:
            t = t[: max_length - len(p)]
            truncated += 1
        rows.append(p + t)
        label_rows.append([IGNORE_INDEX] * len(p) + t)
        prompt_lengths.append(len(p))
    width = max(len(r) for r in rows)
    if pad_id is None:
        pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows, label_rows, strict=True)):
        span = slice(0, len(r)) if padding_side == "right" else slice(width - len(r), width)
        input_ids[i, span] = torch.tensor(r)
        attention[i, span] = 1
        labels[i, span] = torch.tensor(lab)
    return TokenBatch(
        input_ids=input_ids,
        attention_mask=attention,
        labels=labels if targets is not None else None,
        prompt_lengths=prompt_lengths,
        truncated_targets=truncated,
    )


def pad_views(views: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-image anyres pixel views ``(v_i, C, H, W)`` stacked as ``(B, max v_i, C, H, W)``,
    each image's own views first, then zero views (the teacher path: ``image_sizes`` tells
    the model how many of an image's views are real)."""
    most = max(v.shape[0] for v in views)
    return torch.stack(
        [torch.cat([v, v.new_zeros((most - v.shape[0], *v.shape[1:]))]) for v in views]
    )
