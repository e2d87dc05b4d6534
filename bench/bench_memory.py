"""Peak resident memory of each variant's first call, one fresh process per variant.

Linux ``VmHWM`` is reset through ``/proc/self/clear_refs`` just before the call; elsewhere the
``ru_maxrss`` delta is reported. The parent (:func:`bench_memory`) runs this file once per
variant with ``--memory-child``.

    .venv/bin/python bench/bench_memory.py --model bench     # what run_all does
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_distill import distill_variants  # noqa: E402
from bench_inference import inference_variants  # noqa: E402
from bench_tune import tune_variants  # noqa: E402
from harness import THREADS, Workload, load_backbone, quiet  # noqa: E402

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
        backbone = load_backbone(name)
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


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "--memory-child":
        print(json.dumps(memory_child(argv[1], argv[2], argv[3])))
        return 0
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bench", help="bench, tiny-random or tiny")
    args = parser.parse_args(argv)
    print(json.dumps(bench_memory(args.model), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
