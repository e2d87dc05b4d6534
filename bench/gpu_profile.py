"""Where the full-size stage-2 training step's GPU time goes (a prepared check, not yet run).

bench/gpu_bench.py (commit 9703690, H200) measured ``tune_speedup_cache_vs_recompute`` 1.15
(expected >= 1.2) with a training step that computes logits over every prompt position and
HF's loss, with LoRA dropout 0. ``lavic tune``'s step (``RecommendTuner`` ->
``target_loss_sums``) applies the LM head to the target positions only and trains with LoRA
dropout 0.1. This script rebuilds the same full-size model (random bf16 weights, gpu_bench's
``build``) and times, with CUDA events (warm-up, median of 5): the vision encode of one
sample's 10 candidates, and the cached training step both ways with dropout 0 and 0.1, giving
the cache-vs-recompute ratio each step implies. (The inference floor is measured by
bench/score_tree_gpu.py.)

    python bench/gpu_profile.py --output runs/bench/gpu_profile.json      # on the GPU
    python bench/gpu_profile.py --scale small --device cpu                # check the script
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_bench import build  # noqa: E402

from lavic.model.compute import target_loss_sums  # noqa: E402
from lavic.model.inputs import build_batch  # noqa: E402
from lavic.model.item_tokens import encode_item_tokens, insert_item_tokens, pixel_views  # noqa: E402
from lavic.model.lora import language_lora_targets  # noqa: E402
from lavic.prompts import build_recommend_prompt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["full", "small"], default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, default=Path("runs/bench/gpu_profile.json"))
    args = parser.parse_args()
    device = args.device
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32

    def timed(fn, warmup: int = 2, repeats: int = 5) -> float:
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(repeats):
            if cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                torch.cuda.synchronize()
                out.append(a.elapsed_time(b) / 1e3)
            else:
                t = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t)
        return statistics.median(out)

    torch.manual_seed(0)
    model, tok, processor = build(args.scale, device, dtype)
    cands = [(f"B{i:09d}", f"Acme Product {i}, Durable Everyday Model, Size M") for i in range(10)]
    conv = "<submission>I am looking for something that looks great. </submission>\n"
    while (
        len(tok(build_recommend_prompt(tok, conv, cands, max_length=10**6).text).input_ids) < 1500
    ):
        conv += "<comment>Have you considered the one with stripes? It looked nice.</comment>\n"
    prompt = build_recommend_prompt(tok, conv, cands, max_length=10**6).text
    ids = [c for c, _ in cands]
    pv = pixel_views(
        processor, [Image.new("RGB", (500, 460), (40 * i % 255, 90, 160)) for i in range(10)]
    ).to(device)
    with torch.no_grad():
        cached = encode_item_tokens(model, pv)
    res: dict = {
        "scale": args.scale,
        "device": device,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "prompt_tokens": len(tok(prompt).input_ids),
    }
    # ---------------------------------------------------------------- training step
    from peft import LoraConfig, get_peft_model

    tb = build_batch(tok, [prompt], [ids[3]], max_length=10**6)
    t_ids, t_mask, t_labels = (x.to(device) for x in (tb.input_ids, tb.attention_mask, tb.labels))
    item_ids = tok.convert_tokens_to_ids(
        [
            "<ItemImageEmb1>",
            "<ItemImageEmb2>",
            "<ItemImageEmb3>",
            "<ItemImageEmb4>",
            "<ItemImageEmb5>",
        ]
    )
    train: dict = {}

    def encode():
        with torch.no_grad():
            encode_item_tokens(model, pv)

    train["vision_encode_s"] = timed(encode)

    def steps(peft, opt):
        embed = model.get_input_embeddings()

        def hf_step():  # bench/gpu_bench.py's step: full logits + HF loss
            emb = insert_item_tokens(embed(t_ids), t_ids, item_ids, cached)
            peft(inputs_embeds=emb, attention_mask=t_mask, labels=t_labels).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def lavic_step():  # RecommendTuner's loss: LM head on the target positions only
            loss_sum, n = target_loss_sums(
                peft,
                tok,
                {
                    "input_ids": t_ids,
                    "attention_mask": t_mask,
                    "labels": t_labels,
                    "item_tokens": cached,
                },
            )
            (loss_sum / n).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return hf_step, lavic_step

    for dropout in (0.0, 0.1):
        peft = get_peft_model(
            model,
            LoraConfig(
                r=8,
                lora_alpha=32,
                lora_dropout=dropout,
                target_modules=language_lora_targets(model),
            ),
        )
        peft.train()
        opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=5e-5)
        hf_step, lavic_step = steps(peft, opt)
        train[f"gpu_bench_step_dropout{dropout}_s"] = timed(hf_step)
        train[f"lavic_step_dropout{dropout}_s"] = timed(lavic_step)
        model = peft.unload()  # the bare model back for the next LoRA
    for k in [k for k in train if k.endswith("_s") and "step" in k]:
        train[k[:-2] + "_speedup_cache_vs_recompute"] = (
            train[k] + train["vision_encode_s"]
        ) / train[k]
    res["train"] = train
    print(json.dumps(train), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
