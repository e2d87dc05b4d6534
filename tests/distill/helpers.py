"""Shared helpers for the stage-1 tests: run `lavic distill` in-process on the tiny catalogue."""

from __future__ import annotations

from pathlib import Path

from lavic.cli import main


def distill_argv(paths: dict[str, Path], output_dir: Path, *extra: str) -> list[str]:
    argv = ["distill", "--model_name", "tiny-random", "--output_dir", str(output_dir)]
    for key, value in paths.items():
        argv += [f"--{key}", str(value)]
    argv += ["--batch_size", "2", "--num_workers", "0", "--lr", "1e-3", "--log_every_n_steps", "1"]
    return argv + list(extra)


def run_distill(paths: dict[str, Path], output_dir: Path, *extra: str) -> int:
    return main(distill_argv(paths, output_dir, *extra))
