"""Stage-2 training speed: samples/s against the reference's step, and cache against recompute.

* :func:`bench_tune_vs_reference` -- ``RecommendTuner.training_step`` fed by
  ``RecommendCollator`` from the cache against the reference's training step.
* :func:`bench_tune_cache` -- cached against recomputed item tokens: bench/bench_cache.py's
  measurement, given the bench model and a ~1,500-token prompt.

Timing as in bench/harness.py.

    .venv/bin/python bench/bench_tune.py --repeats 1     # quick: checks it runs
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
    LORA,
    LR,
    MAX_LENGTH,
    WEIGHT_DECAY,
    Workload,
    alternate,
    load_backbone,
    paired_ratio,
    per_second,
    quiet,
    section_main,
    timed,
)
from reference_style import ReferenceCollator, reference_training_step  # noqa: E402

from lavic.model.backbone import unwrap  # noqa: E402
from lavic.model.item_tokens import encode_item_tokens  # noqa: E402
from lavic.model.lora import add_language_lora  # noqa: E402
from lavic.prompts import build_recommend_prompt  # noqa: E402
from lavic.tune.data import PromptedSample, RecommendCollator  # noqa: E402
from lavic.tune.module import RecommendTuner  # noqa: E402


def tune_variants(w: Workload) -> dict[str, Callable[[], Any]]:
    """``ours`` (cache), ``recompute`` (vision tower on ready views) and ``reference_style``,
    all on one LoRA-wrapped model (LoRA r=8 on the language model, train mode)."""
    peft = add_language_lora(
        w.backbone.model, r=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"]
    )
    peft.train()
    module = RecommendTuner(peft, w.tok, lr=LR, weight_decay=WEIGHT_DECAY)
    optimizer = module.configure_optimizers()
    rows = [
        PromptedSample(
            prompt=w.prompt.text,
            target=w.target,
            candidate_ids=w.prompt.candidate_ids,
            truncated=False,
            tokens_dropped=0,
        )
    ]
    with_cache = RecommendCollator(w.tok, w.cache, max_length=MAX_LENGTH)
    without_cache = RecommendCollator(w.tok, None, max_length=MAX_LENGTH)
    llava = unwrap(peft)

    def step(batch):
        loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def ours():
        step(with_cache(rows))

    def recompute():
        batch = without_cache(rows)
        tower = (llava.model.vision_tower, llava.model.multi_modal_projector)
        for m in tower:
            m.eval()
        with torch.no_grad():
            batch["item_tokens"] = encode_item_tokens(llava, w.views)
        step(batch)

    ref_collator = ReferenceCollator(w.tok, w.backbone.image_processor, MAX_LENGTH)
    ref_items = [{"prompt": w.reference_prompt, "target": w.target, "images": w.images}]
    ref_optimizer = torch.optim.AdamW(
        [p for p in peft.parameters() if p.requires_grad], lr=LR, weight_decay=WEIGHT_DECAY
    )

    def reference_style():
        reference_training_step(peft, ref_collator, ref_items, ref_optimizer, vision_grad=False)

    return {"ours": ours, "recompute": recompute, "reference_style": reference_style}


def op_profile(fn: Callable[[], Any]) -> dict[str, float]:
    """Share of one call's CPU time by kind of op (torch.profiler, self time)."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    kinds = {"matmul": 0.0, "attention": 0.0, "lora_dropout": 0.0, "other": 0.0}
    for event in prof.key_averages():
        t = event.self_cpu_time_total
        key = event.key
        if key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"):
            kinds["matmul"] += t
        elif "scaled_dot_product" in key or "flash_attention" in key:
            kinds["attention"] += t
        elif key in ("aten::bernoulli_", "aten::dropout", "aten::native_dropout"):
            kinds["lora_dropout"] += t
        else:
            kinds["other"] += t
    total = sum(kinds.values()) or 1.0
    return {k: v / total for k, v in kinds.items()}


def bench_tune_vs_reference(name: str, *, repeats: int = 5, tmp: Path) -> dict[str, Any]:
    w = Workload(load_backbone(name), tmp / f"tune-{name}", name=name)
    variants = tune_variants(w)
    with quiet():
        run = alternate({k: variants[k] for k in ("ours", "reference_style")}, repeats=repeats)
        profile_ours = op_profile(variants["ours"])
        tower_s = statistics.median(timed(lambda: _encode(w)) for _ in range(3))
    return {
        "prompt_tokens": w.prompt_tokens,
        "ours_cpu_time_shares": profile_ours,
        "vision_tower_s_per_sample": tower_s,
        "samples_per_s": per_second(run),
        **run,
        "tune_speedup_vs_reference_style": paired_ratio(run, "reference_style", "ours"),
    }


@torch.no_grad()
def _encode(w: Workload) -> torch.Tensor:
    return encode_item_tokens(unwrap(w.backbone.model), w.views)


def bench_tune_cache(name: str, *, repeats: int = 5) -> dict[str, Any]:
    """Cached vs recomputed tokens in training: bench/bench_cache.py's measurement, reused.

    Its model loader is given the bench model (it loads models by name); its conversation
    length is chosen so the prompt has ~1,500 tokens, like every other section here.
    """
    import bench_cache

    original = bench_cache.load_model

    def load(model_name: str):
        if model_name == "bench":
            return bm.build_bench(), "random weights (ratio-matched bench model)"
        return original(model_name)

    backbone = load_backbone(name)
    ids = [f"B{k:09d}" for k in range(bm.CANDIDATES)]
    # bench_cache's conversation is its SENTENCE repeated to `conversation_words` words: grow
    # it until the prompt has ~1,500 tokens (if its recipe changed, keep its default length).
    sentence = getattr(bench_cache, "SENTENCE", None)
    vocabulary = sentence.split() if isinstance(sentence, str) else []
    words = 50 if vocabulary else 300
    while vocabulary:
        conv = (
            "<submission>"
            + " ".join(vocabulary[k % len(vocabulary)] for k in range(words))
            + "</submission>"
        )
        text = build_recommend_prompt(
            backbone.tokenizer, conv, [(i, f"striped mug {i}") for i in ids], max_length=8192
        ).text
        if len(backbone.tokenizer(text).input_ids) >= bm.PROMPT_TOKENS or words > 2000:
            break
        words += 5
    del backbone
    bench_cache.load_model = load
    try:
        with quiet():
            result = bench_cache.bench_cache(
                name,
                steps=1,
                repeats=repeats,
                threads=torch.get_num_threads(),
                conversation_words=words,
            )
    finally:
        bench_cache.load_model = original
    # bench_cache reports the ratio of its medians; the figure here is the median of the
    # per-round ratios of the same runs (rounds interleave the variants), as in every other
    # section: drift in the machine's load between rounds then cancels.
    runs = result["runs"]  # samples/s per round

    def paired(num: str) -> float:
        return statistics.median(c / r for c, r in zip(runs["cache"], runs[num], strict=True))

    result["tune_speedup_cache_vs_recompute"] = paired("recompute_tower")
    result["tune_speedup_cache_vs_recompute_with_image_processing"] = paired("recompute_full")
    return result


def _run(args, tmp: Path) -> dict[str, Any]:
    return {
        "tune_cache": bench_tune_cache(args.model, repeats=args.repeats),
        "tune_reference": bench_tune_vs_reference(args.model, repeats=args.repeats, tmp=tmp),
    }


if __name__ == "__main__":
    sys.exit(section_main(_run, __doc__.splitlines()[0]))
