"""``lavic tune``: stage 2, recommendation prompt tuning (the seed's ``prompt_tuning.py``).

Starts from the base model with the stage-1 adapter merged, puts LoRA on every linear layer of
the language model (vision tower and projector frozen), and trains it to answer the ground
truth's ID given the seed's prompt: instruction, conversation, and per candidate ``ID: title``
followed by its five visual tokens. Those tokens are read from the item-token cache, computed
once per image before training; the vision tower never runs in a training step.

Writes ``FINETUNE_OUTPUT_DIR/trained_lora_adapter/`` (the best validation epoch's adapter, a
self-describing artefact whose parent is the stage-1 artefact), ``FINETUNE_OUTPUT_DIR/
metrics.json`` and then, unless ``--skip_eval``, evaluates on the test split
(:func:`lavic.evaluation.evaluate.evaluate_split`).
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from lavic.distill.train import resolve_precision
from lavic.errors import LavicError
from lavic.io import peek_checkpoint, remove_partial_writes

log = logging.getLogger(__name__)

ADAPTER_DIR = "trained_lora_adapter"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_NAME = "last"

Precision = Literal["auto", "32-true", "bf16-true", "bf16-mixed", "16-mixed", "16-true"]


@dataclass
class Args:
    model_dir: Path = field(
        metadata={
            "help": "stage-1 artefact (e.g. out_distilled/vision_lora_adapter_best); its adapter is "
            "merged onto its recorded base model"
        }
    )
    item_meta_path: Path = field(
        metadata={"help": "item metadata with titles (item2meta_*.json[l])"}
    )
    category: str = field(metadata={"help": "domain subdirectory of --data_dir, e.g. all_beauty"})
    candidate_type: str = field(
        default="candidates_st",
        metadata={
            "help": "the candidate list key in the conversations (candidates_st, candidates_gpt_large)"
        },
    )
    finetune_output_dir: Path = field(
        default=Path("out_finetuned"),
        metadata={"help": "where trained_lora_adapter/, metrics.json and the results go"},
    )
    data_dir: Path = field(
        default=Path("data"),
        metadata={"help": "dataset root holding <category>/{train,valid,test}.jsonl"},
    )
    image_dir: Path | None = field(
        default=None,
        metadata={
            "help": "item images <item>_0.jpg (missing ones: white placeholder, counted); required "
            "unless --no_images"
        },
    )
    max_length: int = field(
        default=2048,
        metadata={
            "help": "token budget of prompt + answer; a longer conversation is cut (never a "
            "candidate), counted in metrics.json"
        },
    )
    batch_size: int = field(default=1, metadata={"help": "samples per step"})
    lr: float = field(default=5e-5, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=1e-5, metadata={"help": "AdamW weight decay"})
    num_epochs: int = field(default=1, metadata={"help": "training epochs"})
    seed: int = field(
        default=42, metadata={"help": "seed of LoRA init, shuffling and the ground-truth placement"}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout"})
    precision: Precision = field(
        default="auto",
        metadata={
            "help": "Lightning precision; auto: bf16-mixed on a CUDA GPU with bf16 (frozen weights "
            "in bf16, LoRA in fp32), else 32-true"
        },
    )
    accelerator: str = field(
        default="auto", metadata={"help": "Lightning accelerator: auto, cpu, gpu"}
    )
    devices: str = field(
        default="1", metadata={"help": "Lightning devices: a count, a list like 0,1, or auto"}
    )
    strategy: str = field(default="auto", metadata={"help": "Lightning strategy, e.g. ddp"})
    no_images: bool = field(
        default=False,
        metadata={"help": "text-only ablation: the same prompt without the visual tokens"},
    )
    decoding: Literal["score", "constrained", "generate"] = field(
        default="score", metadata={"help": "decoding used by the final test evaluation"}
    )
    cache_dir: Path | None = field(
        default=None,
        metadata={"help": "item visual-token cache (default: FINETUNE_OUTPUT_DIR/item_tokens)"},
    )
    encode_batch_size: int = field(
        default=16, metadata={"help": "images per vision-tower call when filling the cache"}
    )
    max_steps: int | None = field(
        default=None,
        metadata={"help": "stop after this many optimizer steps (default: run --num_epochs)"},
    )
    accumulate_grad_batches: int = field(default=1, metadata={"help": "batches per optimizer step"})
    log_every_n_steps: int = field(
        default=10, metadata={"help": "record the train loss every this many optimizer steps"}
    )
    checkpoint_every_n_steps: int | None = field(
        default=None,
        metadata={
            "help": "also checkpoint (for --resume) every this many steps (default: each epoch)"
        },
    )
    num_workers: int = field(default=0, metadata={"help": "data-loader worker processes"})
    lenient: bool = field(
        default=False,
        metadata={"help": "skip malformed records (counted in metrics.json) instead of failing"},
    )
    resume: bool = field(
        default=False,
        metadata={"help": "continue from FINETUNE_OUTPUT_DIR/checkpoints/last.ckpt if present"},
    )
    skip_eval: bool = field(default=False, metadata={"help": "do not evaluate on the test split"})

    def __post_init__(self):
        positive = (
            "max_length",
            "batch_size",
            "num_epochs",
            "lora_r",
            "accumulate_grad_batches",
            "log_every_n_steps",
            "encode_batch_size",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "checkpoint_every_n_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1, got {value}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.lora_dropout < 1:
            raise ValueError("need --lr > 0, --weight_decay >= 0 and 0 <= --lora_dropout < 1")
        if self.num_workers < 0:
            raise ValueError("--num_workers must be >= 0")
        if not self.candidate_type.startswith("candidates_"):
            raise ValueError(
                f"--candidate_type must be a candidates_* key, got {self.candidate_type!r}"
            )
        if self.image_dir is None and not self.no_images:
            raise ValueError("--image_dir is required (or --no_images for the text-only ablation)")


# ------------------------------------------------------------------------------------ helpers


def load_dtype(precision: str) -> torch.dtype:
    """Dtype of the frozen backbone's weights for a Lightning precision.

    With ``*-mixed`` the frozen weights are loaded in half precision too (they never
    update, and a 7B model in float32 would double the memory), while the LoRA weights that
    train stay float32 (PEFT keeps adapters float32 on a half-precision base) under autocast.
    ``*-true`` casts everything, LoRA included, to half precision: at lr 5e-5 Adam's updates
    are near bfloat16's resolution, so it is not the default.
    """
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


def _devices(value: str) -> int | str | list[int]:
    value = value.strip()
    if value == "auto" or value == "-1":
        return value if value == "auto" else -1
    if "," in value:
        return [int(v) for v in value.split(",") if v.strip()]
    try:
        return int(value)
    except ValueError:
        raise LavicError(
            f"--devices must be a count, a list like 0,1 or auto; got {value!r}"
        ) from None


def add_language_lora(model, *, r: int, alpha: int, dropout: float):
    """Wrap ``model`` in a PeftModel with LoRA on every linear layer of the language model.

    Everything else (vision tower, projector, embeddings, LM head) is frozen.
    """
    from peft import LoraConfig, get_peft_model

    from lavic.model.lora import language_lora_targets

    targets = language_lora_targets(model)
    if not targets:
        raise LavicError("the backbone has no linear layers under model.language_model")
    for p in model.parameters():
        p.requires_grad_(False)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none"
    )
    return get_peft_model(model, config)


def _looks_like_path(name: str | Path) -> bool:
    """A local path rather than a Hub id (``org/name``) or a built-in name (``tiny``)."""
    text = str(name)
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text


def _latest_checkpoint(out_dir: Path) -> Path | None:
    found = sorted((out_dir / CHECKPOINT_DIR).glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


# ---------------------------------------------------------------------------------------- run


def run(args: Args) -> int:
    import lightning as L
    from torch.utils.data import DataLoader

    from lavic.cache.store import adapter_fingerprint, build_item_token_cache
    from lavic.data.images import ImageStats
    from lavic.data.loaders import item_title, items_without_title, load_item_meta, load_split
    from lavic.data.records import LoadReport
    from lavic.distill.module import ShardSampler
    from lavic.io import atomic_checkpoint_io
    from lavic.model.backbone import load_backbone, read_artifact_info
    from lavic.model.lora import count_parameters
    from lavic.tune.data import RecommendCollator, RecommendDataset, make_samples
    from lavic.tune.module import RecommendTuner

    out = Path(args.finetune_output_dir)
    cache_dir = Path(args.cache_dir) if args.cache_dir is not None else out / "item_tokens"
    L.seed_everything(args.seed, workers=True, verbose=False)

    # -- lineage: the stage-1 artefact this run is trained on top of
    info = read_artifact_info(args.model_dir)
    if info is None and not Path(args.model_dir).exists() and _looks_like_path(args.model_dir):
        raise LavicError(
            f"{args.model_dir}: no such directory (give the stage-1 artefact, e.g. "
            "out_distilled/vision_lora_adapter_best)"
        )
    if info is None:
        log.warning(
            "%s is not a LaViC artefact: tuning the plain backbone (no stage-1 adapter)",
            args.model_dir,
        )
        base_model, parent = str(args.model_dir), None
    else:
        base_model, parent = info["base_model"], Path(args.model_dir)

    # -- data
    train_report, valid_report = LoadReport(""), LoadReport("")
    train_convs = load_split(
        args.data_dir,
        args.category,
        "train",
        lenient=args.lenient,
        report=train_report,
        candidate_key=args.candidate_type,
    )
    valid_convs = load_split(
        args.data_dir,
        args.category,
        "valid",
        lenient=args.lenient,
        report=valid_report,
        candidate_key=args.candidate_type,
    )
    if not train_convs or not valid_convs:
        raise LavicError(
            f"{args.data_dir}/{args.category}: the train and valid splits need at "
            f"least one conversation (have {len(train_convs)}, {len(valid_convs)})"
        )
    meta = load_item_meta(args.item_meta_path, lenient=args.lenient)
    train_samples = make_samples(train_convs, args.candidate_type, seed=args.seed)
    valid_samples = make_samples(valid_convs, args.candidate_type, seed=args.seed)

    # -- model: base + stage-1 adapter merged
    precision = resolve_precision(args.precision, args.accelerator)
    dtype = load_dtype(precision)
    backbone = load_backbone(args.model_dir, dtype=dtype)
    backbone.model.to(dtype)  # built-in backbones (tiny-random) are built in float32
    if args.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        backbone.model.to("cuda")  # encode the cache on the GPU (training moves it anyway)
    tokenizer = backbone.tokenizer
    with_images = not args.no_images

    def title_of(item_id: str) -> str:
        return item_title(meta, item_id)

    train_ds = RecommendDataset(
        train_samples,
        tokenizer,
        title_of,
        max_length=args.max_length,
        with_images=with_images,
        desc="train prompts",
    )
    valid_ds = RecommendDataset(
        valid_samples,
        tokenizer,
        title_of,
        max_length=args.max_length,
        with_images=with_images,
        desc="valid prompts",
    )
    item_ids = list(dict.fromkeys(train_ds.item_ids() + valid_ds.item_ids()))
    missing_titles = items_without_title(meta, item_ids)
    if missing_titles:
        log.warning(
            "%d of %d candidate items have no title (shown as 'No Title')",
            len(missing_titles),
            len(item_ids),
        )

    # -- item tokens: computed once (or reused), before any training step
    image_stats = ImageStats()
    cache = None
    cache_report: dict[str, Any] | None = None
    if with_images:
        cache = build_item_token_cache(
            backbone,
            item_ids,
            args.image_dir,
            cache_dir,
            fingerprint=adapter_fingerprint(args.model_dir),
            batch_size=args.encode_batch_size,
            stats=image_stats,
        )
        cache_report = cache.last_report.as_dict() if cache.last_report else None
        if image_stats.placeholders:
            log.warning(
                "%d of %d candidate items have no readable image (placeholder used)",
                image_stats.placeholders,
                len(item_ids),
            )

    # -- LoRA on the language model only
    model = add_language_lora(
        backbone.model, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout
    )
    trainable, total = count_parameters(model)
    log.info("trainable parameters: %d of %d (%.3f%%)", trainable, total, 100 * trainable / total)

    collate = RecommendCollator(tokenizer, cache, max_length=args.max_length)
    # A seeded permutation per epoch (seed + epoch) that a checkpoint can resume mid-way, so a
    # resumed run sees exactly the batches of an uninterrupted one; each rank takes its shard.
    train_sampler = ShardSampler(len(train_ds), shuffle=True, pad=True, seed=args.seed)
    train_loader = DataLoader(
        train_ds,
        batch_size=args.batch_size,
        sampler=train_sampler,
        collate_fn=collate,
        num_workers=args.num_workers,
    )
    valid_loader = DataLoader(
        valid_ds,
        batch_size=args.batch_size,
        sampler=ShardSampler(len(valid_ds), shuffle=False, pad=False),
        collate_fn=collate,
        num_workers=args.num_workers,
    )
    truncated_targets = _count_truncated_targets(tokenizer, (train_ds, valid_ds), args.max_length)

    module = RecommendTuner(
        model,
        tokenizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        log_every_n_steps=args.log_every_n_steps,
    )
    module.train_sampler = train_sampler
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from lavic.distill.module import StepCheckpoint

    # last.ckpt after each epoch's validation or, with --checkpoint_every_n_steps, every N
    # steps instead (an epoch's last step only after its validation: see StepCheckpoint).
    if args.checkpoint_every_n_steps:
        path = out / CHECKPOINT_DIR / f"{CHECKPOINT_NAME}.ckpt"
        checkpoints = [StepCheckpoint(path, args.checkpoint_every_n_steps)]
    else:
        checkpoints = [
            ModelCheckpoint(
                dirpath=out / CHECKPOINT_DIR,
                filename=CHECKPOINT_NAME,
                save_top_k=1,
                monitor=None,
                enable_version_counter=False,
            )
        ]
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=_devices(args.devices),
        strategy=args.strategy,
        precision=precision,
        max_epochs=args.num_epochs,
        max_steps=args.max_steps if args.max_steps is not None else -1,
        accumulate_grad_batches=args.accumulate_grad_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=args.log_every_n_steps,
        logger=CSVLogger(str(out), name="logs"),
        callbacks=checkpoints,
        default_root_dir=str(out),
        enable_model_summary=False,
        use_distributed_sampler=False,  # ShardSampler shards by rank itself
        # A kill never leaves half a last.ckpt (DeepSpeed writes its own checkpoint folders).
        plugins=None if "deepspeed" in args.strategy else [atomic_checkpoint_io()],
    )
    ckpt_path = None
    if remove_partial_writes(out / CHECKPOINT_DIR / f"{CHECKPOINT_NAME}.ckpt"):
        log.warning("removed a partly written checkpoint under %s (a killed run)", out)
    if args.resume:
        ckpt_path = _latest_checkpoint(out)
        if ckpt_path is None:
            log.warning(
                "--resume: no checkpoint under %s; starting from the beginning",
                out / CHECKPOINT_DIR,
            )
        else:
            epoch, step = peek_checkpoint(ckpt_path)
            log.info("resuming from %s epoch %d step %d", ckpt_path, epoch, step)
    model.train()  # backbones load in eval mode; LoRA dropout acts only in train mode
    trainer.fit(
        module,
        train_loader,
        valid_loader,
        ckpt_path=str(ckpt_path) if ckpt_path else None,
        weights_only=True,  # our checkpoints hold only tensors and plain containers
    )
    if module.last_validated_step != trainer.global_step:
        # Stopped by --max_steps mid-epoch: validate the final weights too.
        trainer.validate(module, valid_loader, verbose=False)
    module.restore_best()

    history = module.history
    epochs = _merge_epochs(history)
    metrics: dict[str, Any] = {
        "kind": "tune",
        "model_dir": str(args.model_dir),
        "base_model": base_model,
        "category": args.category,
        "candidate_type": args.candidate_type,
        "no_images": args.no_images,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "num_epochs": args.num_epochs,
        "precision": precision,
        "train_conversations": len(train_convs),
        "valid_conversations": len(valid_convs),
        "train_samples": len(train_ds),
        "valid_samples": len(valid_ds),
        "skipped_records": {"train": train_report.num_skipped, "valid": valid_report.num_skipped},
        "gt_inserted_into_candidates": {
            "train": sum(s.replaced is not None for s in train_samples),
            "valid": sum(s.replaced is not None for s in valid_samples),
        },
        "truncated_prompts": {"train": train_ds.truncated, "valid": valid_ds.truncated},
        "conversation_tokens_dropped": {
            "train": train_ds.tokens_dropped,
            "valid": valid_ds.tokens_dropped,
        },
        "truncated_targets": truncated_targets,
        "candidate_items": len(item_ids),
        "items_without_title": len(missing_titles),
        "missing_images": image_stats.placeholders if with_images else None,
        "images": image_stats.as_dict() if with_images else None,
        "item_token_cache": {"dir": str(cache_dir), **cache_report} if cache_report else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "steps": trainer.global_step,
        "epochs": epochs,
        "train_steps": history["train_steps"],
        "best": module.best,
        "train_seconds": history["train_seconds"],
        "train_samples_seen": history["train_samples"],
        "train_samples_per_second": (
            history["train_samples"] / history["train_seconds"]
            if history["train_seconds"] > 0
            else None
        ),
    }
    adapter_dir = out / ADAPTER_DIR
    if trainer.is_global_zero:
        from lavic.artifacts import write_artifact
        from lavic.io import atomic_write_json

        write_artifact(
            adapter_dir,
            kind="tune",
            model=model,
            backbone=backbone,
            config=args,
            metrics=metrics,
            base_model=base_model,
            parent=parent,
        )
        # A fresh metrics.json: any evaluation of an earlier run in this folder is stale.
        atomic_write_json(out / METRICS_FILE, metrics)
        log.info(
            "best epoch %s (val_loss %s); wrote %s and %s",
            module.best and module.best["epoch"],
            module.best and module.best["val_loss"],
            adapter_dir,
            out / METRICS_FILE,
        )
    if args.skip_eval or not trainer.is_global_zero:
        return 0

    # Evaluate the artefact as written (reloaded exactly as `lavic evaluate` would).
    del trainer, module, model, backbone, cache, train_loader, valid_loader
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    from lavic.evaluation.evaluate import evaluate_split

    evaluate_split(
        model_dir=adapter_dir,
        data_dir=args.data_dir,
        category=args.category,
        candidate_type=args.candidate_type,
        split="test",
        item_meta_path=args.item_meta_path,
        image_dir=args.image_dir,
        output_dir=out,
        decoding=args.decoding,
        no_images=args.no_images,
        max_length=args.max_length,
        batch_size=args.batch_size,
        cache_dir=None if args.no_images else cache_dir,
        lenient=args.lenient,
        train_info=metrics,
    )
    return 0


def _count_truncated_targets(tokenizer, datasets, max_length: int) -> int:
    """Samples whose target (ID + EOS) does not fit after its prompt (counted, then cut)."""
    from lavic.model.inputs import encode_prompt, encode_target

    count = 0
    for ds in datasets:
        for row in ds:
            if (
                len(encode_prompt(tokenizer, row.prompt))
                + len(encode_target(tokenizer, row.target))
                > max_length
            ):
                count += 1
    return count


def _merge_epochs(history: dict[str, Any]) -> list[dict[str, Any]]:
    """Per epoch: train loss (token mean) and validation loss, by epoch number."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for record in history["train_epochs"]:
        by_epoch.setdefault(record["epoch"], {"epoch": record["epoch"]}).update(
            train_loss=record["train_loss"], step=record["step"]
        )
    for record in history["val_epochs"]:
        by_epoch.setdefault(record["epoch"], {"epoch": record["epoch"]}).update(
            val_loss=record["val_loss"], val_step=record["step"]
        )
    return [by_epoch[k] for k in sorted(by_epoch)]
