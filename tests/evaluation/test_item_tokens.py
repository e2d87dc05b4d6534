"""The evaluator's in-memory item tokens come from the one item encoder (the token cache's)."""

from __future__ import annotations

import torch
from PIL import Image

from lavic.data.images import ImageStats, item_image_name, placeholder_image
from lavic.evaluation.evaluate import encode_items
from lavic.model.item_tokens import make_item_encoder
from lavic.model.tiny_random import build_tiny_random


def test_encode_items_are_the_item_encoders_tokens(tmp_path):
    backbone = build_tiny_random(seed=4)
    colours = {"A1": (200, 30, 30), "B2": (30, 30, 200), "C3": (30, 200, 30)}
    for item_id, rgb in colours.items():
        Image.new("RGB", (40, 30), rgb).save(tmp_path / item_image_name(item_id))
    stats = ImageStats()
    ids = [*colours, "MISSING"]
    tokens = encode_items(backbone, ids, tmp_path, stats=stats, batch_size=2)
    encoder = make_item_encoder(backbone)
    images = [Image.open(tmp_path / item_image_name(i)).convert("RGB") for i in colours]
    want = encoder(images)
    for k, item_id in enumerate(colours):
        torch.testing.assert_close(tokens[item_id], want[k], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tokens["MISSING"], encoder([placeholder_image()])[0], rtol=0, atol=0)
    assert stats.loaded == 3 and stats.placeholders == 1
