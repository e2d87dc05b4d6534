"""Stage-1 speed: images/s of ``StudentCollator`` + ``DistillModule.training_step`` against the
reference's step (collator, image processing and loops inside the step).

Timing as in bench/harness.py.

    .venv/bin/python bench/bench_distill.py --repeats 1     # quick: checks it runs
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_model as bm  # noqa: E402
from harness import (  # noqa: E402
    DISTILL_BATCH,
    LORA,
    LR,
    MAX_LENGTH,
    WEIGHT_DECAY,
    alternate,
    load_backbone,
    paired_ratio,
    per_second,
    quiet,
    section_main,
    timed,
)
from reference_style import (  # noqa: E402
    ReferenceCollator,
    reference_distill_items,
    reference_training_step,
)

from lavic.data.records import DescribedImage  # noqa: E402
from lavic.distill.module import DistillModule, StudentCollator  # noqa: E402
from lavic.model.backbone import Backbone  # noqa: E402
from lavic.model.lora import add_vision_lora  # noqa: E402
from lavic.prompts import DISTILL_PROMPT  # noqa: E402

# Stage 1 of the real model: the reference's prompt (~120 Mistral tokens with a title) and the
# median description of item2meta_valid.jsonl (88 words, ~115 tokens).
REAL_DISTILL_TOKENS = 235
TYPICAL_DESCRIPTION = (
    "The image shows a black office chair with a modern design. The chair features a high "
    "backrest with built-in lumbar support, which is designed to provide ergonomic support to "
    "the lower back. The seat is also black and appears to be upholstered in a material that "
    "looks like leather. The chair has a five-wheeled base with casters, which suggests that "
    "it is designed to be mobile and easy to move around an office space. The armrests are "
    "padded and adjustable."
)


def distill_description(tokenizer, name: str) -> str:
    """The description used as the stage-1 target.

    For the bench model it is cut so that vision / LM FLOPs per image equal the real model's
    (5 views of ViT-L/14-336 against a ~235-token prompt + description through Mistral-7B):
    this tokenizer spells the reference's prompt alone in ~300 tokens, so little room is left.
    """
    if name != "bench":
        return TYPICAL_DESCRIPTION
    real = (
        bm.NUM_ITEM_TOKENS
        * bm.vision_flops_per_view(bm.REAL_VISION)
        / bm.lm_prefill_flops(bm.REAL_TEXT, REAL_DISTILL_TOKENS)["total"]
    )
    vision = bm.NUM_ITEM_TOKENS * bm.vision_flops_per_view(bm.BENCH_VISION)
    prompt = len(tokenizer(DISTILL_PROMPT.format(title="Acme Product 1")).input_ids)
    ids = tokenizer(TYPICAL_DESCRIPTION, add_special_tokens=False).input_ids
    n = 8
    while (
        n < len(ids) and vision / bm.lm_prefill_flops(bm.BENCH_TEXT, prompt + n + 1)["total"] > real
    ):
        n += 1
    return tokenizer.decode(ids[:n])


def distill_variants(backbone: Backbone, name: str) -> tuple[dict[str, Callable], dict]:
    tok = backbone.tokenizer
    description = distill_description(tok, name)
    images = bm.product_images(DISTILL_BATCH)
    samples = [
        DescribedImage(
            item_id=f"B{i:09d}",
            title=f"Acme Product {i}",
            image_name=f"B{i:09d}_0.jpg",
            description=description,
        )
        for i in range(DISTILL_BATCH)
    ]
    items = [
        {"sample": s, "image": img, "outcome": "loaded", "key": f"train/{s.image_name}"}
        for s, img in zip(samples, images, strict=True)
    ]
    peft = add_vision_lora(
        backbone.model, r=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"], base_model=name
    )
    module = DistillModule(peft, backbone.item_token_ids, lr=LR, weight_decay=WEIGHT_DECAY)
    module.train()
    optimizer = module.configure_optimizers()
    student = StudentCollator(tok, backbone.image_processor, MAX_LENGTH)
    collated = student(items)

    def step(batch):
        loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def ours():  # the collator would run in a DataLoader worker; here it is timed in line
        step(student(items))

    def ours_step_only():
        step(collated)

    ref_collator = ReferenceCollator(tok, backbone.image_processor, MAX_LENGTH)
    ref_items = reference_distill_items(
        [(s.title, s.description, img) for s, img in zip(samples, images, strict=True)]
    )
    ref_optimizer = torch.optim.AdamW(
        [p for p in peft.parameters() if p.requires_grad], lr=LR, weight_decay=WEIGHT_DECAY
    )

    def reference_style():
        reference_training_step(peft, ref_collator, ref_items, ref_optimizer, vision_grad=True)

    info = {
        "description_tokens": len(tok(description, add_special_tokens=False).input_ids),
        "row_tokens": int(collated["attention_mask"].sum(1).max()),
        "batch_size": DISTILL_BATCH,
    }
    return {
        "ours": ours,
        "ours_step_only": ours_step_only,
        "reference_style": reference_style,
    }, info


def bench_distill(name: str, *, repeats: int = 5) -> dict[str, Any]:
    backbone = load_backbone(name)
    variants, info = distill_variants(backbone, name)
    with quiet():
        run = alternate(variants, repeats=repeats)
    vision, text = bm.shapes_of(backbone)
    per_image_vision = bm.NUM_ITEM_TOKENS * bm.vision_flops_per_view(vision)
    lm = bm.lm_prefill_flops(text, info["row_tokens"])["total"]
    # The image processing the reference does inside its step, at LLaVA-v1.6's real geometry
    # (336-pixel views): what a GPU step would wait for unless a DataLoader worker does it.
    v16 = bm._v16_processor(backbone.tokenizer, 336, 14).image_processor
    photo = bm.product_images(1)[0]
    v16_s = statistics.median(timed(lambda: v16([photo], return_tensors="pt")) for _ in range(5))
    return {
        **info,
        "v16_image_processing_s_per_image": v16_s,
        "images_per_s": per_second(run, DISTILL_BATCH),
        **run,
        "distill_speedup_vs_reference_style": paired_ratio(run, "reference_style", "ours"),
        "distill_speedup_step_only_vs_reference_style": paired_ratio(
            run, "reference_style", "ours_step_only"
        ),
        "vision_over_lm_flops_per_image": per_image_vision / lm,
        "real_vision_over_lm_flops_per_image": (
            bm.NUM_ITEM_TOKENS
            * bm.vision_flops_per_view(bm.REAL_VISION)
            / bm.lm_prefill_flops(bm.REAL_TEXT, REAL_DISTILL_TOKENS)["total"]
        ),
    }


if __name__ == "__main__":
    sys.exit(
        section_main(
            lambda args, tmp: bench_distill(args.model, repeats=args.repeats),
            __doc__.splitlines()[0],
        )
    )
