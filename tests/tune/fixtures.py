"""Builders for stage-2 tests: a tiny synthetic catalogue and a tiny-random stage-1 artefact."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
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


def write_stage1_artifact(out_dir: Path) -> Path:
    """A distill artefact of tiny-random whose vision LoRA is not the identity."""
    from peft import LoraConfig, get_peft_model

    from lavic.artifacts import write_artifact
    from lavic.model.backbone import build_tiny_random
    from lavic.model.lora import vision_lora_targets

    backbone = build_tiny_random()
    model = get_peft_model(
        backbone.model,
        LoraConfig(r=4, lora_alpha=8, target_modules=vision_lora_targets(backbone.model)),
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)  # B = 0 at init would make the adapter a no-op
    return write_artifact(
        out_dir,
        kind="distill",
        model=model,
        backbone=backbone,
        config=DistillConfig(),
        metrics={"val_loss": 1.0},
        base_model="tiny-random",
    )


@dataclass
class DistillConfig:
    """Stands in for stage 1's resolved config (saved as config.yaml)."""

    model_name: str = "tiny-random"
