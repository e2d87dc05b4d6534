"""Stage 1 under CPU bf16 autocast (Lightning's ``bf16-mixed`` on a CPU) against float32, on
tiny-random: the same loss up to bf16 rounding; and ``--precision auto`` choosing it after
the fp32 check where the CPU has native bf16 (mocked)."""

from __future__ import annotations

import json
import logging

import pytest

from lavic import precision as P

from .helpers import run_distill

COMMON = (
    "--max_steps",
    "2",
    "--validate_before_training",
    "--no-teacher_eval",
    "--lora_dropout",
    "0",
)


def _metrics(out):
    return json.loads((out / "metrics.json").read_text())


def test_bf16_mixed_on_cpu_gives_the_fp32_loss(tiny_catalogue, tmp_path):
    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    assert run_distill(tiny_catalogue, fp32, *COMMON, "--precision", "32-true") == 0
    assert run_distill(tiny_catalogue, bf16, *COMMON, "--precision", "bf16-mixed") == 0
    a, b = _metrics(fp32), _metrics(bf16)
    assert b["precision"] == "bf16-mixed" and a["precision"] == "32-true"
    assert b["val_loss_best_precision"] == "bf16-mixed"  # recorded beside the loss it made
    for key in ("val_loss_before", "val_loss_best"):
        assert b[key] == pytest.approx(a[key], rel=0.01), key
    assert b["val_loss_before"] != a["val_loss_before"]  # it did compute in bf16


def test_auto_picks_bf16_on_a_native_bf16_cpu_after_the_check(
    tiny_catalogue, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(P, "runs_on_cuda", lambda accelerator: False)
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    caplog.set_level(logging.INFO, logger="lavic")
    out = tmp_path / "auto"
    assert run_distill(tiny_catalogue, out, *COMMON) == 0
    assert _metrics(out)["precision"] == "bf16-mixed"
    assert "bf16-mixed on this CPU (native bf16; loss" in caplog.text

    monkeypatch.setattr(
        P, "bf16_matches_fp32", lambda fn, batches: P.CheckResult(False, 1, 2, 0, "mocked")
    )
    out = tmp_path / "refused"
    assert run_distill(tiny_catalogue, out, *COMMON) == 0
    assert _metrics(out)["precision"] == "32-true"
    assert "failed the fp32 check: mocked" in caplog.text
