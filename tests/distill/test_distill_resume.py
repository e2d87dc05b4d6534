"""Resuming an interrupted `lavic distill`: the same batches and the same weights as a run
that was never interrupted (oracle), from a mid-epoch and from an epoch-end checkpoint."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file

from lavic.distill import module as distill_module
from lavic.distill.train import BEST_DIR, CHECKPOINT_DIR, LAST_CHECKPOINT

from .helpers import run_distill

# No LoRA dropout: the RNG stream is not part of a checkpoint, everything else is.
COMMON = (
    "--num_epochs",
    "3",
    "--lora_dropout",
    "0",
    "--checkpoint_every_n_steps",
    "0",
    "--no-teacher_eval",
)


@pytest.fixture
def record_batches(monkeypatch):
    """Record the training images of every batch a training step receives."""
    seen: list[tuple[str, ...]] = []
    original = distill_module.DistillModule.training_step

    def recording(self, batch, batch_idx):
        seen.append(tuple(key for key, _ in batch["image_outcomes"]))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(distill_module.DistillModule, "training_step", recording)
    return seen


def _lora_state(output_dir):
    ckpt = torch.load(output_dir / CHECKPOINT_DIR / LAST_CHECKPOINT, weights_only=True)
    return ckpt["global_step"], ckpt["state_dict"]


def test_resume_continues_from_checkpoint_step(tiny_catalogue, tmp_path, record_batches, caplog):
    caplog.set_level(logging.INFO, logger="lavic")
    full = tmp_path / "full"
    assert run_distill(tiny_catalogue, full, *COMMON, "--max_steps", "5") == 0
    uninterrupted = list(record_batches)
    step_full, weights_full = _lora_state(full)
    assert step_full == 5
    # Training moved the LoRA B matrices away from their zero init (the comparison is not vacuous).
    assert any(
        k.endswith("lora_B.default.weight") and weights_full[k].abs().sum() > 0
        for k in weights_full
    )

    # 3 batches per epoch: stop mid-epoch, or at an epoch's end (with a prefetching worker).
    for stop_at, epoch, workers in [(2, 0, "0"), (3, 0, "1")]:
        record_batches.clear()
        part = tmp_path / f"part{stop_at}"
        assert (
            run_distill(
                tiny_catalogue, part, *COMMON, "--max_steps", str(stop_at), "--num_workers", workers
            )
            == 0
        )
        assert _lora_state(part)[0] == stop_at
        assert (
            run_distill(
                tiny_catalogue,
                part,
                *COMMON,
                "--max_steps",
                "5",
                "--resume",
                "--num_workers",
                workers,
            )
            == 0
        )
        ckpt = part / CHECKPOINT_DIR / LAST_CHECKPOINT
        assert f"resuming from {ckpt} epoch {epoch} step {stop_at}" in caplog.text
        # The same batches in the same order as the uninterrupted run.
        assert list(record_batches) == uninterrupted
        step_part, weights_part = _lora_state(part)
        assert step_part == 5
        assert weights_full.keys() == weights_part.keys()
        for key in weights_full:
            torch.testing.assert_close(weights_part[key], weights_full[key], rtol=1e-5, atol=1e-6)
        load_file(str(part / BEST_DIR / "adapter_model.safetensors"))


def test_checkpoint_holds_only_lora_weights_and_optimizer(tiny_catalogue, tmp_path):
    out = tmp_path / "run"
    assert run_distill(tiny_catalogue, out, *COMMON, "--max_steps", "1") == 0
    ckpt = torch.load(out / CHECKPOINT_DIR / LAST_CHECKPOINT, weights_only=True)
    keys = set(ckpt["state_dict"])
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    # One AdamW state (exp_avg, exp_avg_sq) per LoRA tensor and nothing else.
    (opt,) = ckpt["optimizer_states"]
    assert len(opt["state"]) == len(keys)
