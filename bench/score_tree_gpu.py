"""`score` decoding against the prefill floor, tree vs cache-repeat, on a full-size model.

Uses bench/gpu_bench.py's model (LLaVA-NeXT-Mistral-7B architecture, random bf16 weights),
prompt (~1,500 tokens, 10 candidates) and timer (CUDA events, warm-up, median). Per batch:

  * ``prefill_s``: the bare language-model forward over the prompt (gpu_bench's floor);
  * ``tree_s`` / ``repeat_s``: prepare_prompts + score_candidates with each strategy (the
    same work gpu_bench's ``ours`` times through decode_batch); ``*_score_s``: the scoring
    alone on a prepared batch;
  * their ratios to the floor, peak memory, and how far the two strategies' scores differ
    (bf16: not bit-equal, but the same ranking is expected on all but near-ties).

    python bench/score_tree_gpu.py --output runs/bench/score_tree.json
    python bench/score_tree_gpu.py --scale small --device cpu --batches 1   # check the script
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_bench  # noqa: E402

from lavic.model.decoding import prepare_prompts, rank, score_candidates  # noqa: E402
from lavic.model.item_tokens import encode_item_tokens, pixel_views  # noqa: E402
from lavic.prompts import build_recommend_prompt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["full", "small"], default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompt_tokens", type=int, default=1500)
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path("runs/bench/score_tree.json"))
    args = parser.parse_args()
    device = args.device
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    t = gpu_bench.timer(device)
    model, tokenizer, processor = gpu_bench.build(args.scale, device, dtype)
    res: dict = {"scale": args.scale, "device": device, "dtype": str(dtype)}
    if device.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name()
    import transformers

    res["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    res["attn_implementation"] = model.config.text_config._attn_implementation

    k = args.candidates
    cands = [(f"B{i:09d}", f"Acme Product {i}, Durable Everyday Model, Size M") for i in range(k)]
    conv = "<submission>I am looking for something that looks great. </submission>\n"

    def render(c):
        return build_recommend_prompt(tokenizer, c, cands, max_length=10**6).text

    while len(tokenizer(render(conv)).input_ids) < args.prompt_tokens:
        conv += "<comment>Have you considered the one with stripes? It looked nice.</comment>\n"
    prompt = render(conv)
    res["prompt_tokens"] = len(tokenizer(prompt).input_ids)
    images = [Image.new("RGB", (500, 460), (40 * i % 255, 90, 160)) for i in range(k)]
    with torch.no_grad():
        cached = encode_item_tokens(model, pixel_views(processor, images).to(device))
    ids = [c for c, _ in cands]

    def prepared(bsz):
        return prepare_prompts(model, tokenizer, [prompt] * bsz, [cached] * bsz, max_length=10**6)

    res["inference"] = {}
    for bsz in args.batches:
        row: dict = {}
        batch = prepared(bsz)

        def floor(batch=batch):
            with torch.no_grad():
                model(
                    inputs_embeds=batch.inputs_embeds,
                    attention_mask=batch.attention_mask,
                    logits_to_keep=1,
                )

        row["prefill_s"] = t(floor, repeats=args.repeats)
        for strategy in ("tree", "repeat"):

            def full(strategy=strategy, bsz=bsz):
                score_candidates(model, tokenizer, prepared(bsz), [ids] * bsz, strategy=strategy)

            def score_only(strategy=strategy, batch=batch, bsz=bsz):
                score_candidates(model, tokenizer, batch, [ids] * bsz, strategy=strategy)

            try:
                row[f"{strategy}_s"] = t(full, repeats=args.repeats)
                row[f"{strategy}_score_s"] = t(score_only, repeats=args.repeats)
                row[f"{strategy}_over_prefill_floor"] = row[f"{strategy}_s"] / row["prefill_s"]
                row[f"{strategy}_peak_gib"] = gpu_bench.peak_gib(device, full)
            except torch.cuda.OutOfMemoryError as exc:
                row[f"{strategy}_error"] = f"out of memory: {exc}".splitlines()[0]
                torch.cuda.empty_cache()
        if "tree_s" in row and "repeat_s" in row:
            tree = score_candidates(model, tokenizer, batch, [ids] * bsz, strategy="tree")
            repeat = score_candidates(model, tokenizer, batch, [ids] * bsz, strategy="repeat")
            diffs = [abs(a[c] - b[c]) for a, b in zip(tree, repeat, strict=True) for c in a]
            row["tree_vs_repeat_max_abs_diff"] = max(diffs)
            row["tree_vs_repeat_same_top1"] = all(
                rank(a)[0] == rank(b)[0] for a, b in zip(tree, repeat, strict=True)
            )
        res["inference"][str(bsz)] = row
        print(json.dumps({bsz: row}), flush=True)
        del batch
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
