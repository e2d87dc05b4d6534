"""The stand-in's instruction skill: SmolLM2 learns to pick a candidate from text.

LaViC assumes an instruction-following backbone that can match a request to one of ten
candidates and answer its ID (Mistral-7B-Instruct has this from its own tuning). SmolLM2-135M
does not (zero-shot 0.16-0.18 on ten candidates with the look written in words, chance 0.10),
so ``tiny`` gets it here, once, from text alone: the reference's recommendation prompt, each
candidate line carrying its look in words. This is the stand-in's instruction tuning, not
LaViC's stage 2: the demo's titles never state the look, so text-only stays at chance there.

Ten candidates from the start learn nothing in 600 samples; a curriculum from two candidates
gets going at once (measured, docs/tiny.md), so the run is a list of ``(candidates, samples)``
stages. The result is a LoRA on the language model's linear layers, shipped as a PEFT adapter
under ``lavic/assets/tiny/lm_adapter/`` and merged into the weights at load (:func:`lavic.model.tiny.load_tiny`).

Catalogues come from the synthetic generator (default style) with seeds >= 1000; the
evaluation uses seed 1001's cold test items, never trained on.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch

from lavic.artifacts import ADAPTER_WEIGHTS, save_adapter
from lavic.config import TrainerArgs
from lavic.data.synthetic import plan_catalogue
from lavic.data.synthetic.catalogue import PlannedItem
from lavic.errors import LavicError
from lavic.io import atomic_directory, atomic_write_json
from lavic.model.backbone import Backbone
from lavic.model.inputs import build_batch
from lavic.model.lora import LANGUAGE_MODULES, add_lora, module_segments
from lavic.precision import autocast
from lavic.pretrain.captions import (
    CaptionSample,
    PromptHead,
    _collate,
    _encode,
    caption_nll,
    with_head,
)
from lavic.pretrain.phrasing import broad_samples
from lavic.prompts import build_recommend_prompt
from lavic.training.module import LoRAModule
from lavic.training.resume import checkpoint_to_resume
from lavic.training.sampler import make_loader
from lavic.training.schedule import DECAYS, warmup_schedule
from lavic.training.trainer import (
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    build_trainer,
    raise_if_interrupted,
)

log = logging.getLogger(__name__)


def lm_targets(first_layer: int) -> str:
    """A PEFT target regex: every linear layer of the language model's decoder layers from
    ``first_layer`` up (Llama names); the vision side is never touched. Training only the
    upper layers stops the backward pass there: on a CPU, 1.5x faster for the top half."""
    (language_model,) = LANGUAGE_MODULES
    return (
        rf".*{re.escape(language_model)}\.layers\."
        rf"(?:{'|'.join(str(i) for i in range(first_layer, 200))})\."
        r"(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)"
    )


ADAPTER_DIR = "lm_adapter"
MAX_LENGTH = 1024
# How a candidate's look is written: on its own line after the title (where LaViC puts the
# five item tokens), inside the title, or as the teacher description's first sentence.
LOOK_FORMATS = ("line", "title", "description")
# A stage may also draw "broad" conversations: lavic.pretrain.phrasing's (many words and
# phrasings, not the synthetic catalogue's). Repeating a format weighs it ("line+broad+broad").
BROAD = "broad"
# ... or "generic" ones: the same space, each candidate's look in common words ("red stripes",
# as the item tokens read), the request's in any word of the family (phrasing.broad_sample).
GENERIC = "generic"
PHRASING_FORMATS = (BROAD, GENERIC)
STAGE_FORMATS = (*LOOK_FORMATS, *PHRASING_FORMATS)
LR_SCHEDULES = DECAYS  # after the warm-up (InstructConfig.lr_schedule)


@dataclass
class InstructConfig:
    """Hyper-parameters of :func:`instruct` (defaults: the shipped run's)."""

    # candidates:samples[:formats], in order: two candidates with the look on its own line are
    # the way in (ten from the start learn nothing in 600 samples, docs/tiny.md)
    curriculum: str = "2:400:line,4:300,10:300"
    rank: int = 16
    alpha: int = 32
    # LoRA on decoder layers first_layer.. (SmolLM2-135M has 30). The top half alone learned
    # nothing from 420 samples (2 candidates: 0.47, chance 0.5): the matching needs them all.
    first_layer: int = 0
    lr: float = 5e-4
    batch_size: int = 4
    warmup_samples: int = 40
    # constant after the warm-up (the probe that reached 0.96 on ten candidates), or cosine to
    # 10% over the run: the cosine had the rate at 40% by the ten-candidate stage, the hardest
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    look_formats: str = "line,title"  # drawn per sample, uniformly
    eval_every: int = 250  # samples
    eval_conversations: int = 30
    eval_candidates: int = 10
    max_length: int = 1024  # tokens of prompt + answer (the synthetic prompts need ~600)
    checkpoint_every_n_steps: int = 25  # 100 samples at batch 4: minutes on a CPU
    seed: int = 0
    train_seed: int = 1100  # catalogue seeds train_seed, train_seed+1, ... (>= 1000)
    eval_seed: int = 1001
    # Keeping the describing skill: every step also trains on a batch of the teacher path's
    # descriptions (image tokens -> description, the pretraining catalogue's), weighted so.
    # Without it the LoRA forgets to describe: the teacher's perplexity on the demo's stage-1
    # validation rose from 12.1 to 76.9 (docs/tiny.md). 0 turns it off.
    describe_weight: float = 1.0
    describe_batch_size: int = 8
    # A PEFT adapter folder (same rank and layers) to start the LoRA from instead of zeros:
    # continuing the shipped adapter on new data (e.g. the broad phrasings).
    init_adapter: str | None = None
    # "bf16-mixed": forwards and backwards under CPU/GPU bf16 autocast (2-3x faster on a CPU
    # with native bf16), the LoRA's weights and the optimizer in float32; or "32-true".
    precision: str = "32-true"


class SelectionSample(NamedTuple):
    """One conversation with its candidates (the answer among them) as text. (A named tuple:
    Lightning's batch transfer rebuilds containers, which a frozen dataclass refuses.)"""

    context: str
    candidates: tuple[tuple[str, str], ...]  # (item_id, text after "ID: ")
    target: str


def parse_curriculum(spec: str) -> list[tuple[int, int, tuple[str, ...] | None]]:
    """``"2:400:line,4:300,10:800"`` -> ``[(2, 400, ("line",)), (4, 300, None), (10, 800, None)]``:
    candidates, samples and optionally the stage's look formats (``+``-joined; None: the
    run's ``look_formats``)."""
    stages = []
    for part in spec.split(","):
        fields = part.split(":")
        try:
            n_cand, n_samples = int(fields[0]), int(fields[1])
            if len(fields) > 3:
                raise ValueError
        except (ValueError, IndexError):
            raise LavicError(
                f"curriculum stage {part!r}: expected CANDIDATES:SAMPLES[:FORMAT+FORMAT]"
            ) from None
        if n_cand < 2 or n_samples < 1:
            raise LavicError(f"curriculum stage {part!r}: need >= 2 candidates and >= 1 sample")
        formats = tuple(fields[2].split("+")) if len(fields) == 3 else None
        for fmt in formats or ():
            if fmt not in STAGE_FORMATS:
                raise LavicError(f"curriculum stage {part!r}: unknown look format {fmt!r}")
        stages.append((n_cand, n_samples, formats))
    return stages


def look_text(item: PlannedItem, fmt: str) -> str:
    """The candidate's text after ``"ID: "``: its title with the look written in words."""
    colour, pattern = item.look.colour.word, item.look.pattern
    if fmt == "line":
        return f"{item.title}\n{colour} {pattern}"
    if fmt == "title":
        return f"{item.title}, {colour} {pattern}"
    if fmt == "description":
        return f"{item.title}\n{item.images[0].description.split('. ')[0].rstrip('.')}."
    raise LavicError(f"unknown look format {fmt!r}; choose from {LOOK_FORMATS}")


def selection_samples(
    seed: int,
    split: str,
    count: int,
    num_candidates: int,
    formats: Sequence[str],
    *,
    style: str = "default",
) -> list[SelectionSample]:
    """``count`` conversations of one synthetic catalogue (answer among the candidates),
    shuffled over its categories, each candidate's look written in a format drawn from
    ``formats`` (one format per conversation)."""
    if seed < 1000:
        raise LavicError(f"seed {seed}: instruction data uses catalogue seeds >= 1000")
    per_category = -(-count // 3) + 8  # a few spare: some test answers are dropped
    plan = plan_catalogue(
        seed=seed,
        style=style,
        num_train=per_category if split == "train" else 4,
        num_valid=4,
        num_test=per_category if split == "test" else 4,
        num_candidates=num_candidates,
        min_items_per_kind=max(20, num_candidates + 1),
    )
    rng = random.Random(f"instruct/{seed}/{split}")
    rows = []
    for category in plan.categories:
        for record in plan.conversations[category][split]:
            target = record["gt_items"][0]
            if target not in record["candidates_st"]:
                continue
            fmt = rng.choice(list(formats))
            cands = tuple((i, look_text(plan.items[i], fmt)) for i in record["candidates_st"])
            rows.append(SelectionSample(record["context"], cands, target))
    rng.shuffle(rows)
    if len(rows) < count:
        raise LavicError(f"catalogue seed {seed} gave {len(rows)} conversations, {count} asked")
    return rows[:count]


def mixed_samples(
    seed: int, split: str, count: int, num_candidates: int, formats: Sequence[str]
) -> list[SelectionSample]:
    """``count`` conversations in ``formats``: the ``broad`` and ``generic`` shares (by how
    often each is listed) from :mod:`lavic.pretrain.phrasing`, the rest from the synthetic
    catalogue ``seed``."""
    formats = list(formats)
    shares = {f: round(count * formats.count(f) / len(formats)) for f in PHRASING_FORMATS}
    n_catalogue = count - sum(shares.values())
    rows: list[SelectionSample] = []
    if n_catalogue:
        catalogue_formats = [f for f in formats if f not in PHRASING_FORMATS]
        rows += selection_samples(seed, split, n_catalogue, num_candidates, catalogue_formats)
    # held-out draws for the test split: another stream of the same generator
    stream = seed if split == "train" else seed + 500_000
    for fmt, n in shares.items():
        if n:
            drawn = broad_samples(stream, n, num_candidates, generic=fmt == GENERIC)
            rows += [SelectionSample(*c) for c in drawn]
    if n_catalogue < count:
        random.Random(f"mix/{seed}/{split}").shuffle(rows)
    return rows


def curriculum_samples(config: InstructConfig) -> list[SelectionSample]:
    """The whole training sequence: each stage from its own catalogue seed."""
    formats = config.look_formats.split(",")
    rows: list[SelectionSample] = []
    for k, (n_cand, n_samples, stage_formats) in enumerate(parse_curriculum(config.curriculum)):
        rows += mixed_samples(
            config.train_seed + k, "train", n_samples, n_cand, stage_formats or formats
        )
    return rows


def add_lm_adapter(backbone: Backbone, config: InstructConfig):
    """The backbone's model wrapped with a fresh LoRA on its language model's linear layers."""
    return add_lora(
        backbone.model,
        lm_targets(config.first_layer),
        r=config.rank,
        alpha=config.alpha,
        dropout=0.0,
        trainable_under=module_segments(LANGUAGE_MODULES),
    )


def prompts_and_targets(
    backbone: Backbone, rows: Sequence[SelectionSample], max_length: int = MAX_LENGTH
):
    """The reference's text-only recommendation prompts of ``rows`` and their answers."""
    prompts = [
        build_recommend_prompt(
            backbone.tokenizer, r.context, r.candidates, max_length=max_length, with_images=False
        ).text
        for r in rows
    ]
    return prompts, [r.target for r in rows]


def selection_loss(
    model, backbone: Backbone, rows: Sequence[SelectionSample], max_length: int = MAX_LENGTH
) -> torch.Tensor:
    """Mean cross-entropy of the answers (ID + EOS) given the prompts."""
    from lavic.model.compute import target_loss_sums

    prompts, targets = prompts_and_targets(backbone, rows, max_length)
    batch = build_batch(backbone.tokenizer, prompts, targets, max_length=max_length)
    loss_sum, count = target_loss_sums(
        model,
        backbone.tokenizer,
        {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "labels": batch.labels,
            "item_tokens": None,
        },
    )
    return loss_sum / count.clamp(min=1)


@torch.no_grad()
def selection_accuracy(
    model,
    backbone: Backbone,
    rows: Sequence[SelectionSample],
    *,
    batch_size: int = 4,
    max_length: int = MAX_LENGTH,
) -> float:
    """Recall@1 by scoring every candidate's answer (the evaluator's default decoding)."""
    from lavic.model.decoding import prepare_prompts, score_candidates

    was_training = model.training
    model.eval()
    hits = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        prompts, _ = prompts_and_targets(backbone, chunk, max_length)
        batch = prepare_prompts(
            model, backbone.tokenizer, prompts, [None] * len(chunk), max_length=max_length
        )
        scores = score_candidates(
            model, backbone.tokenizer, batch, [[i for i, _ in r.candidates] for r in chunk]
        )
        for row, s in zip(chunk, scores, strict=True):
            hits += max(s, key=s.get) == row.target
    model.train(was_training)
    return hits / max(1, len(rows))


class DescribeRetention:
    """Batches of the teacher path (``<image>`` expanded, the description as the target) for the
    LoRA to keep describing while it learns to select; their NLL is also measured."""

    def __init__(
        self,
        backbone: Backbone,
        train: Sequence[CaptionSample],
        held: Sequence[CaptionSample],
        config: InstructConfig,
    ):
        head = PromptHead(backbone)  # its ids only: the LoRA changes the head's keys/values
        self.backbone = backbone
        self.train = [with_head(_encode(backbone, head, c, c.image), head) for c in train]
        self.held = [with_head(_encode(backbone, head, c, c.image), head) for c in held]
        self.batch_size = config.describe_batch_size
        self.order = list(range(len(self.train)))
        random.Random(f"describe/{config.seed}").shuffle(self.order)
        self.pad_id = backbone.tokenizer.eos_token_id

    def loss(self, step: int) -> torch.Tensor:
        """Mean NLL per description token of the ``step``-th batch (a pure function of the step,
        so a resumed run draws what the uninterrupted one would)."""
        n = len(self.order)
        rows = [
            self.train[self.order[(step * self.batch_size + k) % n]] for k in range(self.batch_size)
        ]
        nll, count = caption_nll(self.backbone, None, _collate(rows, self.pad_id, 0))
        return nll / max(1, count)

    @torch.no_grad()
    def held_nll(self, model) -> float:
        """Mean NLL per description token on the held-out described images (``model``: the
        LoRA-wrapped backbone, put in eval mode for the measurement)."""
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for start in range(0, len(self.held), self.batch_size):
            rows = self.held[start : start + self.batch_size]
            nll, n = caption_nll(self.backbone, None, _collate(rows, self.pad_id, 0))
            total, count = total + float(nll), count + n
        model.train(was_training)
        return total / max(1, count)


def load_lm_adapter(model, adapter_dir: Path) -> None:
    """Load a saved LM adapter's weights (a checkpoint's, or a shipped adapter to continue)
    into ``model``'s LoRA; other names or shapes (another rank or layers) are refused by the
    training core's check, never loaded in part."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    from lavic.training.resume import check_trainable_state

    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise LavicError(f"{adapter_dir}: no {ADAPTER_WEIGHTS} to start the instruction LoRA from")
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    try:
        check_trainable_state(state, get_peft_model_state_dict(model))
    except LavicError as e:
        raise LavicError(f"{weights}: does not fit this LoRA: {e}") from None
    set_peft_model_state_dict(model, state)
    log.info("instruction LoRA loaded from %s (%d tensors)", adapter_dir, len(state))


def write_lm_adapter(model, out_dir: Path, *, dtype: torch.dtype = torch.float16) -> None:
    """Write the LoRA as the shipped PEFT adapter folder, atomically: ``dtype`` weights, no
    model card, files readable by all (package data)."""
    with atomic_directory(out_dir) as tmp:
        save_adapter(
            model,
            tmp,
            dtype=dtype,
            metadata={"lavic": "tiny LM instruction LoRA"},
            model_card=False,
        )
        for path in tmp.iterdir():
            os.chmod(path, 0o644)


class InstructModule(LoRAModule):
    """The instruction LoRA as a stage of the training core (:class:`LoRAModule`): the
    selection loss (stage 2's target NLL of the answer's ID) plus, weighted, the describing
    loss; the curriculum in order (no shuffling) and the learning curve carried in the
    checkpoints, so ``--resume`` continues exactly.

    Args:
        model: the LoRA-wrapped backbone model (:func:`add_lm_adapter`).
        backbone: its backbone (tokenizer, processor).
        config: the run's :class:`InstructConfig`.
        total: samples in the whole curriculum (the cosine schedule's length).
        describe: the describing batches, or None.
        measure: ``measure(samples, **extra)`` -> a curve point (accuracies, describe NLL).
        curve_file: where each curve point is appended as a JSON line.
    """

    def __init__(self, model, backbone, config, *, total, describe, measure, curve_file):
        super().__init__(model, lr=config.lr, weight_decay=config.weight_decay)
        self.backbone, self.config, self.total = backbone, config, total
        self.describe, self.measure, self.curve_file = describe, measure, curve_file
        self.curve: list[dict[str, Any]] = []
        self.seen = 0  # samples trained on
        self.train_s = 0.0  # seconds in training steps (not in measurements)
        self.next_eval = config.eval_every
        self.losses: list[float] = []
        self.describe_losses: list[float] = []

    def configure_optimizers(self):
        opt = super().configure_optimizers()
        size = self.config.batch_size
        schedule = warmup_schedule(
            opt,
            total=-(-self.total // size),  # optimizer steps
            warmup=-(-self.config.warmup_samples // size),
            decay=self.config.lr_schedule,
        )
        return {"optimizer": opt, "lr_scheduler": schedule}

    def on_train_epoch_start(self) -> None:
        self.start_epoch()

    def training_step(self, rows: list[SelectionSample], batch_idx: int) -> torch.Tensor:
        loss = selection_loss(self.model, self.backbone, rows, self.config.max_length)
        self.losses.append(loss.item())
        if self.describe is not None and self.config.describe_weight > 0:
            # a pure function of the step: a resumed run draws what the uninterrupted one would
            describe_loss = self.describe.loss(self.global_step)
            self.describe_losses.append(describe_loss.item())
            loss = loss + self.config.describe_weight * describe_loss
        self.count_samples(len(rows))
        return loss

    def record_point(self, samples: int, **extra) -> None:
        point = {**self.measure(samples, **extra), "train_s": round(self.train_s, 1)}
        self.curve.append(point)
        log.info("%s (%.1f min of training)", point, self.train_s / 60)
        with open(self.curve_file, "a") as f:
            f.write(json.dumps(point) + "\n")

    def after_step(self, rows: list[SelectionSample], seconds: float) -> None:
        """Count a finished optimizer step; measure the curve when it is due."""
        self.seen += len(rows)
        self.train_s += seconds
        if self.seen >= self.next_eval or self.seen >= self.total:
            self.next_eval += self.config.eval_every
            extra = {"candidates": len(rows[0].candidates)}
            extra["loss"] = round(sum(self.losses[-10:]) / len(self.losses[-10:]), 4)
            if self.describe_losses:
                extra["describe_loss"] = round(
                    sum(self.describe_losses[-10:]) / len(self.describe_losses[-10:]), 4
                )
            self.record_point(self.seen, **extra)

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "curve": self.curve,
            "seen": self.seen,
            "train_s": self.train_s,
            "next_eval": self.next_eval,
            "losses": self.losses[-10:],  # the window the curve's losses average
            "describe_losses": self.describe_losses[-10:],
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.curve = list(state.get("curve", []))
        self.seen = int(state.get("seen", 0))
        self.train_s = float(state.get("train_s", 0.0))
        self.next_eval = int(state.get("next_eval", self.config.eval_every))
        self.losses = list(state.get("losses", []))
        self.describe_losses = list(state.get("describe_losses", []))


class LearningCurve(L.Callback):
    """Times each step and measures the curve (:meth:`InstructModule.after_step`). It runs
    before the checkpoint callbacks, so a checkpoint holds the point of its own step."""

    def __init__(self) -> None:
        self._start = 0.0

    def on_train_start(self, trainer, module: InstructModule) -> None:
        if not module.curve:  # a fresh run (a resumed one has its curve from the checkpoint)
            module.record_point(0)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module: InstructModule, outputs, batch, batch_idx):
        module.after_step(batch, time.perf_counter() - self._start)


def instruct(
    backbone: Backbone,
    config: InstructConfig | None = None,
    *,
    work_dir: Path,
    resume: bool = False,
    captions: Sequence[CaptionSample] = (),
    held_captions: Sequence[CaptionSample] = (),
) -> tuple[Any, dict[str, Any]]:
    """Train the LM's selection skill; return ``(peft model, record)``.

    ``captions`` (needed when ``config.describe_weight > 0``): described images of a pretraining
    catalogue, trained beside the selection so the LM keeps describing; ``held_captions``: the
    described images whose NLL is measured with the accuracy.

    It runs on the training core (:class:`InstructModule` under :func:`build_trainer`): a
    checkpoint goes to ``work_dir/checkpoints/last.ckpt`` every ``checkpoint_every_n_steps``
    steps and at the end; ``resume`` continues from there (same config: the samples are a pure
    function of it). The accuracy on
    ``eval_conversations`` cold test conversations (10 candidates, seed ``eval_seed``, every look
    format) is measured every ``eval_every`` samples and recorded as the learning curve.
    """
    config = config or InstructConfig()
    if config.lr_schedule not in LR_SCHEDULES:
        raise LavicError(f"lr_schedule {config.lr_schedule!r}: choose from {LR_SCHEDULES}")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work_dir / "config.json", asdict(config))
    torch.manual_seed(config.seed)
    train = curriculum_samples(config)
    formats = config.look_formats.split(",")
    test = selection_samples(
        config.eval_seed, "test", config.eval_conversations, config.eval_candidates, formats
    )
    # the phrasings' own held-out draws, measured when a stage trains on them
    used = {f for _, _, fs in parse_curriculum(config.curriculum) for f in (fs or formats)}
    phrasing_tests = {
        fmt: mixed_samples(
            config.eval_seed, "test", config.eval_conversations, config.eval_candidates, [fmt]
        )
        for fmt in PHRASING_FORMATS
        if fmt in used
    }
    if config.precision not in ("32-true", "bf16-mixed"):
        raise LavicError(f"precision {config.precision!r}: choose 32-true or bf16-mixed")
    amp = autocast(torch.bfloat16 if config.precision == "bf16-mixed" else None)
    if config.describe_weight > 0 and not captions:
        raise LavicError("describe_weight > 0 needs the described images to train on (captions)")
    model = add_lm_adapter(backbone, config)
    if config.init_adapter is not None:
        load_lm_adapter(model, Path(config.init_adapter))
    describe = DescribeRetention(backbone, captions, held_captions, config) if captions else None

    def measure(samples_seen: int, **extra) -> dict[str, Any]:
        point = {"samples": samples_seen, **extra}
        with amp:
            point["accuracy"] = round(
                selection_accuracy(model, backbone, test, max_length=config.max_length), 4
            )
            for fmt, held in phrasing_tests.items():  # broad_accuracy, generic_accuracy
                point[f"{fmt}_accuracy"] = round(
                    selection_accuracy(model, backbone, held, max_length=config.max_length), 4
                )
            if describe is not None and describe.held:
                point["describe_nll"] = round(describe.held_nll(model), 4)
        return point

    module = InstructModule(
        model,
        backbone,
        config,
        total=len(train),
        describe=describe,
        measure=measure,
        curve_file=work_dir / "curve.jsonl",
    )
    loader = make_loader(
        train, list, batch_size=config.batch_size, num_workers=0, shuffle=False
    )  # the curriculum in its order
    module.train_sampler = loader.sampler
    args = TrainerArgs(
        num_epochs=1,
        batch_size=config.batch_size,
        precision=config.precision,
        accelerator="cpu",  # tiny's pretraining: the batches are built on the CPU
        devices="1",
        resume=resume,
        checkpoint_every_n_steps=config.checkpoint_every_n_steps,
        log_every_n_steps=1,
    )
    trainer = build_trainer(
        args,
        model=model,
        precision=config.precision,
        output_dir=work_dir,
        gradient_clip_val=config.max_grad_norm,
        callbacks=[LearningCurve()],
    )
    log.info(
        "instruction LoRA: %d trainable parameters",
        sum(p.numel() for p in model.parameters() if p.requires_grad),
    )
    ckpt_path = checkpoint_to_resume(work_dir / CHECKPOINT_DIR / LAST_CHECKPOINT, resume=resume)
    model.train()  # backbones load in eval mode, and Lightning keeps the mode it finds
    # our checkpoints hold only tensors and plain containers (the curve is numbers and strings)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path, weights_only=True)
    raise_if_interrupted(trainer)
    model.eval()
    record = {"config": asdict(config), "num_samples": len(train), "curve": module.curve}
    return model, record
