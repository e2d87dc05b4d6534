"""What the tiny stand-in's pretrained weights measure (docs/tiny.md): teacher perplexity with
the real / a blank / another item's image, the look words of greedy descriptions, and the
language model's pick of a candidate from text."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from lavic.constants import IGNORE_INDEX, ITEM_TOKENS
from lavic.errors import LavicError
from lavic.model.backbone import Backbone, unwrap
from lavic.model.compute import student_hidden, target_nll, teacher_hidden
from lavic.pretrain.captions import (
    CaptionSample,
    PromptHead,
    _collate,
    _encode,
    _look_vocabulary,
    caption_nll,
    look_words,
)
from lavic.prompts import teacher_prompt, text_selection_prompt

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------

ImageMode = Literal["real", "blank", "shuffled"]


def derangement(images: Sequence[Image.Image], seed: int) -> list[Image.Image]:
    """Every item gets the next one's image in a random cycle: nobody keeps its own (the
    "another item's image" control)."""
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    by = {order[i]: images[order[(i + 1) % len(order)]] for i in range(len(order))}
    return [by[i] for i in range(len(images))]


@torch.no_grad()
def teacher_perplexity(
    backbone: Backbone,
    samples: Sequence[CaptionSample],
    *,
    image_mode: ImageMode = "real",
    batch_size: int = 8,
    seed: int = 0,
) -> float:
    """Perplexity of the descriptions given the stage-1 prompt with the full image tokens.

    ``blank`` gives every item a white image of its own size (same views, same token count),
    ``shuffled`` another item's image (a random derangement): if the model reads the image,
    both are worse than ``real``.
    """
    head = PromptHead(backbone)
    images = [s.image for s in samples]
    if image_mode == "blank":
        images = [Image.new("RGB", im.size, (255, 255, 255)) for im in images]
    elif image_mode == "shuffled":
        images = derangement(images, seed)
    total, count = 0.0, 0
    pad_id = backbone.tokenizer.pad_token_id
    for i in range(0, len(samples), batch_size):
        rows = [
            _encode(backbone, head, s, im)
            for s, im in zip(samples[i : i + batch_size], images[i : i + batch_size], strict=True)
        ]
        nll, n = caption_nll(backbone, head, _collate(rows, pad_id, len(head)))
        total, count = total + float(nll), count + n
    return math.exp(total / count)


@torch.no_grad()
def describe(backbone: Backbone, sample: CaptionSample, *, max_new_tokens: int = 48) -> str:
    """Greedy description of ``sample.image`` through the teacher path."""
    enc = backbone.processor(
        images=[sample.image], text=[teacher_prompt(sample.title)], return_tensors="pt"
    )
    out = backbone.model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=backbone.tokenizer.pad_token_id,
    )
    return backbone.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def description_look_accuracy(
    backbone: Backbone, samples: Sequence[CaptionSample], *, style: str = "default"
) -> dict[str, Any]:
    """Share of generated descriptions that name the item's colour, and its pattern."""
    from lavic.data.synthetic import STYLES

    st = STYLES[style]
    colours = {c.word for c in st.colours}
    patterns = set(st.patterns)
    vocab = _look_vocabulary(style)
    hits = {"colour": 0, "pattern": 0, "both": 0}
    examples = []
    for s in samples:
        text = describe(backbone, s)
        said = set(look_words(text, vocab))
        want = set(s.words)
        colour_ok = bool(want & colours) and (want & colours) <= said
        pattern_ok = bool(want & patterns) and (want & patterns) <= said
        hits["colour"] += colour_ok
        hits["pattern"] += pattern_ok
        hits["both"] += colour_ok and pattern_ok
        if len(examples) < 4:
            examples.append({"reference": s.description, "generated": text})
    n = len(samples)
    return {
        "n": n,
        **{f"{k}_accuracy": round(v / n, 4) for k, v in hits.items()},
        "chance_colour": round(1 / len(colours), 4),
        "chance_pattern": round(1 / len(patterns), 4),
        "examples": examples,
    }


