"""Typed records for the reference's data files: conversations, item metadata, stage-1 samples.

The loaders in :mod:`lavic.data.loaders` build these from the JSON files and validate every
field, so code downstream can rely on the types below without checking again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lavic.errors import DataError

# Keys of a conversation record holding a candidate list start with this prefix
# (`candidates_st`, `candidates_gpt_large` in the published data).
CANDIDATES_PREFIX = "candidates_"


@dataclass(frozen=True)
class Conversation:
    """One line of ``DATA_DIR/<category>/<split>.jsonl``.

    Attributes:
        context: The Reddit thread (``<submission>...</submission><comment>...``), verbatim.
        context_items: Item ids mentioned in the context.
        gt: The comment that recommended the ground-truth item(s), verbatim.
        gt_items: Ground-truth item ids, in file order; may repeat an id (the published data
            does when a comment links the same product twice), which the reference's Recall@1
            counts twice.
        candidates: Candidate id lists keyed by the full JSON key, e.g. ``"candidates_st"``.
        source: The file the record came from.
        line: Its 1-based line number in that file.
        raw: The original JSON object, so output writers can echo every field.
    """

    context: str
    context_items: tuple[str, ...]
    gt: str
    gt_items: tuple[str, ...]
    candidates: dict[str, tuple[str, ...]] = field(hash=False)
    source: str
    line: int
    raw: dict[str, Any] = field(hash=False, compare=False, repr=False)

    def candidate_list(self, key: str) -> tuple[str, ...]:
        """The candidate ids under ``key`` (e.g. ``"candidates_st"``).

        Raises:
            DataError: naming this record's file and line if it has no such key.
        """
        try:
            return self.candidates[key]
        except KeyError:
            have = sorted(self.candidates)
            raise DataError(
                self.source, f"no candidate list {key!r} (has {have})", self.line
            ) from None


@dataclass(frozen=True)
class ItemMeta:
    """Metadata of one item (ASIN), from ``item2meta_train.json`` or ``item2meta_valid.jsonl``.

    Attributes:
        item_id: The item id (ASIN, or an ISBN-style numeric id).
        title: The product title, or None when the metadata has none (or an empty one).
        image_names: The item's image file names in order, e.g. ``("X_0.jpg", "X_1.jpg")``;
            ``X_0.jpg`` is the image that represents the item as a candidate.
        image_urls: image name -> URL, for the images that have one.
        descriptions: image name -> the teacher's (LLaVA) description of that image.
    """

    item_id: str
    title: str | None
    image_names: tuple[str, ...]
    image_urls: dict[str, str] = field(default_factory=dict, hash=False)
    descriptions: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class DescribedImage:
    """One stage-1 (distillation) sample: an item image and the description to reproduce."""

    item_id: str
    title: str
    image_name: str
    description: str


@dataclass
class LoadReport:
    """What a loader read, and (in lenient mode) what it skipped.

    Counts accumulate when one report is passed to several loads; ``path`` is the last file.

    Attributes:
        path: The file read.
        loaded: Records loaded.
        skipped: One ``file:line: problem`` message per skipped record (lenient mode only).
    """

    path: str
    loaded: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "loaded": self.loaded, "skipped": list(self.skipped)}
