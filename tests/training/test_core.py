"""The shared training core: checkpoint callbacks, the resume rule, add_lora's check, the
devices parser and the composed option groups."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from lavic.config import LoRAArgs, TrainerArgs
from lavic.errors import LavicError
from lavic.model.lora import add_lora, language_lora_targets, vision_lora_targets
from lavic.model.tiny_random import build_tiny_random
from lavic.training.resume import check_trainable_state, checkpoint_to_resume, peek_checkpoint
from lavic.training.trainer import (
    EpochCheckpoint,
    SaveAtMaxSteps,
    StepCheckpoint,
    atomic_checkpoint_io,
    checkpoint_callbacks,
    parse_devices,
    raise_if_interrupted,
)


class FakeTrainer:
    def __init__(self, num_training_batches: int, max_steps: int = -1):
        self.num_training_batches = num_training_batches
        self.max_steps = max_steps
        self.global_step = 0
        self.saves: list[tuple[int, str]] = []
        self.when = ""

    def save_checkpoint(self, path, weights_only=False):
        self.saves.append((self.global_step, self.when))


def _fit(callbacks, trainer, epochs: int) -> None:
    """Lightning's order: batch ends; at max_steps the epoch ends early (its hooks still run)."""
    for _ in range(epochs):
        for batch_idx in range(trainer.num_training_batches):
            trainer.global_step += 1
            trainer.when = "batch"
            for cb in callbacks:
                cb.on_train_batch_end(trainer, None, None, None, batch_idx)
            if 0 < trainer.max_steps <= trainer.global_step:
                break
        trainer.when = "epoch end"
        for cb in callbacks:
            if hasattr(type(cb), "on_train_epoch_end"):
                cb.on_train_epoch_end(trainer, None)
        if 0 < trainer.max_steps <= trainer.global_step:
            return


def test_epoch_checkpoint_saves_whole_epochs_only():
    trainer = FakeTrainer(num_training_batches=3)
    _fit([EpochCheckpoint("last.ckpt")], trainer, epochs=2)
    assert trainer.saves == [(3, "epoch end"), (6, "epoch end")]


def test_an_early_max_steps_stop_is_saved_mid_epoch_not_as_a_finished_epoch():
    trainer = FakeTrainer(num_training_batches=4, max_steps=2)
    _fit(checkpoint_callbacks("ckpt/last.ckpt", None), trainer, epochs=3)
    # Only SaveAtMaxSteps' mid-epoch state: an epoch-end save would mark epoch 0 as done.
    assert trainer.saves == [(2, "batch")]


def test_max_steps_on_an_epoch_end_is_saved_after_its_validation_too():
    trainer = FakeTrainer(num_training_batches=2, max_steps=2)
    _fit(checkpoint_callbacks("ckpt/last.ckpt", 1), trainer, epochs=3)
    assert trainer.saves == [(1, "batch"), (2, "batch"), (2, "epoch end"), (2, "epoch end")]
    assert trainer.saves[-1] == (2, "epoch end")  # the last write is the validated state


