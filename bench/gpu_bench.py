"""Full-size speed on a GPU: a LLaVA-NeXT-Mistral-7B architecture with random bf16 weights.

Speed does not depend on the weights, so nothing is downloaded: the model is built from the
config of llava-hf/llava-v1.6-mistral-7b-hf (CLIP ViT-L/14-336 + Mistral-7B), the tokenizer is
LaViC's in-process test tokenizer (ids are all that matter), and the prompt is LaViC's real
recommendation prompt padded to ~1,500 tokens with 10 candidates.

Measured (CUDA events, warm-up, median of repeats):
  * bf16 matmul rate (8192^3), the ceiling;
  * stage-2 training samples/s: item tokens from the cache vs re-running the vision tower on
    every candidate at every step (the reference's way); LoRA r=8 on the language model;
  * recommendations/s at batch 1/8/32 with cached tokens + `score` decoding;
  * the reference's test step: recompute the vision tower + greedy generation of 10 tokens;
  * the bare language-model prefill over the same prompt (the floor) and the fraction of the
    matmul rate it reaches; peak memory of each.

    python bench/gpu_bench.py --scale full --output runs/bench/gpu.json   # on the GPU
    python bench/gpu_bench.py --scale small --device cpu                  # check the script
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import (
    CLIPVisionConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    MistralConfig,
)

from lavic.constants import ITEM_TOKENS
from lavic.model.backbone import add_item_tokens
from lavic.model.decoding import decode_batch, prepare_prompts
from lavic.model.inputs import build_batch
from lavic.model.item_tokens import encode_item_tokens, pixel_views
from lavic.model.lora import language_lora_targets
from lavic.model.tiny_random import _train_tiny_tokenizer
from lavic.prompts import build_recommend_prompt

V16_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def build(scale: str, device: str, dtype: torch.dtype):
    from transformers.models.llava_next.image_processing_pil_llava_next import (
        LlavaNextImageProcessorPil,
    )

    tokenizer = _train_tiny_tokenizer()
    if scale == "full":
        vision = CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
            hidden_act="quick_gelu",
        )
        text = MistralConfig(
            vocab_size=32064,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=32768,
            sliding_window=None,
        )
        size, pinpoints = 336, V16_PINPOINTS
    else:  # the same code path, small enough to check the script on a CPU
        vision = CLIPVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
            projection_dim=64,
        )
        text = MistralConfig(
            vocab_size=32064,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=8192,
            sliding_window=None,
        )
        size = 56
        pinpoints = [[a // 6, b // 6] for a, b in V16_PINPOINTS]
    text.eos_token_id = tokenizer.eos_token_id
    text.pad_token_id = tokenizer.pad_token_id
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2,
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LlavaNextForConditionalGeneration(config)
    torch.set_default_dtype(previous)
    add_item_tokens(tokenizer, model)  # ids < 32064: rows already exist, nothing resized
    model.eval()
    processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_grid_pinpoints=pinpoints,
    )
    return model, tokenizer, processor


def timer(device: str):
    """Returns time_fn(fn, warmup, repeats) -> median seconds, using CUDA events on a GPU."""

    def run(fn, warmup: int = 2, repeats: int = 5) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if device.startswith("cuda"):
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    return run


def peak_gib(device: str, fn) -> float | None:
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["full", "small"], default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompt_tokens", type=int, default=1500)
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path("runs/bench/gpu.json"))
    args = parser.parse_args()
    device = args.device
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    t = timer(device)
    res: dict = {"scale": args.scale, "device": device, "dtype": str(dtype)}
    if device.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name()
        n = 8192 if args.scale == "full" else 1024
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        sec = t(lambda: a @ b, warmup=3, repeats=10)
        res["matmul_tflops"] = 2 * n**3 / sec / 1e12
        del a, b

    t0 = time.perf_counter()
    model, tokenizer, processor = build(args.scale, device, dtype)
    res["build_s"] = time.perf_counter() - t0
    lm_params = sum(p.numel() for p in model.model.language_model.parameters())
    res["lm_params"] = lm_params

    # One conversation with K candidates, padded to ~prompt_tokens; product-like images.
    k = args.candidates
    cands = [(f"B{i:09d}", f"Acme Product {i}, Durable Everyday Model, Size M") for i in range(k)]
    conv = "<submission>I am looking for something that looks great. </submission>\n"
    while (
        len(
            tokenizer(
                build_recommend_prompt(tokenizer, conv, cands, max_length=10**6).text
            ).input_ids
        )
        < args.prompt_tokens
    ):
        conv += "<comment>Have you considered the one with stripes? It looked nice.</comment>\n"
    prompt = build_recommend_prompt(tokenizer, conv, cands, max_length=10**6).text
    res["prompt_tokens"] = len(tokenizer(prompt).input_ids)
    images = [Image.new("RGB", (500, 460), (40 * i % 255, 90, 160)) for i in range(k)]
    pv = pixel_views(processor, images).to(device)  # (K, 5, 3, H, W)

    with torch.no_grad():
        cached = encode_item_tokens(model, pv)  # (K, 5, D): what the cache stores

    # --- inference -------------------------------------------------------------------------
    def ours(bsz: int):
        def fn():
            with torch.no_grad():
                batch = prepare_prompts(
                    model, tokenizer, [prompt] * bsz, [cached] * bsz, max_length=10**6
                )
                decode_batch(model, tokenizer, batch, [[c for c, _ in cands]] * bsz, "score")

        return fn

    item_ids = tokenizer.convert_tokens_to_ids(list(ITEM_TOKENS))

    def reference(bsz: int):
        def fn():
            with torch.no_grad():
                toks = encode_item_tokens(model, pv.repeat(bsz, 1, 1, 1, 1))  # recomputed
                batch = prepare_prompts(
                    model, tokenizer, [prompt] * bsz, list(toks.split(k)), max_length=10**6
                )
                model.generate(
                    inputs_embeds=batch.inputs_embeds,
                    attention_mask=batch.attention_mask,
                    max_new_tokens=10,
                    min_new_tokens=10,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    suppress_tokens=item_ids,
                )

        return fn

    def prefill(bsz: int):
        with torch.no_grad():
            batch = prepare_prompts(
                model, tokenizer, [prompt] * bsz, [cached] * bsz, max_length=10**6
            )

        def fn():
            with torch.no_grad():
                model(
                    inputs_embeds=batch.inputs_embeds,
                    attention_mask=batch.attention_mask,
                    logits_to_keep=1,
                )

        return fn

    def _measure_batch(bsz: int, row: dict) -> None:
        sec = t(prefill(bsz), repeats=args.repeats)
        row["prefill_s"] = sec
        row["prefill_tflops"] = 2 * lm_params * res["prompt_tokens"] * bsz / sec / 1e12
        sec_ours = t(ours(bsz), repeats=args.repeats)
        row["ours_s"] = sec_ours
        row["ours_recs_per_s"] = bsz / sec_ours
        row["ours_peak_gib"] = peak_gib(device, ours(bsz))
        if bsz <= 8:
            sec_ref = t(reference(bsz), warmup=1, repeats=max(2, args.repeats // 2))
            row["reference_s"] = sec_ref
            row["reference_recs_per_s"] = bsz / sec_ref
            row["reference_peak_gib"] = peak_gib(device, reference(bsz))
            row["infer_speedup_vs_reference_style"] = sec_ref / sec_ours
        row["infer_time_over_prefill_floor"] = sec_ours / row["prefill_s"]
        if "matmul_tflops" in res:
            row["prefill_fraction_of_matmul"] = row["prefill_tflops"] / res["matmul_tflops"]

    res["inference"] = {}
    for bsz in args.batches:
        row = {}
        try:
            _measure_batch(bsz, row)
        except torch.cuda.OutOfMemoryError as exc:  # record it, keep the other figures
            row["error"] = f"out of memory: {exc}".splitlines()[0]
            torch.cuda.empty_cache()
        res["inference"][str(bsz)] = row
        print(json.dumps({bsz: row}), flush=True)

    # --- stage-2 training step: LoRA on the language model -----------------------------------
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=8, lora_alpha=32, lora_dropout=0.0, target_modules=language_lora_targets(model)
        ),
    )
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=5e-5)
    tb = build_batch(tokenizer, [prompt], [cands[3][0]], max_length=10**6)
    ids, mask, labels = (x.to(device) for x in (tb.input_ids, tb.attention_mask, tb.labels))
    embed = model.get_input_embeddings()
    from lavic.model.item_tokens import insert_item_tokens

    def train_step(recompute: bool):
        def fn():
            if recompute:
                with torch.no_grad():
                    toks = encode_item_tokens(model, pv)  # the reference: every step
            else:
                toks = cached
            emb = insert_item_tokens(embed(ids), ids, item_ids, toks)
            loss = peft_model(inputs_embeds=emb, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return fn

    @torch.no_grad()
    def encode_candidates():
        encode_item_tokens(model, pv)  # K items x 5 views through the vision tower

    res["vision_encode_s_per_sample"] = t(encode_candidates, repeats=args.repeats)
    sec_cache = t(train_step(False), repeats=args.repeats)
    sec_recompute = t(train_step(True), repeats=args.repeats)
    res["train"] = {
        "cache_samples_per_s": 1 / sec_cache,
        "recompute_samples_per_s": 1 / sec_recompute,
        "tune_speedup_cache_vs_recompute": sec_recompute / sec_cache,
        "cache_peak_gib": peak_gib(device, train_step(False)),
        "recompute_peak_gib": peak_gib(device, train_step(True)),
    }
    print(json.dumps(res["train"]), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
