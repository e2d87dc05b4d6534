"""Plan and write a synthetic catalogue in exactly the reference's layout.

Planning (ids, looks, titles, descriptions, conversations, image sizes) is pure and
deterministic given ``(style, seed)``; writing then draws only the images that a conversation
or the stage-1 validation set refers to.

How the catalogue keeps a model honest (a tiny model once learnt "ID -> look" from the text
alone and scored at chance on new items):

* Every split of every category has its own pool of items per product kind: train, valid and
  test pools are disjoint, so every test (and valid) answer, candidate and context item is an
  item that was never an answer, nor even shown, in training (cold items).
* A train item is the answer of at most ``max_answers_per_item`` conversations (default 1), and
  a look (colour + pattern) recurs on many items, so the only route from a conversation to
  its answer is to read each candidate's image (or its description).
* A candidate list holds items of one kind only, one per look: the title (brand, kind,
  material, specs; independent of the look) cannot tell them apart.
* A few test conversations lose their answer from both candidate lists, as in the real data.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lavic.constants import SYNTHETIC_IMAGE_URL
from lavic.data.catalogue_folder import prepare_catalogue_folder
from lavic.data.synthetic.render import draw_size, render_item_image, usable_size_classes
from lavic.data.synthetic.styles import STYLES, Kind, Look, Style, article, tone_word
from lavic.errors import LavicError
from lavic.io import atomic_open, atomic_write_json, safe_join

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
CANDIDATE_KEYS = ("candidates_st", "candidates_gpt_large")
IMAGE_URL = SYNTHETIC_IMAGE_URL + "{name}"
AMAZON_URL = "https://www.amazon.com/dp/{item_id}"
_ALNUM = string.ascii_uppercase + string.digits


# ============================================================================= plan


@dataclass
class PlannedImage:
    """One image of an item: its file name, pixel size and teacher description."""

    name: str  # "<ID>_<k>.jpg"
    size: tuple[int, int]  # (width, height)
    description: str


@dataclass
class PlannedItem:
    """One item: its kind and look (hidden from the text except descriptions), title, images."""

    item_id: str
    category: str
    pool: str  # "train" | "valid" | "test" | "distill_valid"
    kind: Kind
    look: Look
    title: str
    brand: str
    images: list[PlannedImage] = field(default_factory=list)


@dataclass
class CataloguePlan:
    """A whole catalogue in memory: what :func:`write_catalogue` writes, before any drawing.

    ``conversations[category][split]`` are the exact JSON records of the split files, and
    ``items`` holds every item with its look, so tests and benchmarks can check properties of
    large catalogues without drawing a single image.
    """

    style: Style
    seed: int
    categories: list[str]
    items: dict[str, PlannedItem]  # every item created, in creation order
    conversations: dict[str, dict[str, list[dict[str, Any]]]]  # category -> split -> records
    distill_valid: list[str]  # ids of the stage-1 validation items

    def referenced_ids(self) -> list[str]:
        """Ids named by any conversation (answer, candidate or context), in first-seen order."""
        seen: dict[str, None] = {}
        for category in self.categories:
            for split in SPLITS:
                for record in self.conversations[category][split]:
                    for key in ("gt_items", "context_items", *CANDIDATE_KEYS):
                        seen.update(dict.fromkeys(record[key]))
        return list(seen)


def _isbn10(rng: random.Random) -> str:
    """A numeric ISBN-10 with a valid check digit (the real data has ids like ``0060188782``)."""
    while True:
        digits = [0] + [rng.randrange(10) for _ in range(8)]
        check = (11 - sum((10 - i) * d for i, d in enumerate(digits)) % 11) % 11
        if check < 10:  # skip the ones whose check digit would be "X"
            return "".join(map(str, digits)) + str(check)


def _new_id(rng: random.Random, used: set[str], isbn_rate: float) -> str:
    while True:
        if rng.random() < isbn_rate:
            item_id = _isbn10(rng)
        else:
            item_id = "B0" + "".join(rng.choice(_ALNUM) for _ in range(8))
        if item_id not in used:
            used.add(item_id)
            return item_id


def describe(rng: random.Random, style: Style, kind: Kind, look: Look) -> str:
    """A LLaVA-style description (1-3 sentences) that states the look and the shape."""
    template = rng.choice(style.text.descriptions[look.pattern])
    sentences = [
        template.format(
            a_kind=f"{article(kind.name)} {kind.name}",
            surface=kind.surface,
            c=look.colour.word,
            tone=tone_word(style, look.colour),
        ),
        rng.choice(kind.shape_sentences),
    ]
    if rng.random() < 0.5:
        sentences.append(rng.choice(style.text.closers))
    return " ".join(sentences)


@dataclass(frozen=True)
class _Settings:
    style: Style
    seed: int
    categories: list[str]
    counts: dict[str, int]  # split -> conversations per category
    num_candidates: int
    min_items_per_kind: int
    max_answers_per_item: int
    num_distill_valid: int
    test_gt_drop_rate: float
    context_item_rate: float
    isbn_rate: float
    second_image_rate: float
    min_image_side: int
    max_image_side: int
    title_look: bool = False


class _Planner:
    def __init__(self, s: _Settings):
        self.s = s
        self.style = s.style
        self.size_classes = usable_size_classes(s.min_image_side, s.max_image_side)
        self.items: dict[str, PlannedItem] = {}
        self.used_ids: set[str] = set()
        self.base = f"lavic-synthetic/{s.style.name}/{s.seed}"

    # ------------------------------------------------------------------ items

    def _item(
        self, rng: random.Random, category: str, pool: str, kind: Kind, look: Look, images: int
    ) -> PlannedItem:
        item_id = _new_id(rng, self.used_ids, self.s.isbn_rate)
        # Everything about the item itself comes from its own generator: independent of the
        # order in which items are created.
        irng = random.Random(f"{self.base}/item/{item_id}")
        brand = irng.choice(self.style.brands)
        item = PlannedItem(
            item_id=item_id,
            category=category,
            pool=pool,
            kind=kind,
            look=look,
            title=self.style.title_format(irng, brand, kind),
            brand=brand,
        )
        if self.s.title_look:  # the control where the title states the look
            item.title = f"{item.title}, {look.colour.word} {look.pattern}"
        for k in range(images):
            item.images.append(
                PlannedImage(
                    name=f"{item_id}_{k}.jpg",
                    size=draw_size(irng, self.size_classes),
                    description=describe(irng, self.style, kind, look),
                )
            )
        self.items[item_id] = item
        return item

    def _pool(
        self, rng: random.Random, category: str, split: str, kind: Kind, size: int
    ) -> list[PlannedItem]:
        """``size`` items of ``kind``; looks cycle through all looks so the first ones differ."""
        looks: list[Look] = []
        while len(looks) < size:
            cycle = list(self.style.looks)
            rng.shuffle(cycle)
            looks.extend(cycle)
        pool = []
        for look in looks[:size]:
            images = 2 if rng.random() < self.s.second_image_rate else 1
            pool.append(self._item(rng, category, split, kind, look, images))
        return pool

    # ------------------------------------------------------------------ candidate lists

    def _negatives(
        self, rng: random.Random, gt: PlannedItem, by_look: dict[str, list[PlannedItem]], hard: bool
    ) -> list[PlannedItem]:
        """``num_candidates - 1`` items of other looks, one per look.

        ``candidates_st`` draws the other looks at random. ``candidates_gpt_large`` is harder: its
        looks come from as few colours as fill the list (the answer's colour first, then others
        in random order), so most candidates share a colour or a pattern with the answer, as a
        stronger retriever's list would. Both keep the answer exchangeable with the other
        candidates: nothing about the list alone (without the conversation) singles it out.
        """
        need = self.s.num_candidates - 1
        others = sorted(k for k in by_look if k != gt.look.key)
        if not hard:
            chosen = rng.sample(others, need)
        else:
            colours = [c.word for c in self.style.colours if c != gt.look.colour]
            rng.shuffle(colours)
            pick: list[str] = []
            for colour in [gt.look.colour.word, *colours]:
                pick += [k for k in others if by_look[k][0].look.colour.word == colour]
                if len(pick) >= need:
                    break
            chosen = rng.sample(pick, need)
        return [rng.choice(by_look[k]) for k in chosen]

    def _replacement(
        self,
        rng: random.Random,
        gt: PlannedItem,
        listed: list[PlannedItem],
        by_look: dict[str, list[PlannedItem]],
    ) -> PlannedItem:
        """An item whose look is neither the answer's nor in the list: the answer is dropped."""
        taken = {gt.look.key} | {i.look.key for i in listed}
        free = sorted(k for k in by_look if k not in taken)
        return rng.choice(by_look[rng.choice(free)])

    # ------------------------------------------------------------------ conversations

    def _context(
        self, rng: random.Random, kind: Kind, look: Look, context_item: PlannedItem | None
    ) -> str:
        t = self.style.text
        ask = rng.choice(t.asks[look.pattern]).format(c=look.colour.word)
        request = rng.choice(t.requests).format(ask=ask)
        title = rng.choice(t.submission_titles).format(kind=kind.name, Kind=kind.name.capitalize())
        body = [rng.choice(t.openers)]
        if context_item is not None:
            body.append(
                rng.choice(t.context_mentions).format(
                    url=AMAZON_URL.format(item_id=context_item.item_id)
                )
            )
        comments: list[str] = []
        if rng.random() < 0.65:  # the seeker states the look in the submission
            body.append(request)
            comments = rng.sample(t.filler_comments, rng.randint(0, 2))
        else:  # ... or when answering a commenter
            comments = [
                rng.choice(t.filler_comments),
                rng.choice(t.op_replies).format(request=request),
            ]
        text = f"<submission>{title} {' '.join(body)}</submission>\n"
        return text + "".join(f"<comment>{c}</comment>\n" for c in comments)

    def _split(self, rng: random.Random, category: str, split: str) -> list[dict[str, Any]]:
        s, kinds = self.s, self.style.categories[category]
        n = s.counts[split]
        order = [kinds[i % len(kinds)] for i in range(n)]
        rng.shuffle(order)
        per_kind = {k.name: order.count(k) for k in kinds}
        pools: dict[str, list[PlannedItem]] = {}
        answers: dict[str, list[PlannedItem]] = {}
        for kind in kinds:
            count = per_kind[kind.name]
            if count == 0:
                continue
            size = max(s.min_items_per_kind, math.ceil(count / s.max_answers_per_item))
            pool = self._pool(rng, category, split, kind, size)
            pools[kind.name] = pool
            # Each pool item answers at most max_answers_per_item conversations, spread evenly.
            sequence: list[PlannedItem] = []
            for _ in range(s.max_answers_per_item):
                shuffled = list(pool)
                rng.shuffle(shuffled)
                sequence.extend(shuffled)
            answers[kind.name] = sequence[:count]

        n_drop = round(s.test_gt_drop_rate * n) if split == "test" else 0
        dropped = set(rng.sample(range(n), n_drop))
        with_context = set(rng.sample(range(n), round(s.context_item_rate * n)))
        used = defaultdict(int)
        records = []
        for index, kind in enumerate(order):
            gt = answers[kind.name][used[kind.name]]
            used[kind.name] += 1
            by_look: dict[str, list[PlannedItem]] = defaultdict(list)
            for item in pools[kind.name]:
                if item is not gt:
                    by_look[item.look.key].append(item)
            lists = {}
            for key in CANDIDATE_KEYS:
                negatives = self._negatives(rng, gt, by_look, hard=key == "candidates_gpt_large")
                first = self._replacement(rng, gt, negatives, by_look) if index in dropped else gt
                listed = [first, *negatives]
                rng.shuffle(listed)
                lists[key] = listed
            context_item = None
            if index in with_context:
                in_lists = {i.item_id for lst in lists.values() for i in lst} | {gt.item_id}
                others = [i for k, p in pools.items() if k != kind.name for i in p]
                others = others or [i for i in pools[kind.name] if i.item_id not in in_lists]
                context_item = rng.choice(others) if others else None
            record = {
                "context": self._context(rng, kind, gt.look, context_item),
                "context_items": [context_item.item_id] if context_item else [],
                "gt": rng.choice(self.style.text.gt_templates).format(
                    title=gt.title, url=AMAZON_URL.format(item_id=gt.item_id)
                ),
                "gt_items": [gt.item_id],
            }
            for key in CANDIDATE_KEYS:
                record[key] = [i.item_id for i in lists[key]]
            records.append(record)
        return records

    def plan(self) -> CataloguePlan:
        conversations: dict[str, dict[str, list[dict[str, Any]]]] = {}
        distill_valid: list[str] = []
        for category in self.s.categories:
            rng = random.Random(f"{self.base}/category/{category}")
            conversations[category] = {split: self._split(rng, category, split) for split in SPLITS}
            kinds = self.style.categories[category]
            for i in range(self.s.num_distill_valid):
                item = self._item(
                    rng,
                    category,
                    "distill_valid",
                    kinds[i % len(kinds)],
                    rng.choice(self.style.looks),
                    1,
                )
                distill_valid.append(item.item_id)
        return CataloguePlan(
            style=self.style,
            seed=self.s.seed,
            categories=list(self.s.categories),
            items=self.items,
            conversations=conversations,
            distill_valid=distill_valid,
        )