def test_checkpoint_callbacks_all_write_last_ckpt(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    callbacks = checkpoint_callbacks(path, 5)
    assert [type(c) for c in callbacks] == [EpochCheckpoint, StepCheckpoint, SaveAtMaxSteps]
    assert {c.path for c in callbacks} == {path}
    assert [type(c) for c in checkpoint_callbacks(path, 0)] == [EpochCheckpoint, SaveAtMaxSteps]


@pytest.mark.parametrize(
    ("text", "value"), [("auto", "auto"), ("2", 2), ("-1", -1), ("0,1", [0, 1]), (" 1 ", 1)]
)
def test_parse_devices(text, value):
    assert parse_devices(text) == value


def test_parse_devices_refuses_junk():
    with pytest.raises(LavicError, match="--devices"):
        parse_devices("gpu0")


def test_an_interrupted_fit_stops_both_stages_before_they_write():
    import lightning as L
    from lightning.pytorch.trainer.states import TrainerStatus

    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    raise_if_interrupted(trainer)  # a trainer that was not interrupted passes
    trainer.state.status = TrainerStatus.INTERRUPTED  # what Lightning sets on an exception
    with pytest.raises(LavicError, match="--resume"):
        raise_if_interrupted(trainer)


def test_resume_rule(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lavic")
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    partial = ckpt.parent / ".last.ckpt.abc.tmp"  # what a killed atomic write leaves
    partial.write_bytes(b"half")
    assert checkpoint_to_resume(ckpt, resume=True) is None
    assert not partial.exists() and "no checkpoint at" in caplog.text
    torch.save({"epoch": 1, "global_step": 7}, ckpt)
    assert checkpoint_to_resume(ckpt, resume=False) is None
    assert checkpoint_to_resume(ckpt, resume=True) == str(ckpt)
    assert f"resuming from {ckpt} epoch 1 step 7" in caplog.text
    ckpt.write_bytes(b"garbage")
    with pytest.raises(LavicError, match="unreadable checkpoint"):
        checkpoint_to_resume(ckpt, resume=True)


def test_peek_checkpoint_reads_epoch_and_step_without_code(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    torch.save({"epoch": 2, "global_step": 11, "state_dict": {}}, ckpt)
    assert peek_checkpoint(ckpt) == (2, 11)
    torch.save([1, 2], ckpt)
    with pytest.raises(LavicError, match="not a training checkpoint"):
        peek_checkpoint(ckpt)


def test_the_trainer_writes_checkpoints_beside_their_name_then_renames(tmp_path, monkeypatch):
    """A save that dies half-way leaves the previous last.ckpt whole, and no temporary under
    the final name (Lightning's own IO copies from $TMPDIR onto the name)."""
    io = atomic_checkpoint_io()
    ckpt = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "global_step": 3}, ckpt)
    assert peek_checkpoint(ckpt) == (1, 3)

    def dies(obj, handle):
        handle.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "global_step": 6}, ckpt)
    monkeypatch.undo()
    assert peek_checkpoint(ckpt) == (1, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    with pytest.raises(TypeError):
        io.save_checkpoint({}, ckpt, storage_options={"x": 1})


def test_a_checkpoint_of_other_lora_settings_is_refused():
    t = torch.zeros
    check_trainable_state({"a": t(2, 3), "b": t(1)}, {"b": t(1), "a": t(2, 3)})
    with pytest.raises(LavicError, match=r"1 weights missing, e.g. \['c'\]; 1 unexpected"):
        check_trainable_state({"a": t(1), "x": t(1)}, {"a": t(1), "c": t(1)})
    with pytest.raises(LavicError, match=r"1 of another shape, e.g. \['a'\]"):
        check_trainable_state({"a": t(4, 8)}, {"a": t(2, 8)})


def test_add_lora_trains_exactly_the_targets_and_starts_as_the_base():
    backbone = build_tiny_random()
    ids = torch.tensor([backbone.tokenizer("red mug")["input_ids"]])
    with torch.no_grad():
        before = backbone.model(input_ids=ids).logits
    targets = language_lora_targets(backbone.model)
    peft = add_lora(
        backbone.model, targets, r=2, alpha=4, dropout=0.0, trainable_under=(".language_model.",)
    )
    trainable = [n for n, p in peft.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".language_model." in n for n in trainable)
    assert len(trainable) == 2 * len(targets)  # one A and one B per adapted layer
    with torch.no_grad():
        torch.testing.assert_close(peft(input_ids=ids).logits, before)  # B = 0 at init


def test_add_lora_refuses_targets_outside_what_may_train():
    model = build_tiny_random().model
    with pytest.raises(LavicError, match="outside the LoRA layers"):
        add_lora(
            model,
            vision_lora_targets(model),
            r=2,
            alpha=4,
            dropout=0.0,
            trainable_under=(".language_model.",),
        )
    with pytest.raises(LavicError, match="no linear layer"):
        add_lora(model, [], r=2, alpha=4, dropout=0.0, trainable_under=(".x.",))


def test_option_groups_validate():
    with pytest.raises(ValueError, match="--num_epochs must be at least 1"):
        TrainerArgs(num_epochs=0)
    with pytest.raises(ValueError, match="--max_steps must be -1 or positive"):
        TrainerArgs(max_steps=0)
    with pytest.raises(ValueError, match="--lora_dropout"):
        LoRAArgs(lora_dropout=1.0)
    assert TrainerArgs(max_steps=None).step_limit == -1 and TrainerArgs(max_steps=3).step_limit == 3


def test_stage_args_share_the_groups_with_their_own_defaults():
    from lavic.distill.train import Args as DistillArgs
    from lavic.tune.train import Args as TuneArgs

    for cls in (DistillArgs, TuneArgs):
        assert issubclass(cls, TrainerArgs) and issubclass(cls, LoRAArgs)
    defaults = {
        cls: {f.name: f.default for f in dataclasses.fields(cls)} for cls in (DistillArgs, TuneArgs)
    }
    # The reference's per-stage defaults survive the composition.
    assert defaults[DistillArgs]["num_epochs"] == 5 and defaults[TuneArgs]["num_epochs"] == 1
    assert defaults[DistillArgs]["batch_size"] == 4 and defaults[TuneArgs]["batch_size"] == 1
    assert defaults[DistillArgs]["max_steps"] == -1 and defaults[TuneArgs]["max_steps"] is None
