"""CPU bf16 autocast against float32: one forward + backward of a SmolLM2-135M-sized language
model (random weights, built from its config; speed does not depend on the weights), timed
side by side in one run, as a ratio.

    .venv/bin/python bench/bench_precision.py [--tokens 450] [--batch 1] [--repeats 3] [--layers 30]

``--layers`` keeps fewer of the 30 decoder layers (default 4): every layer is the same shape, so
the ratio is the model's, in a fraction of the time.

Where the CPU computes bf16 natively (AVX512-BF16 / AMX) the ratio is what `--precision auto`
gains (issue 11 measured 2.2-2.8x); elsewhere bf16 is emulated and `auto` keeps float32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lavic.precision import cpu_has_native_bf16

# SmolLM2-135M's shape (HuggingFaceTB/SmolLM2-135M-Instruct config.json).
SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)


def step_seconds(model, ids: torch.Tensor, bf16: bool) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=450)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (SmolLM2: 30)")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = LlamaConfig(**{**SMOLLM2_135M, "num_hidden_layers": args.layers})
    model = LlamaForCausalLM(config).train()
    ids = torch.randint(0, SMOLLM2_135M["vocab_size"], (args.batch, args.tokens))
    for bf16 in (False, True):  # warm-up
        step_seconds(model, ids, bf16)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):  # interleaved: the shared machine's noise hits both
        times["fp32"].append(step_seconds(model, ids, False))
        times["bf16"].append(step_seconds(model, ids, True))
    median = {k: statistics.median(v) for k, v in times.items()}
    print(
        json.dumps(
            {
                "native_bf16": cpu_has_native_bf16(),
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "threads": torch.get_num_threads(),
                "layers": args.layers,
                "tokens": args.tokens,
                "batch": args.batch,
                "fp32_s": round(median["fp32"], 3),
                "bf16_autocast_s": round(median["bf16"], 3),
                "speedup_bf16_over_fp32": round(median["fp32"] / median["bf16"], 2),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
