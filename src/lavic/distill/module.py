"""Stage 1 pieces: the image dataset, the collators and the LightningModule.

The student reads the reference's distillation prompt with the five item tokens replaced by the
item's visual tokens (5 views -> vision tower [CLS] -> projector) and is trained to reproduce
the teacher's description. The teacher is the same base model reading the full image tokens
through the ordinary LLaVA-NeXT path (``<image>`` expanded by the processor).

Work placement: images are decoded in the dataset and turned into pixel views and token ids by
the collators, i.e. in the DataLoader workers; Lightning moves batches to the device and
handles precision, so ``training_step`` only computes.

Shapes: B rows, T tokens, V = 5 views, C x H x W pixels, D language-model width.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from lavic.data.images import ImageStats, placeholder_image, read_image
from lavic.data.records import DescribedImage
from lavic.errors import LavicError
from lavic.model.backbone import unwrap
from lavic.model.compute import labelled_logits, student_hidden, target_nll, teacher_hidden
from lavic.model.inputs import build_batch, encode_prompt, encode_target, pad_views
from lavic.model.item_tokens import pixel_views
from lavic.prompts import IMAGE_TOKEN, clean_text, student_prompt, teacher_prompt
from lavic.training.module import LoRAModule

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------- data


class DescribedImageDataset(Dataset):
    """Stage-1 samples with their decoded images (placeholder on any image problem).

    Each item is a dict ``{"sample", "image", "outcome", "key"}``; ``outcome`` is the
    :mod:`lavic.data.images` outcome (``loaded``, ``missing``, ``unreadable``, ...), carried
    through the batch so the main process can count it (workers are separate processes).
    """

    def __init__(self, samples: Sequence[DescribedImage], image_dir, split: str):
        self.samples = list(samples)
        self.image_dir = image_dir
        self.split = split

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image, outcome = read_image(self.image_dir, sample.image_name)
        return {
            "sample": sample,
            "image": image if image is not None else placeholder_image(),
            "outcome": outcome,
            "key": f"{self.split}/{sample.image_name}",
        }


class MismatchedImages(Dataset):
    """Each sample with the image of a different item: the control that tells how much of the
    student's gain comes from the image (a gain that survives the wrong image is not visual).

    Sample ``i`` gets the image of sample ``(i + n // 2) mod n``, moved on while that is the
    same item: fixed, so every validation compares the same pairs.
    """

    def __init__(self, dataset: DescribedImageDataset):
        self.dataset = dataset
        samples = dataset.samples
        n = len(samples)
        self.partner: list[int] = []
        for i in range(n):
            j = (i + max(n // 2, 1)) % n
            for _ in range(n):
                if samples[j].item_id != samples[i].item_id:
                    break
                j = (j + 1) % n
            self.partner.append(j)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[self.partner[index]])
        item["sample"] = self.dataset.samples[index]
        return item


class StudentCollator:
    """Batch for the 5-token student: token ids with per-row labels + ``(B, 5, C, H, W)`` views."""

    def __init__(self, tokenizer, image_processor, max_length: int):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_length = max_length

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        prompts = [student_prompt(it["sample"].title) for it in items]
        targets = [clean_text(it["sample"].description) for it in items]
        tokens = build_batch(self.tokenizer, prompts, targets, max_length=self.max_length)
        return {
            "input_ids": tokens.input_ids,  # (B, T)
            "attention_mask": tokens.attention_mask,  # (B, T)
            "labels": tokens.labels,  # (B, T), IGNORE_INDEX outside each row's target
            "pixel_values": pixel_views(self.image_processor, [it["image"] for it in items]),
            "image_outcomes": [(it["key"], it["outcome"]) for it in items],
            "truncated_targets": tokens.truncated_targets,
        }


class TeacherCollator:
    """Batch for the full-image-token teacher (the ordinary LLaVA-NeXT path).

    The processor expands ``<image>`` into the image's feature tokens; the target is the
    same token sequence the student is scored on (cut to the student's ``max_length`` budget,
    so both perplexities average over identical target tokens). Rows are right-padded; pixel
    views are zero-padded to the batch's largest view count (``image_sizes`` tells the model
    how many are real).
    """

    def __init__(self, processor, tokenizer, max_length: int):
        self.processor = processor
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.image_token = getattr(processor, "image_token", IMAGE_TOKEN)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        prompts, targets, views, sizes = [], [], [], []
        for it in items:
            sample = it["sample"]
            target = encode_target(self.tokenizer, clean_text(sample.description))
            student_len = len(encode_prompt(self.tokenizer, student_prompt(sample.title)))
            keep = min(len(target), max(self.max_length - student_len, 0))
            enc = self.processor(
                images=[it["image"]],
                text=[teacher_prompt(sample.title, self.image_token)],
                return_tensors="pt",
            )
            prompts.append(enc["input_ids"][0].tolist())  # <image> expanded
            targets.append(target[:keep])
            views.append(enc["pixel_values"][0])  # (v, C, H, W)
            sizes.append(enc["image_sizes"][0])
        # No budget here: the target was cut to the student's above, the prompt is the image's.
        tokens = build_batch(self.tokenizer, prompts, targets, max_length=None)
        return {
            "input_ids": tokens.input_ids,
            "attention_mask": tokens.attention_mask,
            "labels": tokens.labels,
            "pixel_values": pad_views(views),  # (B, most views, C, H, W)
            "image_sizes": torch.stack(sizes),  # (B, 2)
            "image_outcomes": [(it["key"], it["outcome"]) for it in items],
            "truncated_targets": 0,
        }


def perplexity(loss: float) -> float:
    """``exp(loss)``, inf instead of an overflow."""
    return math.exp(loss) if loss < 700 else float("inf")


# ---------------------------------------------------------------------------------- module


class DistillModule(LoRAModule):
    """Stage 1: LoRA on the vision tower + projector, the language model frozen.

    Args:
        model: a ``peft.PeftModel`` around a ``LlavaNextForConditionalGeneration`` whose only
            trainable parameters are the vision-side LoRA weights.
        item_token_ids: ids of ``<ItemImageEmb1..5>``.
        lr, weight_decay: AdamW settings.

    Attributes set by the caller between runs of the trainer:
        eval_mode: ``"student"`` (5 item tokens) or ``"teacher"`` (full image tokens).
        eval_label: name under which a ``trainer.validate`` result is kept in ``results``.
        on_new_best: (the base's) writes the artefact when a validation during fit beats
            the best loss so far.
    """

    def __init__(self, model, item_token_ids: Sequence[int], *, lr: float, weight_decay: float):
        super().__init__(model, lr=lr, weight_decay=weight_decay)
        self.item_token_ids = list(item_token_ids)
        self.eval_mode = "student"
        self.eval_label: str | None = None
        self.results: dict[str, dict[str, float]] = {}  # eval_label -> {"loss", "ppl", ...}
        self.history: list[dict[str, Any]] = []  # one record per validation during fit
        self.image_outcomes: dict[str, str] = {}  # "split/image_name" -> outcome
        self.train_images = 0
        self.train_seconds = 0.0
        self.truncated_targets = 0
        self.last_train_epoch = 0  # epoch of the latest training step
        self._val_nll = torch.zeros(2, dtype=torch.float64)
        self._val_tokens = torch.zeros(2, dtype=torch.int64)
        self._train_loss_sum = 0.0
        self._train_loss_count = 0
        self._t_prev: float | None = None

    # -------------------------------------------------------------- forward paths

    @property
    def llava(self):
        return unwrap(self.model)

    def student_hidden(self, batch: dict[str, Any]) -> torch.Tensor:
        """``(B, T, D)`` last hidden states of the prompt with the item's 5 visual tokens."""
        return student_hidden(self.model, self.item_token_ids, batch)

    def student_logits(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, V)`` logits at the description's positions and the ``(N,)`` labels."""
        return labelled_logits(self.student_hidden(batch), batch["labels"], self.llava.lm_head)

    def student_nll(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Description NLL given the prompt with the item's 5 visual tokens."""
        return target_nll(self.student_hidden(batch), batch["labels"], self.llava.lm_head)

    def teacher_nll(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Description NLL given the full image tokens (the caller disables the adapter)."""
        return target_nll(teacher_hidden(self.model, batch), batch["labels"], self.llava.lm_head)

    # -------------------------------------------------------------- bookkeeping

    def _note_images(self, batch: dict[str, Any]) -> None:
        for key, outcome in batch["image_outcomes"]:
            self.image_outcomes.setdefault(key, outcome)

    def image_stats(self, split: str) -> dict[str, int]:
        """Counts of image outcomes (distinct images seen by this process) for ``split``."""
        stats = ImageStats()
        prefix = split + "/"
        for key, outcome in self.image_outcomes.items():
            if key.startswith(prefix):
                stats.add(outcome)
        return stats.as_dict()

    def gather_image_outcomes(self) -> None:
        """Merge the image outcomes of every DDP process (a collective: call on all ranks)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[dict[str, str] | None] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self.image_outcomes)
            for part in gathered:
                for key, outcome in (part or {}).items():
                    self.image_outcomes.setdefault(key, outcome)

    # -------------------------------------------------------------- training

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        nll, count = self.student_nll(batch)
        loss = nll / count.clamp_min(1)  # token mean over this batch's targets
        rows = batch["input_ids"].shape[0]
        self.log("train_loss", loss, prog_bar=True, batch_size=rows)
        self._train_loss_sum += float(loss.detach())
        self._train_loss_count += 1
        self._note_images(batch)
        self.truncated_targets += int(batch["truncated_targets"])
        self.last_train_epoch = int(self.current_epoch)
        self.count_samples(rows)
        return loss

    def on_train_epoch_start(self) -> None:
        # (Not called when Lightning resumes in the middle of an epoch.)
        self._t_prev = time.perf_counter()
        self._train_loss_sum, self._train_loss_count = 0.0, 0
        self.start_epoch()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # Wall time between consecutive batches (data wait included, validation excluded).
        now = time.perf_counter()
        if self._t_prev is not None:
            self.train_seconds += now - self._t_prev
        self._t_prev = now
        self.train_images += batch["input_ids"].shape[0] * self.trainer.world_size

    # -------------------------------------------------------------- validation

    def on_validation_epoch_start(self) -> None:
        # Slot 0: the validation split; slot 1 (optional second loader): the same descriptions
        # with another item's image (MismatchedImages), the control for "the gain is visual".
        self._val_nll = torch.zeros(2, dtype=torch.float64, device=self.device)
        self._val_tokens = torch.zeros(2, dtype=torch.int64, device=self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0):
        if self.eval_mode == "teacher":
            nll, count = self.teacher_nll(batch)
        else:
            nll, count = self.student_nll(batch)
        self._val_nll[dataloader_idx] += nll.detach().double()
        self._val_tokens[dataloader_idx] += count
        if dataloader_idx == 0:
            self._note_images(batch)

    def on_validation_end(self) -> None:
        self._t_prev = time.perf_counter()  # validation time is not training time

    def on_validation_epoch_end(self) -> None:
        # Token-weighted over the whole split: sum of NLL / number of target tokens, summed
        # over every DDP process (each holds a disjoint, unpadded shard).
        nlls = self.trainer.strategy.reduce(self._val_nll, reduce_op="sum").tolist()
        counts = self.trainer.strategy.reduce(self._val_tokens, reduce_op="sum").tolist()
        if counts[0] == 0:
            raise LavicError("validation has no target tokens (no described validation images?)")
        loss, tokens = nlls[0] / counts[0], int(counts[0])
        record = {"loss": loss, "ppl": perplexity(loss), "tokens": tokens}
        if counts[1]:
            record["mismatched_loss"] = nlls[1] / counts[1]
            record["mismatched_ppl"] = perplexity(record["mismatched_loss"])
        self.log("val_loss", loss, sync_dist=False, rank_zero_only=True)
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.record_validation(record)
        elif self.eval_label is not None:
            self.results[self.eval_label] = record
            log.info(
                "%s: val loss %.4f, perplexity %.3f (%d target tokens)",
                self.eval_label,
                loss,
                record["ppl"],
                tokens,
            )

    def record_validation(self, result: dict[str, Any], *, epoch: int | None = None) -> None:
        """Keep a validation of the training weights; write the adapter when it is the best.

        Call on every process (the adapter is gathered under FSDP).
        """
        record = {
            "epoch": int(self.current_epoch) if epoch is None else epoch,
            "step": int(self.global_step),
            "val_loss": result["loss"],
            "val_ppl": result["ppl"],
            "val_tokens": result["tokens"],
            "train_loss": (
                self._train_loss_sum / self._train_loss_count if self._train_loss_count else None
            ),
        }
        if "mismatched_loss" in result:
            record["val_loss_mismatched"] = result["mismatched_loss"]
            record["val_ppl_mismatched"] = result["mismatched_ppl"]
        self.history.append(record)
        log.info(
            "epoch %d step %d: val loss %.4f, perplexity %.3f (%d target tokens)%s",
            record["epoch"],
            record["step"],
            record["val_loss"],
            record["val_ppl"],
            record["val_tokens"],
            f"; another item's image: {record['val_ppl_mismatched']:.3f}"
            if "val_ppl_mismatched" in record
            else "",
        )
        self.keep_if_best(record)

    # -------------------------------------------------------------- checkpoints

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "results": self.results,
            "image_outcomes": self.image_outcomes,
            "train_images": self.train_images,
            "train_seconds": self.train_seconds,
            "truncated_targets": self.truncated_targets,
            "train_loss_sum": self._train_loss_sum,
            "train_loss_count": self._train_loss_count,
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))
        self.results.update(state.get("results", {}))
        self.image_outcomes.update(state.get("image_outcomes", {}))
        self.train_images = int(state.get("train_images", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.truncated_targets = int(state.get("truncated_targets", 0))
        self._train_loss_sum = float(state.get("train_loss_sum", 0.0))
        self._train_loss_count = int(state.get("train_loss_count", 0))


__all__ = [
    "DescribedImageDataset",
    "DistillModule",
    "MismatchedImages",
    "StudentCollator",
    "TeacherCollator",
    "perplexity",
]
