"""``lavic build-tiny``: cache, pretrain or measure the offline ``tiny`` backbone."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from lavic.artifacts import read_metrics, write_metrics
from lavic.errors import LavicError
from lavic.model.backbone import Backbone
from lavic.model.tiny import (
    ASSETS_DIR,
    HELDOUT_SEED,
    LM_ADAPTER_DIR,
    PRETRAIN_SEED,
    TinySpec,
    assemble_tiny,
    cache_key,
    cache_root,
    load_tiny,
    load_vision_state,
    read_assets,
    write_assets,
)
from lavic.pretrain.captions import catalogue_samples, write_pretraining_catalogue
from lavic.pretrain.instruct import InstructConfig, instruct, write_lm_adapter
from lavic.pretrain.measure import (
    description_look_accuracy,
    teacher_perplexity,
    text_selection_accuracy,
)
from lavic.pretrain.pictures import draw_pictures
from lavic.pretrain.vision import (
    ItemTokenConfig,
    PretrainConfig,
    look_pictures,
    pretrain,
    warm_start_item_tokens,
)

log = logging.getLogger(__name__)
# Pictures of lavic.pretrain.pictures measured before and after the [CLS]-path warm start.
HELD_OUT_PICTURES = 240

# --------------------------------------------------------------------------------------------
# `lavic build-tiny`
# --------------------------------------------------------------------------------------------


@dataclass
class Args:
    mode: Literal["cache", "pretrain", "item_tokens", "instruct", "evaluate"] = field(
        default="cache",
        metadata={
            "help": "cache: assemble the shipped (or --output) weights with SmolLM2 into "
            "the user cache, no training (what `make tiny` runs); pretrain: rerun the vision "
            "pretraining, write the vision weights to --output and measure them; item_tokens: "
            "warm-start the [CLS] path of the vision weights in --output; instruct: train the "
            "language model's candidate-selection LoRA into --output/lm_adapter (resumable); "
            "evaluate: measure the weights in --output"
        },
    )
    output: Path | None = field(
        default=None,
        metadata={"help": "vision-weights folder (default: the shipped lavic/assets/tiny)"},
    )
    steps: int = field(
        default=PretrainConfig.caption_steps,
        metadata={"help": "caption steps through the frozen language model"},
    )
    align_steps: int = field(
        default=PretrainConfig.align_steps,
        metadata={"help": "warm-up steps aligning image tokens to look-word embeddings"},
    )
    batch_size: int = field(default=PretrainConfig.batch_size, metadata={"help": "caption batch"})
    lr: float = field(default=PretrainConfig.lr, metadata={"help": "caption learning rate"})
    align_lr: float = field(
        default=PretrainConfig.align_lr, metadata={"help": "warm-up learning rate"}
    )
    seed: int = field(default=0, metadata={"help": "initialisation and batching seed"})
    catalogue_seed: int = field(
        default=PRETRAIN_SEED,
        metadata={"help": "synthetic catalogue seed for the training images (>= 100)"},
    )
    heldout_seed: int = field(
        default=HELDOUT_SEED,
        metadata={"help": "synthetic catalogue seed for the measurements (>= 100)"},
    )
    eval_items: int = field(
        default=48, metadata={"help": "held-out descriptions for the perplexities"}
    )
    eval_describe: int = field(
        default=24, metadata={"help": "held-out images described greedily (look accuracy)"}
    )
    eval_conversations: int = field(
        default=60, metadata={"help": "held-out test conversations for the text-selection check"}
    )
    evaluate: bool = field(default=True, metadata={"help": "measure the weights after pretraining"})
    chat_template: bool = field(
        default=False,
        metadata={
            "help": "also measure the text-selection check with the prompt wrapped in "
            "SmolLM2's chat template"
        },
    )
    work_dir: Path | None = field(
        default=None,
        metadata={"help": "where the synthetic catalogues are written (default: a temp dir)"},
    )
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    item_token_steps: int = field(
        default=ItemTokenConfig.steps, metadata={"help": "item_tokens: warm-start steps"}
    )
    item_token_pictures: int = field(
        default=0,
        metadata={
            "help": "item_tokens: also train on this many pictures in many renderings "
            "(lavic.pretrain.pictures), beside the synthetic catalogue's; 240 more, drawn "
            "apart, are measured before and after"
        },
    )
    curriculum: str = field(
        default=InstructConfig.curriculum,
        metadata={
            "help": "instruct: CANDIDATES:SAMPLES[:FORMAT+FORMAT] stages, in order; formats "
            "line, title, description, broad (many phrasings: lavic.pretrain.phrasing)"
        },
    )
    instruct_init: Path | None = field(
        default=None,
        metadata={
            "help": "instruct: start the LoRA from this adapter folder (e.g. the shipped "
            "lm_adapter, continued on new data) instead of zeros"
        },
    )
    instruct_precision: str = field(
        default=InstructConfig.precision,
        metadata={"help": "instruct: 32-true, or bf16-mixed (autocast; a CPU with native bf16)"},
    )
    instruct_lr: float = field(
        default=InstructConfig.lr, metadata={"help": "instruct: learning rate"}
    )
    instruct_schedule: str = field(
        default=InstructConfig.lr_schedule,
        metadata={"help": "instruct: learning-rate schedule after the warm-up (constant, cosine)"},
    )
    describe_weight: float = field(
        default=InstructConfig.describe_weight,
        metadata={
            "help": "instruct: weight of the teacher-path description loss trained beside the "
            "selection (keeps the LM describing; 0: off)"
        },
    )
    instruct_rank: int = field(
        default=InstructConfig.rank, metadata={"help": "instruct: LoRA rank"}
    )
    eval_every: int = field(
        default=InstructConfig.eval_every,
        metadata={"help": "instruct: samples between measurements"},
    )
    resume: bool = field(
        default=False, metadata={"help": "instruct: continue from --work_dir's checkpoint"}
    )


def measure(backbone: Backbone, heldout_root: Path, args: Args) -> dict[str, Any]:
    """The numbers of docs/tiny.md: teacher perplexity with the real / a blank / a shuffled
    image, the look words of greedy descriptions, and SmolLM2's text-only candidate pick."""
    samples = catalogue_samples(heldout_root)
    # Items spread over kinds: take every k-th, deterministically.
    step = max(1, len(samples) // max(1, args.eval_items, args.eval_describe))
    held = samples[::step][: max(0, args.eval_items)]
    out: dict[str, Any] = {"heldout_seed": args.heldout_seed}
    start = time.perf_counter()
    if held:
        out["perplexity"] = {"n": len(held)}
        for mode in ("real", "blank", "shuffled"):
            ppl = teacher_perplexity(backbone, held, image_mode=mode)
            out["perplexity"][mode] = round(ppl, 3)
            log.info("teacher perplexity (%s image): %.3f", mode, ppl)
    if args.eval_describe:
        out["describe"] = description_look_accuracy(backbone, samples[::step][: args.eval_describe])
        log.info(
            "greedy descriptions naming colour %.2f, pattern %.2f",
            out["describe"]["colour_accuracy"],
            out["describe"]["pattern_accuracy"],
        )
    if args.eval_conversations:
        out["text_selection"] = text_selection_accuracy(
            backbone, heldout_root, limit=args.eval_conversations
        )
        log.info(
            "text selection accuracy %.3f (chance %.3f, valid ids %.2f)",
            out["text_selection"]["accuracy"],
            out["text_selection"]["chance"],
            out["text_selection"]["valid_id_rate"],
        )
        if args.chat_template:
            out["text_selection_chat"] = text_selection_accuracy(
                backbone, heldout_root, limit=args.eval_conversations, chat=True
            )
            log.info(
                "text selection accuracy with the chat template %.3f",
                out["text_selection_chat"]["accuracy"],
            )
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def run(args: Args) -> int:
    """Pretrain / cache / measure the tiny backbone; print a JSON summary."""
    torch.set_num_threads(max(1, args.threads))
    for name in ("catalogue_seed", "heldout_seed"):
        if getattr(args, name) < 100:
            raise LavicError(f"--{name} {getattr(args, name)}: seeds 0-99 are for demos/evaluation")
    assets = Path(args.output) if args.output is not None else ASSETS_DIR
    if args.mode == "cache":
        load_tiny(assets_dir=assets)
        final = cache_root() / f"tiny-{cache_key(assets)}"
        print(json.dumps({"cache": str(final)}))
        return 0
    with contextlib.ExitStack() as stack:
        work = args.work_dir
        if work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lavic-tiny-")))
        work = Path(work)
        heldout_root = work / f"synthetic-{args.heldout_seed}"
        need_heldout = args.mode == "evaluate" or (
            args.evaluate and args.mode in ("pretrain", "item_tokens")
        )
        if need_heldout and not (heldout_root / "item2meta_train.json").is_file():
            write_pretraining_catalogue(
                heldout_root, args.heldout_seed, num_train=10, num_valid=5, num_test=40
            )
        if args.mode == "evaluate":
            backbone = load_tiny(assets_dir=assets)
            result = {"evaluation": measure(backbone, heldout_root, args)}
            print(json.dumps(result, indent=2))
            return 0
        if args.mode == "instruct":
            return run_instruct(args, assets, work)
        if args.mode == "item_tokens":
            return run_item_tokens(args, assets, work, heldout_root)
        # pretrain
        train_root = work / f"synthetic-{args.catalogue_seed}"
        if not (train_root / "item2meta_train.json").is_file():
            write_pretraining_catalogue(train_root, args.catalogue_seed)
        samples = catalogue_samples(train_root)
        config = PretrainConfig(
            align_steps=args.align_steps,
            caption_steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            align_lr=args.align_lr,
            seed=args.seed,
        )
        spec = TinySpec()
        start = time.perf_counter()
        backbone = assemble_tiny(spec, seed=args.seed)
        record = pretrain(backbone, samples, config, work_dir=work / "pretrain")
        record["catalogue_seed"] = args.catalogue_seed
        record["threads"] = args.threads
        record["seconds_total"] = round(time.perf_counter() - start, 1)
        # Ship fp16; measure what is shipped (the fp16-rounded weights).
        state = write_assets(backbone.model, spec, assets)
        load_vision_state(backbone.model, state)
        result: dict[str, Any] = {"pretrain": record}
        if args.evaluate:
            result["evaluation"] = measure(backbone, heldout_root, args)
        os.chmod(write_metrics(assets, result), 0o644)  # package data: readable by all
        print(json.dumps(result, indent=2))
    return 0


def _update_metrics(assets: Path, key: str, value: Any) -> None:
    """Record ``value`` under ``key`` in the assets' metrics file, keeping the rest."""
    metrics = read_metrics(assets) or {}
    metrics[key] = value
    os.chmod(write_metrics(assets, metrics), 0o644)


def run_item_tokens(args: Args, assets: Path, work: Path, heldout_root: Path) -> int:
    """Warm-start the [CLS] path of the vision weights in ``assets``; write them back there."""
    train_root = work / f"synthetic-{args.catalogue_seed}"
    if not (train_root / "item2meta_train.json").is_file():
        write_pretraining_catalogue(train_root, args.catalogue_seed)
    spec, _ = read_assets(assets)
    backbone = load_tiny(assets_dir=assets)
    pictures = look_pictures(catalogue_samples(train_root))
    held_out = []
    if args.item_token_pictures:
        pictures += draw_pictures(args.item_token_pictures, seed=args.catalogue_seed)
        held_out = draw_pictures(HELD_OUT_PICTURES, seed=args.heldout_seed)
    previous = (read_metrics(assets) or {}).get("item_tokens")
    record = warm_start_item_tokens(
        backbone,
        pictures,
        ItemTokenConfig(steps=args.item_token_steps, seed=args.seed),
        held_out=held_out,
        work_dir=work / "item_tokens",
    )
    record["catalogue_seed"] = args.catalogue_seed
    record["pictures"] = args.item_token_pictures
    if previous is not None:  # the weights it started from were warm-started before
        record["continued"] = previous
    state = write_assets(backbone.model, spec, assets)
    load_vision_state(backbone.model, state)
    _update_metrics(assets, "item_tokens", record)
    if args.evaluate:
        _update_metrics(assets, "evaluation", measure(backbone, heldout_root, args))
    print(json.dumps(record, indent=2))
    return 0


def run_instruct(args: Args, assets: Path, work: Path) -> int:
    """Train the language model's selection LoRA; write it to ``assets/lm_adapter``."""
    spec, state = read_assets(assets)
    backbone = assemble_tiny(spec, state)  # SmolLM2 as is: the LoRA is trained from scratch
    config = InstructConfig(
        curriculum=args.curriculum,
        lr=args.instruct_lr,
        lr_schedule=args.instruct_schedule,
        describe_weight=args.describe_weight,
        rank=args.instruct_rank,
        alpha=2 * args.instruct_rank,
        init_adapter=str(args.instruct_init) if args.instruct_init is not None else None,
        precision=args.instruct_precision,
        eval_every=args.eval_every,
        eval_conversations=args.eval_conversations,
        seed=args.seed,
    )
    captions, held = (), ()
    if config.describe_weight > 0:
        root = work / f"synthetic-{args.catalogue_seed}"
        if not (root / "item2meta_train.json").is_file():
            write_pretraining_catalogue(root, args.catalogue_seed)
        captions = catalogue_samples(root)
        held = catalogue_samples(root, split="valid")[: args.eval_items // 2]
    model, record = instruct(
        backbone,
        config,
        work_dir=work / "instruct",
        resume=args.resume,
        captions=captions,
        held_captions=held,
    )
    write_lm_adapter(model, assets / LM_ADAPTER_DIR)
    if args.instruct_init is not None:  # a continuation: keep the record of what it continued
        # (an lm_adapter folder's record is its assets' metrics.json)
        record["continued"] = (read_metrics(Path(args.instruct_init).parent) or {}).get("instruct")
    _update_metrics(assets, "instruct", record)
    print(json.dumps(record["curve"], indent=2))
    return 0
