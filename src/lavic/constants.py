"""Constants shared by every stage. Defined once; saved with every artefact's tokenizer."""

# The five placeholder tokens whose embeddings are overwritten by an item's visual tokens:
# one per LLaVA-NeXT view (the base view + up to 4 anyres crops, padded to 5).
ITEM_TOKENS: tuple[str, ...] = tuple(f"<ItemImageEmb{i}>" for i in range(1, 6))
NUM_ITEM_TOKENS = len(ITEM_TOKENS)
ITEM_TOKENS_TEXT = "".join(ITEM_TOKENS)

# Label value ignored by the cross-entropy loss (PyTorch's default ignore_index).
IGNORE_INDEX = -100

# A missing or unreadable image is replaced by a white square of this size (as in the seed).
PLACEHOLDER_IMAGE_SIZE = (336, 336)

DEFAULT_MODEL_NAME = "llava-hf/llava-v1.6-mistral-7b-hf"

# Stage 1 prompt (the seed's, verbatim). `{title}` is the product title.
DISTILL_PROMPT = (
    "You are a helpful assistant.\n"
    "Given an Amazon product's title and its image, please provide a detailed, visually grounded "
    "description of the product that would help someone decide whether to purchase it. "
    "Focus on the product's appearance, features, and any other visually informative aspects. "
    "Do not mention the product's title in your answer. "
    "This product's title is: {title}\n"
    f"{ITEM_TOKENS_TEXT}\n\n"
    "Assistant:"
)

# Stage 2 prompt (the seed's, verbatim): instruction + conversation, then one
# RECOMMEND_CANDIDATE per candidate, then RECOMMEND_SUFFIX; the target is the candidate's ID.
RECOMMEND_PROMPT_HEAD = (
    "You are an AI assistant specialized in providing personalized product recommendations based "
    "on user conversations. You are given a conversation between a user seeking recommendation "
    "(denoted by <submission>) and other users providing comments (denoted by <comment>). "
    "You are also given a set of candidate products with their IDs, titles and images formatted as "
    '"ID: title" followed by an image. Among the candidates, recommend the most relevant product '
    "to the seeker. Only reply with its ID, and don't say anything else.\n\n"
    "Conversation:\n{conversation}\n\n"
    "Candidates:\n"
)
RECOMMEND_CANDIDATE = "{item_id}: {title}\n" + ITEM_TOKENS_TEXT + "\n"
# The text-only ablation (`--no_images`) drops the visual tokens and keeps everything else.
RECOMMEND_CANDIDATE_TEXT_ONLY = "{item_id}: {title}\n"
RECOMMEND_SUFFIX = "\nAssistant:"

# Title used for an item without metadata (the seed's fallback).
MISSING_TITLE = "No Title"
