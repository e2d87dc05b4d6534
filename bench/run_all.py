"""`make bench`: LaViC's pipeline speed against the reference's, as ratios measured side by side.

    .venv/bin/python bench/run_all.py --output runs/bench/results.json
    .venv/bin/python bench/run_all.py --models tiny --repeats 3 --no-memory   # heavy, opt-in

Writes every figure, the model configs, the FLOP count and the machine to the output JSON and
prints a compact table. docs/benchmarks.md ("Pipeline speed") explains each figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_model as bm  # noqa: E402
from bench_context import context_fit  # noqa: E402
from bench_distill import bench_distill  # noqa: E402
from bench_inference import bench_inference  # noqa: E402
from bench_memory import bench_memory  # noqa: E402
from bench_tune import bench_tune_cache, bench_tune_vs_reference  # noqa: E402
from harness import DISTILL_BATCH, LORA, MAX_LENGTH, ROOT, choose_threads, machine  # noqa: E402

from lavic.io import atomic_write_json  # noqa: E402

log = logging.getLogger("bench")
GPU_RESULTS = ROOT / "bench" / "results" / "gpu_h200_run1.json"
GPU_COMMIT = "9703690"

# The expectations for the real model (direction: "min" = at least, "max" = at most).
EXPECT = {
    "tune_speedup_cache_vs_recompute": ("min", 1.2),
    "infer_speedup_vs_reference_style": ("min", 1.6),
    "infer_time_over_prefill_floor": ("max", 1.3),
}


def gpu_summary() -> dict[str, Any] | None:
    """bench/gpu_bench.py's H200 figures (full size, bf16), as recorded at commit 9703690."""
    if not GPU_RESULTS.is_file():
        return None
    r = json.loads(GPU_RESULTS.read_text())
    inf = r["inference"]
    return {
        "source": f"{GPU_RESULTS.relative_to(ROOT)} (bench/gpu_bench.py at commit {GPU_COMMIT})",
        "gpu": r.get("gpu"),
        "dtype": r.get("dtype"),
        "prompt_tokens": r.get("prompt_tokens"),
        "matmul_tflops": r.get("matmul_tflops"),
        "tune_speedup_cache_vs_recompute": r["train"]["tune_speedup_cache_vs_recompute"],
        "train_samples_per_s": {
            "cache": r["train"]["cache_samples_per_s"],
            "recompute": r["train"]["recompute_samples_per_s"],
        },
        "vision_encode_s_per_sample": r.get("vision_encode_s_per_sample"),
        "by_batch": {
            b: {
                k: row.get(k)
                for k in (
                    "ours_recs_per_s",
                    "reference_recs_per_s",
                    "infer_speedup_vs_reference_style",
                    "infer_time_over_prefill_floor",
                    "prefill_s",
                    "ours_s",
                    "prefill_fraction_of_matmul",
                    "ours_peak_gib",
                    "reference_peak_gib",
                )
            }
            for b, row in inf.items()
        },
    }


def _verdict(name: str, value: float) -> str:
    if name not in EXPECT:
        return ""
    way, bound = EXPECT[name]
    ok = value >= bound if way == "min" else value <= bound
    return f"{'meets' if ok else 'MISSES'} {'>=' if way == 'min' else '<='} {bound}"


