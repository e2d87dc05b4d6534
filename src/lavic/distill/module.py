"""Stage 1 pieces: prompts, the image dataset, the collators, the sampler and the LightningModule.

The student reads the seed's distillation prompt with the five item tokens replaced by the
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
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from lavic.constants import DISTILL_PROMPT, IGNORE_INDEX, ITEM_TOKENS, ITEM_TOKENS_TEXT
from lavic.data.images import ImageStats, placeholder_image, read_image
from lavic.data.records import DescribedImage
from lavic.errors import LavicError
from lavic.model.backbone import unwrap
from lavic.model.inputs import build_batch, encode_prompt, encode_target
from lavic.model.item_tokens import encode_item_tokens, insert_item_tokens, pixel_views

log = logging.getLogger(__name__)

DEFAULT_IMAGE_TOKEN = "<image>"

# ---------------------------------------------------------------------------------- prompts


def clean_text(text: str, image_token: str = DEFAULT_IMAGE_TOKEN) -> str:
    """Remove the placeholder strings (item tokens, ``<image>``) from data text.

    A title or description containing ``<ItemImageEmb1>`` or ``<image>`` would otherwise
    tokenize as a placeholder and break the (strict) placeholder count of the prompt.
    """
    for token in (*ITEM_TOKENS, image_token):
        if token in text:
            text = text.replace(token, "")
    return text


def student_prompt(title: str) -> str:
    """The seed's distillation prompt, with the five item-token placeholders."""
    return DISTILL_PROMPT.format(title=clean_text(title))


def teacher_prompt(title: str, image_token: str = DEFAULT_IMAGE_TOKEN) -> str:
    """The same prompt with ``<image>`` (full image tokens) in place of the five item tokens:
    what the base model reads when it writes (``lavic describe``) or scores a description."""
    return student_prompt(title).replace(ITEM_TOKENS_TEXT, image_token)


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
        self.image_token = getattr(processor, "image_token", DEFAULT_IMAGE_TOKEN)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        rows, label_rows, views, sizes = [], [], [], []
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
            prompt_ids = enc["input_ids"][0].tolist()
            rows.append(prompt_ids + target[:keep])
            label_rows.append([IGNORE_INDEX] * len(prompt_ids) + target[:keep])
            views.append(enc["pixel_values"][0])  # (v, C, H, W)
            sizes.append(enc["image_sizes"][0])
        width = max(len(r) for r in rows)
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, (r, lab) in enumerate(zip(rows, label_rows, strict=True)):
            input_ids[i, : len(r)] = torch.tensor(r)
            attention[i, : len(r)] = 1
            labels[i, : len(r)] = torch.tensor(lab)
        most = max(v.shape[0] for v in views)
        pixel_values = torch.stack(
            [torch.cat([v, v.new_zeros((most - v.shape[0], *v.shape[1:]))]) for v in views]
        )  # (B, most, C, H, W)
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            "pixel_values": pixel_values,
            "image_sizes": torch.stack(sizes),  # (B, 2)
            "image_outcomes": [(it["key"], it["outcome"]) for it in items],
            "truncated_targets": 0,
        }


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardSampler(Sampler[int]):
    """This process's share of the indices, resolved when iterated (after DDP has started).

    Training (``shuffle=True, pad=True``): a seeded permutation per epoch, padded by
    repetition so every rank runs the same number of steps. The epoch is set by
    :class:`DistillModule` from its own epoch counter (deliberately not named ``set_epoch``:
    Lightning's value for it is off by one after a mid-epoch resume, which would change the
    order of every later epoch).
    Evaluation (``shuffle=False, pad=False``): disjoint, unpadded shards, so a split-wide sum
    over ranks counts every sample exactly once.
    """

    def __init__(self, num_samples: int, *, shuffle: bool, pad: bool, seed: int = 0):
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.pad = pad
        self.seed = seed
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, consumed: int) -> None:
        """Make the next iteration continue ``epoch`` after its first ``consumed`` indices.

        Used when training resumes from a mid-epoch checkpoint, so the interrupted epoch
        finishes with exactly the samples it had not seen (the length stays the full epoch's:
        Lightning counts the batches already done).
        """
        self._resume = (epoch, consumed)

    def resume_from_checkpoint(self, epoch: int, epoch_samples: int) -> None:
        """Resume after a checkpoint taken ``epoch_samples`` samples into ``epoch``.

        A mid-epoch checkpoint finishes that epoch with the samples it had not seen; one saved
        at an epoch's end starts the next afresh. Called from ``on_load_checkpoint`` because the
        first iterator may be created (and workers may prefetch) before any epoch hook runs.
        """
        if epoch_samples <= 0:
            return
        if epoch_samples < len(self):
            self.resume_at(epoch, epoch_samples)
        else:
            self.resume_at(epoch + 1, 0)

    def _indices(self) -> list[int]:
        rank, world = _dist_rank_world()
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        if self.pad and world > 1 and order:
            total = math.ceil(len(order) / world) * world
            order = (order * math.ceil(total / len(order)))[:total]
        return order[rank::world]

    def __iter__(self):
        skip = 0
        if self._resume is not None:
            (self.epoch, skip), self._resume = self._resume, None
        return iter(self._indices()[skip:])

    def __len__(self) -> int:
        return len(self._indices())


