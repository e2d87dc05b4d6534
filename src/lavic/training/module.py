"""What both stages' LightningModules share: the optimizer, LoRA-only checkpoints, exact resumes
and the one best-epoch policy (:meth:`LoRAModule.keep_if_best`).

A stage subclasses :class:`LoRAModule` and writes its steps and its own bookkeeping; it adds
what its checkpoint must carry with :meth:`LoRAModule.checkpoint_state` and reads it back in
:meth:`LoRAModule.load_checkpoint_state`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from lavic.errors import LavicError
from lavic.training.resume import check_trainable_state
from lavic.training.sampler import ShardSampler

# (best record, adapter weights named as in the PeftModel) -> None: writes the artefact
NewBestHook = Callable[[dict[str, Any], dict[str, torch.Tensor]], None]


def best_artifact_writer(out_dir, *, kind: str, model, backbone, config, base_model, parent):
    """The ``on_new_best`` of a stage: write the artefact ``out_dir`` (``kind`` ``distill`` or
    ``tune``) from the gathered adapter, its ``metrics.json`` holding the best record until the
    run's ``write`` replaces it with the run's metrics (``final``)."""
    from lavic.artifacts import write_artifact

    def write(best: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
        write_artifact(
            out_dir,
            kind=kind,
            model=model,
            backbone=backbone,
            config=config,
            metrics={"best": best, "final": False},
            base_model=base_model,
            parent=parent,
            state_dict=state,
        )

    return write


def clean_param_name(name: str) -> str:
    """A parameter's name without FSDP / activation-checkpointing wrapper segments, i.e. as
    in a full state dict."""
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module."):
        name = name.replace(wrapper, "")
    return name


class LoRAModule(L.LightningModule):
    """Base of a LoRA stage: AdamW over the trainable weights, checkpoints of those alone.

    Args:
        model: a ``peft.PeftModel`` whose only trainable parameters are the stage's LoRA.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.

    Attributes:
        train_sampler: the training loader's :class:`ShardSampler`, set by the caller: told the
            epoch at each epoch start and, from a mid-epoch checkpoint, how far it had got, so
            a resumed run sees exactly the batches of an uninterrupted one.
        best: the best validation record so far (lowest ``val_loss``), or None.
        on_new_best: set by the stage's ``run``: called on global rank 0 with a new best record
            and the adapter's weights (gathered whole), to write the stage's artefact.
    """

    def __init__(self, model, *, lr: float, weight_decay: float):
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        # Checkpoints hold only the trainable (LoRA) weights; the frozen base is rebuilt from
        # the model name or artefact. Lightning must not demand the frozen keys when loading.
        self.strict_loading = False
        self.train_sampler: ShardSampler | None = None
        self.best: dict[str, Any] | None = None
        self.on_new_best: NewBestHook | None = None
        self._epoch_samples = 0  # this process's training samples done in the current epoch

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise LavicError("no trainable parameters (the LoRA wrapping found no target)")
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    def start_epoch(self) -> None:
        """Call from ``on_train_epoch_start`` (not called on a mid-epoch resume)."""
        self._epoch_samples = 0
        if self.train_sampler is not None:
            self.train_sampler.use_epoch(int(self.current_epoch))

    def count_samples(self, rows: int) -> None:
        """Call from ``training_step`` with the batch's number of samples."""
        self._epoch_samples += int(rows)

    def is_new_best(self, record: dict[str, Any], key: str = "val_loss") -> bool:
        """Keep ``record`` as :attr:`best` if its ``key`` is lower than the best so far."""
        if self.best is None or record[key] < self.best[key]:
            self.best = dict(record)
            return True
        return False

    def keep_if_best(self, record: dict[str, Any], key: str = "val_loss") -> bool:
        """The best-epoch policy of every stage: on a new best ``record`` (the same on every
        rank: its loss is reduced over them), gather the adapter (a collective under FSDP, so
        every rank calls this) and hand it to :attr:`on_new_best` on rank 0, which writes the
        artefact. The best weights are then on disk, not in memory or in the checkpoints."""
        if not self.is_new_best(record, key):
            return False
        if self.on_new_best is not None:
            state = self.adapter_state_dict()
            if self._trainer is None or self.trainer.is_global_zero:
                self.on_new_best(self.best, state)
        return True

    # ------------------------------------------------------------------ weights

    def trainable_keys(self) -> set[str]:
        """Names of the trainable parameters as they appear in a (full) state dict."""
        return {clean_param_name(name) for name, p in self.named_parameters() if p.requires_grad}

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable (LoRA) weights, whole and on the CPU, named as in the ``PeftModel``.

        Taken from the strategy's full state dict, the one Lightning checkpoints: under FSDP
        that gathers the shards onto global rank 0 (a collective: call this on every process;
        the others get an empty dict).
        """
        if self._trainer is not None:
            full = self.trainer.strategy.lightning_module_state_dict()
        else:
            full = self.state_dict()
        keep = self.trainable_keys()
        return {
            k.removeprefix("model."): v.detach().to("cpu", copy=True)
            for k, v in full.items()
            if k in keep
        }

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_state(self) -> dict[str, Any]:
        """The stage's own state a checkpoint carries (override; plain containers only)."""
        return {}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`checkpoint_state`'s dict (override)."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        mark_epoch_finished(checkpoint)
        keep = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["lavic"] = {
            **self.checkpoint_state(),
            "best": self.best,
            "epoch": int(self.current_epoch),
            "epoch_samples": self._epoch_samples,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # (FSDP loads the weights itself and removes them from the dict before this hook.)
        if "state_dict" in checkpoint:
            trainable = {
                clean_param_name(n): p for n, p in self.named_parameters() if p.requires_grad
            }
            check_trainable_state(checkpoint["state_dict"], trainable)
        state = checkpoint.get("lavic") or {}
        self.best = state.get("best")
        self._epoch_samples = int(state.get("epoch_samples", 0))
        self.load_checkpoint_state(state)
        if self.train_sampler is not None:
            self.train_sampler.resume_from_checkpoint(
                int(state.get("epoch", 0)), self._epoch_samples
            )


def mark_epoch_finished(checkpoint: dict[str, Any]) -> None:
    """Record an epoch whose last batch and validation have run as finished.

    A checkpoint taken at ``on_train_epoch_end`` (where the epoch checkpoints are written) holds
    Lightning's loop state half-way through ending the epoch: processed, not yet completed, its
    batch counter at the last batch. Resumed with ``max_steps`` set (Lightning then keeps that
    state as it is), the next epoch starts at "last batch done" and ends with no batch at all,
    so a resume to more epochs silently skipped one (Lightning issue #19617's kind). Written as
    "epoch done, the next not started" it resumes into the next epoch's first batch.
    """
    loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    epochs, batches = loop.get("epoch_progress"), loop.get("epoch_loop.batch_progress")
    if not epochs or not batches or not batches.get("is_last_batch"):
        return  # not at an epoch's end (a step checkpoint mid-epoch, or no loop state)
    if epochs["current"]["processed"] != epochs["current"]["completed"] + 1:
        return  # the last batch ran but the epoch is not processed yet (before its validation)
    for counts in (epochs["current"], epochs["total"]):
        counts["completed"] = counts["processed"]
    batches["current"] = {key: 0 for key in batches["current"]}
    batches["is_last_batch"] = False


__all__ = [
    "LoRAModule",
    "NewBestHook",
    "best_artifact_writer",
    "clean_param_name",
    "mark_epoch_finished",
]
