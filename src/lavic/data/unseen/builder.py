"""Plan and write the unseen catalogue in the layout every ``lavic`` command reads.

The plan (ids, looks, titles, descriptions, conversations, image sizes) is computed first and
in memory, from random streams named after the seed and what they draw, so the same seed gives
the same files; only then are images drawn and files written.

Rules that keep the image the deciding evidence:

* train, valid and test each have their own pool of items per kind, and a train item answers
  at most one conversation: valid and test items are new to a model trained on train;
* titles name the brand and kind only (unless ``title_look``), and a candidate list holds one
  kind, with one item per look;
* each list is a random subset of a grid of looks (some colours x some patterns) that holds the
  answer's look, so it always has near misses (the answer's colour in another pattern, its
  pattern in other colours), yet nothing about the list alone points at the answer: every
  member of a grid is drawn the same way, whichever of them the answer is.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import string
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lavic.constants import SYNTHETIC_IMAGE_URL
from lavic.data.catalogue_folder import prepare_catalogue_folder
from lavic.data.unseen.drawing import draw_item, image_size
from lavic.data.unseen.vocabulary import (
    BRANDS,
    CATEGORIES,
    COLOURS,
    CONTEXT_MENTIONS,
    DESCRIPTION_CLOSERS,
    DESCRIPTION_TEMPLATES,
    FILLER_COMMENTS,
    GT_TEMPLATES,
    INK_WORD,
    LOOKS,
    OP_REPLIES,
    OPENERS,
    PATTERNS,
    PRODUCT_LINES,
    REQUEST_TEMPLATES,
    SUBMISSION_TITLES,
    Kind,
    Look,
    with_article,
)
from lavic.errors import LavicError
from lavic.io import atomic_open, atomic_write_json, safe_join

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
CANDIDATE_KEYS = ("candidates_st", "candidates_gpt_large")
AMAZON_URL = "https://www.amazon.com/dp/{item_id}"
# The reserved host marks a drawn catalogue (lavic.data.loaders.is_synthetic_catalogue), which
# is what the offline `tiny` backbone expects; the URLs are never fetched.
IMAGE_URL = SYNTHETIC_IMAGE_URL + "{name}"
_ID_CHARS = string.ascii_uppercase + string.digits


# ============================================================================ the plan


@dataclass
class Item:
    """One product: its look (hidden from the title), title, image size and description."""

    item_id: str
    category: str
    pool: str  # "train" | "valid" | "test" | "distill_valid"
    kind: Kind
    look: Look
    brand: str
    title: str
    size: tuple[int, int]
    description: str

    @property
    def image_name(self) -> str:
        return f"{self.item_id}_0.jpg"


@dataclass
class Plan:
    """The whole catalogue before drawing: split records and every item with its look."""

    seed: int
    categories: list[str]
    items: dict[str, Item]
    conversations: dict[str, dict[str, list[dict[str, Any]]]]  # category -> split -> records
    distill_valid: list[str]  # ids of the stage-1 validation items

    def referenced_ids(self) -> list[str]:
        """Ids any conversation names (answer, candidate or context item), first seen first."""
        seen: dict[str, None] = {}
        for category in self.categories:
            for split in SPLITS:
                for record in self.conversations[category][split]:
                    for key in ("gt_items", "context_items", *CANDIDATE_KEYS):
                        seen.update(dict.fromkeys(record[key]))
        return list(seen)


@dataclass(frozen=True)
class Settings:
    seed: int
    categories: list[str]
    counts: dict[str, int]  # split -> conversations per category
    num_candidates: int
    num_distill_valid: int
    test_gt_drop_rate: float
    context_item_rate: float
    title_look: bool


def _stream(seed: int, *what: object) -> random.Random:
    """A random stream of its own for each thing drawn: adding one item never shifts another."""
    return random.Random("lavic-unseen/" + "/".join(map(str, (seed, *what))))


class _Planner:
    def __init__(self, s: Settings):
        self.s = s
        self.items: dict[str, Item] = {}
        self.id_rng = _stream(s.seed, "ids")

    # ------------------------------------------------------------------ items

    def _new_id(self) -> str:
        while True:
            item_id = "B0" + "".join(self.id_rng.choice(_ID_CHARS) for _ in range(8))
            if item_id not in self.items:
                return item_id

    def _item(self, category: str, pool: str, kind: Kind, look: Look) -> Item:
        item_id = self._new_id()
        rng = _stream(self.s.seed, "item", item_id)
        brand = rng.choice(BRANDS)
        qualifier, line = rng.choice(kind.qualifiers), rng.choice(PRODUCT_LINES)
        title = f"{brand} {qualifier} {kind.name.title()} - {line}"
        if self.s.title_look:  # the text-only control: the title states the look
            title += f" ({look.colour.word}, {look.pattern.word})"
        item = Item(
            item_id=item_id,
            category=category,
            pool=pool,
            kind=kind,
            look=look,
            brand=brand,
            title=title,
            size=image_size(rng, kind.aspect),
            description=_describe(rng, kind, look),
        )
        self.items[item_id] = item
        return item

    def _pool(
        self, rng: random.Random, category: str, split: str, kind: Kind, answers: int
    ) -> list[Item]:
        """Every look at least once (so any grid of looks can be filled), more if the split needs
        more answers; looks are dealt in shuffled rounds so they stay balanced."""
        size = max(len(LOOKS), answers)
        looks: list[Look] = []
        while len(looks) < size:
            round_ = list(LOOKS)
            rng.shuffle(round_)
            looks += round_
        return [self._item(category, split, kind, look) for look in looks[:size]]

    # ------------------------------------------------------------------ candidate lists

    def _grid_list(
        self,
        rng: random.Random,
        gt: Item,
        by_look: Mapping[str, list[Item]],
        patterns_per_grid: int,
    ) -> list[Item]:
        """``num_candidates`` items, one per look, from a grid of looks that holds the answer's.

        The grid is ``patterns_per_grid`` patterns x as many colours as fill the list, both
        drawn at random around the answer's colour and pattern; the list is the answer plus
        random other cells. Every cell is the answer's colour or pattern in some other
        combination, so near misses are the norm, and the answer is one cell like the others.
        """
        n = self.s.num_candidates
        num_colours = min(len(COLOURS), math.ceil(n / patterns_per_grid))
        colours = [gt.look.colour] + rng.sample(
            [c for c in COLOURS if c != gt.look.colour], num_colours - 1
        )
        patterns = [gt.look.pattern] + rng.sample(
            [p for p in PATTERNS if p != gt.look.pattern], patterns_per_grid - 1
        )
        # ceil(n / patterns) colours make a grid of at least n cells (check_settings keeps
        # n below the number of looks, and the callers keep the colours within the palette).
        cells = [Look(c, p) for c in colours for p in patterns if Look(c, p) != gt.look]
        chosen = rng.sample(cells, n - 1)
        return [gt] + [rng.choice(by_look[look.key]) for look in chosen]

    def _lists(
        self, rng: random.Random, gt: Item, pool: list[Item], drop: bool
    ) -> dict[str, list[Item]]:
        by_look: dict[str, list[Item]] = defaultdict(list)
        for item in pool:
            if item is not gt:
                by_look[item.look.key].append(item)
        n = self.s.num_candidates
        # candidates_st: few patterns, many colours (the colour decides most, and the answer's
        # pattern recurs); candidates_gpt_large: every pattern, few colours (the answer's colour
        # recurs, so the pattern must be read too).
        widths = {
            "candidates_st": max(2, math.ceil(n / len(COLOURS))),
            "candidates_gpt_large": len(PATTERNS),
        }
        lists = {}
        for key in CANDIDATE_KEYS:
            listed = self._grid_list(rng, gt, by_look, min(widths[key], len(PATTERNS)))
            if drop:  # the answer is left out: an item of a look the list lacks takes its place
                taken = {item.look.key for item in listed}
                free = [look for look in LOOKS if look.key not in taken]
                listed[0] = rng.choice(by_look[rng.choice(free).key])
            rng.shuffle(listed)
            lists[key] = listed
        return lists

    # ------------------------------------------------------------------ conversations

    def _context(self, rng: random.Random, kind: Kind, look: Look, earlier: Item | None) -> str:
        colour, pattern = look.colour.word, look.pattern
        request = rng.choice(REQUEST_TEMPLATES).format(
            colour=colour,
            Colour=colour.capitalize(),
            adj=pattern.word,
            kind=kind.name,
            **{"with": rng.choice(pattern.with_phrases)},
        )
        title = rng.choice(SUBMISSION_TITLES).format(
            kind=kind.name, Kind=kind.name.capitalize(), a_kind=with_article(kind.name)
        )
        body = [rng.choice(OPENERS)]
        if earlier is not None:
            body.append(
                rng.choice(CONTEXT_MENTIONS).format(url=AMAZON_URL.format(item_id=earlier.item_id))
            )
        if rng.random() < 0.6:  # the look is asked for in the submission ...
            body.append(request)
            comments = rng.sample(FILLER_COMMENTS, rng.randint(0, 2))
        else:  # ... or in the seeker's answer to a commenter
            comments = [rng.choice(FILLER_COMMENTS), rng.choice(OP_REPLIES).format(request=request)]
        text = f"<submission>{title} {' '.join(body)}</submission>\n"
        return text + "".join(f"<comment>{c}</comment>\n" for c in comments)

    def _split(self, rng: random.Random, category: str, split: str) -> list[dict[str, Any]]:
        kinds = CATEGORIES[category]
        n = self.s.counts[split]
        order = [kinds[i % len(kinds)] for i in range(n)]
        rng.shuffle(order)
        pools: dict[str, list[Item]] = {}
        answers: dict[str, list[Item]] = {}
        for kind in kinds:
            count = order.count(kind)
            if count:
                pools[kind.name] = self._pool(rng, category, split, kind, count)
                answers[kind.name] = rng.sample(pools[kind.name], count)  # each answers once

        dropped = (
            set(rng.sample(range(n), round(self.s.test_gt_drop_rate * n)))
            if split == "test"
            else set()
        )
        with_context = set(rng.sample(range(n), round(self.s.context_item_rate * n)))
        records = []
        for index, kind in enumerate(order):
            gt = answers[kind.name].pop()
            lists = self._lists(rng, gt, pools[kind.name], drop=index in dropped)
            earlier = None
            if index in with_context:  # an earlier purchase: an item of another kind
                others = [i for name, pool in pools.items() if name != kind.name for i in pool]
                earlier = rng.choice(others) if others else None
            record = {
                "context": self._context(rng, kind, gt.look, earlier),
                "context_items": [earlier.item_id] if earlier else [],
                "gt": rng.choice(GT_TEMPLATES).format(
                    title=gt.title, url=AMAZON_URL.format(item_id=gt.item_id)
                ),
                "gt_items": [gt.item_id],
            }
            for key in CANDIDATE_KEYS:
                record[key] = [item.item_id for item in lists[key]]
            records.append(record)
        return records

    def plan(self) -> Plan:
        conversations: dict[str, dict[str, list[dict[str, Any]]]] = {}
        distill_valid: list[str] = []
        for category in self.s.categories:
            rng = _stream(self.s.seed, "category", category)
            conversations[category] = {split: self._split(rng, category, split) for split in SPLITS}
            kinds = CATEGORIES[category]
            for i in range(self.s.num_distill_valid):  # items no conversation names
                item = self._item(
                    category, "distill_valid", kinds[i % len(kinds)], rng.choice(LOOKS)
                )
                distill_valid.append(item.item_id)
        return Plan(
            seed=self.s.seed,
            categories=list(self.s.categories),
            items=self.items,
            conversations=conversations,
            distill_valid=distill_valid,
        )


def _describe(rng: random.Random, kind: Kind, look: Look) -> str:
    """A describer-style text: the look in words, then the shape, sometimes the scene."""
    sentences = [
        rng.choice(DESCRIPTION_TEMPLATES).format(
            a_kind=with_article(kind.name),
            kind=kind.name,
            surface=kind.surface,
            colour=look.colour.word,
            a_colour=with_article(look.colour.word),
            pattern=rng.choice(look.pattern.descriptions).format(ink=INK_WORD),
        ),
        rng.choice(kind.shape_sentences),
    ]
    if rng.random() < 0.4:
        sentences.append(rng.choice(DESCRIPTION_CLOSERS))
    return " ".join(sentences)


# ============================================================================ reading looks


def look_in_text(text: str) -> tuple[set[str], set[str]]:
    """The vocabulary's colour words and pattern words (as ``Pattern.word``) in ``text``."""
    lowered = text.lower()
    colours = {c.word for c in COLOURS if re.search(rf"\b{re.escape(c.word)}\b", lowered)}
    patterns = {p.word for p in PATTERNS if p.stem in lowered}
    return colours, patterns