# ============================================================================= oracle

# fmt: off
_STOPWORDS = frozenset((
    "the", "and", "for", "with", "its", "has", "have", "this", "that", "are", "was", "were",
    "you", "your", "our", "not", "but", "all", "any", "one", "from", "into", "over", "out",
    "can", "what", "who", "how", "too", "very", "also", "just", "than", "then", "them", "they",
    "their", "there", "here", "been", "will", "would", "should", "could", "about", "after",
    "before", "once", "only", "own", "same", "such", "some", "more", "most", "other", "each",
    "both", "few", "off", "onto", "upon", "via", "per", "yes",
))
# fmt: on


def content_words(text: str) -> set[str]:
    """Lower-case words of 3+ letters, minus a short stop-word list."""
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 3 and w not in _STOPWORDS}


@dataclass(frozen=True)
class OracleResult:
    """Recall@1 of a word-overlap picker, with the chance level and the ceiling of the lists.

    Attributes:
        accuracy: Expected Recall@1 (ties broken uniformly at random).
        chance: Expected Recall@1 of a uniformly random pick.
        ceiling: Share of conversations whose answer is in the list.
        n: Conversations scored.
    """

    accuracy: float
    chance: float
    ceiling: float
    n: int


def word_overlap_oracle(
    conversations: Iterable[Mapping[str, Any]],
    item_texts: Mapping[str, str],
    candidate_key: str = "candidates_st",
) -> OracleResult:
    """Pick, per conversation, the candidate whose text shares most words with the context.

    With ``item_texts`` = titles this is the text-only baseline (it should sit at chance on a
    synthetic catalogue); with ``item_texts`` = descriptions it reads what the images show (it
    should reach the ceiling).

    Args:
        conversations: Records with ``context``, ``gt_items`` and ``candidate_key``.
        item_texts: Item id -> text (a missing id counts as an empty text).
        candidate_key: Which candidate list to pick from.
    """
    words: dict[str, set[str]] = {}
    total = hit = chance = ceiling = 0.0
    for record in conversations:
        candidates = list(record[candidate_key])
        gts = set(record["gt_items"])
        context = content_words(record["context"])
        scores = []
        for item_id in candidates:
            if item_id not in words:
                words[item_id] = content_words(item_texts.get(item_id, ""))
            scores.append(len(context & words[item_id]))
        best = max(scores)
        winners = [c for c, score in zip(candidates, scores, strict=True) if score == best]
        hit += sum(c in gts for c in winners) / len(winners)
        chance += sum(c in gts for c in candidates) / len(candidates)
        ceiling += float(bool(gts & set(candidates)))
        total += 1
    if total == 0:
        return OracleResult(0.0, 0.0, 0.0, 0)
    return OracleResult(hit / total, chance / total, ceiling / total, int(total))


