"""``lavic encode``: compute (or bring up to date) the item visual-token cache ahead of time.

``tune``, ``evaluate`` and ``serve`` fill the cache on demand; this command does it once for a
whole catalogue -- every item of an item-metadata file and/or every item a dataset's
conversations mention -- so that later runs only read it. Only new items, changed images and
entries of another adapter are encoded; the report is printed as JSON.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from lavic.errors import LavicError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Args:
    model_dir: str = field(
        metadata={
            "help": "the model whose vision side makes the tokens: a distill or tune artefact (or a "
            "backbone name)"
        }
    )
    cache_dir: Path = field(metadata={"help": "the cache folder (created or updated)"})
    image_dir: Path = field(metadata={"help": "item images <item>_0.jpg (missing: placeholder)"})
    item_meta_path: Path | None = field(
        default=None,
        metadata={"help": "encode every item of this metadata file (item2meta_*.json[l])"},
    )
    data_dir: Path | None = field(
        default=None,
        metadata={"help": "also encode every item the conversations of --category mention"},
    )
    category: str | None = field(default=None, metadata={"help": "domain under --data_dir"})
    splits: list[str] = field(
        default_factory=lambda: ["train", "valid", "test"],
        metadata={"help": "splits whose items to encode (missing ones are skipped)"},
    )
    candidate_type: str | None = field(
        default=None,
        metadata={
            "help": "only this candidate list (default: every candidates_* list, plus gt items)"
        },
    )
    batch_size: int = field(default=16, metadata={"help": "images per vision-tower call"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda"})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto",
        metadata={
            "help": "weights dtype; auto: bfloat16 on CUDA, else float32 (as tune and evaluate)"
        },
    )
    lenient: bool = field(default=False, metadata={"help": "skip malformed records (counted)"})

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError("--batch_size must be >= 1")
        if self.item_meta_path is None and self.data_dir is None:
            raise ValueError("give --item_meta_path and/or --data_dir with --category")
        if self.data_dir is not None and not self.category:
            raise ValueError("--data_dir needs --category")


def collect_item_ids(args: Args) -> list[str]:
    """The items to encode, first-seen order: metadata items, then those the splits mention."""
    from lavic.data.loaders import load_item_meta, load_split, split_path

    ids: list[str] = []
    if args.item_meta_path is not None:
        ids += list(load_item_meta(args.item_meta_path, lenient=args.lenient))
    if args.data_dir is not None:
        found = 0
        for split in args.splits:
            if not split_path(args.data_dir, args.category, split).is_file():
                log.info("%s/%s: no %s split; skipped", args.data_dir, args.category, split)
                continue
            found += 1
            for conv in load_split(
                args.data_dir,
                args.category,
                split,
                lenient=args.lenient,
                candidate_key=args.candidate_type,
            ):
                keys = [args.candidate_type] if args.candidate_type else sorted(conv.candidates)
                for key in keys:
                    ids += conv.candidates[key]
                ids += conv.gt_items
        if not found:
            raise LavicError(f"{args.data_dir}/{args.category}: none of the splits {args.splits}")
    return list(dict.fromkeys(ids))


def run(args: Args) -> int:
    from lavic.cache.store import adapter_fingerprint, build_item_token_cache
    from lavic.data.images import ImageStats
    from lavic.model.backbone import load_backbone

    if not Path(args.image_dir).is_dir():
        raise LavicError(f"{args.image_dir}: image folder not found")
    item_ids = collect_item_ids(args)
    if not item_ids:
        raise LavicError("no items to encode")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LavicError(f"--device {device}: CUDA is not available")
    dtype = args.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    backbone = load_backbone(args.model_dir, dtype=DTYPES[dtype])
    backbone.model.to(device)
    stats = ImageStats()
    cache = build_item_token_cache(
        backbone,
        item_ids,
        args.image_dir,
        args.cache_dir,
        fingerprint=adapter_fingerprint(args.model_dir),
        batch_size=args.batch_size,
        stats=stats,
    )
    report = cache.last_report.as_dict() if cache.last_report else {}
    print(
        json.dumps(
            {
                "cache_dir": str(args.cache_dir),
                "items": len(cache),
                "dim": cache.dim,
                "dtype": cache.dtype,
                **report,
            },
            indent=2,
        )
    )
    return 0
