"""``lavic check-data``: validate a dataset and report what a recommender could achieve on it.

For every ``DATA_DIR/<category>/<split>.jsonl`` and every candidate key it prints the number of
conversations and ground-truth items, the share of gt items inside the candidate list, and the
Recall@1 ceiling (the best Recall@1 a model choosing from the list can get). With
``--item_meta_path`` it counts the candidate and gt items that have no title and the ids that
are not in the catalogue at all (``unknown``, with the first few named ``file:line``); with
``--image_dir``, the candidates whose ``_0`` image is missing or unreadable.

Without ``--data_dir`` it checks a catalogue alone (``--item_meta_path``, and ``--image_dir``
for its pictures): items, titles present or empty, every listed image present and readable, the
items shown with the white placeholder, descriptions, and duplicates (titles shared by several
items, identical first pictures).

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
from lavic.data.records import Conversation, ItemMeta, LoadReport
from lavic.errors import LavicError
from lavic.io import atomic_write_json
from lavic.metrics import gt_in_candidates, recall_at_1_ceiling

logger = logging.getLogger(__name__)

# How many skip messages per file the printed report shows (the JSON has all of them).
SHOWN_SKIPS = 5
# Unknown ids named per row (file:line), and example ids per problem of a catalogue.
SHOWN_UNKNOWN = 5
SHOWN_EXAMPLES = 5


@dataclass
class Args:
    data_dir: Path | None = field(
        default=None,
        metadata={
            "help": "dataset root holding <category>/{train,valid,test}.jsonl; without it, "
            "check the catalogue alone (--item_meta_path, --image_dir)"
        },
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

    def __post_init__(self) -> None:
        if self.data_dir is None and self.item_meta_path is None:
            raise ValueError(
                "give --data_dir (conversations), --item_meta_path (a catalogue), or both"
            )


def _unique(groups) -> list[str]:
    return list(dict.fromkeys(item for group in groups for item in group))


def _unknown_items(
    conversations: list[Conversation], key: str | None, meta: dict[str, ItemMeta]
) -> dict[str, str]:
    """Candidate and gt ids that the catalogue does not hold: id -> ``file:line: 'id'`` where
    it first appears (they would be shown as ``No Title`` with the placeholder image)."""
    unknown: dict[str, str] = {}
    for conversation in conversations:
        ids = conversation.candidates[key] if key else ()
        for item_id in (*ids, *conversation.gt_items):
            if item_id not in meta and item_id not in unknown:
                where = f"{conversation.source}:{conversation.line}"
                unknown[item_id] = f"{where}: {item_id!r} is not in the catalogue"
    return unknown


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
                    unknown = _unknown_items(conversations, key, meta)
                    row["unknown_items"] = len(unknown)
                    row["unknown_examples"] = list(unknown.values())[:SHOWN_UNKNOWN]
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
        header += ["items", "no_title", "unknown"]
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
            cells += [
                str(row["items"]),
                str(row["items_without_title"]),
                str(row["unknown_items"]),
            ]
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
    if with_meta:
        notes.append(
            "no_title: items shown as `No Title` (unknown ones included); unknown: ids not in "
            "the item metadata"
        )
    if with_images:
        notes.append("img_bad: unreadable, oversized or unsafe-named `_0` images")
    parts += notes
    if with_meta:
        examples = _unique(row["unknown_examples"] for row in summary["rows"])
        parts += [f"unknown: {example}" for example in examples[:SHOWN_UNKNOWN]]
        if len(examples) > SHOWN_UNKNOWN:
            parts.append(f"unknown: ... and more (each row's first {SHOWN_UNKNOWN} in --json)")
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


# ------------------------------------------------------------------------- a catalogue alone


def check_catalogue(
    item_meta_path: str | Path, *, image_dir: str | Path | None = None, lenient: bool = False
) -> dict[str, Any]:
    """Check a catalogue without conversations (``check-data`` without ``--data_dir``).

    Every image the metadata lists is read (decoded) once; an item with no image listed is
    still looked up as ``<id>_0.jpg``, the picture the other commands show for it.

    Returns:
        A JSON-safe dict: ``items``; ``titles`` (``present``, ``empty``); with ``image_dir``,
        ``images`` (outcome -> count over every listed image), ``items_listing_no_image`` and
        ``placeholder_items`` (items whose ``<id>_0.jpg`` is not readable: shown as the white
        placeholder); ``descriptions`` (``images`` described, ``items`` whose first image
        is); ``duplicates`` (``titles``: items sharing their title with another item,
        ``first_images``: items whose ``<id>_0.jpg`` has the bytes of another's); and
        ``examples``, a few item ids per problem.

    Raises:
        LavicError: a missing image folder, or bad metadata (strict mode).
    """
    import hashlib

    from lavic.io import safe_join

    if image_dir is not None and not Path(image_dir).is_dir():
        raise LavicError(f"{image_dir}: image folder not found")
    report = LoadReport(str(item_meta_path))
    meta = load_item_meta(item_meta_path, lenient=lenient, report=report)
    examples: dict[str, list[str]] = {}

    def example(problem: str, item_id: str) -> None:
        shown = examples.setdefault(problem, [])
        if len(shown) < SHOWN_EXAMPLES:
            shown.append(item_id)

    empty_titles = [i for i, item in meta.items() if item.title is None]
    for item_id in empty_titles:
        example("empty_title", item_id)
    by_title: dict[str, list[str]] = {}
    for item_id, item in meta.items():
        if item.title is not None:
            by_title.setdefault(" ".join(item.title.casefold().split()), []).append(item_id)
    shared_titles = [ids for ids in by_title.values() if len(ids) > 1]
    for ids in shared_titles:
        example("duplicate_title", " = ".join(ids[:3]))
    first_described = sum(
        bool(item.descriptions.get(item_image_name(i), "").strip()) for i, item in meta.items()
    )
    summary: dict[str, Any] = {
        "item_meta_path": str(item_meta_path),
        "image_dir": None if image_dir is None else str(image_dir),
        "lenient": lenient,
        "items": len(meta),
        "skipped": report.num_skipped,
        "skip_messages": list(report.skipped),
        "titles": {"present": len(meta) - len(empty_titles), "empty": len(empty_titles)},
        "descriptions": {"images": len(described_images(meta)), "items": first_described},
        "duplicates": {"titles": sum(len(ids) for ids in shared_titles), "first_images": 0},
        "examples": examples,
    }
    if image_dir is not None:
        outcomes: Counter[str] = Counter()
        placeholder = 0
        first_image: dict[bytes, str] = {}
        duplicate_images = 0
        listing_none = 0
        for item_id, item in tqdm(meta.items(), desc="images", unit="item", disable=None):
            names = list(item.image_names)
            if not names:
                listing_none += 1
                names = [item_image_name(item_id)]  # what the other commands show
            first = item_image_name(item_id)
            for name in names:
                _, outcome = read_image(image_dir, name)
                if item.image_names:
                    outcomes[outcome] += 1
                if outcome != LOADED:
                    example(f"image_{outcome}", name)
                if name != first:
                    continue
                if outcome != LOADED:
                    placeholder += 1
                    continue
                digest = hashlib.blake2b(safe_join(image_dir, name).read_bytes()).digest()
                if digest in first_image:
                    duplicate_images += 1
                    example("duplicate_first_image", f"{item_id} = {first_image[digest]}")
                else:
                    first_image[digest] = item_id
            if first not in names and item.image_names:
                # The metadata lists images but not `_0`: the item is still shown by `_0`.
                _, outcome = read_image(image_dir, first)
                placeholder += outcome != LOADED
        summary["images"] = {
            outcome: outcomes.get(outcome, 0)
            for outcome in (LOADED, MISSING, UNREADABLE, UNSAFE, OVERSIZED)
        }
        summary["items_listing_no_image"] = listing_none
        summary["placeholder_items"] = placeholder
        summary["duplicates"]["first_images"] = duplicate_images
    return summary


def format_catalogue_report(summary: dict[str, Any]) -> str:
    """The human-readable report of :func:`check_catalogue`."""
    ex = summary["examples"]

    def eg(*problems: str) -> str:
        ids = [i for p in problems for i in ex.get(p, [])][:3]
        return f" (e.g. {', '.join(ids)})" if ids else ""

    titles, described, dup = summary["titles"], summary["descriptions"], summary["duplicates"]
    lines = [
        f"catalogue: {summary['item_meta_path']}",
        f"  items:         {summary['items']}"
        + (f" ({summary['skipped']} bad record(s) skipped)" if summary["lenient"] else ""),
        f"  titles:        {titles['present']} present, {titles['empty']} empty{eg('empty_title')}",
    ]
    if summary["image_dir"] is not None:
        images = summary["images"]
        bad = images[UNREADABLE] + images[OVERSIZED] + images[UNSAFE]
        lines += [
            f"  images:        {sum(images.values())} listed in {summary['image_dir']}: "
            f"{images[LOADED]} readable, {images[MISSING]} missing{eg('image_missing')}, "
            f"{bad} unreadable/oversized/unsafe{eg('image_unreadable', 'image_oversized', 'image_unsafe')}",
            f"  placeholder:   {summary['placeholder_items']} item(s) shown with the white "
            f"placeholder (no readable <id>_0.jpg); {summary['items_listing_no_image']} list "
            "no image",
        ]
    lines.append(
        f"  descriptions:  {described['images']} image(s) described; {described['items']} of "
        f"{summary['items']} items' first image"
    )
    dup_line = f"  duplicates:    {dup['titles']} item(s) share a title{eg('duplicate_title')}"
    if summary["image_dir"] is not None:
        dup_line += f"; {dup['first_images']} first picture(s) identical to another item's" + eg(
            "duplicate_first_image"
        )
    lines.append(dup_line)
    if summary["lenient"]:
        lines += [f"  {m}" for m in summary["skip_messages"][:SHOWN_SKIPS]]
    return "\n".join(lines)


def run(args: Args) -> int:
    if args.data_dir is None:
        assert args.item_meta_path is not None  # Args refuses neither
        summary = check_catalogue(
            args.item_meta_path, image_dir=args.image_dir, lenient=args.lenient
        )
        print(format_catalogue_report(summary))
    else:
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
