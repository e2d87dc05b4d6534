"""The on-disk folder of a drawn catalogue, shared by every generator (``lavic synthesize``,
``lavic synthesize-unseen``): what may be replaced when a catalogue is written again.

A generator's own drawing, vocabulary and phrasing stay in its package; only the layout the
pipeline reads (``train_images/``, ``valid_images/``, ``<category>/<split>.jsonl``) is here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from lavic.errors import LavicError

# The image names the generators write: a 10-character id (ASIN-like or ISBN-10) and an index.
DRAWN_IMAGE = re.compile(r"^[0-9A-Z]{10}_\d+\.jpg$")
IMAGE_FOLDERS = ("train_images", "valid_images")


def prepare_catalogue_folder(
    root: Path,
    overwrite: bool,
    *,
    categories: Iterable[str],
    splits: Iterable[str],
    keep_images: set[str],
    keep_splits: set[Path],
) -> None:
    """Check that ``root`` may receive a catalogue and clear what a rewrite would leave stale.

    An empty or missing folder is fine. A non-empty one needs ``overwrite``; then only files an
    earlier run of a generator may have written and this run will not rewrite are removed:
    images named like ours (:data:`DRAWN_IMAGE`) that are not in ``keep_images``, and split
    files of ``categories`` not in ``keep_splits``. Nothing else in the folder is touched.

    Raises:
        LavicError: ``root`` is a file, or is not empty and ``overwrite`` is off.
    """
    if root.exists() and not root.is_dir():
        raise LavicError(f"{root}: exists and is not a directory")
    if not root.exists() or not any(root.iterdir()):
        return
    if not overwrite:
        raise LavicError(
            f"{root}: directory is not empty; pass --overwrite to replace a catalogue there"
        )
    for folder in IMAGE_FOLDERS:
        directory = root / folder
        if directory.is_dir():
            for path in directory.iterdir():
                if DRAWN_IMAGE.match(path.name) and path.name not in keep_images and path.is_file():
                    path.unlink()
    splits = list(splits)
    for category in categories:
        for split in splits:
            path = root / category / f"{split}.jsonl"
            if path.is_file() and path not in keep_splits:
                path.unlink()
