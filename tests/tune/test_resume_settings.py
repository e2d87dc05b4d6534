"""Stage 2 shares stage 1's resume rule: a checkpoint of other LoRA settings is refused with
one line (before issue 12 only stage 1 checked; stage 2 resumed from whatever it found)."""

from __future__ import annotations

from pathlib import Path

from .test_train_cli import tune


def test_resume_with_other_lora_settings_is_refused(stage1, catalogue, tmp_path: Path, capsys):
    out = tmp_path / "ft"
    common = ("--no_images", "--skip_eval", "--max_steps", "1")
    assert tune(stage1, catalogue, out, *common, "--lora_r", "4") == 0
    assert (out / "checkpoints" / "last.ckpt").is_file()
    capsys.readouterr()
    assert tune(stage1, catalogue, out, *common, "--lora_r", "2", "--resume") == 2
    err = capsys.readouterr().err.splitlines()
    errors = [line for line in err if line.startswith("lavic tune: error")]
    assert len(errors) == 1 and "checkpoint does not match" in errors[0]
    assert "of another shape" in errors[0] and "--lora_*" in errors[0]
