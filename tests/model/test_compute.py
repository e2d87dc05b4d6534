"""The shared forwards of model/compute.py (stage 1's student and teacher, the target NLL) and
the one item encoder, each against the model's own forward and loss on tiny-random."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lavic.constants import IGNORE_INDEX
from lavic.errors import LavicError
from lavic.model.compute import embed_prompts, student_hidden, target_nll, teacher_hidden
from lavic.model.inputs import build_batch, encode_target, pad_views
from lavic.model.item_tokens import (
    encode_item_tokens,
    encoder_dtype,
    make_item_encoder,
    pixel_views,
)
from lavic.model.tiny_random import build_tiny_random
from lavic.prompts import student_prompt, teacher_prompt


@pytest.fixture(scope="module")
def tiny():
    backbone = build_tiny_random(seed=3)
    head = backbone.model.get_output_embeddings().weight
    with torch.no_grad():  # a sharper head: near-uniform logits would hide small errors
        head.copy_(torch.randn(head.shape, generator=torch.Generator().manual_seed(3)) * 2.0)
    return backbone


IMAGES = [Image.new("RGB", (48, 32), (200, 30, 30)), Image.new("RGB", (32, 64), (20, 90, 200))]
TITLES = ["Red mug", "Blue lamp, tall"]
DESCRIPTIONS = ["a red mug with stripes", "a blue lamp"]


def _student_batch(backbone):
    prompts = [student_prompt(t) for t in TITLES]
    tokens = build_batch(backbone.tokenizer, prompts, DESCRIPTIONS, max_length=256)
    return {
        "input_ids": tokens.input_ids,
        "attention_mask": tokens.attention_mask,
        "labels": tokens.labels,
        "pixel_values": pixel_views(backbone.image_processor, IMAGES),
    }


def _teacher_batch(backbone):
    prompts, views, sizes = [], [], []
    for image, title in zip(IMAGES, TITLES, strict=True):
        enc = backbone.processor(images=[image], text=[teacher_prompt(title)], return_tensors="pt")
        prompts.append(enc["input_ids"][0].tolist())
        views.append(enc["pixel_values"][0])
        sizes.append(enc["image_sizes"][0])
    targets = [encode_target(backbone.tokenizer, d) for d in DESCRIPTIONS]
    tokens = build_batch(backbone.tokenizer, prompts, targets, max_length=None)
    return {
        "input_ids": tokens.input_ids,
        "attention_mask": tokens.attention_mask,
        "labels": tokens.labels,
        "pixel_values": pad_views(views),
        "image_sizes": torch.stack(sizes),
    }


@torch.no_grad()
def test_student_forward_and_target_nll_are_the_models_own_loss(tiny):
    llava = tiny.model
    batch = _student_batch(tiny)
    nll, count = target_nll(
        student_hidden(llava, tiny.item_token_ids, batch), batch["labels"], llava.lm_head
    )
    items = encode_item_tokens(llava, batch["pixel_values"])  # (B, 5, D): one item per row
    embeds = embed_prompts(llava, tiny.tokenizer, batch["input_ids"], items)
    own = llava(
        inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]
    )
    assert int(count) == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(nll / count, own.loss, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_teacher_forward_is_the_ordinary_llava_next_path(tiny):
    llava = tiny.model
    batch = _teacher_batch(tiny)
    assert batch["pixel_values"].shape[1] > 1  # anyres views, zero-padded to the batch's most
    nll, count = target_nll(teacher_hidden(llava, batch), batch["labels"], llava.lm_head)
    own = llava(
        **{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")},
        image_sizes=batch["image_sizes"],
        labels=batch["labels"],
    )
    torch.testing.assert_close(nll / count, own.loss, rtol=1e-5, atol=1e-6)
    broken = dict(batch, input_ids=batch["input_ids"][:, 3:], labels=batch["labels"][:, 3:])
    broken["attention_mask"] = batch["attention_mask"][:, 3:]
    image_token = tiny.tokenizer.convert_tokens_to_ids("<image>")
    broken["input_ids"] = broken["input_ids"].masked_fill(broken["input_ids"] == image_token, 7)
    with pytest.raises(LavicError, match="teacher"):
        teacher_hidden(llava, broken)  # no <image> token left for the image's features


@torch.no_grad()
def test_per_token_target_nll_sums_to_the_summed_one_in_reading_order(tiny):
    llava = tiny.model
    batch = _student_batch(tiny)
    hidden = student_hidden(llava, tiny.item_token_ids, batch)
    total, count = target_nll(hidden, batch["labels"], llava.lm_head)
    per_token, same = target_nll(hidden, batch["labels"], llava.lm_head, reduction="none")
    assert per_token.shape == (int(count),) and int(same) == int(count)
    torch.testing.assert_close(per_token.sum(), total, rtol=1e-5, atol=1e-5)
    first = int((batch["labels"][0, 1:] != IGNORE_INDEX).sum())  # row 0's tokens come first
    row0, _ = target_nll(hidden[:1], batch["labels"][:1], llava.lm_head)
    torch.testing.assert_close(per_token[:first].sum(), row0, rtol=1e-5, atol=1e-5)


def test_item_encoder_is_the_projected_cls_without_grad_or_dropout(tiny):
    llava = tiny.model
    core = llava.model
    encoder = make_item_encoder(tiny)
    llava.train()
    try:
        tokens = encoder(IMAGES)
        assert core.vision_tower.training and core.multi_modal_projector.training  # restored
    finally:
        llava.eval()
    assert tokens.shape == (2, 5, llava.config.text_config.hidden_size)
    assert not tokens.requires_grad and tokens.dtype == encoder_dtype(tiny)
    with torch.no_grad():
        want = encode_item_tokens(llava, pixel_views(tiny.image_processor, IMAGES))
    torch.testing.assert_close(tokens, want, rtol=0, atol=0)
