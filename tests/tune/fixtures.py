"""Builders for stage-2 tests: a tiny synthetic catalogue (the stage-1 artefact: tests/lora_artefacts.py)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

CATEGORY = "toys"
# Twelve items; one numeric ISBN-style id; X00000000Z has no image file (placeholder).
ITEMS = [f"B0000000{c}{d}" for c in "AB" for d in "12345"] + ["0060188782", "X00000000Z"]
COLOURS = [
    (230, 30, 30),
    (30, 200, 40),
    (20, 40, 220),
    (240, 220, 20),
    (0, 0, 0),
    (250, 250, 250),
    (120, 60, 10),
    (200, 0, 200),
    (0, 200, 200),
    (90, 90, 90),
    (255, 128, 0),
]
NO_IMAGE = "X00000000Z"


def _conversations(n: int, offset: int) -> list[dict]:
    rows = []
    for k in range(n):
        i = (k + offset) % len(ITEMS)
        candidates = [ITEMS[(i + j) % len(ITEMS)] for j in range(1, 5)]  # never the gt...
        gt = [ITEMS[i]]
        if k % 2 == 0:  # ...except every other conversation, which has it among them
            candidates[k % 4] = ITEMS[i]
        if k % 3 == 0:  # two ground truths: two training samples
            gt.append(candidates[(k + 1) % 4])
        rows.append(
            {
                "context": f"<submission>Looking for a {['red', 'blue', 'green'][k % 3]} mug "
                f"number {k}.</submission>\n<comment>Try the striped one.</comment>\n",
                "context_items": [],
                "gt": "This one.",
                "gt_items": gt,
                "candidates_st": candidates,
                "candidates_gpt_large": list(reversed(candidates)),
            }
        )
    return rows


def write_catalogue(root: Path) -> dict[str, Path]:
    """data_dir/<CATEGORY>/{train,valid,test}.jsonl, item2meta_train.json and an image folder."""
    data_dir = root / "data"
    (data_dir / CATEGORY).mkdir(parents=True)
    for split, n, offset in (("train", 6, 0), ("valid", 3, 5), ("test", 3, 8)):
        text = "".join(json.dumps(r) + "\n" for r in _conversations(n, offset))
        (data_dir / CATEGORY / f"{split}.jsonl").write_text(text)
    meta = {
        item: {
            "title": f"{['red', 'blue', 'green'][i % 3]} mug {i}",
            "images": [{"large": f"https://example.invalid/{item}.jpg"}],
        }
        for i, item in enumerate(ITEMS)
    }
    meta[ITEMS[3]]["title"] = ""  # no title: shown as "No Title", counted
    meta_path = data_dir / "item2meta_train.json"
    meta_path.write_text(json.dumps(meta))
    image_dir = data_dir / "train_images"
    image_dir.mkdir()
    for item, colour in zip(ITEMS, COLOURS, strict=False):  # NO_IMAGE has none
        image = Image.new("RGB", (48, 40), colour)
        for x in range(0, 48, 6):  # a stripe so the views differ
            for y in range(40):
                image.putpixel((x, y), (255 - colour[0], 255 - colour[1], 255 - colour[2]))
        image.save(image_dir / f"{item}_0.jpg", format="JPEG", quality=95)
    return {"data_dir": data_dir, "item_meta_path": meta_path, "image_dir": image_dir}
