"""`lavic encode` end to end: fills the cache once, then reuses it; tokens equal recomputed ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lavic.cache.encode import Args, collect_item_ids
from lavic.cache.store import ItemTokenCache, adapter_fingerprint
from lavic.cli import main
from lavic.data.images import item_image_name, load_image
from lavic.model.backbone import load_backbone, unwrap
from lavic.model.item_tokens import encode_item_tokens, pixel_views
from lora_artefacts import write_stage1_artifact
from tune.fixtures import CATEGORY, ITEMS, NO_IMAGE, write_catalogue

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("encode")
    return write_stage1_artifact(root / "distill"), write_catalogue(root)


def test_encode_then_reuse(setup, tmp_path: Path, capsys):
    stage1, cat = setup
    argv = [
        "encode",
        "--model_dir",
        str(stage1),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--image_dir",
        str(cat["image_dir"]),
        "--item_meta_path",
        str(cat["item_meta_path"]),
        "--batch_size",
        "5",
    ]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["items"], first["encoded"], first["placeholders"]) == (len(ITEMS), len(ITEMS), 1)
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    assert (second["encoded"], second["reused"]) == (0, len(ITEMS))

    backbone = load_backbone(stage1)
    ids = [ITEMS[0], NO_IMAGE, ITEMS[7]]
    images = [load_image(cat["image_dir"], item_image_name(i, 0)) for i in ids]
    with torch.no_grad():
        expected = encode_item_tokens(
            unwrap(backbone.model), pixel_views(backbone.image_processor, images)
        )
    cache = ItemTokenCache.open(tmp_path / "cache", fingerprint=adapter_fingerprint(stage1))
    torch.testing.assert_close(cache.get(ids), expected, atol=1e-6, rtol=0)


def test_items_from_conversations(setup):
    _, cat = setup
    args = Args(
        model_dir="tiny-random",
        cache_dir=Path("unused"),
        image_dir=cat["image_dir"],
        data_dir=cat["data_dir"],
        category=CATEGORY,
        candidate_type="candidates_st",
        splits=["valid", "test", "absent"],
    )
    ids = collect_item_ids(args)
    expected = []
    for split in ("valid", "test"):
        for line in (cat["data_dir"] / CATEGORY / f"{split}.jsonl").read_text().splitlines():
            record = json.loads(line)
            expected += record["candidates_st"] + record["gt_items"]
    assert ids == list(dict.fromkeys(expected))


def test_encode_needs_items(setup, tmp_path: Path, capsys):
    _, cat = setup
    assert (
        main(
            [
                "encode",
                "--model_dir",
                "tiny-random",
                "--cache_dir",
                str(tmp_path),
                "--image_dir",
                str(cat["image_dir"]),
            ]
        )
        == 2
    )
    assert "--item_meta_path" in capsys.readouterr().err
