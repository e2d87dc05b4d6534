"""``lavic tune``: stage 2, recommendation prompt tuning (the reference's ``prompt_tuning.py``).

Starts from the base model with the stage-1 adapter merged, puts LoRA on every linear layer of
the language model (vision tower and projector frozen), and trains it to answer the ground
truth's ID given the reference's prompt: instruction, conversation, and per candidate ``ID: title``
followed by its five visual tokens. Those tokens are read from the item-token cache, computed
once per image before training; the vision tower never runs in a training step.

Writes ``FINETUNE_OUTPUT_DIR/trained_lora_adapter/`` (the best validation epoch's adapter, a
self-describing artefact whose parent is the stage-1 artefact), ``FINETUNE_OUTPUT_DIR/
metrics.json`` and then, unless ``--skip_eval``, evaluates on the test split
(:class:`lavic.evaluation.evaluate.Evaluator`, configured from this run's options).
"""

from __future__ import annotations

import functools
import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from lavic.artifacts import TUNED_ADAPTER_DIR
from lavic.config import LoRAArgs, RecommendDataArgs, TrainerArgs, override
from lavic.errors import LavicError
from lavic.training.trainer import CHECKPOINT_DIR, LAST_CHECKPOINT

log = logging.getLogger(__name__)

ADAPTER_DIR = TUNED_ADAPTER_DIR


