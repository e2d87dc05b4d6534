"""Model-side compute shared by training, evaluation and serving.

* :func:`embed_prompts`: text embeddings of a token batch with each item's five visual tokens
  written into its placeholders (one vectorised insertion, count checked).
* :func:`labelled_logits` / :func:`target_nll`: the LM head applied only at the positions that
  predict a label, and the summed next-token NLL there (the full ``(B, T, V)`` logits of a
  2,048-token batch would be gigabytes for a 32k vocabulary).
* :func:`prompt_hidden` / :func:`target_loss_sums`: stage 2's forward (embedded prompts through
  the language model) and its loss.

Shapes: B rows, T tokens, D language-model width, V vocabulary, M items shown, N labelled
positions.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lavic.constants import IGNORE_INDEX, ITEM_TOKENS, NUM_ITEM_TOKENS
from lavic.model.backbone import unwrap
from lavic.model.item_tokens import insert_item_tokens


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
    input_ids = token_batch_input_ids
    embeds = unwrap(llava).get_input_embeddings()(input_ids)  # (B, T, D)
    if item_tokens is None:
        # Zero items: insert_item_tokens still checks that no placeholder is left unfilled.
        item_tokens = embeds.new_zeros((0, NUM_ITEM_TOKENS, embeds.shape[-1]))
    ids = tokenizer.convert_tokens_to_ids(list(ITEM_TOKENS))
    return insert_item_tokens(embeds, input_ids, ids, item_tokens.to(embeds.device))


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
    hidden: torch.Tensor, labels: torch.Tensor, lm_head
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL over the labelled positions, and their count.

    Args are those of :func:`labelled_logits`.

    Returns:
        ``(sum_nll, num_tokens)``, both scalar tensors (float32, int64).
    """
    logits, targets = labelled_logits(hidden, labels, lm_head)
    nll = F.cross_entropy(logits, targets, reduction="sum")
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
    return (
        unwrap(llava)
        .model.language_model(
            inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False
        )
        .last_hidden_state
    )


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
    "labelled_logits",
    "prompt_hidden",
    "prompt_logits",
    "target_loss_sums",
    "target_nll",
]