@torch.no_grad()
def text_selection_accuracy(
    backbone: Backbone,
    catalogue: str | Path,
    *,
    split: str = "test",
    candidate_key: str = "candidates_st",
    limit: int = 60,
    chat: bool = False,
    batch_size: int = 4,
) -> dict[str, Any]:
    """Zero-shot accuracy of the language model picking the asked-for candidate from text.

    Each candidate line carries its teacher description in words. Answers come from the
    evaluator's own decoding (:mod:`lavic.model.decoding`): ``generate`` (greedy, the
    answer parsed for a candidate ID) and ``score`` (the candidate whose ID + EOS is most
    likely). Only conversations whose answer is among the candidates count (the synthetic
    test split drops some answers on purpose); they are taken round-robin over categories.
    """
    from lavic.data.loaders import find_splits, item_title, load_item_meta, load_split
    from lavic.model.decoding import decode_batch, prepare_prompts

    root = Path(catalogue)
    meta = load_item_meta(root / "item2meta_train.json")
    per_category = [
        [
            c
            for c in load_split(root, cat, split)
            if c.gt_items[0] in c.candidate_list(candidate_key)
        ]
        for cat in sorted(find_splits(root))
    ]
    convs = [c for group in zip(*per_category, strict=False) for c in group][:limit]
    n = len(convs)
    if n == 0:
        raise LavicError(f"{root}: no {split} conversation with its answer among the candidates")
    correct = valid = scored_correct = 0
    chance = 0.0
    examples = []
    model, tok = backbone.model, backbone.tokenizer
    for start in range(0, n, batch_size):
        chunk = convs[start : start + batch_size]
        ids = [c.candidate_list(candidate_key) for c in chunk]
        prompts = []
        for conv, cand_ids in zip(chunk, ids, strict=True):
            cands = []
            for i in cand_ids:
                item = meta[i]
                description = (
                    item.descriptions.get(item.image_names[0], "") if item.image_names else ""
                )
                cands.append((i, item_title(meta, i), description))
            prompts.append(
                text_selection_prompt(conv.context, cands, chat_tokenizer=tok if chat else None)
            )
        batch = prepare_prompts(model, tok, prompts, [None] * len(chunk), max_length=2048)
        scored = decode_batch(model, tok, batch, ids, "score")
        generated = decode_batch(model, tok, batch, ids, "generate", max_new_tokens=12)
        for conv, cand_ids, s, g in zip(chunk, ids, scored, generated, strict=True):
            gt = conv.gt_items[0]
            scored_correct += s.recommended == gt
            valid += g.recommended in cand_ids
            correct += g.recommended == gt
            chance += 1 / len(cand_ids)
            if len(examples) < 3:
                examples.append({"answer": g.response, "gt": gt})
    return {
        "n": n,
        "accuracy": round(correct / n, 4),
        "valid_id_rate": round(valid / n, 4),
        "scored_accuracy": round(scored_correct / n, 4),
        "chance": round(chance / n, 4),
        "prompt": "chat template" if chat else "seed (raw, 'Assistant:')",
        "examples": examples,
    }


# --------------------------------------------------------------------------------------------
# Stage 1's question: do the five item tokens carry the look?
# --------------------------------------------------------------------------------------------


def _look_token_mask(tokenizer, description: str, words: frozenset[str]) -> list[bool]:
    """Per target token (description tokens + EOS): does it spell part of a look word?"""
    import re

    spans = [m.span() for m in re.finditer(r"[A-Za-z]+", description) if m.group().lower() in words]
    enc = tokenizer(description, add_special_tokens=False, return_offsets_mapping=True)
    flags = [any(a < e and s < b for s, e in spans) for a, b in enc["offset_mapping"]]
    return flags + [False]  # the EOS


@torch.no_grad()
def look_word_nll(
    backbone: Backbone,
    samples: Sequence[CaptionSample],
    *,
    path: Literal["student", "teacher"] = "student",
    image_mode: Literal["real", "shuffled"] = "real",
    style: str = "default",
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, float]:
    """Description NLL split into the look words (colour, pattern) and the rest.

    A perplexity over all description tokens hides whether the image is used: most tokens are
    template words that do not depend on it. The look words do. ``student`` reads the five
    item tokens (stage 1's prompt), ``teacher`` the full image tokens; ``shuffled`` gives every
    item another item's image (a random derangement).

    Returns:
        ``ppl`` (all target tokens), ``look_nll`` and ``other_nll`` (mean nats per token), and
        the token counts.
    """
    from lavic.data.synthetic import STYLES
    from lavic.distill.module import StudentCollator, TeacherCollator

    st = STYLES[style]
    words = frozenset(c.word for c in st.colours) | frozenset(
        w for p in st.patterns for w in p.split()
    )
    images = [s.image for s in samples]
    if image_mode == "shuffled":
        images = derangement(images, seed)
    tok = backbone.tokenizer
    llava = backbone.model
    if path == "student":
        collate = StudentCollator(tok, backbone.processor.image_processor, max_length=1024)
    else:
        collate = TeacherCollator(backbone.processor, tok, max_length=1024)
    item_ids = tok.convert_tokens_to_ids(list(ITEM_TOKENS))
    sums = {"look": 0.0, "other": 0.0}
    counts = {"look": 0, "other": 0}
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        batch = collate(
            [
                {"sample": s, "image": im, "key": str(i + k), "outcome": "loaded"}
                for k, (s, im) in enumerate(zip(chunk, images[i : i + batch_size], strict=True))
            ]
        )
        if path == "student":
            hidden = student_hidden(llava, item_ids, batch)
        else:
            hidden = teacher_hidden(llava, batch)
        nll, _ = target_nll(hidden, batch["labels"], unwrap(llava).lm_head, reduction="none")
        per_row = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(1).tolist()  # reading order
        for s, row_nll in zip(chunk, nll.split(per_row), strict=True):
            flags = _look_token_mask(tok, s.description, words)[: len(row_nll)]
            for value, is_look in zip(row_nll.tolist(), flags, strict=True):
                key = "look" if is_look else "other"
                sums[key] += value
                counts[key] += 1
    total = sums["look"] + sums["other"]
    n = counts["look"] + counts["other"]
    return {
        "ppl": round(math.exp(total / n), 3),
        "look_nll": round(sums["look"] / max(1, counts["look"]), 4),
        "other_nll": round(sums["other"] / max(1, counts["other"]), 4),
        "look_tokens": counts["look"],
        "other_tokens": counts["other"],
    }


def stage1_look_report(
    backbone: Backbone, samples: Sequence[CaptionSample], *, style: str = "default"
) -> dict[str, dict[str, float]]:
    """Student and teacher, right image and another item's: the four :func:`look_word_nll`s."""
    return {
        f"{path}_{mode}": look_word_nll(backbone, samples, path=path, image_mode=mode, style=style)
        for path in ("student", "teacher")
        for mode in ("real", "shuffled")
    }
