"""``lavic index`` end to end: the files it writes, Recall@k, and incremental rebuilds."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lavic.cli import main
from lavic.serving.index import Args, build_index, read_catalogue
from lavic.serving.retrieval import RetrievalIndex, retrieval_recall_at_k

from .conftest import CONVERSATIONS, ITEMS, draw_item, write_catalogue


def test_index_command_writes_the_index_and_prints_recall(
    tmp_path, tuned_dir, embedder, eval_data_dir, capsys
):
    meta_path, image_dir = write_catalogue(tmp_path / "cat")
    out = tmp_path / "index"
    code = main(
        [
            "index",
            "--model_dir",
            str(tuned_dir),
            "--item_meta_path",
            str(meta_path),
            "--image_dir",
            str(image_dir),
            "--index_dir",
            str(out),
            "--eval_data_dir",
            str(eval_data_dir),
            "--category",
            "home",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert {"catalogue.json", "retrieval.npz", "retrieval.json", "metrics.json", "item_tokens"} <= {
        p.name for p in out.iterdir()
    }
    assert (out / "item_tokens" / "index.json").is_file()

    catalogue = read_catalogue(out)
    assert list(catalogue.items) == [i[0] for i in ITEMS]
    assert catalogue.items["B000NOTITL"].title is None
    assert catalogue.image_path("B000NOIMG1") is None  # registered name, but no file
    assert catalogue.image_path("B000MUG001") == (image_dir / "B000MUG001_0.jpg").resolve()

    # The printed Recall@10 is retrieval_recall_at_k on the same conversations (the oracle).
    from lavic.data.loaders import load_split

    index = RetrievalIndex.load(out, embedder=embedder)
    expected = retrieval_recall_at_k(index, load_split(eval_data_dir, "home", "test"), 10)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["retrieval_recall@10"] == pytest.approx(expected)
    assert (
        f"retrieval Recall@10 on home/test ({len(CONVERSATIONS)} conversations): "
        f"{expected:.4f}" in printed
    )
    # 12 items, top 10 retrieved: at least the 5 clearly described targets mostly come back.
    assert expected >= 0.6


def test_rebuild_embeds_and_encodes_only_new_or_changed_items(tmp_path, tuned_dir, embedder):
    from lavic.evaluation.evaluate import load_model

    backbone = load_model(tuned_dir, device="cpu")
    meta_path, image_dir = write_catalogue(tmp_path / "cat", ITEMS[:8])
    args = Args(
        model_dir=tuned_dir,
        item_meta_path=meta_path,
        image_dir=image_dir,
        index_dir=tmp_path / "index",
    )
    first = build_index(args, embedder=embedder, backbone=backbone)
    assert (first["embedded_new"], first["tokens_encoded"]) == (8, 8)
    before = RetrievalIndex.load(args.index_dir)

    again = build_index(args, embedder=embedder, backbone=backbone)
    assert (again["embedded_new"], again["embedded_changed"], again["tokens_encoded"]) == (0, 0, 0)
    assert again["embeddings_reused"] == 8 and again["tokens_reused"] == 8

    # Two items added, one retitled, one image redrawn.
    meta = json.loads(meta_path.read_text())
    for item_id, title, colour, shape, _ in ITEMS[8:10]:
        meta[item_id] = {"title": title, "images": [{}]}
        draw_item(colour, shape).save(image_dir / f"{item_id}_0.jpg")
    meta["B000MUG001"]["title"] = "Stoneware coffee mug 500 ml"
    meta_path.write_text(json.dumps(meta))
    draw_item((0, 0, 0), "lamp").save(image_dir / "B000LMP001_0.jpg")
    grown = build_index(args, embedder=embedder, backbone=backbone)
    assert (grown["embedded_new"], grown["embedded_changed"]) == (2, 1)
    assert grown["embeddings_reused"] == 7
    assert grown["tokens_encoded"] == 3  # two new items, one new image
    after = RetrievalIndex.load(args.index_dir)
    assert len(after) == 10
    unchanged = [i for i in before.item_ids if i != "B000MUG001"]
    rows_before = [before.item_ids.index(i) for i in unchanged]
    rows_after = [after.item_ids.index(i) for i in unchanged]
    assert np.array_equal(before.vectors[rows_before], after.vectors[rows_after])
    assert set(read_catalogue(args.index_dir).items) == set(meta)


def test_index_errors_are_one_line(tmp_path, tuned_dir, capsys):
    meta_path, image_dir = write_catalogue(tmp_path / "cat", ITEMS[:2])
    base = [
        "index",
        "--model_dir",
        str(tuned_dir),
        "--item_meta_path",
        str(meta_path),
        "--index_dir",
        str(tmp_path / "index"),
    ]
    assert main([*base, "--image_dir", str(tmp_path / "nope")]) == 2
    assert "image folder not found" in capsys.readouterr().err
    assert main([*base, "--image_dir", str(image_dir), "--category", "home"]) == 2
    assert "--eval_data_dir and --category go together" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text('{"A": {"title": 3}}')
    assert (
        main(
            [
                "index",
                "--model_dir",
                str(tuned_dir),
                "--item_meta_path",
                str(broken),
                "--image_dir",
                str(image_dir),
                "--index_dir",
                str(tmp_path / "i2"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "broken.json:1" in err and "Traceback" not in err
    shutil.rmtree(tmp_path / "cat")


def test_index_warns_when_tiny_meets_a_catalogue_it_was_not_built_for(
    tmp_path, tuned_dir, embedder, caplog
):
    """The artefact's recorded base model is what is judged: made `tiny` here (the test
    artefact is tiny-random), a shop-like catalogue gets the one-line stand-in warning."""
    import logging

    from lavic.model import inference

    shutil.copytree(tuned_dir.parent, tmp_path / "run", symlinks=True)  # with its parent
    artefact = tmp_path / "run" / tuned_dir.name
    for info_path in (tmp_path / "run").rglob("lavic.json"):
        info = json.loads(info_path.read_text())
        if info["base_model"] == "tiny-random":
            info["base_model"] = "tiny"
            info_path.write_text(json.dumps(info))
    meta_path, image_dir = write_catalogue(tmp_path / "cat")
    # a shop's URLs, not the synthetic catalogue's reserved host: photos, not drawn shapes
    meta_path.write_text(meta_path.read_text().replace("example.invalid", "shop.example.com"))
    loaded = inference.load_model(tuned_dir, device="cpu", dtype="float32")
    with caplog.at_level(logging.WARNING):
        build_index(
            Args(model_dir=artefact, item_meta_path=meta_path, image_dir=image_dir,
                 index_dir=tmp_path / "index"),
            embedder=embedder,
            backbone=loaded,  # the real tiny is not needed to see the warning
        )  # fmt: skip
    warnings = [r.getMessage() for r in caplog.records]
    warnings = [w for w in warnings if "drawn synthetic shapes" in w]
    assert len(warnings) == 1 and str(meta_path) in warnings[0]