def make_loader(
    dataset: Dataset,
    collator: Callable,
    *,
    batch_size: int,
    num_workers: int,
    shuffle: bool,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader whose collator runs in the workers (``num_workers > 0``)."""
    sampler = ShardSampler(len(dataset), shuffle=shuffle, pad=shuffle, seed=seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collator,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


# ---------------------------------------------------------------------------------- loss


def target_nll(
    hidden: torch.Tensor, labels: torch.Tensor, lm_head
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL over the labelled positions, and their count.

    Only the positions that predict a label go through the LM head (the full ``(B, T, V)``
    logits of a 2,048-token batch would be gigabytes for a 32k vocabulary).

    Args:
        hidden: ``(B, T, D)`` last hidden states.
        labels: ``(B, T)`` with ``IGNORE_INDEX`` where no loss is taken.
        lm_head: the output projection.

    Returns:
        ``(sum_nll, num_tokens)``, both scalar tensors (float32, int64).
    """
    shift_labels = labels[:, 1:]  # position t predicts token t+1
    mask = shift_labels != IGNORE_INDEX  # (B, T-1)
    picked = hidden[:, :-1][mask]  # (N, D)
    logits = lm_head(picked).float()  # (N, V)
    nll = F.cross_entropy(logits, shift_labels[mask], reduction="sum")
    return nll, mask.sum()


def clean_param_name(name: str) -> str:
    """A parameter's name without FSDP / activation-checkpointing wrapper segments, i.e. as
    in a full state dict."""
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module."):
        name = name.replace(wrapper, "")
    return name


def perplexity(loss: float) -> float:
    """``exp(loss)``, inf instead of an overflow."""
    return math.exp(loss) if loss < 700 else float("inf")


# ---------------------------------------------------------------------------------- module


class SaveAtMaxSteps(L.Callback):
    """Checkpoint the step at which ``max_steps`` stops training (often mid-epoch, between
    the other triggers), in the state a step-triggered checkpoint would have."""

    def __init__(self, path):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
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


class DistillModule(L.LightningModule):
    """Stage 1: LoRA on the vision tower + projector, the language model frozen.

    Args:
        model: a ``peft.PeftModel`` around a ``LlavaNextForConditionalGeneration`` whose only
            trainable parameters are the vision-side LoRA weights.
        item_token_ids: ids of ``<ItemImageEmb1..5>``.
        lr, weight_decay: AdamW settings.

    Attributes set by the caller between runs of the trainer:
        eval_mode: ``"student"`` (5 item tokens) or ``"teacher"`` (full image tokens).
        eval_label: name under which a ``trainer.validate`` result is kept in ``results``.
        on_new_best: called (global rank 0 only) with the epoch record and the adapter's
            state dict when a validation during fit beats the best loss so far.
    """

    def __init__(self, model, item_token_ids: Sequence[int], *, lr: float, weight_decay: float):
        super().__init__()
        self.model = model
        self.item_token_ids = list(item_token_ids)
        self.lr = lr
        self.weight_decay = weight_decay
        # Checkpoints hold only the trainable (LoRA) weights; the frozen base is rebuilt from
        # --model_name. Lightning must not demand the frozen keys when loading.
        self.strict_loading = False
        self.eval_mode = "student"
        self.eval_label: str | None = None
        self.on_new_best: Callable[[dict[str, Any], dict[str, torch.Tensor]], None] | None = None
        self.results: dict[str, dict[str, float]] = {}  # eval_label -> {"loss", "ppl", ...}
        self.history: list[dict[str, Any]] = []  # one record per validation during fit
        self.best: dict[str, Any] | None = None
        self.image_outcomes: dict[str, str] = {}  # "split/image_name" -> outcome
        self.train_images = 0
        self.train_seconds = 0.0
        self.truncated_targets = 0
        self.last_train_epoch = 0  # epoch of the latest training step
        self.train_sampler: ShardSampler | None = None  # set by the caller, for exact resumes
        self._epoch_samples = 0  # this process's training samples done in the current epoch
        self._val_nll = torch.zeros(2, dtype=torch.float64)
        self._val_tokens = torch.zeros(2, dtype=torch.int64)
        self._train_loss_sum = 0.0
        self._train_loss_count = 0
        self._t_prev: float | None = None

    # -------------------------------------------------------------- forward paths

    @property
    def llava(self):
        return unwrap(self.model)

    def student_nll(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Description NLL given the prompt with the item's 5 visual tokens."""
        llava = self.llava
        input_ids = batch["input_ids"]  # (B, T)
        item = encode_item_tokens(llava, batch["pixel_values"])  # (B, 5, D)
        embeds = llava.get_input_embeddings()(input_ids)  # (B, T, D)
        embeds = insert_item_tokens(embeds, input_ids, self.item_token_ids, item)
        hidden = llava.model(
            inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state  # (B, T, D)
        return target_nll(hidden, batch["labels"], llava.lm_head)

    def teacher_nll(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Description NLL given the full image tokens (the caller disables the adapter)."""
        llava = self.llava
        try:
            hidden = llava.model(
                input_ids=batch["input_ids"],
                pixel_values=batch["pixel_values"],
                image_sizes=batch["image_sizes"],
                attention_mask=batch["attention_mask"],
                use_cache=False,
            ).last_hidden_state
        except ValueError as exc:  # the processor's <image> expansion disagrees with the model
            raise LavicError(f"teacher (full image tokens) forward failed: {exc}") from None
        return target_nll(hidden, batch["labels"], llava.lm_head)

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
        self._epoch_samples += rows
        return loss

    def on_train_epoch_start(self) -> None:
        # (Not called when Lightning resumes in the middle of an epoch.)
        self._t_prev = time.perf_counter()
        self._train_loss_sum, self._train_loss_count = 0.0, 0
        self._epoch_samples = 0
        if self.train_sampler is not None:
            self.train_sampler.use_epoch(int(self.current_epoch))

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # Wall time between consecutive batches (data wait included, validation excluded).
        now = time.perf_counter()
        if self._t_prev is not None:
            self.train_seconds += now - self._t_prev
        self._t_prev = now
        self.train_images += batch["input_ids"].shape[0] * self.trainer.world_size

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise LavicError("no trainable parameters (the LoRA wrapping found no target)")
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

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
        if self.best is None or record["val_loss"] < self.best["val_loss"]:
            self.best = dict(record)
            if self.on_new_best is not None:
                state = self.adapter_state_dict()  # every rank: a collective under FSDP
                if self.trainer.is_global_zero:
                    self.on_new_best(record, state)

    # -------------------------------------------------------------- checkpoints

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

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["lavic"] = {
            "history": self.history,
            "best": self.best,
            "results": self.results,
            "image_outcomes": self.image_outcomes,
            "train_images": self.train_images,
            "train_seconds": self.train_seconds,
            "truncated_targets": self.truncated_targets,
            "epoch": int(self.current_epoch),
            "epoch_samples": self._epoch_samples,
            "train_loss_sum": self._train_loss_sum,
            "train_loss_count": self._train_loss_count,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # (FSDP loads the weights itself and removes them from the dict before this hook.)
        have = set(checkpoint.get("state_dict", {}))
        want = self.trainable_keys()
        if "state_dict" in checkpoint and have != want:
            missing, extra = sorted(want - have)[:3], sorted(have - want)[:3]
            raise LavicError(
                f"checkpoint does not match this run's LoRA settings ({len(want - have)} weights "
                f"missing, e.g. {missing}; {len(have - want)} unexpected, e.g. {extra}): resume "
                "with the same --model_name and --lora_* options"
            )
        state = checkpoint.get("lavic", {})
        self.history = list(state.get("history", []))
        self.best = state.get("best")
        self.results.update(state.get("results", {}))
        self.image_outcomes.update(state.get("image_outcomes", {}))
        self.train_images = int(state.get("train_images", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.truncated_targets = int(state.get("truncated_targets", 0))
        self._epoch_samples = int(state.get("epoch_samples", 0))
        self._train_loss_sum = float(state.get("train_loss_sum", 0.0))
        self._train_loss_count = int(state.get("train_loss_count", 0))
        if self.train_sampler is not None:
            self.train_sampler.resume_from_checkpoint(
                int(state.get("epoch", 0)), self._epoch_samples
            )


__all__ = [
    "DescribedImageDataset",
    "DistillModule",
    "MismatchedImages",
    "SaveAtMaxSteps",
    "ShardSampler",
    "StudentCollator",
    "TeacherCollator",
    "clean_param_name",
    "clean_text",
    "make_loader",
    "perplexity",
    "student_prompt",
    "target_nll",
    "teacher_prompt",
]
