"""Session fixtures of the serving tests: a tiny tuned artefact, a drawn catalogue, its index.

The tuned artefact is tiny-random with a stage-1 (vision) and a stage-2 (language) LoRA whose
B matrices are random (tests/lora_artefacts.py, written with
:func:`lavic.artifacts.write_artifact`), so loading it runs the real lineage (base -> distill
adapter merged -> tune adapter merged) in about a second.
The sentence-transformer (the bundled all-MiniLM-L6-v2) is loaded once per session.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from lora_artefacts import write_tuned_lineage

# (item id, title, colour, shape, description); ids mix ASINs and ISBN-style numbers.
ITEMS: list[tuple[str, str | None, tuple[int, int, int], str, str | None]] = [
    (
        "B000MUG001",
        "Stoneware coffee mug 350 ml",
        (200, 30, 30),
        "mug",
        "A glossy red mug with a round handle.",
    ),
    (
        "B000MUG002",
        "Porcelain tea cup with saucer",
        (30, 60, 200),
        "mug",
        "A blue cup with a thin handle on a matching saucer.",
    ),
    (
        "B000LMP001",
        "Bedside table lamp with linen shade",
        (240, 200, 40),
        "lamp",
        "A yellow lamp shade on a slim metal stem.",
    ),
    ("B000LMP002", "Industrial desk lamp, adjustable arm", (20, 20, 20), "lamp", None),
    (
        "B000HOD001",
        "Cotton pullover hoodie, unisex",
        (40, 150, 60),
        "hoodie",
        "A green hooded sweatshirt with a front pocket.",
    ),
    (
        "B000HOD002",
        "Zip-up fleece hoodie for hiking",
        (120, 40, 160),
        "hoodie",
        "A purple zip hoodie with drawstrings.",
    ),
    (
        "B000BAG001",
        "Waterproof cycling backpack 20 L",
        (250, 120, 0),
        "bag",
        "A bright orange roll-top backpack with reflective strips.",
    ),
    (
        "0060188782",
        "Leather messenger bag for laptops",
        (110, 70, 30),
        "bag",
        "A brown leather shoulder bag with a buckle.",
    ),
    (
        "B000BTL001",
        "Insulated steel water bottle 750 ml",
        (0, 170, 170),
        "bottle",
        "A teal metal bottle with a screw cap.",
    ),
    ("B000BTL002", "Glass water bottle with bamboo lid", (230, 230, 230), "bottle", None),
    (
        "B000NOIMG1",
        "Wool winter scarf, extra long",
        (150, 0, 40),
        "none",
        "A long maroon knitted scarf.",
    ),
    ("B000NOTITL", None, (90, 90, 90), "mug", "A grey mug."),
]
ITEM_IDS = [i[0] for i in ITEMS]


def draw_item(colour: tuple[int, int, int], shape: str, size: int = 96) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(image)
    s = size
    if shape == "mug":
        d.rounded_rectangle([s * 0.2, s * 0.25, s * 0.65, s * 0.85], radius=6, fill=colour)
        d.ellipse([s * 0.55, s * 0.38, s * 0.85, s * 0.68], outline=colour, width=6)
    elif shape == "lamp":
        d.polygon(
            [(s * 0.3, s * 0.15), (s * 0.7, s * 0.15), (s * 0.85, s * 0.5), (s * 0.15, s * 0.5)],
            fill=colour,
        )
        d.rectangle([s * 0.47, s * 0.5, s * 0.53, s * 0.85], fill=(60, 60, 60))
    elif shape == "hoodie":
        d.rectangle([s * 0.25, s * 0.25, s * 0.75, s * 0.9], fill=colour)
        d.rectangle([s * 0.08, s * 0.3, s * 0.25, s * 0.75], fill=colour)
        d.rectangle([s * 0.75, s * 0.3, s * 0.92, s * 0.75], fill=colour)
        d.ellipse([s * 0.38, s * 0.1, s * 0.62, s * 0.35], fill=colour)
    elif shape == "bag":
        d.rounded_rectangle([s * 0.15, s * 0.35, s * 0.85, s * 0.9], radius=8, fill=colour)
        d.arc([s * 0.3, s * 0.1, s * 0.7, s * 0.55], 180, 360, fill=colour, width=5)
    else:  # bottle
        d.rounded_rectangle([s * 0.35, s * 0.25, s * 0.65, s * 0.92], radius=8, fill=colour)
        d.rectangle([s * 0.42, s * 0.1, s * 0.58, s * 0.25], fill=(40, 40, 40))
    return image


def write_catalogue(root: Path, items=ITEMS) -> tuple[Path, Path]:
    """``item2meta.json`` (the reference's train-dict format) and ``images/<item>_0.jpg``."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    meta = {}
    for item_id, title, colour, shape, description in items:
        entry: dict = {"images": [{"large": f"https://example.invalid/{item_id}.jpg"}]}
        if title is not None:
            entry["title"] = title
        if description is not None:
            entry["image_descriptions_llava_cleaned"] = {f"{item_id}_0.jpg": description}
        meta[item_id] = entry
        if shape != "none":
            draw_item(colour, shape).save(image_dir / f"{item_id}_0.jpg", quality=92)
    meta_path = root / "item2meta.json"
    meta_path.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return meta_path, image_dir


def write_conversations(data_dir: Path, category: str, rows: list[dict]) -> None:
    (data_dir / category).mkdir(parents=True, exist_ok=True)
    with open(data_dir / category / "test.jsonl", "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


CONVERSATIONS = [
    ("<submission>I want a red coffee mug for my desk</submission>\n", "B000MUG001"),
    (
        "<submission>Looking for a bright backpack for cycling in the rain</submission>\n"
        "<comment>Get something waterproof</comment>\n",
        "B000BAG001",
    ),
    ("<submission>Need a water bottle that keeps drinks cold</submission>\n", "B000BTL001"),
    ("<submission>A warm hoodie for hiking trips?</submission>\n", "B000HOD002"),
    ("<submission>Any good bedside lamp?</submission>\n", "B000LMP001"),
]


@pytest.fixture(scope="session")
def tuned_dir(tmp_path_factory) -> Path:
    return write_tuned_lineage(tmp_path_factory.mktemp("artefacts"))


@pytest.fixture(scope="session")
def embedder():
    from lavic.serving.retrieval import load_embedder

    return load_embedder()


@pytest.fixture(scope="session")
def catalogue_files(tmp_path_factory) -> tuple[Path, Path]:
    return write_catalogue(tmp_path_factory.mktemp("catalogue"))


@pytest.fixture(scope="session")
def eval_data_dir(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("conversations")
    rows = [
        {
            "context": c,
            "context_items": [],
            "gt": "",
            "gt_items": [gt],
            "candidates_st": ITEM_IDS[:10],
        }
        for c, gt in CONVERSATIONS
    ]
    write_conversations(data_dir, "home", rows)
    return data_dir


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory, tuned_dir, catalogue_files, embedder) -> Path:
    from lavic.serving.index import Args, build_index

    meta_path, image_dir = catalogue_files
    out = tmp_path_factory.mktemp("index")
    build_index(
        Args(model_dir=tuned_dir, item_meta_path=meta_path, image_dir=image_dir, index_dir=out),
        embedder=embedder,
    )
    return out


@pytest.fixture(scope="session")
def recommender(tuned_dir, index_dir, embedder):
    from lavic.serving.recommender import Recommender

    # float32, pinned: the serving tests compare scores to oracles computed in float32 (the
    # bf16 path has its own tests, which compare bf16 with bf16).
    return Recommender.load(tuned_dir, index_dir, embedder=embedder, device="cpu", dtype="float32")
