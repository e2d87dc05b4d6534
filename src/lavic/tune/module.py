"""Stage 2 as a LightningModule: LoRA on the language model, the candidate ID as the target.

The forward and the loss are :func:`lavic.model.compute.target_loss_sums` (shared with
evaluation's scoring). Item tokens arrive in the batch (read from
:class:`~lavic.cache.store.ItemTokenCache` by the collator); the vision tower is never called
here.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from lavic.model.compute import target_loss_sums
from lavic.training.module import LoRAModule

log = logging.getLogger(__name__)


class RecommendTuner(LoRAModule):
    """LoRA prompt tuning of the language model to answer the right candidate's ID.

    Records (in ``history``) the train loss per logged step and per epoch, the token-weighted
    validation loss per epoch, and the training throughput; the best validation epoch's
    adapter is written by the base's policy (:meth:`LoRAModule.keep_if_best`), as in stage 1.

    Args:
        model: The PeftModel (LoRA on the language model only, everything else frozen).
        tokenizer: Its tokenizer.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        log_every_n_steps: Record the train loss every this many optimizer steps.
    """

    def __init__(
        self, model, tokenizer, *, lr: float, weight_decay: float, log_every_n_steps: int = 10
    ):
        super().__init__(model, lr=lr, weight_decay=weight_decay)
        self.tokenizer = tokenizer
        self.log_every_n_steps = max(1, log_every_n_steps)
        self.history: dict[str, Any] = {
            "train_steps": [],
            "train_epochs": [],
            "val_epochs": [],
            "train_seconds": 0.0,
            "train_samples": 0,
        }
        # self.best: {"epoch", "step", "val_loss", "val_tokens"} of the best validation
        self._reset_window()
        self._epoch_sum = 0.0
        self._epoch_tokens = 0
        self._val_sum: torch.Tensor | None = None
        self._val_tokens: torch.Tensor | None = None
        self._t_last: float | None = None
        self._pending_samples: int | None = None  # the batch trained but not yet accounted
        self.last_validated_step = -1

    # ------------------------------------------------------------------------------ steps

    def _reset_window(self) -> None:
        self._window_sum = 0.0
        self._window_tokens = 0

    def shared_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return target_loss_sums(self.model, self.tokenizer, batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss_sum, tokens = self.shared_step(batch)
        loss = loss_sum / tokens.clamp(min=1)  # token mean over the batch
        self.log("train_loss", loss.detach(), prog_bar=True, batch_size=batch["num_samples"])
        self._window_sum += float(loss_sum.detach())
        self._window_tokens += int(tokens)
        self._epoch_sum += float(loss_sum.detach())
        self._epoch_tokens += int(tokens)
        self._pending_samples = int(batch["num_samples"])
        self.count_samples(batch["num_samples"])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss_sum, tokens = self.shared_step(batch)
        self._val_sum += loss_sum.detach().double()
        self._val_tokens += tokens

    # ------------------------------------------------------------------------------ hooks

    def on_train_epoch_start(self) -> None:
        # Backbones load in eval mode and Lightning keeps the mode it finds: LoRA dropout
        # only acts in train mode.
        self.model.train()
        self._epoch_sum, self._epoch_tokens = 0.0, 0
        self._t_last = None
        self.start_epoch()  # (not called when Lightning resumes in the middle of an epoch)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._t_last is None:
            self._t_last = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._close_batch()

    def _close_batch(self) -> None:
        """Account the batch just trained (time, samples, logged loss) exactly once.

        Called from ``on_train_batch_end`` and from ``on_save_checkpoint``: Lightning runs
        the checkpoint callback's batch-end hook before this module's, and a checkpoint must
        hold the history up to its own step.
        """
        if self._pending_samples is None:
            return
        now = time.perf_counter()
        if self._t_last is not None:
            # Time between consecutive batch ends: collation, step and optimizer update.
            self.history["train_seconds"] += now - self._t_last
        self._t_last = now
        self.history["train_samples"] += self._pending_samples
        self._pending_samples = None
        step = self.trainer.global_step
        if (
            self._window_tokens
            and step % self.log_every_n_steps == 0
            and (not self.history["train_steps"] or self.history["train_steps"][-1]["step"] != step)
        ):
            self.history["train_steps"].append(
                {
                    "step": step,
                    "epoch": self.current_epoch,
                    "train_loss": self._window_sum / self._window_tokens,
                }
            )
            self._reset_window()

    def on_train_epoch_end(self) -> None:
        if self._epoch_tokens:
            self.history["train_epochs"].append(
                {
                    "epoch": self.current_epoch,
                    "step": self.trainer.global_step,
                    "train_loss": self._epoch_sum / self._epoch_tokens,
                }
            )

    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_tokens = torch.zeros((), dtype=torch.long, device=self.device)
        self._t_last = None  # validation time is not training time

    def on_validation_epoch_end(self) -> None:
        totals = torch.stack([self._val_sum, self._val_tokens.double()])
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")  # all ranks' sums
        if self.trainer.sanity_checking or totals[1] == 0:
            return
        val_loss = float(totals[0] / totals[1])  # token-weighted over the whole split
        self.log("val_loss", val_loss, prog_bar=True, sync_dist=False)
        record = {
            "epoch": self.current_epoch,
            "step": self.trainer.global_step,
            "val_loss": val_loss,
            "val_tokens": int(totals[1]),
        }
        self.history["val_epochs"].append(record)
        self.last_validated_step = self.trainer.global_step
        if self.keep_if_best(record):
            log.info(
                "epoch %d step %d: val_loss %.4f (best so far)",
                record["epoch"],
                record["step"],
                val_loss,
            )
        else:
            log.info(
                "epoch %d step %d: val_loss %.4f (best %.4f at epoch %d)",
                record["epoch"],
                record["step"],
                val_loss,
                self.best["val_loss"],
                self.best["epoch"],
            )

    # ------------------------------------------------------------------------- checkpoints

    def checkpoint_state(self) -> dict[str, Any]:
        # Lightning runs the checkpoint callback's batch-end hook before this module's: a
        # checkpoint must hold the history up to its own step.
        self._close_batch()
        return {
            "history": self.history,
            "last_validated_step": self.last_validated_step,
            "epoch_sum": self._epoch_sum,
            "epoch_tokens": self._epoch_tokens,
            "window_sum": self._window_sum,
            "window_tokens": self._window_tokens,
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.history = state.get("history", self.history)
        self.last_validated_step = state.get("last_validated_step", -1)
        self._epoch_sum = float(state.get("epoch_sum", 0.0))
        self._epoch_tokens = int(state.get("epoch_tokens", 0))
        self._window_sum = float(state.get("window_sum", 0.0))
        self._window_tokens = int(state.get("window_tokens", 0))
