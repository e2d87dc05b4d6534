"""``lavic check-data``: validate a dataset and report what a recommender could achieve on it.

For every ``DATA_DIR/<category>/<split>.jsonl`` and every candidate key it prints the number of
conversations and ground-truth items, the share of gt items inside the candidate list, and the
Recall@1 ceiling (the best Recall@1 a model choosing from the list can get). With
``--item_meta_path`` it counts the candidate and gt items that have no title; with
``--image_dir``, the candidates whose ``_0`` image is missing or unreadable.

Bad input stops the check with a one-line ``file:line: problem`` error (exit status 2), unless
``--lenient``, which skips bad records and reports how many were skipped.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lavic.data.images import (
    LOADED,
    MISSING,
    OVERSIZED,
    UNREADABLE,
    UNSAFE,
    item_image_name,
    read_image,
)
from lavic.data.loaders import (
    candidate_keys,
    described_images,
    find_splits,
    items_without_title,
    load_item_meta,
    load_split,
)
from lavic.data.records import ItemMeta, LoadReport
from lavic.errors import LavicError
from lavic.evaluation.metrics import gt_in_candidates, recall_at_1_ceiling
from lavic.io import atomic_write_json

logger = logging.getLogger(__name__)

# How many skip messages per file the printed report shows (the JSON has all of them).
SHOWN_SKIPS = 5


@dataclass
class Args:
    data_dir: Path = field(
        metadata={"help": "dataset root holding <category>/{train,valid,test}.jsonl"}
    )
    item_meta_path: Path | None = field(
        default=None,
        metadata={
            "help": "item metadata (item2meta_train.json or item2meta_valid.jsonl) to check titles against"
        },
    )
    image_dir: Path | None = field(
        default=None,
        metadata={"help": "item image folder to check each candidate's <item>_0.jpg against"},
    )
    lenient: bool = field(
        default=False,
        metadata={"help": "skip bad records and report how many, instead of stopping at the first"},
    )
    json: Path | None = field(
        default=None, metadata={"help": "also write the report as JSON to this file"}
    )


def _unique(groups) -> list[str]:
    return list(dict.fromkeys(item for group in groups for item in group))


def _meta_summary(meta: dict[str, ItemMeta], report: LoadReport) -> dict[str, Any]:
    return {
        "path": report.path,
        "items": len(meta),
        "items_with_title": sum(item.title is not None for item in meta.values()),
        "images": sum(len(item.image_names) for item in meta.values()),
        "described_images": len(described_images(meta)),
        "skipped": report.num_skipped,
        "skip_messages": list(report.skipped),
    }


def check_dataset(
    data_dir: str | Path,
    *,
    item_meta_path: str | Path | None = None,
    image_dir: str | Path | None = None,
    lenient: bool = False,
) -> dict[str, Any]:
    """Validate every split under ``data_dir`` and measure it (the ``check-data`` report).

    Returns:
        A JSON-safe dict: ``rows`` (one per category, split and candidate key, with
        ``conversations``, ``gt_items``, ``gt_in_candidates``, ``recall_at_1_ceiling``,
        ``duplicate_gt_conversations``, and with metadata ``items``/``items_without_title``,
        with images ``candidate_images`` and counts per outcome), ``files`` (loaded / skipped
        per split file), and ``item_meta`` (or None).

    Raises:
        LavicError: no split files found, or bad input (strict mode).
    """
    data_dir = Path(data_dir)
    splits = find_splits(data_dir)
    if not splits:
        raise LavicError(f"{data_dir}: no <category>/{{train,valid,test}}.jsonl files found")

    if image_dir is not None and not Path(image_dir).is_dir():
        raise LavicError(f"{image_dir}: image folder not found")
    meta: dict[str, ItemMeta] | None = None
    meta_summary: dict[str, Any] | None = None
    if item_meta_path is not None:
        meta_report = LoadReport(str(item_meta_path))
        meta = load_item_meta(item_meta_path, lenient=lenient, report=meta_report)
        meta_summary = _meta_summary(meta, meta_report)

    # Each candidate's `_0` image is decoded once, however many rows it appears in.
    image_outcomes: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    for category, split_names in splits.items():
        for split in split_names:
            report = LoadReport("")
            conversations = load_split(data_dir, category, split, lenient=lenient, report=report)
            files.append(
                {
                    "category": category,
                    "split": split,
                    "path": report.path,
                    "loaded": report.loaded,
                    "skipped": report.num_skipped,
                    "skip_messages": list(report.skipped),
                }
            )
            gts = [c.gt_items for c in conversations]
            duplicate_gt = sum(len(set(g)) != len(g) for g in gts)
            for key in candidate_keys(conversations) or [None]:
                lists = [c.candidates[key] for c in conversations] if key else [()] * len(gts)
                row: dict[str, Any] = {
                    "category": category,
                    "split": split,
                    "candidate_key": key,
                    "conversations": len(conversations),
                    "gt_items": sum(len(g) for g in gts),
                    "gt_in_candidates": gt_in_candidates(lists, gts),
                    "recall_at_1_ceiling": recall_at_1_ceiling(lists, gts),
                    "duplicate_gt_conversations": duplicate_gt,
                    "skipped": report.num_skipped,
                }
                if meta is not None:
                    ids = _unique(lists + gts)
                    row["items"] = len(ids)
                    row["items_without_title"] = len(items_without_title(meta, ids))
                if image_dir is not None:
                    candidates = _unique(lists)
                    todo = [c for c in candidates if c not in image_outcomes]
                    for item_id in tqdm(
                        todo, desc=f"images {category}/{split}/{key}", unit="img", disable=None
                    ):
                        _, image_outcomes[item_id] = read_image(image_dir, item_image_name(item_id))
                    counts = Counter(image_outcomes[c] for c in candidates)
                    row["candidate_images"] = len(candidates)
                    row["images"] = {
                        outcome: counts.get(outcome, 0)
                        for outcome in (LOADED, MISSING, UNREADABLE, UNSAFE, OVERSIZED)
                    }
                rows.append(row)
    return {
        "data_dir": str(data_dir),
        "item_meta_path": None if item_meta_path is None else str(item_meta_path),
        "image_dir": None if image_dir is None else str(image_dir),
        "lenient": lenient,
        "rows": rows,
        "files": files,
        "item_meta": meta_summary,
    }


def _table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = []
    for r in [header, ["-" * w for w in widths], *body]:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2])]
        cells += [c.rjust(w) for c, w in zip(r[3:], widths[3:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_report(summary: dict[str, Any]) -> str:
    """The human-readable report: one table row per category, split and candidate key."""
    with_meta = summary["item_meta"] is not None
    with_images = summary["image_dir"] is not None
    header = [
        "category",
        "split",
        "candidates",
        "convs",
        "gt_items",
        "gt_in_cands",
        "R@1_ceiling",
        "dup_gt",
    ]
    if summary["lenient"]:
        header.append("skipped")
    if with_meta:
        header += ["items", "no_title"]
    if with_images:
        header += ["cand_imgs", "img_missing", "img_bad"]
    body = []
    for row in summary["rows"]:
        cells = [
            row["category"],
            row["split"],
            row["candidate_key"] or "-",
            str(row["conversations"]),
            str(row["gt_items"]),
            f"{row['gt_in_candidates']:.4f}",
            f"{row['recall_at_1_ceiling']:.4f}",
            str(row["duplicate_gt_conversations"]),
        ]
        if summary["lenient"]:
            cells.append(str(row["skipped"]))
        if with_meta:
            cells += [str(row["items"]), str(row["items_without_title"])]
        if with_images:
            images = row["images"]
            bad = images[UNREADABLE] + images[UNSAFE] + images[OVERSIZED]
            cells += [str(row["candidate_images"]), str(images[MISSING]), str(bad)]
        body.append(cells)
    parts = [f"data: {summary['data_dir']}", _table(header, body)]
    notes = [
        "gt_in_cands: share of gt items in the candidate list; R@1_ceiling: per conversation 1 "
        "if any gt item is a candidate, over all gt items; dup_gt: conversations whose gt list "
        "repeats an id"
    ]
    if with_images:
        notes.append("img_bad: unreadable, oversized or unsafe-named `_0` images")
    parts += notes
    meta = summary["item_meta"]
    if meta is not None:
        parts.append(
            f"item metadata {meta['path']}: {meta['items']} items ({meta['items_with_title']} with "
            f"a title), {meta['images']} images, {meta['described_images']} described"
            + (f", {meta['skipped']} skipped" if summary["lenient"] else "")
        )
    if summary["lenient"]:
        skipped = [(f["path"], f["skipped"], f["skip_messages"]) for f in summary["files"]]
        if meta is not None:
            skipped.append((meta["path"], meta["skipped"], meta["skip_messages"]))
        total = sum(n for _, n, _ in skipped)
        parts.append(f"lenient: {total} bad record(s) skipped")
        for path, n, messages in skipped:
            parts += [f"  {m}" for m in messages[:SHOWN_SKIPS]]
            if n > SHOWN_SKIPS:
                parts.append(f"  ... and {n - SHOWN_SKIPS} more in {path}")
    return "\n".join(parts)


def run(args: Args) -> int:
    summary = check_dataset(
        args.data_dir,
        item_meta_path=args.item_meta_path,
        image_dir=args.image_dir,
        lenient=args.lenient,
    )
    print(format_report(summary))
    if args.json is not None:
        atomic_write_json(args.json, summary)
        logger.info("wrote %s", args.json)
    return 0
