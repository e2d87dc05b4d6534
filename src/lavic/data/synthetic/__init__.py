"""``lavic synthesize``: a synthetic, visually grounded catalogue in exactly the reference's layout.

Every command (``check-data``, ``distill``, ``tune``, ``evaluate``, ``serve``) runs on it as on
the real data. Products are drawn procedurally (PIL): each item has a kind (mug, hoodie,
bottle...) and a look (colour + pattern). Seekers ask for a look, titles never state it and the
teacher descriptions always do, so a model can only find the answer by reading the images;
test answers and candidates are items never seen in training. See ``docs/synthetic.md``.

Example:
    >>> summary = write_catalogue("data/synthetic", seed=0, num_train=24)  # doctest: +SKIP
    >>> summary.oracle["synthetic_home"]["description"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from lavic.data.synthetic.catalogue import (
    CANDIDATE_KEYS,
    SPLITS,
    CataloguePlan,
    CatalogueSummary,
    OracleResult,
    content_words,
    plan_catalogue,
    word_overlap_oracle,
    write_catalogue,
)
from lavic.data.synthetic.styles import STYLES, Style

__all__ = [
    "CANDIDATE_KEYS",
    "SPLITS",
    "STYLES",
    "Args",
    "CataloguePlan",
    "CatalogueSummary",
    "OracleResult",
    "Style",
    "content_words",
    "plan_catalogue",
    "run",
    "style_categories",
    "word_overlap_oracle",
    "write_catalogue",
]


def style_categories(style: str = "default") -> list[str]:
    """The category names of ``style`` (the folders its catalogue has)."""
    return list(STYLES[style].categories)


@dataclass
class Args:
    output_dir: Path = field(
        metadata={"help": "catalogue root to write (DATA_DIR for the other commands)"}
    )
    seed: int = field(default=0, metadata={"help": "random seed; same seed, same files"})
    style: Literal["default", "heldout"] = field(
        default="default",
        metadata={
            "help": "'heldout' draws other kinds, colours, patterns and phrasing with other routines"
        },
    )
    categories: list[str] | None = field(
        default=None, metadata={"help": "categories to write (default: all of the style's)"}
    )
    num_train: int = field(default=120, metadata={"help": "train conversations per category"})
    num_valid: int = field(default=30, metadata={"help": "valid conversations per category"})
    num_test: int = field(default=40, metadata={"help": "test conversations per category"})
    num_candidates: int = field(default=10, metadata={"help": "items per candidate list"})
    min_items_per_kind: int = field(
        default=20,
        metadata={"help": "items per product kind in each split's pool (> num_candidates)"},
    )
    max_answers_per_item: int = field(
        default=1, metadata={"help": "at most this many conversations share one answer item"}
    )
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
    isbn_rate: float = field(
        default=0.05, metadata={"help": "share of ids that are numeric ISBN-10s"}
    )
    second_image_rate: float = field(
        default=0.1, metadata={"help": "share of items that also get a second image <ID>_1.jpg"}
    )
    min_image_side: int = field(
        default=160, metadata={"help": "shortest allowed image side, pixels"}
    )
    max_image_side: int = field(
        default=768,
        metadata={"help": "longest allowed image side, pixels (>672 for 4-view images)"},
    )
    title_look: bool = field(
        default=False,
        metadata={
            "help": "write each item's look (colour, pattern) into its title: a text-only "
            "control where the title alone can tell the candidates apart"
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
    summary = write_catalogue(output_dir, **options)
    print(json.dumps(summary.to_dict(), indent=2))
    return 0
