"""Stage-2 training throughput: item tokens from the cache vs re-running the vision tower.

The reference recomputes every candidate's five views through the (frozen) vision tower at
every training step. LaViC reads them from :class:`lavic.cache.store.ItemTokenCache`. Same
model, same prompt, same LoRA (r=8 on the language model), same optimizer; three ways of
getting the item tokens, measured side by side and interleaved (this machine is shared):

* ``cache``: ``cache.get(ids)`` (what ``lavic tune`` does);
* ``recompute_tower``: the vision tower + projector on pre-processed views, every step
  (generous to the reference: images decoded and processed once);
* ``recompute_full``: decode the images, make the views, run the tower, every step (the
  reference's collator inside ``training_step``).

Usage::

    .venv/bin/python bench/bench_cache.py --models tiny-random tiny --output runs/bench/cache.json

Importable: :func:`bench_cache` returns a dict.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lavic.cache.store import build_item_token_cache
from lavic.data.images import item_image_name, load_image
from lavic.model.backbone import Backbone, load_backbone, unwrap
from lavic.model.compute import target_loss_sums
from lavic.model.inputs import build_batch
from lavic.model.item_tokens import encode_item_tokens, pixel_views
from lavic.model.lora import add_language_lora
from lavic.prompts import build_recommend_prompt

log = logging.getLogger("bench_cache")

SENTENCE = (
    "looking for a gift my sister likes red mugs with stripes but not too big and "
    "dishwasher safe any ideas thanks I tried the blue one and it chipped"
)


def load_model(name: str) -> tuple[Backbone, str]:
    """The backbone, and a note on where its weights came from."""
    if name != "tiny":
        return load_backbone(name), "as loaded"
    try:
        return load_backbone("tiny"), "shipped tiny weights"
    except Exception as exc:  # assets not built yet: same architecture, random vision side
        from lavic.model.tiny import assemble_tiny

        log.info("tiny assets unavailable (%s): assembling SmolLM2 + a random vision side", exc)
        return assemble_tiny(), "SmolLM2-135M + random vision side (speed does not depend on it)"


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def bench_cache(
    model: str = "tiny-random",
    *,
    num_candidates: int = 10,
    batch_size: int = 1,
    conversation_words: int = 300,
    steps: int = 5,
    repeats: int = 3,
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure stage-2 training samples/s with cached vs recomputed item tokens.

    Returns:
        ``{"model", "prompt_tokens", "samples_per_s": {variant: median}, "runs": {variant:
        [samples/s per repeat]}, "ratio_cache_vs_recompute_tower", "ratio_cache_vs_recompute_full",
        "work": {FLOP estimates}, ...}``.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    backbone, weights_note = load_model(model)
    tok = backbone.tokenizer
    llava = unwrap(backbone.model)
    rng = np.random.default_rng(seed)
    ids = [f"B{k:09d}" for k in range(num_candidates)]
    with tempfile.TemporaryDirectory() as tmp:
        image_dir = Path(tmp) / "images"
        image_dir.mkdir()
        for item_id in ids:  # product-photo-sized noise: decoding and resizing cost as usual
            pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(image_dir / item_image_name(item_id, 0), quality=90)
        cache = build_item_token_cache(
            backbone,
            ids,
            image_dir,
            Path(tmp) / "cache",
            fingerprint=f"bench:{model}",
            progress=False,
        )
        images = [load_image(image_dir, item_image_name(i, 0)) for i in ids]
        views = pixel_views(backbone.image_processor, images)  # (C, 5, C, H, W)

        words = SENTENCE.split()
        conversation = (
            "<submission>"
            + " ".join(words[k % len(words)] for k in range(conversation_words))
            + "</submission>"
        )
        prompt = build_recommend_prompt(
            tok, conversation, [(i, f"striped mug {i}") for i in ids], max_length=8192
        )
        batch = build_batch(tok, [prompt.text] * batch_size, [ids[3]] * batch_size, max_length=8192)
        row_ids = ids * batch_size  # reading order: every row shows the same candidates

        peft = add_language_lora(backbone.model, r=8, alpha=32, dropout=0.1)
        peft.train()
        optimizer = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-5)

        def tokens_cache() -> torch.Tensor:
            return cache.get(row_ids)

        def tokens_tower() -> torch.Tensor:
            with torch.no_grad():
                return encode_item_tokens(llava, views.repeat(batch_size, 1, 1, 1, 1))

        def tokens_full() -> torch.Tensor:
            loaded = [load_image(image_dir, item_image_name(i, 0)) for i in row_ids]
            with torch.no_grad():
                return encode_item_tokens(llava, pixel_views(backbone.image_processor, loaded))

        variants = {
            "cache": tokens_cache,
            "recompute_tower": tokens_tower,
            "recompute_full": tokens_full,
        }

        def train_step(get_tokens) -> None:
            item_tokens = get_tokens()
            loss_sum, n = target_loss_sums(
                peft,
                tok,
                {
                    "input_ids": batch.input_ids,
                    "attention_mask": batch.attention_mask,
                    "labels": batch.labels,
                    "item_tokens": item_tokens,
                },
            )
            (loss_sum / n).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for get_tokens in variants.values():  # warm-up
            train_step(get_tokens)
        runs: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, get_tokens in variants.items():  # interleaved: drift hits all alike
                start = time.perf_counter()
                for _ in range(steps):
                    train_step(get_tokens)
                runs[name].append(steps * batch_size / (time.perf_counter() - start))
        # The vision work alone, for the count below.
        start = time.perf_counter()
        for _ in range(steps):
            tokens_tower()
        tower_s = (time.perf_counter() - start) / steps

    core = llava.model
    vcfg = llava.config.vision_config
    view_tokens = (vcfg.image_size // vcfg.patch_size) ** 2 + 1
    prompt_tokens = int(batch.attention_mask[0].sum())
    lm_params = _params(core.language_model)
    vision_params = _params(core.vision_tower) + _params(core.multi_modal_projector)
    medians = {name: statistics.median(v) for name, v in runs.items()}
    return {
        "model": model,
        "weights": weights_note,
        "threads": torch.get_num_threads(),
        "num_candidates": num_candidates,
        "batch_size": batch_size,
        "prompt_tokens": prompt_tokens,
        "steps_per_run": steps,
        "repeats": repeats,
        "samples_per_s": medians,
        "runs": runs,
        "ratio_cache_vs_recompute_tower": medians["cache"] / medians["recompute_tower"],
        "ratio_cache_vs_recompute_full": medians["cache"] / medians["recompute_full"],
        "vision_tower_s_per_sample": tower_s / batch_size,
        "work": {
            # forward ~2 FLOPs per parameter per token; the LoRA backward ~2x forward again
            "lm_train_gflop_per_sample": 3 * 2 * lm_params * prompt_tokens / 1e9,
            "vision_gflop_per_sample": 2 * vision_params * view_tokens * 5 * num_candidates / 1e9,
            "lm_params": lm_params,
            "vision_params": vision_params,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny-random", "tiny"])
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per timed run (default: 5 for tiny-random, else 2)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs per variant (default: 3 for tiny-random, else 2)",
    )
    parser.add_argument("--conversation_words", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    results = []
    for name in args.models:
        small = name == "tiny-random"
        steps = args.steps or (5 if small else 2)
        repeats = args.repeats or (3 if small else 2)
        result = bench_cache(
            name,
            steps=steps,
            repeats=repeats,
            threads=args.threads,
            conversation_words=args.conversation_words,
        )
        results.append(result)
        s = result["samples_per_s"]
        print(
            f"{name}: prompt {result['prompt_tokens']} tokens, {result['num_candidates']} "
            f"candidates; samples/s cache {s['cache']:.3f}, recompute tower "
            f"{s['recompute_tower']:.3f}, recompute full {s['recompute_full']:.3f}; ratio "
            f"x{result['ratio_cache_vs_recompute_tower']:.2f} (tower), "
            f"x{result['ratio_cache_vs_recompute_full']:.2f} (full)"
        )
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
