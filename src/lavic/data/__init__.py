"""Data layer: typed records and validating loaders for the reference's formats, item images,
and the ``check-data`` command.

The common entry points are re-exported here; images live in :mod:`lavic.data.images`
(imported on use, it pulls in PIL and numpy).
"""

from lavic.data.loaders import (
    candidate_keys,
    described_images,
    find_splits,
    load_conversations,
    load_item_meta,
    load_split,
)
from lavic.data.records import Conversation, DescribedImage, ItemMeta, LoadReport

__all__ = [
    "Conversation",
    "DescribedImage",
    "ItemMeta",
    "LoadReport",
    "candidate_keys",
    "described_images",
    "find_splits",
    "load_conversations",
    "load_item_meta",
    "load_split",
]