def look_oracle(
    records: Iterable[Mapping[str, Any]],
    item_texts: Mapping[str, str],
    candidate_key: str = "candidates_st",
) -> dict[str, float]:
    """Recall@1 of a reader that picks the candidate whose text states the requested look.

    With descriptions as ``item_texts`` it should reach the ceiling (the share of conversations
    whose answer is listed); with plain titles it sits at chance (no title states a look, so
    every candidate ties); with ``title_look`` titles it reaches the ceiling again.
    Ties count as an expectation over a uniform pick.
    """
    hit = chance = ceiling = total = 0.0
    for record in records:
        candidates = list(record[candidate_key])
        gts = set(record["gt_items"])
        wanted = look_in_text(record["context"])
        winners = [c for c in candidates if look_in_text(item_texts.get(c, "")) == wanted]
        winners = winners or candidates
        hit += sum(c in gts for c in winners) / len(winners)
        chance += sum(c in gts for c in candidates) / len(candidates)
        ceiling += float(bool(gts & set(candidates)))
        total += 1
    if not total:
        return {"oracle": 0.0, "chance": 0.0, "ceiling": 0.0}
    return {"oracle": hit / total, "chance": chance / total, "ceiling": ceiling / total}


# ============================================================================ checks


def check_settings(s: Settings) -> None:
    """Refuse inconsistent settings with a one-line :class:`LavicError`."""
    unknown = [c for c in s.categories if c not in CATEGORIES]
    if unknown:
        raise LavicError(f"unknown unseen categories {unknown}; choose from {sorted(CATEGORIES)}")
    if len(set(s.categories)) != len(s.categories):
        raise LavicError(f"categories repeat: {s.categories}")
    for split, n in s.counts.items():
        if n < 1:
            raise LavicError(f"num_{split} must be at least 1 (got {n})")
    # One item per look in a list, and one look left over to replace a dropped answer.
    if not 2 <= s.num_candidates <= len(LOOKS) - 1:
        raise LavicError(
            f"num_candidates must be between 2 and {len(LOOKS) - 1} (one look per item; "
            f"there are {len(LOOKS)} looks), got {s.num_candidates}"
        )
    if s.num_distill_valid < 1:
        raise LavicError(f"num_distill_valid must be at least 1 (got {s.num_distill_valid})")
    for name in ("test_gt_drop_rate", "context_item_rate"):
        value = getattr(s, name)
        if not 0.0 <= value <= 1.0:
            raise LavicError(f"{name} must be in [0, 1] (got {value})")


