"""``lavic synthesize-unseen``: a second held-out catalogue, written by code of its own.

It shares no code with :mod:`lavic.data.synthetic` (``lavic synthesize``): its own product kinds
(kettle, tent, binder...), colour and pattern words (cobalt, tangerine / pinstriped, gingham...),
phrasing, title format and PIL drawings, in the same on-disk layout, so every command reads it.
What a model trained on ``lavic synthesize`` data (or the `tiny` backbone pretrained on its
phrasing) scores here measures what travels beyond our own generator. See
``docs/synthetic.md``.

Example:
    >>> summary = write_unseen("data/unseen", seed=0)  # doctest: +SKIP
    >>> summary["oracle"]["unseen_kitchen"]["in_list"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lavic.data.unseen.builder import (
    CANDIDATE_KEYS,
    SPLITS,
    Item,
    Plan,
    look_in_text,
    look_oracle,
    plan_unseen,
    write_unseen,
)
from lavic.data.unseen.vocabulary import CATEGORIES, COLOURS, LOOKS, PATTERNS

__all__ = [
    "CANDIDATE_KEYS",
    "CATEGORIES",
    "COLOURS",
    "LOOKS",
    "PATTERNS",
    "SPLITS",
    "Args",
    "Item",
    "Plan",
    "look_in_text",
    "look_oracle",
    "plan_unseen",
    "run",
    "write_unseen",
]


@dataclass
class Args:
    output_dir: Path = field(
        metadata={"help": "catalogue root to write (DATA_DIR for the other commands)"}
    )
    seed: int = field(default=0, metadata={"help": "random seed; same seed, same files"})
    categories: list[str] | None = field(
        default=None,
        metadata={
            "help": "categories to write (default: all of unseen_kitchen, unseen_outdoor, "
            "unseen_stationery)"
        },
    )
    num_train: int = field(default=60, metadata={"help": "train conversations per category"})
    num_valid: int = field(default=10, metadata={"help": "valid conversations per category"})
    num_test: int = field(default=50, metadata={"help": "test conversations per category"})
    num_candidates: int = field(default=10, metadata={"help": "items per candidate list"})
    num_distill_valid: int = field(
        default=8,
        metadata={"help": "stage-1 validation images per category (item2meta_valid.jsonl)"},
    )
    test_gt_drop_rate: float = field(
        default=0.12,
        metadata={"help": "share of test conversations whose answer is not in the lists"},
    )
    context_item_rate: float = field(
        default=0.1, metadata={"help": "share of conversations that link an earlier purchase"}
    )
    title_look: bool = field(
        default=False,
        metadata={
            "help": "write each item's look into its title, 'Brand Kind - Line (colour, "
            "pattern)': the text-only control where titles alone tell the candidates apart"
        },
    )
    jpeg_quality: int = field(default=85, metadata={"help": "JPEG quality of the images"})
    overwrite: bool = field(
        default=False,
        metadata={"help": "write into a non-empty output_dir, replacing an earlier catalogue"},
    )


def run(args: Args) -> int:
    """Write the catalogue and print its summary (counts, paths, oracle Recall@1) as JSON."""
    options = asdict(args)
    output_dir = options.pop("output_dir")
    print(json.dumps(write_unseen(output_dir, **options), indent=2))
    return 0
