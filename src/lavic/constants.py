"""Constants shared by every stage. Defined once; saved with every artefact's tokenizer."""

# The five placeholder tokens whose embeddings are overwritten by an item's visual tokens:
# one per LLaVA-NeXT view (the base view + up to 4 anyres crops, padded to 5).
ITEM_TOKENS: tuple[str, ...] = tuple(f"<ItemImageEmb{i}>" for i in range(1, 6))
NUM_ITEM_TOKENS = len(ITEM_TOKENS)
ITEM_TOKENS_TEXT = "".join(ITEM_TOKENS)

# Label value ignored by the cross-entropy loss (PyTorch's default ignore_index).
IGNORE_INDEX = -100

# A missing or unreadable image is replaced by a white square of this size (as in the reference).
PLACEHOLDER_IMAGE_SIZE = (336, 336)

DEFAULT_MODEL_NAME = "llava-hf/llava-v1.6-mistral-7b-hf"

# Title used for an item without metadata (the reference's fallback).
MISSING_TITLE = "No Title"

# `lavic synthesize` (and `lavic synthesize-unseen`) give every image they draw a URL on this
# reserved (RFC 2606), never resolvable host: the mark of a synthetic catalogue, which the
# offline `tiny` backbone was built for (see lavic.data.loaders.is_synthetic_catalogue).
SYNTHETIC_IMAGE_URL = "https://example.invalid/"
