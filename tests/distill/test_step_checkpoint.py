"""StepCheckpoint: every N optimizer steps, but an epoch's last step only after its validation
(Lightning resumes a checkpoint taken before that validation past it, losing the record)."""

from __future__ import annotations

from lavic.training.trainer import StepCheckpoint


class FakeTrainer:
    def __init__(self, num_training_batches: int):
        self.num_training_batches = num_training_batches
        self.global_step = 0
        self.saves: list[tuple[int, str]] = []  # (step, when)
        self.when = ""

    def save_checkpoint(self, path, weights_only=False):
        self.saves.append((self.global_step, self.when))


def _run(callback, trainer, epochs: int, accumulate: int = 1):
    batches = trainer.num_training_batches
    for _ in range(epochs):
        for batch_idx in range(batches):
            if (batch_idx + 1) % accumulate == 0 or batch_idx + 1 == batches:
                trainer.global_step += 1
            trainer.when = "batch"
            callback.on_train_batch_end(trainer, None, None, None, batch_idx)
        trainer.when = "after validation"  # Lightning validates, then ends the epoch
        callback.on_train_epoch_end(trainer, None)


def test_epoch_last_step_is_saved_after_validation_only():
    trainer = FakeTrainer(num_training_batches=3)
    _run(StepCheckpoint("last.ckpt", every_n_steps=1), trainer, epochs=2)
    assert trainer.saves == [
        (1, "batch"),
        (2, "batch"),
        (3, "after validation"),
        (4, "batch"),
        (5, "batch"),
        (6, "after validation"),
    ]


def test_every_n_steps_and_accumulation_save_each_step_once():
    trainer = FakeTrainer(num_training_batches=8)
    _run(StepCheckpoint("last.ckpt", every_n_steps=2), trainer, epochs=1, accumulate=2)
    # 4 optimizer steps; 2 saved mid-epoch once each (not per micro-batch), 4 after validation
    assert trainer.saves == [(2, "batch"), (4, "after validation")]


def test_no_save_when_the_epoch_ends_off_the_step_grid():
    trainer = FakeTrainer(num_training_batches=3)
    _run(StepCheckpoint("last.ckpt", every_n_steps=2), trainer, epochs=1)
    assert trainer.saves == [(2, "batch")]
