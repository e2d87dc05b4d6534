"""Teacher-path batches for the tiny stand-in's pretraining: the stage-1 prompt with
``<image>`` (LLaVA-NeXT's full anyres image tokens) -> the description, and the synthetic
catalogue samples they are made of."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from lavic.errors import LavicError
from lavic.model.backbone import Backbone, unwrap
from lavic.model.compute import target_nll, teacher_hidden
from lavic.model.inputs import build_batch, encode_target, pad_views
from lavic.prompts import clean_text, teacher_prompt

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Teacher-path batches: the stage-1 prompt with <image> (full anyres image tokens) -> description
# --------------------------------------------------------------------------------------------

# The reference's stage-1 prompt with LLaVA's <image> in place of the five item tokens (the teacher
# reads the full image tokens). Everything before the title is the same for every item: its
# keys/values are computed once.
_TEACHER_HEAD, _TEACHER_TAIL = teacher_prompt("{title}").split("{title}")
_HEAD_TEXT = _TEACHER_HEAD.rstrip(" ")  # the space before the title belongs to its first token


@dataclass
class CaptionSample:
    """An image with the product title and the description the language model should write."""

    image: Image.Image
    title: str
    description: str
    words: tuple[str, ...] = ()  # the description's look words (colour, pattern, kind, tone)


@dataclass
class _Encoded:
    prompt_ids: list[int]  # the prompt after the shared head, <image> expanded
    target_ids: list[int]  # the description + EOS
    pixel_values: torch.Tensor  # (v, C, s, s), v = 3..5 views
    image_size: tuple[int, int]


class PromptHead:
    """Keys/values of the prompt text shared by every item (``_TEACHER_HEAD``), computed once.

    The language model is frozen during pretraining, so this part of every forward pass is a
    constant: caching it skips about a third of the prompt's tokens at every step.
    """

    def __init__(self, backbone: Backbone):
        self.ids = backbone.tokenizer(_HEAD_TEXT, add_special_tokens=True)["input_ids"]
        with torch.no_grad():
            out = backbone.model.model.language_model(
                input_ids=torch.tensor([self.ids]), use_cache=True
            )
        cache = out.past_key_values
        self.kv = [(layer.keys, layer.values) for layer in cache.layers]

    def __len__(self) -> int:
        return len(self.ids)

    def expand(self, batch: int):
        from transformers import DynamicCache

        return DynamicCache(
            ddp_cache_data=[
                (k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in self.kv
            ]
        )


def _encode(backbone: Backbone, head: PromptHead, sample: CaptionSample, image: Image.Image):
    """Token ids after the shared head (``<image>`` expanded by the processor) + the target."""
    tail = _TEACHER_HEAD[len(_HEAD_TEXT) :] + clean_text(sample.title) + _TEACHER_TAIL
    tok = backbone.tokenizer
    # The split must not change the tokenisation (BPE merges never cross the space before
    # the title with this tokenizer; checked, not assumed).
    whole = tok(_HEAD_TEXT + tail, add_special_tokens=True)["input_ids"]
    if whole != head.ids + tok(tail, add_special_tokens=False)["input_ids"]:
        raise LavicError(f"the teacher prompt does not split cleanly before title {sample.title!r}")
    enc = backbone.processor(
        images=[image], text=[tail], return_tensors="pt", add_special_tokens=False
    )
    h, w = (int(x) for x in enc["image_sizes"][0])
    return _Encoded(
        prompt_ids=enc["input_ids"][0].tolist(),
        target_ids=encode_target(tok, sample.description),
        pixel_values=enc["pixel_values"][0],
        image_size=(h, w),
    )


def _collate(rows: Sequence[_Encoded], pad_id: int, head_len: int) -> dict[str, torch.Tensor]:
    """Right-padded teacher-path batch of ``rows`` (after a cached head of ``head_len``
    tokens: the attention mask covers it too, ``(B, head + T)``)."""
    tokens = build_batch(
        None,
        [r.prompt_ids for r in rows],
        [r.target_ids for r in rows],
        max_length=None,
        pad_id=pad_id,
    )
    head = torch.ones((len(rows), head_len), dtype=tokens.attention_mask.dtype)
    return {
        "input_ids": tokens.input_ids,
        "labels": tokens.labels,
        "attention_mask": torch.cat([head, tokens.attention_mask], dim=1),
        "pixel_values": pad_views([r.pixel_values for r in rows]).float(),
        "image_sizes": torch.tensor([r.image_size for r in rows], dtype=torch.long),
    }


def with_head(row: _Encoded, head: PromptHead) -> _Encoded:
    """``row`` with the shared head's ids in front: for a language model that trains (its
    LoRA changes the head's keys/values, so they cannot be cached); collate with head_len 0."""
    return _Encoded(
        prompt_ids=head.ids + row.prompt_ids,
        target_ids=row.target_ids,
        pixel_values=row.pixel_values,
        image_size=row.image_size,
    )


