"""A small product table with pictures, as a user brings it: good rows, bad rows, odd images.

Used by the importer's tests and its end-to-end test (import -> describe -> distill -> index ->
serve). The images differ in colour so a converted one can be told from a washed-out one.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# (sku, name, picture, colour); picture None: no image; "URL": served by the local server.
GOOD_ROWS: list[tuple[str, str, str | None, tuple[int, int, int]]] = [
    ("MUG-RED", "Red stoneware coffee mug", "mugs/red.jpg", (200, 30, 30)),
    ("MUG-BLUE", "Blue porcelain tea cup", "mugs/blue.png", (30, 60, 200)),
    ("LAMP-01", "Yellow bedside lamp", "lamps/yellow.jpg", (230, 200, 40)),
    ("HOODIE-GRN", "Green cotton hoodie", "hoodie_green.webp", (40, 150, 60)),
    ("0060188782", "Leather messenger bag", "bag.jpg", (110, 70, 30)),  # ISBN-style id
    ("BOTTLE-16", "Grey steel bottle (16-bit scan)", "scans/bottle16.png", (64, 64, 64)),
    ("SCARF-URL", "Maroon wool scarf", "URL", (150, 0, 40)),
    ("GONE-1", "Teal water bottle", "missing/nothere.jpg", (0, 170, 170)),
    ("NOPIC-1", "Gift card", None, (0, 0, 0)),
]
# (row as written, what the importer must say about it)
BAD_ROWS: list[tuple[list[str], str]] = [
    (["", "Row without an id", "mugs/red.jpg"], "empty item id (column 'sku')"),
    (["MUG-RED", "Same id again", "mugs/blue.png"], "duplicate item id 'MUG-RED' (first on row 1)"),
    (["ESCAPE-1", "Reads outside the root", "../secret.jpg"], "is outside --images_root"),
    (["a/b", "Id with a slash", "bag.jpg"], "cannot name an image file"),
]
HEADER = ["sku", "name", "picture"]


@dataclass
class Table:
    root: Path
    csv_path: Path
    pictures: Path
    url_path: str  # the path the local server must serve
    url_image: bytes
    good_ids: list[str]
    bad_rows: list[int]  # row numbers of BAD_ROWS in the CSV


def grey16_png(path: Path, value: int, size=(48, 40)) -> None:
    array = np.full((size[1], size[0]), value, dtype=np.uint16)
    Image.fromarray(array).save(path, format="PNG")  # uint16 -> mode I;16


def write_table(root: Path, url: str | None) -> Table:
    """``root/products.csv`` + ``root/pictures/...`` (+ ``root/secret.jpg`` outside them).

    ``url`` is where the local server serves the scarf's JPEG (None: leave a placeholder URL).
    """
    pictures = root / "pictures"
    for sub in ("mugs", "lamps", "scans"):
        (pictures / sub).mkdir(parents=True, exist_ok=True)
    url_image = b""
    for _sku, _name, picture, colour in GOOD_ROWS:
        if picture is None or picture.startswith("missing/"):
            continue
        image = Image.new("RGB", (64, 48), colour)
        if picture == "URL":
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=90)
            url_image = buf.getvalue()
        elif picture.endswith("16.png"):
            grey16_png(pictures / picture, 0x4040)  # 16-bit grey, a quarter of full scale
        elif picture.endswith(".png"):
            image.convert("P", palette=Image.Palette.ADAPTIVE).save(pictures / picture)
        else:
            image.save(pictures / picture)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(root / "secret.jpg")
    rows = []
    for sku, name, picture, _ in GOOD_ROWS:
        cell = (
            ""
            if picture is None
            else (url or "http://127.0.0.1:9/x.jpg")
            if picture == "URL"
            else picture
        )
        rows.append([sku, name, cell])
    bad_rows = []
    for k, (row, _) in enumerate(BAD_ROWS):
        rows.insert(2 + 2 * k, row)  # spread among the good ones
    for i, row in enumerate(rows, start=1):
        if any(row == bad for bad, _ in BAD_ROWS):
            bad_rows.append(i)
    csv_path = root / "products.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return Table(
        root=root,
        csv_path=csv_path,
        pictures=pictures,
        url_path="/scarf.jpg",
        url_image=url_image,
        good_ids=[r[0] for r in GOOD_ROWS],
        bad_rows=bad_rows,
    )


# A shop platform's own export, as it comes: media paths from the media root with a leading
# slash, names with HTML entities and markup, a Latin-1 name. (sku, name as exported, image
# path, the title the importer must write)
SHOP_ROWS: list[tuple[str, str, str, str]] = [
    ("MB01", "Cobalt CoolTech&trade; Fitness Short", "/m/b/mb01-blue-0.jpg",
     "Cobalt CoolTech\u2122 Fitness Short"),
    ("MB02", "Tom &amp; Jerry mug", "/m/b/mb02-red-0.jpg", "Tom & Jerry mug"),
    ("MB03", "<b>Bold</b> mug", "/m/b/mb03-green-0.jpg", "Bold mug"),
    ("MB04", "Caf\u00e9 cr\u00e8me <br/>bowl &lt;b&gt;", "/m/b/mb04-white-0.jpg",
     "Caf\u00e9 cr\u00e8me bowl <b>"),
    ("MB05", "Plain lamp, size < 10 kg", "/m/b/mb05-gone-0.jpg", "Plain lamp, size < 10 kg"),
]  # fmt: skip


def write_shop_export(root: Path, encoding: str = "utf-8") -> tuple[Path, Path]:
    """``root/export.csv`` in ``encoding`` and ``root/media/m/b/*.jpg`` (MB05's is missing).

    Returns:
        (the table, the media root).
    """
    media = root / "media"
    (media / "m" / "b").mkdir(parents=True, exist_ok=True)
    for k, (_sku, _name, path, _title) in enumerate(SHOP_ROWS):
        if "gone" not in path:
            Image.new("RGB", (24, 24), (40 * k, 80, 160)).save(media / path.lstrip("/"))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["sku", "name", "image", "price"])
    writer.writerows([sku, name, path, "9.99"] for sku, name, path, _ in SHOP_ROWS)
    table = root / "export.csv"
    table.write_bytes(buf.getvalue().encode(encoding))
    return table, media
