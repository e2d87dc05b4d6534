"""How often `tiny`'s item tokens read like the right look words (docs/tiny.md, issue 19).

For each picture, the five item tokens are compared (cosine) with the input embeddings of the
look words of the pictures measured; even views should be nearest their colour's word, odd
views their pattern's. Two sets: pictures of ``lavic.pretrain.pictures`` drawn apart (seed
1001, never trained on), and a catalogue of ``lavic synthesize-unseen --title_look`` (its
words mapped to the common words the warm start pulls the tokens to: ``cobalt`` -> ``blue``).

Usage: python configs/measure_item_tokens.py [--assets DIR] [--unseen DIR] [--count N]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from lavic.data.images import ImageStats, load_image
from lavic.data.loaders import load_item_meta
from lavic.model.tiny import ASSETS_DIR, load_tiny
from lavic.pretrain.pictures import LookPicture, draw_pictures
from lavic.pretrain.vision import nearest_word_accuracy

# The unseen generator's colour and pattern words -> the common words (pictures.py's).
COMMON = {
    "scarlet": "red", "tangerine": "orange", "emerald": "green", "cobalt": "blue",
    "plum": "purple", "pink": "rose", "chocolate": "brown", "cream": "white",
    "pinstriped": "stripes", "gingham": "checkered", "speckled": "dots", "polka-dot": "dots",
}  # fmt: skip


def unseen_pictures(root: Path, count: int) -> list[LookPicture]:
    """``count`` items of a ``--title_look`` unseen catalogue, as pictures with common words."""
    meta = load_item_meta(root / "item2meta_train.json")
    out = []
    for item_id in sorted(meta):
        item = meta[item_id]
        look = re.search(r"\((\w+), ([\w-]+)\)$", item.title or "")
        if look is None:
            raise SystemExit(f"{root}: titles without the look; write it with --title_look")
        stats = ImageStats()
        image = load_image(root / "train_images", item.image_names[0], stats=stats)
        if stats.loaded:  # (a placeholder otherwise)
            out.append(LookPicture(image, COMMON[look[1]], COMMON[look[2]]))
    random.Random(0).shuffle(out)
    return out[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=ASSETS_DIR, help="tiny's weights folder")
    parser.add_argument("--unseen", type=Path, help="a synthesize-unseen --title_look folder")
    parser.add_argument("--count", type=int, default=240, help="pictures per set")
    args = parser.parse_args()
    backbone = load_tiny(assets_dir=args.assets)
    result = {"pictures": nearest_word_accuracy(backbone, draw_pictures(args.count, seed=1001))}
    if args.unseen is not None:
        result["unseen"] = nearest_word_accuracy(backbone, unseen_pictures(args.unseen, args.count))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
