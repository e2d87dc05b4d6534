"""`lavic distill` as separate processes: 2-process DDP on CPU (gloo), and a run killed with
SIGKILL that continues with --resume. Slow: each starts Python processes from scratch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lavic.distill.train import CHECKPOINT_DIR, LAST_CHECKPOINT

from .helpers import distill_argv

pytestmark = pytest.mark.slow


def _cli(argv, **kw):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "lavic.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        **kw,
    )


def test_ddp_two_processes_on_cpu(tiny_catalogue, tmp_path):
    common = ("--num_epochs", "1", "--lora_dropout", "0", "--accelerator", "cpu")
    single = _cli(distill_argv(tiny_catalogue, tmp_path / "single", *common))
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = _cli(
        distill_argv(
            tiny_catalogue, tmp_path / "ddp", *common, "--devices", "2", "--strategy", "ddp"
        )
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    m1 = json.loads((tmp_path / "single" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert m2["world_size"] == 2 and m1["world_size"] == 1
    # Token-weighted over the whole split: the two shards together hold every validation
    # target token exactly once, so the untrained (and teacher) numbers match one process.
    assert m2["val_target_tokens"] == m1["val_target_tokens"]
    assert m2["val_loss_before"] == pytest.approx(m1["val_loss_before"], rel=1e-5)
    assert m2["val_loss_teacher"] == pytest.approx(m1["val_loss_teacher"], rel=1e-5)
    # 6 training images, batch 2 per process: 2 steps per epoch instead of 3.
    assert m1["steps"] == 3 and m2["steps"] == 2
    # Images seen by either process are counted once.
    assert m2["image_stats"] == m1["image_stats"]
    assert (tmp_path / "ddp" / "vision_lora_adapter_best" / "adapter_model.safetensors").is_file()


def test_sigkill_then_resume(tiny_catalogue, tmp_path):
    out = tmp_path / "run"
    ckpt = out / CHECKPOINT_DIR / LAST_CHECKPOINT
    argv = distill_argv(
        tiny_catalogue,
        out,
        "--num_epochs",
        "1000",
        "--checkpoint_every_n_steps",
        "1",
        "--no-teacher_eval",
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lavic.cli", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        step = 0
        while time.time() < deadline and step < 4:
            time.sleep(0.5)
            if ckpt.is_file():
                try:
                    step = torch.load(ckpt, weights_only=True)["global_step"]
                except Exception:  # noqa: BLE001 - a torn read would be the bug tested below
                    raise AssertionError("last.ckpt was readable only partially") from None
        assert step >= 4, "the run never reached step 4"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(ckpt, weights_only=True)
    resumed = _cli(
        distill_argv(
            tiny_catalogue,
            out,
            "--num_epochs",
            "1000",
            "--resume",
            "--max_steps",
            str(killed_at["global_step"] + 2),
            "--no-teacher_eval",
        )
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        f"resuming from {ckpt} epoch {killed_at['epoch']} step {killed_at['global_step']}"
        in resumed.stderr
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == killed_at["global_step"] + 2
    assert not [p for p in ckpt.parent.iterdir() if p.name != LAST_CHECKPOINT]
