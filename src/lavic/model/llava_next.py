"""``llava-next``: the default backbone family. Any name that no one registered is a LLaVA-NeXT
checkpoint: a Hub id (online) or a local folder.

LLaVA-v1.6 checkpoints are LLaVA-NeXT: they load with ``LlavaNextForConditionalGeneration``
(the reference used ``LlavaForConditionalGeneration``, which cannot read their anyres layout).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor

from lavic.errors import LavicError
from lavic.model.backbone import (
    BACKBONES,
    Backbone,
    add_item_tokens,
    register_backbone,
    set_pad_token,
)

NAME = "llava-next"


def _other_names() -> str:
    return " or ".join(f"`{n}`" for n in sorted(BACKBONES) if n != NAME)


def load_llava_next(name: str, dtype: torch.dtype | None = None) -> Backbone:
    """A LLaVA-NeXT checkpoint (Hub id or folder) with the five item tokens added."""
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        processor = LlavaNextProcessor.from_pretrained(name)
        model = LlavaNextForConditionalGeneration.from_pretrained(
            name, use_safetensors=True, **kwargs
        )
    except (OSError, ValueError) as exc:  # ValueError: HFValidationError for a bad local path
        raise LavicError(
            f"cannot load LLaVA-NeXT checkpoint {name!r}: {exc}".splitlines()[0]
            + f" (give a local directory, a Hub id reachable online, or {_other_names()})"
        ) from None
    tokenizer = processor.tokenizer
    set_pad_token(tokenizer)
    add_item_tokens(tokenizer, model)
    return Backbone(model=model, tokenizer=tokenizer, processor=processor, name=name)


register_backbone(NAME, load_llava_next, default=True)

__all__ = ["load_llava_next"]
