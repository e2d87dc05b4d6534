"""The Lightning Trainer both LoRA stages run under: devices, strategy, checkpoints, logging.

One set-up for stage 1 (distill) and stage 2 (tune), so they cannot drift apart:

* ``--devices`` parsed once (:func:`parse_devices`); ``--strategy fsdp`` gets LaViC's wrapping
  (:func:`build_strategy`); any other strategy name goes to Lightning as is;
* checkpoints (for ``--resume``) all write ``checkpoints/last.ckpt``, atomically: after each
  epoch's validation, every ``--checkpoint_every_n_steps`` optimizer steps
  (:class:`StepCheckpoint`), and at the step where ``--max_steps`` stops (:class:`SaveAtMaxSteps`);
* the CSV logger under ``<output dir>/logs``, no sanity validation, our own sampler.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L

from lavic.config import TrainerArgs
from lavic.errors import LavicError
from lavic.io import atomic_open

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"


def parse_devices(devices: str) -> Any:
    """Lightning's ``devices``: ``auto``, a count (``2``, ``-1``) or a list of ids (``0,1``)."""
    text = str(devices).strip()
    if text == "auto":
        return "auto"
    try:
        if "," in text:
            return [int(x) for x in text.split(",") if x.strip()]
        return int(text)
    except ValueError:
        raise LavicError(
            f"--devices: expected auto, a count or ids like 0,1; got {devices!r}"
        ) from None


def build_strategy(name: str, model, *, activation_checkpointing: bool = False) -> Any:
    """Lightning's strategy for ``--strategy``; ``fsdp`` gets LaViC's wrapping.

    ``fsdp`` shards every transformer block of the vision tower and the language model (the
    frozen 7B weights are what does not fit one GPU), with ``use_orig_params=True`` so frozen
    and LoRA parameters may share a block, and full (single-file) checkpoints on rank 0.
    Any other name (``auto``, ``ddp``, ``deepspeed_stage_3``, ...) is passed to Lightning as is.
    """
    if name != "fsdp":
        return name
    from lightning.pytorch.strategies import FSDPStrategy
    from torch import nn

    from lavic.model.backbone import unwrap

    # The block class of each transformer stack: the items of its `layers` ModuleList.
    blocks = {
        type(m[0])
        for name, m in unwrap(model).named_modules()
        if isinstance(m, nn.ModuleList) and name.endswith("layers") and len(m) > 0
    }
    return FSDPStrategy(
        auto_wrap_policy=blocks,
        activation_checkpointing_policy=blocks if activation_checkpointing else None,
        use_orig_params=True,
        state_dict_type="full",
        sharding_strategy="FULL_SHARD",
    )


class SaveAtMaxSteps(L.Callback):
    """Checkpoint the step at which ``max_steps`` stops training (often mid-epoch, between
    the other triggers), in the state a step-triggered checkpoint would have."""

    def __init__(self, path):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.save_checkpoint(self.path, weights_only=False)


class EpochCheckpoint(L.Callback):
    """Write ``path`` when an epoch has run to its last batch, after its validation.

    Not when ``max_steps`` ended the epoch early: Lightning still ends that epoch (its
    ``on_train_epoch_end`` runs), and a checkpoint taken then records the epoch as done, so a
    resumed run would skip the rest of it (Lightning's own ``ModelCheckpoint`` does that; found
    when a stage-2 run resumed to a larger ``--max_steps`` stopped at once).
    """

    def __init__(self, path):
        self.path = path
        self._ran_to_end = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._ran_to_end = batch_idx + 1 >= trainer.num_training_batches

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._ran_to_end:
            self._ran_to_end = False
            trainer.save_checkpoint(self.path, weights_only=False)


