"""``tiny-random``: a randomly initialised LLaVA-NeXT of the real classes (CLIP + Mistral, a
byte-level BPE trained in-process), built in a second without any download: for tests."""

from __future__ import annotations

import torch
from transformers import (
    CLIPVisionConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    MistralConfig,
    PreTrainedTokenizerFast,
)
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil,
)

from lavic.model.backbone import Backbone, add_item_tokens, register_backbone

_TINY_CORPUS = (
    "You are a helpful assistant. Given an Amazon product's title and its image, please provide "
    "a detailed, visually grounded description. Conversation: Candidates: Assistant: "
    "<submission> </submission> <comment> </comment> 0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ "
    "abcdefghijklmnopqrstuvwxyz red blue green yellow black white striped dotted plain checked "
    "mug hoodie lamp bottle bag the a an with and of is for looking recommend product image"
)


def _train_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in-process on a fixed corpus: deterministic, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>", "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )


TINY_RANDOM_IMAGE_SIZE = 32
TINY_RANDOM_PINPOINTS = [[32, 64], [64, 32], [64, 64]]  # anyres grids of <= 2x2 -> <= 5 views


def build_tiny_random(seed: int = 0) -> Backbone:
    """A randomly initialised LLaVA-NeXT of the real classes, built in a second, for tests."""
    tokenizer = _train_tiny_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=TINY_RANDOM_IMAGE_SIZE,
        patch_size=8,
        projection_dim=32,
    )
    text = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        sliding_window=None,
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_grid_pinpoints=TINY_RANDOM_PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": TINY_RANDOM_IMAGE_SIZE},
        crop_size={"height": TINY_RANDOM_IMAGE_SIZE, "width": TINY_RANDOM_IMAGE_SIZE},
        image_grid_pinpoints=TINY_RANDOM_PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        image_token="<image>",
        # CLIP's [CLS] position: without it the processor expands <image> to one token fewer
        # than the model's features and the full-image-token path raises.
        num_additional_image_tokens=1,
    )
    add_item_tokens(tokenizer, model)
    model.eval()
    return Backbone(model=model, tokenizer=tokenizer, processor=processor, name="tiny-random")


def _load_tiny_random(name: str, dtype: torch.dtype | None) -> Backbone:
    backbone = build_tiny_random()
    if dtype is not None:
        backbone.model.to(dtype)
    return backbone


register_backbone("tiny-random", _load_tiny_random)

__all__ = ["TINY_RANDOM_IMAGE_SIZE", "TINY_RANDOM_PINPOINTS", "build_tiny_random"]
