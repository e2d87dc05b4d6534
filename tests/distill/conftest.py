"""A tiny on-disk catalogue in the reference's two metadata formats, with broken images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

COLOURS = {
    "red": (220, 30, 30),
    "blue": (30, 30, 220),
    "green": (30, 200, 30),
    "yellow": (230, 220, 20),
    "black": (10, 10, 10),
    "white": (250, 250, 250),
}
THINGS = ["mug", "hoodie", "lamp", "bottle", "bag"]


def _draw(path: Path, colour: str, size=(48, 40)) -> None:
    Image.new("RGB", size, COLOURS[colour]).save(path, format="JPEG")


def write_tiny_catalogue(root: Path, *, n_train: int = 6, n_val: int = 3) -> dict[str, Path]:
    """``item2meta_train.json`` (+ images), ``item2meta_valid.jsonl`` (+ images).

    The train set has a missing image and a corrupt one; the validation set has an image name
    that links out of its folder. All are described, so they reach the placeholder path.
    """
    train_dir, val_dir = root / "train_images", root / "valid_images"
    train_dir.mkdir(parents=True)
    val_dir.mkdir(parents=True)
    colours = list(COLOURS)
    train = {}
    for i in range(n_train):
        item = f"B0000000{i:02d}"
        colour, thing = colours[i % len(colours)], THINGS[i % len(THINGS)]
        train[item] = {
            "title": f"{colour} {thing}",
            "images": [{"large": f"https://example.invalid/{item}.jpg"}],
            "image_descriptions_llava_cleaned": {
                f"{item}_0.jpg": f"a plain {colour} {thing} with a {colour} handle"
            },
        }
        if i == 1:
            continue  # missing file
        if i == 2:
            (train_dir / f"{item}_0.jpg").write_bytes(b"not a jpeg at all")
            continue
        _draw(train_dir / f"{item}_0.jpg", colour)
    (root / "item2meta_train.json").write_text(json.dumps(train), encoding="utf-8")
    lines = []
    for i in range(n_val):
        item = f"B0000001{i:02d}"
        colour, thing = colours[(i + 2) % len(colours)], THINGS[(i + 1) % len(THINGS)]
        _draw(val_dir / f"{item}_0.jpg", colour, size=(40, 64))
        lines.append(
            {
                "title": f"{colour} {thing}",
                "image_name": f"{item}_0.jpg",
                "image": "https://example.invalid/x.jpg",
                "image_description_llava_cleaned": f"a plain {colour} {thing}",
            }
        )
    # A link out of the image folder (a name that is a path, ../x.jpg, is refused by the loader
    # itself: tests/data/test_loaders.py).
    _draw(root / "outside.jpg", "white")
    (val_dir / "ESCAPE_0.jpg").symlink_to(root / "outside.jpg")
    lines.append(
        {
            "title": "escape",
            "image_name": "ESCAPE_0.jpg",
            "image": None,
            "image_description_llava_cleaned": "a plain white box",
        }
    )
    (root / "item2meta_valid.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8"
    )
    return {
        "train_data": root / "item2meta_train.json",
        "val_data": root / "item2meta_valid.jsonl",
        "train_images_dir": train_dir,
        "val_images_dir": val_dir,
    }


@pytest.fixture
def tiny_catalogue(tmp_path) -> dict[str, Path]:
    return write_tiny_catalogue(tmp_path / "data")
