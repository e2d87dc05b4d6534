"""``lavic distill``: stage 1, visual knowledge self-distillation.

LoRA on every linear layer of the vision tower and the multimodal projector is trained so
that the frozen language model, reading an item's five visual tokens in place of
``<ItemImageEmb1..5>``, reproduces the description the same base model wrote from the full
image (the teacher). The best epoch's adapter is kept as a self-describing artefact in
``OUTPUT_DIR/vision_lora_adapter_best/``; ``OUTPUT_DIR/metrics.json`` reports the validation
perplexity before training, after (best epoch) and of the full-image-token teacher.

Example:
    lavic distill --model_name llava-hf/llava-v1.6-mistral-7b-hf \\
        --train_data data/item2meta_train.json --val_data data/item2meta_valid.jsonl \\
        --train_images_dir data/train_images --val_images_dir data/valid_images \\
        --output_dir out_distilled --lr 5e-5 --weight_decay 1e-5 --num_epochs 5 --batch_size 4
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lavic.config import LoRAArgs, TrainerArgs, config_to_dict, override
from lavic.constants import DEFAULT_MODEL_NAME
from lavic.errors import LavicError
from lavic.training.trainer import CHECKPOINT_DIR, LAST_CHECKPOINT

log = logging.getLogger(__name__)

BEST_DIR = "vision_lora_adapter_best"
MERGED_DIR = "merged"


@dataclass(kw_only=True)
class Args(TrainerArgs, LoRAArgs):
    """Options of ``lavic distill`` (the reference's flags and defaults, plus LaViC's)."""

    train_data: Path = field(
        metadata={"help": "training item metadata: item2meta_train.json (.json) or .jsonl"}
    )
    val_data: Path = field(
        metadata={"help": "validation item metadata: item2meta_valid.jsonl (.jsonl) or .json"}
    )
    train_images_dir: Path = field(metadata={"help": "folder of the training item images"})
    val_images_dir: Path = field(metadata={"help": "folder of the validation item images"})
    model_name: str = field(
        default=DEFAULT_MODEL_NAME,
        metadata={"help": "base LLaVA-NeXT model: Hub id, local checkpoint, `tiny`, `tiny-random`"},
    )
    output_dir: Path = field(
        default=Path("out_distilled"),
        metadata={"help": "run folder: checkpoints/, vision_lora_adapter_best/, metrics.json"},
    )
    # The reference's stage-1 defaults where they differ from the shared group's.
    max_steps: int | None = override(TrainerArgs, "max_steps", -1)
    checkpoint_every_n_steps: int | None = override(TrainerArgs, "checkpoint_every_n_steps", 100)
    max_length: int = field(
        default=2048, metadata={"help": "token budget of prompt + description (longer targets cut)"}
    )
    validate_before_training: bool = field(
        default=False,
        metadata={"help": "run a validation before the first step (logged as val_ppl_before)"},
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations in backward (saves memory)"}
    )
    gradient_clip_val: float | None = field(
        default=None, metadata={"help": "clip the gradient norm to this value (off by default)"}
    )
    num_nodes: int = field(default=1, metadata={"help": "machines (Lightning num_nodes)"})
    limit_train_items: int | None = field(
        default=None, metadata={"help": "use only the first N training items (quick runs)"}
    )
    limit_val_items: int | None = field(
        default=None, metadata={"help": "use only the first N validation items (quick runs)"}
    )
    teacher_eval: bool = field(
        default=True,
        metadata={"help": "measure val_ppl_teacher (the base model given the full image tokens)"},
    )
    mismatched_eval: bool = field(
        default=True,
        metadata={
            "help": "also validate with another item's image (val_ppl_best_mismatched): "
            "how much of the gain is visual"
        },
    )
    lenient: bool = field(
        default=False, metadata={"help": "skip (and count) bad metadata records instead of failing"}
    )
    merge: bool = field(
        default=False, metadata={"help": "also write the merged model to OUTPUT_DIR/merged/"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("max_length", "num_nodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        for name in ("limit_train_items", "limit_val_items"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1")
        for name in ("train_data", "val_data", "train_images_dir", "val_images_dir", "output_dir"):
            setattr(self, name, Path(getattr(self, name)))


# ---------------------------------------------------------------------------------- helpers


def _load_samples(path: Path, *, lenient: bool, limit: int | None, what: str):
    from lavic.data.loaders import described_images, load_item_meta
    from lavic.data.records import LoadReport

    report = LoadReport(str(path))
    meta = load_item_meta(path, lenient=lenient, report=report)
    if limit is not None:
        meta = dict(list(meta.items())[:limit])
    samples = described_images(meta)
    if not samples:
        raise LavicError(f"{path}: no {what} item image has a description (nothing to distill)")
    return meta, samples, report


# ---------------------------------------------------------------------------------- run


@dataclass
class DistillSetup:
    """What :func:`set_up` builds and :func:`fit` and :func:`write` use."""

    backbone: Any  # lavic.model.backbone.Backbone
    peft_model: Any  # LoRA on the vision tower and projector
    module: Any  # lavic.distill.module.DistillModule
    train_loader: Any
    # [0]: the student path on the validation images; [1] with --mismatched_eval: each with
    # another item's image (the control validated beside it during fit)
    val_loaders: list[Any]
    teacher_loader: Any  # the full image tokens on the validation images
    base_model: str
    best_dir: Path
    record: dict[str, Any]  # the data facts metrics.json reports


def run(args: Args) -> int:
    """Train the vision LoRA; write the best artefact, metrics and (optionally) the merged model."""
    setup = set_up(args)
    trainer, precision, fit_seconds = fit(args, setup)
    if trainer.is_global_zero:
        write(args, setup, trainer, precision, fit_seconds)
    return 0


def set_up(args: Args) -> DistillSetup:
    """The described images, the model with its vision LoRA, the loaders, and the module that
    writes the artefact on each new best validation (gathered, so FSDP-safe)."""
    import lightning as L

    from lavic.artifacts import read_artifact_info
    from lavic.distill.module import (
        DescribedImageDataset,
        DistillModule,
        MismatchedImages,
        StudentCollator,
        TeacherCollator,
    )
    from lavic.model.backbone import check_catalogue, load_backbone
    from lavic.model.lora import add_vision_lora, count_parameters
    from lavic.precision import load_dtype
    from lavic.training.module import best_artifact_writer
    from lavic.training.sampler import make_loader

    for path in (args.train_data, args.val_data):
        if not path.is_file():
            raise LavicError(f"{path}: no such metadata file")
    for path in (args.train_images_dir, args.val_images_dir):
        if not path.is_dir():
            raise LavicError(f"{path}: no such image folder")

    L.seed_everything(args.seed, workers=True, verbose=False)
    best_dir = args.output_dir / BEST_DIR

    train_meta, train_samples, train_report = _load_samples(
        args.train_data, lenient=args.lenient, limit=args.limit_train_items, what="training"
    )
    val_meta, val_samples, val_report = _load_samples(
        args.val_data, lenient=args.lenient, limit=args.limit_val_items, what="validation"
    )

    # An artefact as --model_name (continued distillation) becomes this artefact's parent.
    parent_info = read_artifact_info(args.model_name)
    parent = args.model_name if parent_info is not None else None
    base_model = parent_info["base_model"] if parent_info is not None else args.model_name
    check_catalogue(base_model, train_meta, args.train_data)
    # the one precision rule (lavic.precision.load_dtype); the precision is settled in `fit`
    dtype = load_dtype(args.precision, args.accelerator)
    backbone = load_backbone(args.model_name, dtype=dtype)
    backbone.model.to(dtype)  # built-in backbones (tiny-random) are built in float32
    if args.gradient_checkpointing and args.strategy != "fsdp":  # FSDP checkpoints per block
        backbone.model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    peft_model = add_vision_lora(
        backbone.model,
        r=args.lora_r,
        alpha=args.lora_alpha,
        dropout=args.lora_dropout,
        base_model=base_model,
    )
    trainable, total = count_parameters(peft_model)
    log.info("trainable parameters: %d of %d (%.4f%%)", trainable, total, 100 * trainable / total)

    student = StudentCollator(backbone.tokenizer, backbone.image_processor, args.max_length)
    teacher = TeacherCollator(backbone.processor, backbone.tokenizer, args.max_length)
    train_set = DescribedImageDataset(train_samples, args.train_images_dir, "train")
    val_set = DescribedImageDataset(val_samples, args.val_images_dir, "val")
    loader_kw = {"batch_size": args.batch_size, "num_workers": args.num_workers}
    train_loader = make_loader(train_set, student, shuffle=True, seed=args.seed, **loader_kw)
    val_loaders = [make_loader(val_set, student, shuffle=False, **loader_kw)]
    if args.mismatched_eval:
        mismatched = MismatchedImages(val_set)
        val_loaders.append(make_loader(mismatched, student, shuffle=False, **loader_kw))

    module = DistillModule(
        peft_model, backbone.item_token_ids, lr=args.lr, weight_decay=args.weight_decay
    )

    module.on_new_best = best_artifact_writer(
        best_dir,
        kind="distill",
        model=peft_model,
        backbone=backbone,
        config=args,
        base_model=base_model,
        parent=parent,
    )
    module.train_sampler = train_loader.sampler
    record = {
        "trainable_parameters": trainable,
        "total_params": total,
        "train_samples": len(train_samples),
        "val_samples": len(val_samples),
        "train_items": len(train_meta),
        "val_items": len(val_meta),
        "skipped_records": {"train": train_report.num_skipped, "val": val_report.num_skipped},
    }
    return DistillSetup(
        backbone=backbone,
        peft_model=peft_model,
        module=module,
        train_loader=train_loader,
        val_loaders=val_loaders,
        teacher_loader=make_loader(val_set, teacher, shuffle=False, **loader_kw),
        base_model=base_model,
        best_dir=best_dir,
        record=record,
    )


def fit(args: Args, setup: DistillSetup) -> tuple[Any, str, float]:
    """Settle the precision, validate before training, train (resuming if asked), score the
    final weights if ``--max_steps`` stopped between validations, then the reference points
    with the adapter off; returns the trainer, the precision and the fit's seconds."""
    from lavic.precision import check_on_loader, resolve_precision
    from lavic.training.resume import checkpoint_to_resume
    from lavic.training.trainer import build_trainer, raise_if_interrupted

    module, val_loader = setup.module, setup.val_loaders[0]
    # For `auto` on a CPU with native bf16: float32 vs bf16 autocast on the first validation
    # batches; LoRA's B is still 0, so this is the model the run starts from.
    check = check_on_loader(module.student_logits, val_loader)
    precision = resolve_precision(args.precision, args.accelerator, check=check)
    trainer = build_trainer(
        args,
        model=setup.peft_model,
        precision=precision,
        output_dir=args.output_dir,
        num_nodes=args.num_nodes,
        gradient_clip_val=args.gradient_clip_val,
        activation_checkpointing=args.gradient_checkpointing,
    )
    resume_from = checkpoint_to_resume(
        args.output_dir / CHECKPOINT_DIR / LAST_CHECKPOINT, resume=args.resume
    )

    if args.validate_before_training and resume_from is None:
        module.eval_mode, module.eval_label = "student", "before"
        trainer.validate(module, dataloaders=val_loader, verbose=False)
    module.eval_label = None

    # Lightning keeps each submodule's train/eval mode as found; the backbone was loaded in
    # eval mode, and LoRA dropout (and gradient checkpointing) act only in train mode.
    module.train()
    fit_start = time.perf_counter()
    fit_val_loaders = setup.val_loaders
    trainer.fit(
        module, setup.train_loader, fit_val_loaders, ckpt_path=resume_from, weights_only=True
    )
    raise_if_interrupted(trainer)
    global_step = int(trainer.global_step)
    if global_step > 0 and (not module.history or module.history[-1]["step"] != global_step):
        # Stopped between validations (--max_steps): score the final weights too.
        module.eval_mode, module.eval_label = "student", "final"
        trainer.validate(module, dataloaders=fit_val_loaders, verbose=False)
        module.record_validation(module.results.pop("final"), epoch=module.last_train_epoch)
    fit_seconds = time.perf_counter() - fit_start

    # Reference points, with the adapter switched off (= the untrained LoRA, whose B is 0):
    # the base model given the 5 tokens, and given the full image tokens (the teacher).
    with setup.peft_model.disable_adapter():
        if "before" not in module.results:
            module.eval_mode, module.eval_label = "student", "before"
            trainer.validate(module, dataloaders=val_loader, verbose=False)
        if args.teacher_eval:
            module.eval_mode, module.eval_label = "teacher", "teacher"
            trainer.validate(module, dataloaders=setup.teacher_loader, verbose=False)
    module.eval_mode, module.eval_label = "student", None
    module.gather_image_outcomes()
    return trainer, precision, fit_seconds