# ============================================================================= write


@dataclass
class CatalogueSummary:
    """What :func:`write_catalogue` wrote.

    Attributes:
        output_dir: The catalogue root (``DATA_DIR`` for every other command).
        style, seed: How it was drawn.
        categories: Category folder names, in order.
        split_paths: category -> split -> ``<category>/<split>.jsonl``.
        conversations: category -> split -> number of conversations.
        item2meta_train: ``item2meta_train.json`` (every item any conversation names).
        item2meta_valid: ``item2meta_valid.jsonl`` (stage-1 validation images).
        train_images_dir, valid_images_dir: The image folders.
        num_train_items: Items in ``item2meta_train.json``.
        num_valid_items: Lines of ``item2meta_valid.jsonl``.
        num_images: Images drawn (both folders).
        oracle: category -> ``{"title": r, "description": r, "chance": r, "ceiling": r}``, the
            word-overlap oracle's Recall@1 on the test split's ``candidates_st``.
    """

    output_dir: Path
    style: str
    seed: int
    categories: list[str]
    split_paths: dict[str, dict[str, Path]]
    conversations: dict[str, dict[str, int]]
    item2meta_train: Path
    item2meta_valid: Path
    train_images_dir: Path
    valid_images_dir: Path
    num_train_items: int
    num_valid_items: int
    num_images: int
    oracle: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (paths as strings)."""
        return {
            "output_dir": str(self.output_dir),
            "style": self.style,
            "seed": self.seed,
            "categories": list(self.categories),
            "split_paths": {
                c: {s: str(p) for s, p in d.items()} for c, d in self.split_paths.items()
            },
            "conversations": self.conversations,
            "item2meta_train": str(self.item2meta_train),
            "item2meta_valid": str(self.item2meta_valid),
            "train_images_dir": str(self.train_images_dir),
            "valid_images_dir": str(self.valid_images_dir),
            "num_train_items": self.num_train_items,
            "num_valid_items": self.num_valid_items,
            "num_images": self.num_images,
            "oracle": self.oracle,
        }


def _check_settings(s: _Settings) -> None:
    looks = len(s.style.looks)
    for split, n in s.counts.items():
        if n < 1:
            raise LavicError(f"num_{split} must be at least 1 (got {n})")
    if not 2 <= s.num_candidates < looks:
        raise LavicError(
            f"num_candidates must be between 2 and {looks - 1} (one look per list; style "
            f"{s.style.name!r} has {looks} looks), got {s.num_candidates}"
        )
    if s.min_items_per_kind < s.num_candidates + 1:
        raise LavicError(
            f"min_items_per_kind ({s.min_items_per_kind}) must exceed num_candidates "
            f"({s.num_candidates}): each list needs that many looks of one kind, plus one spare "
            "to replace a dropped answer"
        )
    if s.max_answers_per_item < 1:
        raise LavicError(f"max_answers_per_item must be at least 1 (got {s.max_answers_per_item})")
    if s.num_distill_valid < 1:
        raise LavicError(f"num_distill_valid must be at least 1 (got {s.num_distill_valid})")
    for name in ("test_gt_drop_rate", "context_item_rate", "isbn_rate", "second_image_rate"):
        value = getattr(s, name)
        if not 0.0 <= value <= 1.0:
            raise LavicError(f"{name} must be in [0, 1] (got {value})")
    if not usable_size_classes(s.min_image_side, s.max_image_side):
        raise LavicError(
            f"no image size fits min_image_side={s.min_image_side}, max_image_side={s.max_image_side}"
            " (try 160 and 768)"
        )


def plan_catalogue(
    *,
    seed: int = 0,
    style: str = "default",
    categories: list[str] | None = None,
    num_train: int = 120,
    num_valid: int = 30,
    num_test: int = 40,
    num_candidates: int = 10,
    min_items_per_kind: int = 20,
    max_answers_per_item: int = 1,
    num_distill_valid: int = 8,
    test_gt_drop_rate: float = 0.12,
    context_item_rate: float = 0.1,
    isbn_rate: float = 0.05,
    second_image_rate: float = 0.1,
    min_image_side: int = 160,
    max_image_side: int = 768,
    title_look: bool = False,
) -> CataloguePlan:
    """Everything :func:`write_catalogue` would write, in memory, without drawing an image.

    Cheap (no images): use it to measure properties of large catalogues. The arguments are
    those of :func:`write_catalogue`.

    Raises:
        LavicError: on an unknown style or category, or inconsistent sizes.
    """
    if style not in STYLES:
        raise LavicError(f"unknown style {style!r}; choose one of {sorted(STYLES)}")
    st = STYLES[style]
    categories = list(categories) if categories else list(st.categories)
    unknown = [c for c in categories if c not in st.categories]
    if unknown:
        raise LavicError(
            f"unknown {style} categories {unknown}; choose from {sorted(st.categories)}"
        )
    if len(set(categories)) != len(categories):
        raise LavicError(f"categories repeat: {categories}")
    settings = _Settings(
        style=st,
        seed=seed,
        categories=categories,
        counts={"train": num_train, "valid": num_valid, "test": num_test},
        num_candidates=num_candidates,
        min_items_per_kind=min_items_per_kind,
        max_answers_per_item=max_answers_per_item,
        num_distill_valid=num_distill_valid,
        test_gt_drop_rate=test_gt_drop_rate,
        context_item_rate=context_item_rate,
        isbn_rate=isbn_rate,
        second_image_rate=second_image_rate,
        min_image_side=min_image_side,
        max_image_side=max_image_side,
        title_look=title_look,
    )
    _check_settings(settings)
    return _Planner(settings).plan()


def write_catalogue(
    output_dir: str | Path,
    *,
    seed: int = 0,
    style: str = "default",
    categories: list[str] | None = None,
    num_train: int = 120,
    num_valid: int = 30,
    num_test: int = 40,
    num_candidates: int = 10,
    min_items_per_kind: int = 20,
    max_answers_per_item: int = 1,
    num_distill_valid: int = 8,
    test_gt_drop_rate: float = 0.12,
    context_item_rate: float = 0.1,
    isbn_rate: float = 0.05,
    second_image_rate: float = 0.1,
    min_image_side: int = 160,
    max_image_side: int = 768,
    title_look: bool = False,
    jpeg_quality: int = 85,
    overwrite: bool = False,
) -> CatalogueSummary:
    """Write a synthetic, visually grounded catalogue under ``output_dir``, laid out as the
    reference's.

    Layout: ``<category>/{train,valid,test}.jsonl``, ``item2meta_train.json`` (every item any
    conversation names), ``item2meta_valid.jsonl`` (stage-1 validation images of items that
    appear in no conversation), ``train_images/<ID>_<k>.jpg`` and ``valid_images/<ID>_0.jpg``.
    Same arguments, same bytes.

    Args:
        output_dir: Catalogue root; created if missing, must be empty unless ``overwrite``.
        seed: Random seed (the held-out style mixes its name in, so it draws other items).
        style: ``"default"`` or ``"heldout"`` (other kinds, words, palettes and drawings).
        categories: Category names of the style (default: all three of it).
        num_train, num_valid, num_test: Conversations per category and split.
        num_candidates: Length of each candidate list (one item per look).
        min_items_per_kind: Items per product kind in each split's pool (at least
            ``num_candidates + 1``); more items, more looks repeated across ids.
        max_answers_per_item: How many conversations one item may answer.
        num_distill_valid: Stage-1 validation images per category.
        test_gt_drop_rate: Share of test conversations whose answer is left out of both lists.
        context_item_rate: Share of conversations linking an earlier purchase (``context_items``).
        isbn_rate: Share of ids that are numeric ISBN-10s instead of ASINs.
        second_image_rate: Share of items that also get a second image ``<ID>_1.jpg``.
        min_image_side, max_image_side: Bounds on the shorter and the longer image side.
        title_look: Append the look to every title (", red stripes"): a control in which the
            title alone tells the candidates apart, e.g. to measure a language model's
            selection from text.
        jpeg_quality: JPEG quality of the images.
        overwrite: Write into a non-empty ``output_dir``, removing stale images and split files
            that an earlier run of this command left there.

    Returns:
        A :class:`CatalogueSummary` with counts, paths and the word-overlap oracle results.

    Raises:
        LavicError: on an unknown style or category, inconsistent sizes, or a non-empty
            ``output_dir`` without ``overwrite``.
    """
    if not 1 <= jpeg_quality <= 95:
        raise LavicError(f"jpeg_quality must be in [1, 95] (got {jpeg_quality})")
    plan = plan_catalogue(
        seed=seed,
        style=style,
        categories=categories,
        num_train=num_train,
        num_valid=num_valid,
        num_test=num_test,
        num_candidates=num_candidates,
        min_items_per_kind=min_items_per_kind,
        max_answers_per_item=max_answers_per_item,
        num_distill_valid=num_distill_valid,
        test_gt_drop_rate=test_gt_drop_rate,
        context_item_rate=context_item_rate,
        isbn_rate=isbn_rate,
        second_image_rate=second_image_rate,
        min_image_side=min_image_side,
        max_image_side=max_image_side,
        title_look=title_look,
    )
    st, categories = plan.style, plan.categories
    root = Path(output_dir).resolve()
    referenced = plan.referenced_ids()
    train_images = [
        (item_id, image) for item_id in referenced for image in plan.items[item_id].images
    ]
    valid_images = [
        (item_id, image) for item_id in plan.distill_valid for image in plan.items[item_id].images
    ]
    split_paths = {c: {s: root / c / f"{s}.jsonl" for s in SPLITS} for c in categories}
    prepare_catalogue_folder(
        root,
        overwrite,
        # every style's categories: a rewrite in another style leaves no stale split behind
        categories={c for style in STYLES.values() for c in style.categories},
        splits=SPLITS,
        keep_images={image.name for _, image in train_images + valid_images},
        keep_splits={p for d in split_paths.values() for p in d.values()},
    )
    root.mkdir(parents=True, exist_ok=True)
    train_dir = safe_join(root, "train_images")
    valid_dir = safe_join(root, "valid_images")

    # Images first, data files last: a catalogue whose jsonl files exist is complete.
    tasks = [(train_dir, i, im) for i, im in train_images] + [
        (valid_dir, i, im) for i, im in valid_images
    ]
    for directory in (train_dir, valid_dir):
        directory.mkdir(exist_ok=True)
    for directory, item_id, image in tqdm(
        tasks, desc=f"drawing {style} images", unit="image", leave=False, mininterval=1.0
    ):
        item = plan.items[item_id]
        rng = random.Random(f"lavic-synthetic/{style}/{seed}/draw/{image.name}")
        picture = render_item_image(rng, st, item.kind, item.look, image.size)
        with atomic_open(safe_join(directory, image.name), "wb") as handle:
            picture.save(handle, format="JPEG", quality=jpeg_quality)

    for category in categories:
        category_dir = safe_join(root, category)
        category_dir.mkdir(exist_ok=True)
        for split in SPLITS:
            with atomic_open(
                safe_join(category_dir, f"{split}.jsonl"), "w", encoding="utf-8"
            ) as handle:
                for record in plan.conversations[category][split]:
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    item2meta_train = {item_id: _train_meta(plan.items[item_id]) for item_id in referenced}
    train_meta_path = safe_join(root, "item2meta_train.json")
    atomic_write_json(train_meta_path, item2meta_train)
    valid_meta_path = safe_join(root, "item2meta_valid.jsonl")
    with atomic_open(valid_meta_path, "w", encoding="utf-8") as handle:
        for item_id in plan.distill_valid:
            item = plan.items[item_id]
            for image in item.images:
                line = {
                    "title": item.title,
                    "image_name": image.name,
                    "image": IMAGE_URL.format(name=image.name),
                    "image_description_llava_cleaned": image.description,
                }
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")

    oracle = {}
    titles = {i: plan.items[i].title for i in referenced}
    descriptions = {i: plan.items[i].images[0].description for i in referenced}
    for category in categories:
        test = plan.conversations[category]["test"]
        by_title = word_overlap_oracle(test, titles)
        by_description = word_overlap_oracle(test, descriptions)
        oracle[category] = {
            "title": round(by_title.accuracy, 4),
            "description": round(by_description.accuracy, 4),
            "chance": round(by_title.chance, 4),
            "ceiling": round(by_title.ceiling, 4),
        }
        logger.info(
            "%s test: Recall@1 of a word-overlap oracle on titles %.3f, on descriptions %.3f "
            "(chance %.3f, ceiling %.3f)",
            category,
            by_title.accuracy,
            by_description.accuracy,
            by_title.chance,
            by_title.ceiling,
        )
    summary = CatalogueSummary(
        output_dir=root,
        style=style,
        seed=seed,
        categories=categories,
        split_paths=split_paths,
        conversations={c: {s: len(plan.conversations[c][s]) for s in SPLITS} for c in categories},
        item2meta_train=train_meta_path,
        item2meta_valid=valid_meta_path,
        train_images_dir=train_dir,
        valid_images_dir=valid_dir,
        num_train_items=len(item2meta_train),
        num_valid_items=len(valid_images),
        num_images=len(tasks),
        oracle=oracle,
    )
    logger.info(
        "wrote a %s catalogue to %s: %d categories, %d items with %d images",
        style,
        root,
        len(categories),
        summary.num_train_items + len(plan.distill_valid),
        summary.num_images,
    )
    return summary


def _train_meta(item: PlannedItem) -> dict[str, Any]:
    return {
        "title": item.title,
        "main_category": item.category,
        "store": item.brand,
        "images": [
            {
                "thumb": IMAGE_URL.format(name=image.name.replace(".jpg", "_thumb.jpg")),
                "large": IMAGE_URL.format(name=image.name),
                "variant": "MAIN" if k == 0 else f"PT{k:02d}",
            }
            for k, image in enumerate(item.images)
        ],
        "image_descriptions_llava_cleaned": {
            image.name: image.description for image in item.images
        },
    }