class StepCheckpoint(L.Callback):
    """Write ``path`` every ``every_n_steps`` optimizer steps, for ``--resume``.

    A step that ends an epoch is written after that epoch's validation (at
    ``on_train_epoch_end``), not before it: Lightning resumes a checkpoint taken between an
    epoch's last batch and its validation *past* that validation, so the epoch's validation
    record, and its chance to be the best epoch, would be lost (found by a ``kill -9`` test
    that landed in that window).
    """

    def __init__(self, path, every_n_steps: int):
        self.path = path
        self.every_n_steps = every_n_steps
        self._saved_step = -1
        self._deferred = False

    def _save(self, trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or step == self._saved_step:
            return  # not a trigger, or a gradient-accumulation micro-batch of a saved step
        if batch_idx + 1 >= trainer.num_training_batches:
            self._deferred = True  # the epoch's validation runs next
            return
        self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._deferred:
            self._deferred = False
            self._save(trainer)


def atomic_checkpoint_io():
    """A Lightning ``CheckpointIO`` that writes each checkpoint beside its path, then renames it
    (:func:`lavic.io.atomic_open`).

    Lightning's own stages a checkpoint under ``$TMPDIR`` and *moves* it onto its name: a copy
    when ``$TMPDIR`` is another filesystem (a tmpfs ``/tmp``, outputs on a data disk), so a
    process killed during the copy leaves a truncated ``last.ckpt`` under its final name.
    """
    import torch
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            if storage_options is not None:
                raise TypeError("AtomicCheckpointIO takes no storage_options")
            with atomic_open(path, "wb") as handle:
                torch.save(checkpoint, handle)

    return AtomicCheckpointIO()


def checkpoint_callbacks(ckpt_path: Path, every_n_steps: int | None) -> list[L.Callback]:
    """The callbacks that keep ``ckpt_path`` (``.../last.ckpt``) current for ``--resume``.

    All write the same file, atomically (:func:`atomic_checkpoint_io`): each epoch
    after its validation (:class:`EpochCheckpoint`), every ``every_n_steps`` steps (an epoch's
    last step also after validation; 0 or None: epochs only), and the ``max_steps`` stop.
    """
    ckpt_path = Path(ckpt_path)
    callbacks: list[L.Callback] = [EpochCheckpoint(ckpt_path)]
    if every_n_steps:
        callbacks.append(StepCheckpoint(ckpt_path, every_n_steps))
    callbacks.append(SaveAtMaxSteps(ckpt_path))
    return callbacks


def raise_if_interrupted(trainer: L.Trainer) -> None:
    """After ``fit``: a run Lightning stopped early (its status INTERRUPTED, e.g. an exception
    in a callback it handled) must not go on to write its artefacts as if finished. Both
    stages call this; the last checkpoint is on disk, so ``--resume`` continues."""
    if trainer.interrupted:
        raise LavicError("training interrupted; continue it with --resume")


def build_trainer(
    args: TrainerArgs,
    *,
    model,
    precision: str,
    output_dir: Path,
    num_nodes: int = 1,
    gradient_clip_val: float | None = None,
    activation_checkpointing: bool = False,
    callbacks: Sequence[L.Callback] = (),
) -> L.Trainer:
    """The Trainer of a LoRA stage, writing checkpoints to ``output_dir/checkpoints/last.ckpt``.

    Args:
        args: the run's options (devices, strategy, epochs, steps, checkpointing, logging).
        model: the PeftModel (the FSDP wrapping policy is read from its blocks).
        precision: the resolved Lightning precision (:func:`~lavic.precision.resolve_precision`).
        output_dir: the run folder (logs, checkpoints).
        num_nodes: machines.
        gradient_clip_val: clip the gradient norm (None: off).
        activation_checkpointing: with FSDP, recompute each block's activations in backward.
        callbacks: the stage's own callbacks; they run before the checkpoint callbacks, so a
            checkpoint holds what they recorded at its step.

    Raises:
        LavicError: for a device / strategy combination Lightning refuses.
    """
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.loggers import CSVLogger

    output_dir = Path(output_dir)
    # DeepSpeed writes its own checkpoint folders; every other strategy goes through this IO,
    # so a kill never leaves half a last.ckpt.
    plugins = None if "deepspeed" in str(args.strategy) else [atomic_checkpoint_io()]
    try:
        return L.Trainer(
            accelerator=args.accelerator,
            devices=parse_devices(args.devices),
            strategy=build_strategy(
                args.strategy, model, activation_checkpointing=activation_checkpointing
            ),
            num_nodes=num_nodes,
            precision=precision,
            max_epochs=args.num_epochs,
            max_steps=args.step_limit,
            accumulate_grad_batches=args.accumulate_grad_batches,
            gradient_clip_val=gradient_clip_val,
            callbacks=[
                *callbacks,
                *checkpoint_callbacks(
                    output_dir / CHECKPOINT_DIR / LAST_CHECKPOINT, args.checkpoint_every_n_steps
                ),
            ],
            logger=CSVLogger(str(output_dir), name="logs"),
            default_root_dir=str(output_dir),
            num_sanity_val_steps=0,
            # our callbacks write checkpoints/last.ckpt; Lightning's own ModelCheckpoint would
            # add a second copy per epoch under logs/ that nothing reads
            enable_checkpointing=False,
            use_distributed_sampler=False,  # ShardSampler shards by rank itself
            log_every_n_steps=args.log_every_n_steps,
            enable_model_summary=False,
            plugins=plugins,
        )
    except (ValueError, MisconfigurationException) as exc:  # impossible device/strategy combos
        raise LavicError(f"cannot set up training: {exc}".splitlines()[0]) from None


__all__ = [
    "CHECKPOINT_DIR",
    "EpochCheckpoint",
    "LAST_CHECKPOINT",
    "SaveAtMaxSteps",
    "StepCheckpoint",
    "atomic_checkpoint_io",
    "build_strategy",
    "build_trainer",
    "checkpoint_callbacks",
    "parse_devices",
    "raise_if_interrupted",
]
