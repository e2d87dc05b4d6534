"""Stage 2 as a LightningModule: LoRA on the language model, the candidate ID as the target.

Training, validation and the shared embedding function used by evaluation and serving. Item
tokens arrive in the batch (read from :class:`~lavic.cache.store.ItemTokenCache` by the
collator); the vision tower is never called here.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from lavic.constants import IGNORE_INDEX, ITEM_TOKENS, NUM_ITEM_TOKENS
from lavic.model.backbone import unwrap
from lavic.model.item_tokens import insert_item_tokens

log = logging.getLogger(__name__)


def embed_prompts(
    llava, tokenizer, token_batch_input_ids: torch.Tensor, item_tokens: torch.Tensor | None
) -> torch.Tensor:
    """Text embeddings of a token batch with the item tokens put in their placeholders.

    Args:
        llava: A ``LlavaNextForConditionalGeneration`` (or a PeftModel around one).
        tokenizer: Its tokenizer (holding the five item tokens).
        token_batch_input_ids: ``(B, T)`` token ids.
        item_tokens: ``(M, 5, D)`` visual tokens of the M items the batch shows, in reading
            order (row 0's candidates in prompt order, then row 1's, ...), or None for a
            text-only batch.

    Returns:
        ``(B, T, D)`` input embeddings in the embedding table's dtype.

    Raises:
        LavicError: if the placeholders are not exactly M complete runs (or any are present
            while ``item_tokens`` is None).
    """
    input_ids = token_batch_input_ids
    embeds = unwrap(llava).get_input_embeddings()(input_ids)  # (B, T, D)
    if item_tokens is None:
        # Zero items: insert_item_tokens still checks that no placeholder is left unfilled.
        item_tokens = embeds.new_zeros((0, NUM_ITEM_TOKENS, embeds.shape[-1]))
    ids = tokenizer.convert_tokens_to_ids(list(ITEM_TOKENS))
    return insert_item_tokens(embeds, input_ids, ids, item_tokens.to(embeds.device))


def target_loss_sums(llava, tokenizer, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over the target tokens of a batch, and their count.

    The language model runs on the embedded prompts; the LM head is applied only at the
    positions that predict a label (a few per row), not to all ``T`` positions: the full
    ``(B, T, V)`` logits are never materialised.

    Returns:
        ``(loss_sum, num_target_tokens)``, both 0-dim tensors (float32, int64).
    """
    core = unwrap(llava)
    embeds = embed_prompts(llava, tokenizer, batch["input_ids"], batch["item_tokens"])
    hidden = core.model.language_model(
        inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state  # (B, T, D)
    labels = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
    keep = labels != IGNORE_INDEX
    logits = core.lm_head(hidden[:, :-1][keep]).float()  # (N, V), N target tokens
    loss_sum = F.cross_entropy(logits, labels[keep], reduction="sum")
    return loss_sum, keep.sum()


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the parameters that train (the LoRA weights), by name."""
    return {
        n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad
    }


class RecommendTuner(L.LightningModule):
    """LoRA prompt tuning of the language model to answer the right candidate's ID.

    Records (in ``history``) the train loss per logged step and per epoch, the token-weighted
    validation loss per epoch, and the training throughput; keeps a CPU copy of the LoRA
    weights of the best validation epoch (``best_state``), restored by :meth:`restore_best`.

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
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.log_every_n_steps = max(1, log_every_n_steps)
        # Checkpoints hold only the trainable (LoRA) weights; the frozen backbone is rebuilt
        # from the artefact on resume, so loading is not strict.
        self.strict_loading = False
        self.history: dict[str, Any] = {
            "train_steps": [],
            "train_epochs": [],
            "val_epochs": [],
            "train_seconds": 0.0,
            "train_samples": 0,
        }
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best: dict[str, Any] | None = None  # {"epoch", "step", "val_loss"}
        self._reset_window()
        self._epoch_sum = 0.0
        self._epoch_tokens = 0
        self._val_sum: torch.Tensor | None = None
        self._val_tokens: torch.Tensor | None = None
        self._t_last: float | None = None
        self._pending_samples: int | None = None  # the batch trained but not yet accounted
        self.last_validated_step = -1
        # For exact resumes (set by the caller): the training loader's ShardSampler, told the
        # epoch and, from a mid-epoch checkpoint, how many of its samples this epoch has seen.
        self.train_sampler = None
        self._epoch_samples = 0

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
        self._epoch_samples += int(batch["num_samples"])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss_sum, tokens = self.shared_step(batch)
        self._val_sum += loss_sum.detach().double()
        self._val_tokens += tokens

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    # ------------------------------------------------------------------------------ hooks

    def on_train_epoch_start(self) -> None:
        # Backbones load in eval mode and Lightning keeps the mode it finds: LoRA dropout
        # only acts in train mode.
        self.model.train()
        self._epoch_sum, self._epoch_tokens = 0.0, 0
        self._t_last = None
        # (Not called when Lightning resumes in the middle of an epoch.)
        self._epoch_samples = 0
        if self.train_sampler is not None:
            self.train_sampler.use_epoch(int(self.current_epoch))

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
        if self.best is None or val_loss < self.best["val_loss"]:
            self.best = record
            self.best_state = trainable_state(self.model)
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

    def restore_best(self) -> None:
        """Load the best validation epoch's LoRA weights into the model (if any was validated)."""
        if self.best_state is None:
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in self.best_state.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))

    # ------------------------------------------------------------------------- checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._close_batch()
        trainable = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in trainable
        }
        checkpoint["lavic"] = {
            "history": self.history,
            "best": self.best,
            "best_state": self.best_state,
            "last_validated_step": self.last_validated_step,
            "epoch": int(self.current_epoch),
            "epoch_samples": self._epoch_samples,
            "epoch_sum": self._epoch_sum,
            "epoch_tokens": self._epoch_tokens,
            "window_sum": self._window_sum,
            "window_tokens": self._window_tokens,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("lavic") or {}
        self.history = state.get("history", self.history)
        self.best = state.get("best")
        self.best_state = state.get("best_state")
        self.last_validated_step = state.get("last_validated_step", -1)
        self._epoch_samples = int(state.get("epoch_samples", 0))
        self._epoch_sum = float(state.get("epoch_sum", 0.0))
        self._epoch_tokens = int(state.get("epoch_tokens", 0))
        self._window_sum = float(state.get("window_sum", 0.0))
        self._window_tokens = int(state.get("window_tokens", 0))
        if self.train_sampler is not None:
            self.train_sampler.resume_from_checkpoint(
                int(state.get("epoch", 0)), self._epoch_samples
            )
