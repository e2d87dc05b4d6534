"""Every forward of the model that the stages share, and the one target loss.

* :func:`embed_prompts` / :func:`embed_with_items`: text embeddings of a token batch with each
  item's five visual tokens written into its placeholders (one vectorised insertion, count
  checked).
* :func:`language_hidden`: embeddings through the language model (no LM head).
* :func:`student_hidden`: stage 1's student: the prompt with the item's five [CLS]-derived
  visual tokens, made from its pixel views in the same pass.
* :func:`teacher_hidden`: stage 1's teacher: the ordinary LLaVA-NeXT path, ``<image>``
  expanded to the full image tokens (optionally after a cached prompt prefix).
* :func:`labelled_logits` / :func:`target_nll`: the LM head applied only at the positions that
  predict a label, and the next-token NLL there, summed or per token (the full ``(B, T, V)``
  logits of a 2,048-token batch would be gigabytes for a 32k vocabulary).
* :func:`prompt_hidden` / :func:`target_loss_sums`: stage 2's forward (embedded prompts through
  the language model) and its loss.

Shapes: B rows, T tokens, D language-model width, V vocabulary, M items shown, N labelled
positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

from lavic.constants import IGNORE_INDEX, ITEM_TOKENS, NUM_ITEM_TOKENS
from lavic.errors import LavicError
from lavic.model.backbone import unwrap
from lavic.model.item_tokens import encode_item_tokens, insert_item_tokens


def embed_with_items(
    llava,
    input_ids: torch.Tensor,
    item_token_ids: Sequence[int],
    item_tokens: torch.Tensor | None,
) -> torch.Tensor:
    """Text embeddings of ``input_ids (B, T)`` with ``item_tokens (M, 5, D)`` (or None: a
    text-only batch) in the placeholders ``item_token_ids``: ``(B, T, D)``. See
    :func:`embed_prompts`."""
    embeds = unwrap(llava).get_input_embeddings()(input_ids)  # (B, T, D)
    if item_tokens is None:
        # Zero items: insert_item_tokens still checks that no placeholder is left unfilled.
        item_tokens = embeds.new_zeros((0, NUM_ITEM_TOKENS, embeds.shape[-1]))
    return insert_item_tokens(embeds, input_ids, item_token_ids, item_tokens.to(embeds.device))


def embed_prompts(
    llava, tokenizer, token_batch_input_ids: torch.Tensor, item_tokens: torch.Tensor | None
) -> torch.Tensor:
    """Text embeddings of a token batch with the item tokens put in their placeholders.

    Args:
        llava: A ``LlavaNextForConditionalGeneration`` (or a PeftModel around one).
        tokenizer: Its tokenizer (holding the five item tokens).
        token_batch_input_ids: ``(B, T)`` token ids.
        item_tokens: ``(M, 5, D)`` visual tokens of the M items the batch shows, in reading
            order (row 0's candidates in prompt order, then row 1's, ...), or None for a
            text-only batch.

    Returns:
        ``(B, T, D)`` input embeddings in the embedding table's dtype.

    Raises:
        LavicError: if the placeholders are not exactly M complete runs (or any are present
            while ``item_tokens`` is None).
    """
    ids = tokenizer.convert_tokens_to_ids(list(ITEM_TOKENS))
    return embed_with_items(llava, token_batch_input_ids, ids, item_tokens)


def language_hidden(
    llava, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """``(B, T, D)`` last hidden states of the language model reading ``inputs_embeds``."""
    return (
        unwrap(llava)
        .model.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False
        )
        .last_hidden_state
    )


def student_hidden(llava, item_token_ids: Sequence[int], batch: dict[str, Any]) -> torch.Tensor:
    """Stage 1's student forward: each row's prompt with its item's five visual tokens.

    Args:
        llava: the model (or a PeftModel around it; its vision LoRA is used as is).
        item_token_ids: the ids of ``<ItemImageEmb1..5>``.
        batch: ``input_ids`` / ``attention_mask`` ``(B, T)`` (one item's placeholders per row)
            and ``pixel_values`` ``(B, 5, C, H, W)`` (:func:`lavic.model.item_tokens.pixel_views`).

    Returns:
        ``(B, T, D)`` last hidden states (no LM head).
    """
    items = encode_item_tokens(unwrap(llava), batch["pixel_values"])  # (B, 5, D)
    embeds = embed_with_items(llava, batch["input_ids"], item_token_ids, items)
    return language_hidden(llava, embeds, batch["attention_mask"])


def teacher_hidden(llava, batch: dict[str, Any], *, prefix_cache=None) -> torch.Tensor:
    """Stage 1's teacher forward: the ordinary LLaVA-NeXT path, ``<image>`` in ``input_ids``
    already expanded by the processor to the image's feature tokens.

    Args:
        llava: the model (or a PeftModel around it: the caller disables an adapter it must
            not use).
        batch: ``input_ids`` / ``attention_mask``, ``pixel_values`` ``(B, views, C, H, W)``
            and ``image_sizes`` ``(B, 2)``; with ``prefix_cache`` the attention mask also
            covers the cached prefix: ``(B, prefix + T)``.
        prefix_cache: keys/values of a prompt prefix shared by every row (a ``Cache``), or
            None.

    Returns:
        ``(B, T, D)`` last hidden states of ``input_ids`` (no LM head).

    Raises:
        LavicError: the processor's ``<image>`` expansion disagrees with the model.
    """
    try:
        return (
            unwrap(llava)
            .model(
                input_ids=batch["input_ids"],
                pixel_values=batch["pixel_values"],
                image_sizes=batch["image_sizes"],
                attention_mask=batch["attention_mask"],
                cache=prefix_cache,
                use_cache=False,
            )
            .last_hidden_state
        )
    except ValueError as exc:
        raise LavicError(f"teacher (full image tokens) forward failed: {exc}") from None


def labelled_logits(
    hidden: torch.Tensor, labels: torch.Tensor, lm_head
) -> tuple[torch.Tensor, torch.Tensor]:
    """The LM head's logits at the positions that predict a label, and those labels.

    Args:
        hidden: ``(B, T, D)`` last hidden states.
        labels: ``(B, T)`` with ``IGNORE_INDEX`` where no loss is taken.
        lm_head: the output projection.

    Returns:
        ``(logits, targets)``: ``(N, V)`` float32 and ``(N,)`` int64, N labelled positions in
        reading order.
    """
    shift_labels = labels[:, 1:]  # position t predicts token t+1
    mask = shift_labels != IGNORE_INDEX  # (B, T-1)
    picked = hidden[:, :-1][mask]  # (N, D)
    return lm_head(picked).float(), shift_labels[mask]  # (N, V), (N,)


def target_nll(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    lm_head,
    *,
    reduction: Literal["sum", "none"] = "sum",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token NLL over the labelled positions, and their count: the one target loss of
    both stages, the stand-in's pretraining and its measurements.

    Args are those of :func:`labelled_logits`; ``reduction``: ``sum`` or ``none`` (the
    ``(N,)`` per-token NLL in reading order: row 0's target, then row 1's, ...).

    Returns:
        ``(nll, num_tokens)``: a scalar float32 (``sum``) or ``(N,)`` (``none``), and an int64
        scalar tensor.
    """
    logits, targets = labelled_logits(hidden, labels, lm_head)
    nll = F.cross_entropy(logits, targets, reduction=reduction)
    return nll, torch.as_tensor(targets.numel(), device=targets.device)


def prompt_hidden(llava, tokenizer, batch: dict[str, Any]) -> torch.Tensor:
    """Stage 2's forward: the embedded prompts (item tokens inserted) through the LM.

    Args:
        llava: the model (or a PeftModel around it).
        tokenizer: its tokenizer.
        batch: ``input_ids`` ``(B, T)``, ``attention_mask`` ``(B, T)``, ``item_tokens``
            ``(M, 5, D)`` or None.

    Returns:
        ``(B, T, D)`` last hidden states of the language model (no LM head).
    """
    embeds = embed_prompts(llava, tokenizer, batch["input_ids"], batch["item_tokens"])
    return language_hidden(llava, embeds, batch["attention_mask"])


def prompt_logits(llava, tokenizer, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2's ``(N, V)`` logits at the labelled positions and the ``(N,)`` labels."""
    hidden = prompt_hidden(llava, tokenizer, batch)
    return labelled_logits(hidden, batch["labels"], unwrap(llava).lm_head)


def target_loss_sums(llava, tokenizer, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2's summed cross-entropy over a batch's target tokens, and their count.

    Returns:
        ``(loss_sum, num_target_tokens)``, both 0-dim tensors (float32, int64).
    """
    hidden = prompt_hidden(llava, tokenizer, batch)
    return target_nll(hidden, batch["labels"], unwrap(llava).lm_head)


__all__ = [
    "embed_prompts",
    "embed_with_items",
    "labelled_logits",
    "language_hidden",
    "prompt_hidden",
    "prompt_logits",
    "student_hidden",
    "target_loss_sums",
    "target_nll",
    "teacher_hidden",
]