# ============================================================================ writing


def plan_unseen(
    *,
    seed: int = 0,
    categories: list[str] | None = None,
    num_train: int = 60,
    num_valid: int = 10,
    num_test: int = 50,
    num_candidates: int = 10,
    num_distill_valid: int = 8,
    test_gt_drop_rate: float = 0.12,
    context_item_rate: float = 0.1,
    title_look: bool = False,
) -> Plan:
    """The catalogue :func:`write_unseen` would write, in memory, without drawing images.

    Raises:
        LavicError: on an unknown category or inconsistent sizes.
    """
    settings = Settings(
        seed=seed,
        categories=list(categories) if categories else list(CATEGORIES),
        counts={"train": num_train, "valid": num_valid, "test": num_test},
        num_candidates=num_candidates,
        num_distill_valid=num_distill_valid,
        test_gt_drop_rate=test_gt_drop_rate,
        context_item_rate=context_item_rate,
        title_look=title_look,
    )
    check_settings(settings)
    return _Planner(settings).plan()


def write_unseen(
    output_dir: str | Path,
    *,
    seed: int = 0,
    categories: list[str] | None = None,
    num_train: int = 60,
    num_valid: int = 10,
    num_test: int = 50,
    num_candidates: int = 10,
    num_distill_valid: int = 8,
    test_gt_drop_rate: float = 0.12,
    context_item_rate: float = 0.1,
    title_look: bool = False,
    jpeg_quality: int = 85,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the unseen catalogue under ``output_dir``; same arguments, same bytes.

    Layout (that of ``lavic synthesize``, which the loaders read): ``<category>/{train,valid,
    test}.jsonl``, ``item2meta_train.json`` (every item a conversation names),
    ``item2meta_valid.jsonl`` (stage-1 validation images of items no conversation names),
    ``train_images/<ID>_0.jpg`` and ``valid_images/<ID>_0.jpg``.

    Returns:
        A JSON-safe summary: counts, paths and per category the look oracle on the test split.

    Raises:
        LavicError: on bad settings, or a non-empty ``output_dir`` without ``overwrite``.
    """
    if not 1 <= jpeg_quality <= 95:
        raise LavicError(f"jpeg_quality must be in [1, 95] (got {jpeg_quality})")
    plan = plan_unseen(
        seed=seed,
        categories=categories,
        num_train=num_train,
        num_valid=num_valid,
        num_test=num_test,
        num_candidates=num_candidates,
        num_distill_valid=num_distill_valid,
        test_gt_drop_rate=test_gt_drop_rate,
        context_item_rate=context_item_rate,
        title_look=title_look,
    )
    root = Path(output_dir).resolve()
    referenced = plan.referenced_ids()
    split_paths = {c: {s: root / c / f"{s}.jsonl" for s in SPLITS} for c in plan.categories}
    prepare_catalogue_folder(
        root,
        overwrite,
        categories=CATEGORIES,
        splits=SPLITS,
        keep_images={plan.items[i].image_name for i in referenced + plan.distill_valid},
        keep_splits={p for paths in split_paths.values() for p in paths.values()},
    )
    train_dir, valid_dir = root / "train_images", root / "valid_images"
    for directory in (train_dir, valid_dir):
        directory.mkdir(parents=True, exist_ok=True)

    # Images first, data files last: once the split files exist the catalogue is whole.
    for directory, ids in ((train_dir, referenced), (valid_dir, plan.distill_valid)):
        for item_id in ids:
            item = plan.items[item_id]
            picture = draw_item(
                _stream(seed, "draw", item_id),
                item.kind.shape,
                item.kind.aspect,
                item.look.colour.rgb,
                item.look.pattern.word,
                item.size,
            )
            with atomic_open(safe_join(directory, item.image_name), "wb") as handle:
                picture.save(handle, format="JPEG", quality=jpeg_quality)

    for category in plan.categories:
        (root / category).mkdir(exist_ok=True)
        for split in SPLITS:
            with atomic_open(split_paths[category][split], "w", encoding="utf-8") as handle:
                for record in plan.conversations[category][split]:
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    train_meta_path = root / "item2meta_train.json"
    atomic_write_json(train_meta_path, {i: _train_meta(plan.items[i]) for i in referenced})
    valid_meta_path = root / "item2meta_valid.jsonl"
    with atomic_open(valid_meta_path, "w", encoding="utf-8") as handle:
        for item_id in plan.distill_valid:
            item = plan.items[item_id]
            line = {
                "title": item.title,
                "image_name": item.image_name,
                "image": IMAGE_URL.format(name=item.image_name),
                "image_description_llava_cleaned": item.description,
            }
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")

    descriptions = {i: plan.items[i].description for i in referenced}
    titles = {i: plan.items[i].title for i in referenced}
    oracle = {}
    for category in plan.categories:
        test = plan.conversations[category]["test"]
        by_description = look_oracle(test, descriptions)
        oracle[category] = {
            "in_list": round(by_description["ceiling"], 4),  # the Recall@1 ceiling
            "description": round(by_description["oracle"], 4),
            "title": round(look_oracle(test, titles)["oracle"], 4),
            "chance": round(by_description["chance"], 4),
        }
    summary = {
        "output_dir": str(root),
        "generator": "unseen",
        "seed": seed,
        "title_look": title_look,
        "categories": list(plan.categories),
        "split_paths": {c: {s: str(p) for s, p in d.items()} for c, d in split_paths.items()},
        "conversations": {
            c: {s: len(plan.conversations[c][s]) for s in SPLITS} for c in plan.categories
        },
        "item2meta_train": str(train_meta_path),
        "item2meta_valid": str(valid_meta_path),
        "train_images_dir": str(train_dir),
        "valid_images_dir": str(valid_dir),
        "num_train_items": len(referenced),
        "num_valid_items": len(plan.distill_valid),
        "num_images": len(referenced) + len(plan.distill_valid),
        "oracle": oracle,
    }
    logger.info(
        "wrote an unseen catalogue to %s: %d categories, %d images",
        root,
        len(plan.categories),
        summary["num_images"],
    )
    return summary


def _train_meta(item: Item) -> dict[str, Any]:
    name = item.image_name
    return {
        "title": item.title,
        "main_category": item.category,
        "store": item.brand,
        "images": [
            {
                "thumb": IMAGE_URL.format(name=name.replace(".jpg", "_thumb.jpg")),
                "large": IMAGE_URL.format(name=name),
                "variant": "MAIN",
            }
        ],
        "image_descriptions_llava_cleaned": {name: item.description},
    }
