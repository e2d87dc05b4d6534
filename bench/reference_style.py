"""Re-creations of the reference implementation's steps, for side-by-side timing only.

They do what the reference's ``prompt_tuning.py`` and ``knowledge_distillation.py`` do inside a
step, in the same order and the same way (not the same code):

* the collator runs *inside* the step: prompt and prompt+target tokenized separately, labels
  masked up to the *padded* width of the prompt batch, pad ids masked, the placeholder mask
  built with a Python loop per row and per token id, and every candidate's image put through
  the image processor (anyres views) at every step;
* device and dtype moves happen inside ``forward``;
* the vision tower runs on every candidate view at every step (stage 2: under ``no_grad``;
  stage 1: with gradients, LoRA there);
* the [CLS] states are written into the embeddings one position at a time in Python loops
  (``.item()`` per position; a count mismatch silently clipped);
* the whole wrapped model is called with ``labels`` (logits over every position, HF's loss);
* Lightning's ``gradient_clip_val=1.0`` (both scripts) is applied before the optimizer step;
* the test step decodes with ``generate(max_new_tokens=10)`` and the regex ``B[A-Z0-9]{9}``.

Differences, all in the reference's favour: the reference moved pixels to float16 (it ran a
float16 model on a GPU); here they are moved to the vision tower's dtype, the only thing that
runs on a CPU. Batches here are already in memory (the reference loaded images in its
DataLoader's workers, as LaViC does).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from lavic.constants import ITEM_TOKENS
from lavic.model.backbone import unwrap
from lavic.prompts import DISTILL_PROMPT


def _core(model):
    return unwrap(model).model  # LlavaNextModel: vision_tower, multi_modal_projector, LM


class ReferenceCollator:
    """The reference's collator (stage 1 ``DataCollator``, stage 2 ``DataCollatorForLLaVA``).

    Items are dicts with ``prompt``, ``target`` and ``images`` (a list of PIL images).
    """

    def __init__(self, tokenizer, image_processor, max_length: int = 2048):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_length = max_length
        self.image_token_ids = [tokenizer.convert_tokens_to_ids(t) for t in ITEM_TOKENS]

    def __call__(self, batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
        prompts = [b["prompt"] for b in batch]
        full = [b["prompt"] + b["target"] for b in batch]
        kw = dict(
            max_length=self.max_length, padding="longest", truncation=True, return_tensors="pt"
        )
        tokenized_prompts = self.tokenizer(prompts, **kw)
        tokenized_full = self.tokenizer(full, **kw)
        input_ids = tokenized_full["input_ids"]
        attention_mask = tokenized_full["attention_mask"]
        labels = input_ids.clone()
        # The padded width of the prompt batch, the same for every row (the reference's bug).
        prompt_lengths = [len(x) for x in tokenized_prompts["input_ids"]]
        for i in range(len(labels)):
            labels[i, : prompt_lengths[i]] = -100
        labels[labels == self.tokenizer.pad_token_id] = -100  # also masks an EOS target
        image_token_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for b_idx in range(input_ids.size(0)):
            for tid in self.image_token_ids:
                positions = (input_ids[b_idx] == tid).nonzero(as_tuple=False).squeeze(-1)
                image_token_mask[b_idx, positions] = True
        all_images = [img for b in batch for img in b["images"]]
        pixel_values = self.image_processor(all_images, return_tensors="pt")["pixel_values"]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "images": pixel_values,  # (N images, views, C, H, W)
            "image_token_mask": image_token_mask,
        }


def _loop_insert(inputs_embeds, image_token_mask, cls_states) -> None:
    """cls_states ``(B, n_items, views, D)`` written position by position (clipped)."""
    b_text, n_items, views = cls_states.shape[:3]
    for b_idx in range(b_text):
        positions = torch.nonzero(image_token_mask[b_idx], as_tuple=False).squeeze(-1)
        if positions.numel() == 0:
            continue
        pos_count = min(len(positions), n_items * views)
        for c in range(n_items):
            for i in range(views):
                idx = c * views + i
                if idx >= pos_count:
                    break
                col = positions[idx].item()
                inputs_embeds[b_idx, col, :] = cls_states[b_idx, c, i, :]


def reference_embed(model, inputs: dict[str, Any], *, vision_grad: bool) -> dict[str, Any]:
    """The reference's ``forward`` up to the model call: moves, vision tower, loop insertion."""
    device = next(model.parameters()).device
    input_ids = inputs["input_ids"].to(device)
    attention_mask = inputs["attention_mask"].to(device)
    image_token_mask = inputs["image_token_mask"].to(device)
    labels = inputs["labels"].to(device) if inputs.get("labels") is not None else None
    core = _core(model)
    inputs_embeds = model.get_input_embeddings()(input_ids)
    images = inputs["images"].to(device, dtype=next(core.vision_tower.parameters()).dtype)
    b_text = input_ids.size(0)
    n, views, c, h, w = images.shape
    flat = images.view(n * views, c, h, w)
    if vision_grad:
        vision_outputs = core.vision_tower(flat)
    else:
        with torch.no_grad():
            vision_outputs = core.vision_tower(flat)
    cls_states = vision_outputs.last_hidden_state[:, 0, :].view(b_text, n // b_text, views, -1)
    cls_states = core.multi_modal_projector(cls_states)
    _loop_insert(inputs_embeds, image_token_mask, cls_states)
    return {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask, "labels": labels}


def reference_training_step(
    model, collator: ReferenceCollator, batch, optimizer, *, vision_grad: bool
) -> float:
    """One reference training step (stage 2: ``vision_grad=False``; stage 1: True)."""
    inputs = collator(batch)  # inside the step
    fwd = reference_embed(model, inputs, vision_grad=vision_grad)
    outputs = model(
        input_ids=None,
        attention_mask=fwd["attention_mask"],
        inputs_embeds=fwd["inputs_embeds"],
        labels=fwd["labels"],
    )
    loss = outputs.loss
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(params, 1.0)  # Lightning's gradient_clip_val=1.0
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


ASIN_RE = re.compile(r"\bB[A-Z0-9]{9}\b")


@torch.no_grad()
def reference_test_step(model, collator: ReferenceCollator, batch) -> list[str | None]:
    """The reference's ``test_step``: collate, recompute, loop-insert, generate 10, regex."""
    inputs = collator([{**b, "target": ""} for b in batch])
    fwd = reference_embed(model, inputs, vision_grad=False)
    tokenizer = collator.tokenizer
    generated = unwrap(model).generate(
        inputs_embeds=fwd["inputs_embeds"],
        attention_mask=fwd["attention_mask"],
        max_new_tokens=10,
        num_beams=1,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        # Random weights may stop at once; a trained model spells a 10-character ID in about
        # ten tokens, so all ten are generated (as bench/gpu_bench.py).
        min_new_tokens=10,
    )
    texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
    out = []
    for text in texts:
        match = ASIN_RE.findall(text.strip())
        out.append(match[0][:10] if match else None)
    return out


def reference_distill_items(samples: Sequence[tuple[str, str, Any]]) -> list[dict[str, Any]]:
    """Stage-1 items as the reference's dataset gives them: (title, description, image)."""
    return [
        {"prompt": DISTILL_PROMPT.format(title=t), "target": d, "images": [img]}
        for t, d, img in samples
    ]