def write(
    args: Args, setup: DistillSetup, trainer, precision: str, fit_seconds: float
) -> dict[str, Any]:
    """Rank 0: the run's metrics into the best artefact (its adapter is already on disk) and
    ``metrics.json``, and the merged model with ``--merge``; returns the metrics."""
    from lavic.artifacts import read_metrics, write_metrics
    from lavic.model.backbone import load_backbone, unwrap

    module, best_dir, output_dir = setup.module, setup.best_dir, args.output_dir
    # The best weights are the ones on disk, with the record of the validation that chose them.
    best_meta = read_metrics(best_dir) if best_dir.is_dir() else None
    if best_meta is None or "best" not in best_meta:
        raise LavicError(f"no validated adapter was written to {best_dir}")
    best = best_meta["best"]

    before = module.results["before"]
    teacher_result = module.results.get("teacher")
    metrics: dict[str, Any] = {
        "model_name": args.model_name,
        "base_model": setup.base_model,
        "epochs": module.history,
        "best_epoch": best["epoch"],
        "best_step": best["step"],
        "val_loss_before": before["loss"],
        "val_ppl_before": before["ppl"],
        "val_loss_best": best["val_loss"],
        "val_loss_best_precision": precision,  # bf16 and fp32 losses differ by ~1e-3
        "val_ppl_best": best["val_ppl"],
        "val_loss_teacher": teacher_result["loss"] if teacher_result else None,
        "val_ppl_teacher": teacher_result["ppl"] if teacher_result else None,
        "val_ppl_best_mismatched": best.get("val_ppl_mismatched"),
        "val_target_tokens": before["tokens"],
        "train_images_per_s": (
            module.train_images / module.train_seconds if module.train_seconds > 0 else None
        ),
        "train_images": module.train_images,
        "train_seconds": module.train_seconds,
        "fit_seconds": fit_seconds,
        "steps": int(trainer.global_step),
        "world_size": trainer.world_size,
        "precision": precision,
        **setup.record,
        "truncated_targets": module.truncated_targets,
        "image_stats": {"train": module.image_stats("train"), "val": module.image_stats("val")},
        "config": config_to_dict(args),
    }
    # The adapter, tokenizer, processor and config are already in place: replacing the one
    # file (atomically) keeps the artefact whole.
    write_metrics(best_dir, {**metrics, "best": best, "final": True})
    write_metrics(output_dir, metrics)
    log.info(
        "validation perplexity: before %.3f, best %.3f (epoch %d), teacher %s",
        metrics["val_ppl_before"],
        metrics["val_ppl_best"],
        best["epoch"],
        f"{metrics['val_ppl_teacher']:.3f}" if teacher_result else "not measured",
    )
    missing = sum(s["missing"] for s in metrics["image_stats"].values())
    unreadable = sum(
        s["unreadable"] + s["unsafe"] + s["oversized"] for s in metrics["image_stats"].values()
    )
    if missing or unreadable:
        log.warning(
            "images replaced by the placeholder: %d missing, %d unreadable/unsafe/oversized",
            missing,
            unreadable,
        )

    if args.merge:
        from lavic.io import atomic_directory

        # Rebuilt from the artefact alone (base + merged adapter), whatever wraps the live model.
        merged = load_backbone(best_dir)
        with atomic_directory(output_dir / MERGED_DIR) as tmp:
            unwrap(merged.model).save_pretrained(str(tmp), safe_serialization=True)
            merged.save_preprocessing(tmp)
        log.info("wrote merged model %s", output_dir / MERGED_DIR)
    return metrics