@dataclass(kw_only=True)
class Args(RecommendDataArgs, TrainerArgs, LoRAArgs):
    """Options of ``lavic tune`` (the reference's ``prompt_tuning.py`` flags and defaults, plus
    LaViC's): the data and prompt options it shares with ``lavic evaluate``
    (:class:`RecommendDataArgs`, with help that says what each means for training), the
    shared training core's and LoRA's, and its own."""

    model_dir: Path = field(
        metadata={
            "help": "stage-1 artefact (e.g. out_distilled/vision_lora_adapter_best); its adapter is "
            "merged onto its recorded base model"
        }
    )
    item_meta_path: Path = override(
        RecommendDataArgs,
        "item_meta_path",
        help="item metadata with titles (item2meta_*.json[l])",
    )
    category: str = override(
        RecommendDataArgs, "category", help="domain subdirectory of --data_dir, e.g. all_beauty"
    )
    candidate_type: str = override(
        RecommendDataArgs,
        "candidate_type",
        help="the candidate list key in the conversations (candidates_st, candidates_gpt_large)",
    )
    finetune_output_dir: Path = field(
        default=Path("out_finetuned"),
        metadata={"help": "where trained_lora_adapter/, metrics.json and the results go"},
    )
    data_dir: Path = override(
        RecommendDataArgs,
        "data_dir",
        Path("data"),
        help="dataset root holding <category>/{train,valid,test}.jsonl",
    )
    image_dir: Path | None = override(
        RecommendDataArgs,
        "image_dir",
        help="item images <item>_0.jpg (missing ones: white placeholder, counted); required "
        "unless --no_images",
    )
    max_length: int = override(
        RecommendDataArgs,
        "max_length",
        help="token budget of prompt + answer; a longer conversation is cut (never a "
        "candidate), counted in metrics.json",
    )
    # The reference's stage-2 defaults where they differ from the shared group's.
    batch_size: int = override(TrainerArgs, "batch_size", 1)
    num_epochs: int = override(TrainerArgs, "num_epochs", 1)
    devices: str = override(TrainerArgs, "devices", "1")
    num_workers: int = override(TrainerArgs, "num_workers", 0)
    no_images: bool = override(
        RecommendDataArgs,
        "no_images",
        help="text-only ablation: the same prompt without the visual tokens",
    )
    decoding: Literal["score", "constrained", "generate"] = override(
        RecommendDataArgs, "decoding", help="decoding used by the final test evaluation"
    )
    cache_dir: Path | None = field(
        default=None,
        metadata={"help": "item visual-token cache (default: FINETUNE_OUTPUT_DIR/item_tokens)"},
    )
    encode_batch_size: int = field(
        default=16, metadata={"help": "images per vision-tower call when filling the cache"}
    )
    lenient: bool = override(
        RecommendDataArgs,
        "lenient",
        help="skip malformed records (counted in metrics.json) instead of failing",
    )
    skip_eval: bool = field(default=False, metadata={"help": "do not evaluate on the test split"})
    candidate_curriculum: list[int] | None = field(
        default=None,
        metadata={
            "help": "candidates per training sample in the first epochs, e.g. `2 4`: epoch 1 "
            "shows each answer with one other of its candidates, epoch 2 with three, later "
            "epochs the whole list (validation: always the whole list)"
        },
    )

    def __post_init__(self):
        super().__post_init__()
        stages = self.candidate_curriculum or []
        if any(k < 2 for k in stages):
            raise ValueError(
                f"--candidate_curriculum: every stage needs at least 2 candidates, got {stages}"
            )
        if stages and self.num_epochs <= len(stages):
            raise ValueError(
                f"--num_epochs {self.num_epochs} leaves no epoch on the whole candidate list "
                f"after the {len(stages)} curriculum epochs (--candidate_curriculum)"
            )
        for name in ("max_length", "encode_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not self.candidate_type.startswith("candidates_"):
            raise ValueError(
                f"--candidate_type must be a candidates_* key, got {self.candidate_type!r}"
            )
        if self.image_dir is None and not self.no_images:
            raise ValueError("--image_dir is required (or --no_images for the text-only ablation)")


# ------------------------------------------------------------------------------------ helpers


def _looks_like_path(name: str | Path) -> bool:
    """A local path rather than a Hub id (``org/name``) or a built-in name (``tiny``)."""
    text = str(name)
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text


# ---------------------------------------------------------------------------------------- run


@dataclass
class TuneSetup:
    """What :func:`set_up` builds and :func:`fit` and :func:`write` use: the model with its
    LoRA, the loaders, the Lightning module, the lineage, and the facts about the data that
    ``metrics.json`` reports (``record``, in its order)."""

    backbone: Any  # lavic.model.backbone.Backbone
    model: Any  # the PeftModel (LoRA on the language model)
    module: Any  # lavic.tune.module.RecommendTuner
    train_loader: Any
    valid_loader: Any
    base_model: str
    cache_dir: Path
    record: dict[str, Any]


def run(args: Args) -> int:
    """Set up, fit, write the artefact; then evaluate it on the test split (unless
    ``--skip_eval``), reloaded exactly as ``lavic evaluate`` would."""
    setup = set_up(args)
    trainer, precision = fit(args, setup)
    adapter_dir, metrics = write(args, setup, trainer, precision)
    if args.skip_eval or not trainer.is_global_zero:
        return 0
    cache_dir = None if args.no_images else setup.cache_dir
    del trainer, setup  # the model and its loaders: the evaluation loads the artefact anew
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    from lavic.evaluation.evaluate import Args as EvaluateArgs
    from lavic.evaluation.evaluate import Evaluator

    evaluation = EvaluateArgs.following(
        args,
        model_dir=adapter_dir,
        output_dir=Path(args.finetune_output_dir),
        split="test",
        batch_size=args.batch_size,
        cache_dir=cache_dir,
    )
    Evaluator(evaluation).evaluate(train_info=metrics)
    return 0


def set_up(args: Args) -> TuneSetup:
    """The lineage, the conversations, the model (stage-1 adapter merged, LoRA added), the
    item-token cache (filled once, before any step) and the loaders."""
    import lightning as L

    from lavic.artifacts import read_artifact_info
    from lavic.cache.store import adapter_fingerprint, build_item_token_cache
    from lavic.data.images import ImageStats
    from lavic.data.loaders import item_title, items_without_title, load_item_meta, load_split
    from lavic.data.records import LoadReport
    from lavic.model.backbone import load_backbone
    from lavic.model.lora import add_language_lora, count_parameters
    from lavic.precision import load_dtype
    from lavic.training.module import best_artifact_writer
    from lavic.training.sampler import make_loader
    from lavic.tune.data import (
        RecommendCollator,
        RecommendDataset,
        make_samples,
        narrow_candidates,
    )
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
    reports = {split: LoadReport("") for split in ("train", "valid")}
    train_convs, valid_convs = (
        load_split(
            args.data_dir,
            args.category,
            split,
            lenient=args.lenient,
            report=reports[split],
            candidate_key=args.candidate_type,
        )
        for split in ("train", "valid")
    )
    if not train_convs or not valid_convs:
        raise LavicError(
            f"{args.data_dir}/{args.category}: the train and valid splits need at "
            f"least one conversation (have {len(train_convs)}, {len(valid_convs)})"
        )
    meta = load_item_meta(args.item_meta_path, lenient=args.lenient)
    train_samples = make_samples(train_convs, args.candidate_type, seed=args.seed)
    valid_samples = make_samples(valid_convs, args.candidate_type, seed=args.seed)

    # -- model: base + stage-1 adapter merged, in the dtype of the one precision rule
    # (lavic.precision.load_dtype); the precision itself is settled in `fit`, on the batches.
    dtype = load_dtype(args.precision, args.accelerator)
    backbone = load_backbone(args.model_dir, dtype=dtype)
    backbone.model.to(dtype)  # built-in backbones (tiny-random) are built in float32
    if args.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        backbone.model.to("cuda")  # encode the cache on the GPU (training moves it anyway)
    tokenizer = backbone.tokenizer
    with_images = not args.no_images

    def title_of(item_id: str) -> str:
        return item_title(meta, item_id)

    def render(samples, desc: str) -> RecommendDataset:
        return RecommendDataset(
            samples,
            tokenizer,
            title_of,
            max_length=args.max_length,
            with_images=with_images,
            desc=desc,
        )

    train_ds = render(train_samples, "train prompts")
    valid_ds = render(valid_samples, "valid prompts")
    # A curriculum renders the same samples with fewer candidates, one view per stage, read
    # in turn by the epochs (the sampler picks an epoch's view); the last is the whole list.
    stages = args.candidate_curriculum or []
    train_views = [
        render(
            narrow_candidates(train_samples, k, seed=args.seed), f"train prompts, {k} candidates"
        )
        for k in stages
    ] + [train_ds]
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
    loader_kw = {"batch_size": args.batch_size, "num_workers": args.num_workers}
    train_loader = make_loader(
        torch.utils.data.ConcatDataset(train_views),
        collate,
        shuffle=True,
        seed=args.seed,
        views=len(train_views),
        **loader_kw,
    )
    valid_loader = make_loader(valid_ds, collate, shuffle=False, **loader_kw)
    module = RecommendTuner(
        model,
        tokenizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        log_every_n_steps=args.log_every_n_steps,
    )
    module.train_sampler = train_loader.sampler
    adapter_dir = out / ADAPTER_DIR

    module.on_new_best = best_artifact_writer(
        adapter_dir,
        kind="tune",
        model=model,
        backbone=backbone,
        config=args,
        base_model=base_model,
        parent=parent,
    )

    record = {
        "train_conversations": len(train_convs),
        "valid_conversations": len(valid_convs),
        "train_samples": len(train_ds),
        "valid_samples": len(valid_ds),
        "skipped_records": {split: report.num_skipped for split, report in reports.items()},
        "gt_inserted_into_candidates": {
            "train": sum(s.replaced is not None for s in train_samples),
            "valid": sum(s.replaced is not None for s in valid_samples),
        },
        "truncated_prompts": {"train": train_ds.truncated, "valid": valid_ds.truncated},
        "conversation_tokens_dropped": {
            "train": train_ds.tokens_dropped,
            "valid": valid_ds.tokens_dropped,
        },
        "truncated_targets": _count_truncated_targets(
            tokenizer, (train_ds, valid_ds), args.max_length
        ),
        "candidate_items": len(item_ids),
        "items_without_title": len(missing_titles),
        "missing_images": image_stats.placeholders if with_images else None,
        "images": image_stats.as_dict() if with_images else None,
        "item_token_cache": {"dir": str(cache_dir), **cache_report} if cache_report else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
    }
    return TuneSetup(
        backbone=backbone,
        model=model,
        module=module,
        train_loader=train_loader,
        valid_loader=valid_loader,
        base_model=base_model,
        cache_dir=cache_dir,
        record=record,
    )


def fit(args: Args, setup: TuneSetup) -> tuple[Any, str]:
    """Settle the precision, train (resuming if asked) and validate the final weights when
    ``--max_steps`` stopped mid-epoch; each new best validation has written the artefact.
    Returns the trainer and the precision."""
    from lavic.model.compute import prompt_logits
    from lavic.precision import check_on_loader, resolve_precision
    from lavic.training.resume import checkpoint_to_resume
    from lavic.training.trainer import build_trainer, raise_if_interrupted

    out = Path(args.finetune_output_dir)
    model, module = setup.model, setup.module
    # For `auto` on a CPU with native bf16: float32 vs bf16 autocast on the first validation
    # batches (run only then); LoRA's B is still 0, so this is the model the run starts from.
    logits_fn = functools.partial(prompt_logits, model, setup.backbone.tokenizer)
    check = check_on_loader(logits_fn, setup.valid_loader)
    precision = resolve_precision(args.precision, args.accelerator, check=check)
    trainer = build_trainer(args, model=model, precision=precision, output_dir=out)
    ckpt_path = checkpoint_to_resume(out / CHECKPOINT_DIR / LAST_CHECKPOINT, resume=args.resume)
    model.train()  # backbones load in eval mode; LoRA dropout acts only in train mode
    trainer.fit(
        module,
        setup.train_loader,
        setup.valid_loader,
        ckpt_path=ckpt_path,
        weights_only=True,  # our checkpoints hold only tensors and plain containers
    )
    raise_if_interrupted(trainer)
    if module.last_validated_step != trainer.global_step:
        # Stopped by --max_steps mid-epoch: validate the final weights too.
        trainer.validate(module, setup.valid_loader, verbose=False)
    return trainer, precision


def write(args: Args, setup: TuneSetup, trainer, precision: str) -> tuple[Path, dict[str, Any]]:
    """The run's metrics, on rank 0 into the best epoch's artefact (``trained_lora_adapter/``,
    written when that validation ran) and a fresh ``metrics.json``; returns the artefact's
    folder and the metrics."""
    module = setup.module
    history = module.history
    metrics: dict[str, Any] = {
        "kind": "tune",
        "model_dir": str(args.model_dir),
        "base_model": setup.base_model,
        "category": args.category,
        "candidate_type": args.candidate_type,
        "no_images": args.no_images,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "num_epochs": args.num_epochs,
        "candidate_curriculum": args.candidate_curriculum or [],
        "precision": precision,
        **setup.record,
        "steps": trainer.global_step,
        "epochs": _merge_epochs(history),
        "train_steps": history["train_steps"],
        # The precision that computed the best val_loss: recompute it under the same one.
        "best": {**module.best, "precision": precision} if module.best else None,
        "train_seconds": history["train_seconds"],
        "train_samples_seen": history["train_samples"],
        "train_samples_per_second": (
            history["train_samples"] / history["train_seconds"]
            if history["train_seconds"] > 0
            else None
        ),
    }
    out = Path(args.finetune_output_dir)
    adapter_dir = out / ADAPTER_DIR
    if trainer.is_global_zero:
        from lavic.artifacts import read_metrics, write_metrics

        if "best" not in (read_metrics(adapter_dir) or {}):
            raise LavicError(f"no validated adapter was written to {adapter_dir}")
        # The adapter, tokenizer, processor and config are in place since the best validation:
        # replacing the one file (atomically) keeps the artefact whole.
        write_metrics(adapter_dir, metrics)
        # A fresh metrics.json: any evaluation of an earlier run in this folder is stale.
        metrics_path = write_metrics(out, metrics)
        log.info(
            "best epoch %s (val_loss %s); wrote %s and %s",
            module.best and module.best["epoch"],
            module.best and module.best["val_loss"],
            adapter_dir,
            metrics_path,
        )
    return adapter_dir, metrics


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