def table(results: dict[str, Any]) -> str:
    lines = [
        f"threads {results['threads']} ({results['threads_note']}); "
        f"load average {results['machine']['load_average_start']}"
    ]
    header = (
        f"{'figure':44s} "
        + " ".join(f"{m:>12s}" for m in results["models"])
        + f" {'H200 (b=1)':>11s}  expectation"
    )
    lines += [header, "-" * len(header)]
    gpu = results.get("gpu_h200") or {}
    gpu_row = {
        "tune_speedup_cache_vs_recompute": gpu.get("tune_speedup_cache_vs_recompute"),
        "infer_speedup_vs_reference_style": None,
        "infer_speedup_vs_recompute_generate": (
            gpu.get("by_batch", {}).get("1", {}).get("infer_speedup_vs_reference_style")
        ),
        "infer_time_over_prefill_floor": (
            gpu.get("by_batch", {}).get("1", {}).get("infer_time_over_prefill_floor")
        ),
    }
    for figure in (
        "tune_speedup_cache_vs_recompute",
        "tune_speedup_cache_vs_recompute_with_image_processing",
        "tune_speedup_vs_reference_style",
        "infer_speedup_vs_reference_style",
        "infer_speedup_vs_recompute_generate",
        "infer_time_over_prefill_floor",
        "distill_speedup_vs_reference_style",
        "distill_speedup_step_only_vs_reference_style",
    ):
        cells = []
        for m in results["models"]:
            v = results["figures"].get(m, {}).get(figure)
            cells.append(f"{v:12.2f}" if isinstance(v, float) else f"{'-':>12s}")
        g = gpu_row.get(figure)
        bench_v = results["figures"].get("bench", {}).get(figure)
        verdict = _verdict(figure, bench_v) if isinstance(bench_v, float) else ""
        lines.append(
            f"{figure:44s} "
            + " ".join(cells)
            + (f" {g:11.2f}" if g is not None else f" {'-':>11s}")
            + f"  {verdict}"
        )
    fit = results.get("context_fit")
    if fit:
        lines.append("")
        lines.append(
            f"visual tokens per item: {fit['visual_tokens_per_item']} (LaViC) vs "
            + ", ".join(f"{k}: {v}" for k, v in fit["full_visual_tokens_per_item"].items())
            + " (LLaVA-v1.6 processor)"
        )
        for ctx, row in fit["max_candidates"].items():
            lines.append(
                f"candidates fitting {ctx} tokens: " + ", ".join(f"{k} {v}" for k, v in row.items())
            )
    mem = results.get("memory", {}).get("bench")
    if mem:
        lines.append(
            "peak RSS over the RSS before (MiB, bench model, first call): "
            + ", ".join(
                f"{k} {v.get('peak_over_before_mib', float('nan')):.0f}" for k, v in mem.items()
            )
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/bench/results.json"))
    parser.add_argument(
        "--models",
        nargs="+",
        default=["bench", "tiny-random"],
        help="bench, tiny-random, tiny (tiny is heavy: minutes per section)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds (>= 5)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("lavic").setLevel(logging.WARNING)
    start = time.perf_counter()
    threads, note = choose_threads(args.threads)
    log.info("torch threads: %d (%s)", threads, note)
    results: dict[str, Any] = {
        "command": f"make bench  (= .venv/bin/python bench/run_all.py --output {args.output})",
        "machine": machine(),
        "threads": threads,
        "threads_note": note,
        "repeats": args.repeats,
        "models": args.models,
        "workload": {
            "candidates": bm.CANDIDATES,
            "views_per_item": bm.NUM_ITEM_TOKENS,
            "prompt_tokens": bm.PROMPT_TOKENS,
            "image_size": bm.IMAGE_SIZE,
            "max_length": MAX_LENGTH,
            "lora": LORA,
            "distill_batch": DISTILL_BATCH,
        },
        "flop_count": {
            "real_llava_v16_mistral_7b": bm.flop_count(
                bm.REAL_VISION, bm.REAL_TEXT, prompt_tokens=bm.PROMPT_TOKENS
            )
        },
        "configs": {},
        "figures": {},
        "sections": {},
        "memory": {},
        "gpu_h200": gpu_summary(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            t0 = time.perf_counter()
            backbone = bm.load_model(name)
            vision, text = bm.shapes_of(backbone)
            results["configs"][name] = bm.describe(backbone)
            del backbone
            sections: dict[str, Any] = {}
            log.info("%s: inference", name)
            sections["inference"] = bench_inference(name, repeats=args.repeats, tmp=Path(tmp))
            results["flop_count"][name] = bm.flop_count(
                vision, text, prompt_tokens=sections["inference"]["prompt_tokens"]
            )
            log.info("%s: stage-2 training, cache vs recompute (bench/bench_cache.py)", name)
            sections["tune_cache"] = bench_tune_cache(name, repeats=args.repeats)
            log.info("%s: stage-2 training vs the reference's step", name)
            sections["tune_reference"] = bench_tune_vs_reference(
                name, repeats=args.repeats, tmp=Path(tmp)
            )
            log.info("%s: stage-1 training", name)
            sections["distill"] = bench_distill(name, repeats=args.repeats)
            results["sections"][name] = sections
            results["figures"][name] = {
                "tune_speedup_cache_vs_recompute": sections["tune_cache"][
                    "tune_speedup_cache_vs_recompute"
                ],
                "tune_speedup_cache_vs_recompute_with_image_processing": sections["tune_cache"][
                    "tune_speedup_cache_vs_recompute_with_image_processing"
                ],
                "tune_speedup_vs_reference_style": sections["tune_reference"][
                    "tune_speedup_vs_reference_style"
                ],
                **{
                    k: sections["inference"][k]
                    for k in (
                        "infer_speedup_vs_reference_style",
                        "infer_speedup_vs_recompute_generate",
                        "infer_time_over_prefill_floor",
                    )
                },
                **{
                    k: sections["distill"][k]
                    for k in (
                        "distill_speedup_vs_reference_style",
                        "distill_speedup_step_only_vs_reference_style",
                    )
                },
            }
            log.info("%s done in %.0f s", name, time.perf_counter() - t0)
        if not args.no_memory and "bench" in args.models:
            log.info("bench: peak memory, one process per variant")
            results["memory"]["bench"] = bench_memory("bench")
    log.info("visual tokens per item and context fit")
    results["context_fit"] = context_fit(args.output.parent)
    results["machine"]["load_average_end"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - start
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, results)
    print(table(results))
    print(f"\nwritten {args.output} in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