def caption_nll(
    backbone: Backbone, head: PromptHead | None, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of the batch's description tokens (and their count).

    ``head``: the cached shared head (rows collated after it), or None for rows that hold it
    (:func:`with_head`). Logits are computed only where a label is, not over the whole prompt
    (the vocabulary projection is a fifth of the model's FLOPs per position).
    """
    llava = backbone.model
    prefix = head.expand(batch["input_ids"].shape[0]) if head is not None else None
    hidden = teacher_hidden(llava, batch, prefix_cache=prefix)  # (B, T, D)
    nll, count = target_nll(hidden, batch["labels"], unwrap(llava).lm_head)
    return nll, int(count)


# --------------------------------------------------------------------------------------------
# Data: the project's own synthetic catalogue (never the real data, never seeds 0-99)
# --------------------------------------------------------------------------------------------


def _look_vocabulary(style_name: str) -> frozenset[str]:
    from lavic.data.synthetic import STYLES

    style = STYLES[style_name]
    kinds = {k.name for k in style.kinds if " " not in k.name}
    return style.look_words | {style.tone_dark, style.tone_light} | kinds


def look_words(description: str, vocabulary: frozenset[str]) -> tuple[str, ...]:
    """The description's words that say what the image shows (colour, pattern, tone, kind)."""
    words = [w.strip(".,;:!?'\"()").lower() for w in description.split()]
    return tuple(dict.fromkeys(w for w in words if w in vocabulary))


def catalogue_samples(
    root: str | Path, *, style: str = "default", split: str = "train"
) -> list[CaptionSample]:
    """Every described image of a catalogue written by ``lavic synthesize``: ``train``
    (``item2meta_train.json`` + ``train_images/``) or ``valid`` (stage 1's validation images,
    ``item2meta_valid.jsonl`` + ``valid_images/``)."""
    from lavic.data.images import ImageStats, load_image
    from lavic.data.loaders import described_images, load_item_meta

    root = Path(root)
    meta_file, image_dir = {
        "train": ("item2meta_train.json", "train_images"),
        "valid": ("item2meta_valid.jsonl", "valid_images"),
    }[split]
    vocabulary = _look_vocabulary(style)
    stats = ImageStats()
    samples = []
    for d in described_images(load_item_meta(root / meta_file)):
        image = load_image(root / image_dir, d.image_name, stats=stats)
        samples.append(
            CaptionSample(image, d.title, d.description, look_words(d.description, vocabulary))
        )
    if stats.loaded != len(samples):
        raise LavicError(f"{root}: {len(samples) - stats.loaded} catalogue images unreadable")
    return samples


def write_pretraining_catalogue(root: Path, seed: int, **kwargs) -> Path:
    """A synthetic catalogue for pretraining or measuring (seeds below 100 are refused: they
    belong to the demo and the evaluations, which must not see pretraining data)."""
    from lavic.data.synthetic import write_catalogue

    if seed < 100:
        raise LavicError(f"catalogue seed {seed} is reserved for demos/evaluation; use >= 100")
    write_catalogue(root, seed=seed, style="default", **kwargs)
    return root
