"""Inference speed: conversations/s of ``lavic evaluate`` against the reference's test step.

Cached tokens + ``score`` decoding (what ``lavic evaluate`` does) against the reference's test
step (collate + image processing + vision tower + loop insertion + greedy generation of 10
tokens), against the same recompute + generate on ready views with LaViC's insertion (what
bench/gpu_bench.py calls "reference"), and against the floor: the language model's bare forward
over the same embedded prompt. Timing as in bench/harness.py.

    .venv/bin/python bench/bench_inference.py --repeats 1     # quick: checks it runs
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    MAX_LENGTH,
    Workload,
    alternate,
    load_backbone,
    paired_ratio,
    per_second,
    quiet,
    section_main,
    sub_steps,
)
from reference_style import ReferenceCollator, reference_embed, reference_test_step  # noqa: E402

from lavic.model.backbone import unwrap  # noqa: E402
from lavic.model.decoding import decode_batch, prepare_prompts  # noqa: E402
from lavic.model.item_tokens import encode_item_tokens  # noqa: E402
from lavic.prompts import build_recommend_prompt  # noqa: E402


def inference_variants(w: Workload) -> dict[str, Callable[[], Any]]:
    model, tok = w.backbone.model, w.tok
    llava = unwrap(model)
    item_ids = w.backbone.item_token_ids
    ref_collator = ReferenceCollator(tok, w.backbone.image_processor, MAX_LENGTH)
    ready = prepare_prompts(
        model, tok, [w.prompt.text], [w.cache.get(w.ids)], max_length=MAX_LENGTH
    )

    @torch.no_grad()
    def ours():  # lavic evaluate's loop body for one conversation, default decoding
        p = build_recommend_prompt(tok, w.conversation, w.cands, max_length=MAX_LENGTH)
        embeds = w.cache.get(list(p.candidate_ids))
        batch = prepare_prompts(model, tok, [p.text], [embeds], max_length=MAX_LENGTH)
        return decode_batch(model, tok, batch, [list(p.candidate_ids)], "score")

    def reference_style():
        return reference_test_step(
            model, ref_collator, [{"prompt": w.reference_prompt, "images": w.images}]
        )

    @torch.no_grad()
    def recompute_generate():  # bench/gpu_bench.py's "reference"
        toks = encode_item_tokens(llava, w.views)
        batch = prepare_prompts(model, tok, [w.prompt.text], [toks], max_length=MAX_LENGTH)
        llava.generate(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            max_new_tokens=10,
            min_new_tokens=10,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            suppress_tokens=item_ids,
        )

    @torch.no_grad()
    def prefill_floor():
        model(
            inputs_embeds=ready.inputs_embeds, attention_mask=ready.attention_mask, logits_to_keep=1
        )

    return {
        "ours": ours,
        "reference_style": reference_style,
        "recompute_generate": recompute_generate,
        "prefill_floor": prefill_floor,
    }


def _inference_breakdown(w: Workload, repeats: int) -> dict[str, dict[str, float]]:
    """Where the time of ours and of the reference's test step goes (sub-step medians)."""
    model, tok = w.backbone.model, w.tok
    ref_collator = ReferenceCollator(tok, w.backbone.image_processor, MAX_LENGTH)
    state: dict[str, Any] = {}

    def render():
        state["p"] = build_recommend_prompt(tok, w.conversation, w.cands, max_length=MAX_LENGTH)

    def read_cache():
        state["e"] = w.cache.get(list(state["p"].candidate_ids))

    def prepare():
        with torch.no_grad():
            state["b"] = prepare_prompts(
                model, tok, [state["p"].text], [state["e"]], max_length=MAX_LENGTH
            )

    def decode():
        decode_batch(model, tok, state["b"], [list(state["p"].candidate_ids)], "score")

    def collate():
        state["in"] = ref_collator(
            [{"prompt": w.reference_prompt, "target": "", "images": w.images}]
        )

    def image_processing():  # the part of collate() that processes the 10 images
        w.backbone.image_processor(w.images, return_tensors="pt")

    def vision_and_loop_insertion():
        with torch.no_grad():
            state["f"] = reference_embed(model, state["in"], vision_grad=False)

    def vision_tower_alone():
        with torch.no_grad():
            encode_item_tokens(unwrap(model), w.views)

    def generate():
        with torch.no_grad():
            unwrap(model).generate(
                inputs_embeds=state["f"]["inputs_embeds"],
                attention_mask=state["f"]["attention_mask"],
                max_new_tokens=10,
                min_new_tokens=10,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )

    ready = prepare_prompts(
        model, tok, [w.prompt.text], [w.cache.get(w.ids)], max_length=MAX_LENGTH
    )

    @torch.no_grad()
    def prefill_floor():  # in the same loop, so the sub-steps compare with it
        model(
            inputs_embeds=ready.inputs_embeds,
            attention_mask=ready.attention_mask,
            logits_to_keep=1,
        )

    parts = [
        ("prefill_floor", prefill_floor),
        ("render_prompt", render),
        ("cache_get", read_cache),
        ("prepare_prompts", prepare),
        ("decode_score", decode),
    ]
    # The score decoding's two strategies (where this version of decoding.py has them).
    import inspect

    from lavic.model import decoding

    if "strategy" in inspect.signature(decoding.score_candidates).parameters:
        for strategy in ("tree", "repeat"):

            def score(strategy=strategy):
                with torch.no_grad():
                    decoding.score_candidates(
                        model, tok, state["b"], [list(state["p"].candidate_ids)], strategy=strategy
                    )

            parts.append((f"of_which_score_{strategy}", score))
    ours = sub_steps(parts, repeats)
    ref = sub_steps(
        [
            ("collate", collate),
            ("of_which_image_processing", image_processing),
            ("vision_and_loop_insertion", vision_and_loop_insertion),
            ("of_which_vision_tower", vision_tower_alone),
            ("generate_10", generate),
        ],
        repeats,
    )
    return {"ours": ours, "reference_style": ref}


def bench_inference(name: str, *, repeats: int = 5, tmp: Path) -> dict[str, Any]:
    backbone = load_backbone(name)
    w = Workload(backbone, tmp / f"infer-{name}", name=name)
    with quiet():
        run = alternate(inference_variants(w), repeats=repeats)
        breakdown = _inference_breakdown(w, repeats=5)
    return {
        "prompt_tokens": w.prompt_tokens,
        "candidates": len(w.ids),
        "batch_size": 1,
        "conversations_per_s": per_second(run),
        **run,
        "infer_speedup_vs_reference_style": paired_ratio(run, "reference_style", "ours"),
        "infer_speedup_vs_recompute_generate": paired_ratio(run, "recompute_generate", "ours"),
        "infer_time_over_prefill_floor": paired_ratio(run, "ours", "prefill_floor"),
        "breakdown_s": breakdown,
    }


if __name__ == "__main__":
    sys.exit(
        section_main(
            lambda args, tmp: bench_inference(args.model, repeats=args.repeats, tmp=tmp),
            __doc__.splitlines()[0],
        )
    )
