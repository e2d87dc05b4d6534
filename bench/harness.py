"""What every pipeline benchmark shares: the reference's settings, the workload, timing and ratios.

The benchmarks (one file each, each importable, each returning a dict; bench/run_all.py runs
them all and writes ``runs/bench/results.json``):

* bench/bench_inference.py -- conversations/s of ``lavic evaluate`` against the reference's
  test step, against recompute + generate, and against the prefill floor;
* bench/bench_tune.py -- stage-2 samples/s against the reference's training step, and cached
  against recomputed item tokens (bench/bench_cache.py's measurement, reused);
* bench/bench_distill.py -- stage-1 images/s against the reference's step;
* bench/bench_memory.py -- peak resident memory of each variant's first call;
* bench/bench_context.py -- visual tokens per item both ways and what fits a context.

Timing: 2 torch threads, one warm-up call per variant, then rounds in which every variant
runs once (the order rotating per round); the figure is the median over rounds of the
per-round time ratio, so drift in the machine's load hits both sides of a ratio alike.

Each benchmark file runs alone too (``python bench/bench_inference.py --repeats 1`` is its
quick mode) and prints its dict as JSON; see :func:`section_main`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_model as bm  # noqa: E402

from lavic.cache.store import build_item_token_cache  # noqa: E402
from lavic.data.images import item_image_name  # noqa: E402
from lavic.model.backbone import Backbone  # noqa: E402
from lavic.model.item_tokens import pixel_views  # noqa: E402
from lavic.prompts import (  # noqa: E402
    RECOMMEND_CANDIDATE,
    RECOMMEND_PROMPT_HEAD,
    RECOMMEND_SUFFIX,
    build_recommend_prompt,  # noqa: E402
)

ROOT = Path(__file__).resolve().parents[1]

MAX_LENGTH = 2048  # the reference's --max_length
THREADS = 2
LORA = {"r": 8, "alpha": 32, "dropout": 0.1}  # the reference's LoRA (both stages)
LR, WEIGHT_DECAY = 5e-5, 1e-5  # the reference's defaults
DISTILL_BATCH = 4  # the reference's --batch_size for stage 1


# --------------------------------------------------------------------------------------------
# Timing and ratios
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


def per_second(run: dict, work: float = 1.0) -> dict[str, float]:
    """Each variant's rate: ``work`` units (conversations, samples, images) per median call."""
    return {k: work / v for k, v in run["median_s"].items()}


def sub_steps(parts: list[tuple[str, Callable[[], Any]]], repeats: int) -> dict[str, float]:
    """Median seconds of each sub-step of a pipeline run ``repeats`` times in order."""
    out: dict[str, list[float]] = {n: [] for n, _ in parts}
    for _ in range(repeats):
        for name, fn in parts:
            start = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - start)
    return {n: statistics.median(v) for n, v in out.items()}


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


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
# The machine
# --------------------------------------------------------------------------------------------


def choose_threads(requested: int) -> tuple[int, str]:
    """``requested`` threads unless the cores are oversubscribed by other jobs.

    On a shared machine whose other jobs keep both cores busy, every multi-threaded op waits
    at its barrier for a thread that is not scheduled: a small model's forward then takes
    ~10x longer with 2 threads than with 1 (measured here: 0.64 s vs 0.045 s), and the time
    counts barriers, not work. Probe: 300 elementwise ops on a 1,500 x 64 tensor.
    """
    if requested <= 1:
        return max(requested, 1), "as requested"
    x = torch.randn(1500, 64)

    def probe(n: int) -> float:
        torch.set_num_threads(n)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(300):
                x.mul(1.0001).add_(0.5)
            best = min(best, time.perf_counter() - start)
        return best

    one, many = probe(1), probe(requested)
    if many > 1.5 * one:
        torch.set_num_threads(1)
        return 1, (
            f"{requested} threads were {many / one:.1f}x slower than 1 on the probe "
            f"(cores oversubscribed by other jobs): measured with 1 thread"
        )
    torch.set_num_threads(requested)
    return requested, f"probe: {requested} threads {one / many:.2f}x the speed of 1"


def machine() -> dict[str, Any]:
    """CPU, versions, commit (and whether src/ or bench/ had uncommitted changes), date, load."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--", "src", "bench"],
                cwd=ROOT,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
    except OSError:
        commit, dirty = "unknown", None
    import transformers

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "commit": commit,
        "uncommitted_changes_in_src_or_bench": dirty,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_start": os.getloadavg(),
    }


# --------------------------------------------------------------------------------------------
# The workload
# --------------------------------------------------------------------------------------------


def load_backbone(name: str) -> Backbone:
    """``bench``, ``tiny-random`` or ``tiny`` (bench_model.load_model), seeded."""
    torch.manual_seed(0)
    return bm.load_model(name)


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


# --------------------------------------------------------------------------------------------
# Running one benchmark alone
# --------------------------------------------------------------------------------------------


def section_main(
    run: Callable[[argparse.Namespace, Path], dict[str, Any]], description: str
) -> int:
    """Command line of one benchmark file: ``--model``, ``--repeats``, ``--threads``, ``--output``.

    ``run(args, tmp)`` gets the parsed arguments and a temporary directory and returns the
    benchmark's dict, which is printed as JSON (and written to ``--output`` if given).
    ``--repeats 1`` is the quick mode: it checks the benchmark runs, its ratios mean little.
    """
    import tempfile

    from lavic.io import atomic_write_json

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="bench", help="bench, tiny-random or tiny")
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds")
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("lavic").setLevel(logging.WARNING)
    threads, note = choose_threads(args.threads)
    logging.getLogger("bench").info("torch threads: %d (%s)", threads, note)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(tmp))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.output, result)
    print(json.dumps(result, indent=2, default=str))
    return 0
