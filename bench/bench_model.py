"""The models `make bench` measures, and the FLOP count that sizes them.

The real model is LLaVA-v1.6-Mistral-7B: a CLIP ViT-L/14-336 vision tower (577 tokens per view)
and Mistral-7B. One stage-2 sample shows 10 candidates x 5 views to the vision tower (if it is
recomputed) and a ~1,500-token prompt to the language model. The ``bench`` model scales both
down so that the *ratio* of vision to language-model FLOPs per sample stays the real one; a
ratio measured on it (cached vs recomputed tokens, our inference vs the reference's) then
describes the same split of work as on the real model. ``tiny-random`` (the test model, every
cost an overhead) and ``tiny`` (the SmolLM2-based pretrained backbone, heavy) are reported
beside it.

FLOPs are counted as matmul work only (multiply + add = 2): every linear layer's weights once
per token, plus attention's QK^T and AV (causal in the language model, full in the ViT). Norms,
activations and softmax are not counted: they are the part that does not shrink with width,
which is what makes small models overhead-bound (see docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from PIL import Image
from transformers import (
    CLIPVisionConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    MistralConfig,
)
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil,
)

from lavic.constants import NUM_ITEM_TOKENS
from lavic.model.backbone import Backbone, add_item_tokens
from lavic.model.tiny_random import _train_tiny_tokenizer
from lavic.prompts import build_recommend_prompt

# LLaVA-v1.6's anyres grids, in units of the base view's side.
V16_GRID = [[1, 2], [2, 1], [2, 2], [3, 1], [1, 3]]
CANDIDATES = 10  # the reference's candidate lists
PROMPT_TOKENS = 1500  # the recommendation prompt's length (as bench/gpu_bench.py)
IMAGE_SIZE = (500, 460)  # a product photo (as bench/gpu_bench.py)


@dataclass(frozen=True)
class VisionShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    image: int
    patch: int

    @property
    def tokens(self) -> int:  # patches + [CLS]
        return (self.image // self.patch) ** 2 + 1

    def config(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            image_size=self.image,
            patch_size=self.patch,
            projection_dim=self.hidden,
            hidden_act="quick_gelu",
        )


@dataclass(frozen=True)
class TextShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    def config(self, tokenizer) -> MistralConfig:
        return MistralConfig(
            vocab_size=max(self.vocab, len(tokenizer)),
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            max_position_embeddings=32768,
            sliding_window=None,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )


# The real model (llava-hf/llava-v1.6-mistral-7b-hf's config), for the count only.
REAL_VISION = VisionShape(hidden=1024, intermediate=4096, layers=24, heads=16, image=336, patch=14)
REAL_TEXT = TextShape(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=32064)

# The bench model: chosen so that vision / LM prefill FLOPs per stage-2 sample (10 candidates x
# 5 views against a 1,500-token prompt) is the real model's (0.88 counted this way), and a
# training step takes well under a second on 2 free cores. Both towers are 256 wide so their
# matmuls run at a similar efficiency on a CPU (a narrower ViT runs at half the LM's FLOP rate).
BENCH_VISION = VisionShape(hidden=256, intermediate=1024, layers=2, heads=4, image=96, patch=16)
BENCH_TEXT = TextShape(hidden=256, intermediate=896, layers=2, heads=4, kv_heads=1, vocab=0)


# --------------------------------------------------------------------------------------------
# FLOP count
# --------------------------------------------------------------------------------------------


def vision_flops_per_view(v: VisionShape) -> float:
    """Matmul FLOPs of one view through every layer of the ViT (``last_hidden_state``)."""
    n = v.tokens
    per_token_linear = 4 * v.hidden**2 + 2 * v.hidden * v.intermediate  # qkvo + MLP
    layer = 2 * per_token_linear * n + 4 * v.hidden * n * n  # + QK^T and AV, full attention
    patch_embed = 2 * 3 * v.patch**2 * v.hidden * (n - 1)
    return float(v.layers * layer + patch_embed)


def lm_linear_params_per_token(t: TextShape) -> int:
    head_dim = t.hidden // t.heads
    attn = 2 * t.hidden * t.hidden + 2 * t.hidden * t.kv_heads * head_dim  # q, o; k, v (GQA)
    mlp = 3 * t.hidden * t.intermediate  # gate, up, down
    return t.layers * (attn + mlp)


def lm_prefill_flops(t: TextShape, tokens: int, logits: int = 1) -> dict[str, float]:
    """Matmul FLOPs of a causal prefill over ``tokens``; the LM head on ``logits`` positions."""
    linear = 2.0 * lm_linear_params_per_token(t) * tokens
    attention = t.layers * 4.0 * t.hidden * tokens * (tokens + 1) / 2
    head = 2.0 * t.hidden * t.vocab * logits
    return {
        "linear": linear,
        "attention": attention,
        "head": head,
        "total": linear + attention + head,
    }


def flop_count(
    vision: VisionShape, text: TextShape, *, prompt_tokens: int, candidates: int = CANDIDATES
) -> dict[str, Any]:
    """Per stage-2 sample: recomputed vision FLOPs against LM prefill FLOPs, and their ratio."""
    view = vision_flops_per_view(vision)
    vis = view * candidates * NUM_ITEM_TOKENS
    lm = lm_prefill_flops(text, prompt_tokens)
    # A training step with a frozen base: forward + backward to the activations (about one
    # forward more; attention's backward is about two); LoRA's own matmuls are negligible.
    lm_train = 2 * lm["linear"] + 3 * lm["attention"]
    return {
        "vision_tokens_per_view": vision.tokens,
        "vision_flops_per_view": view,
        "vision_flops_per_sample": vis,
        "lm_prefill_flops": lm["total"],
        "lm_attention_share": lm["attention"] / lm["total"],
        "vision_over_lm_prefill": vis / lm["total"],
        "lm_train_step_flops": lm_train,
        # What the FLOPs alone predict for cache vs recompute in training: (LM + vision) / LM.
        "predicted_tune_speedup": (lm_train + vis) / lm_train,
    }


# --------------------------------------------------------------------------------------------
# Building the models
# --------------------------------------------------------------------------------------------


def _v16_processor(tokenizer, image: int, patch: int) -> LlavaNextProcessor:
    pinpoints = [[a * image, b * image] for a, b in V16_GRID]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image},
        crop_size={"height": image, "width": image},
        image_grid_pinpoints=pinpoints,
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,  # CLIP's [CLS], as in the Hub's processor config
    )


def build_bench(seed: int = 0) -> Backbone:
    """The ratio-matched bench model: LLaVA-NeXT classes, random weights, test tokenizer."""
    tokenizer = _train_tiny_tokenizer()
    text = BENCH_TEXT.config(tokenizer)
    config = LlavaNextConfig(
        vision_config=BENCH_VISION.config(),
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=[
            [a * BENCH_VISION.image, b * BENCH_VISION.image] for a, b in V16_GRID
        ],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    processor = _v16_processor(tokenizer, BENCH_VISION.image, BENCH_VISION.patch)
    add_item_tokens(tokenizer, model)
    model.eval()
    return Backbone(model=model, tokenizer=tokenizer, processor=processor, name="bench")


def load_model(name: str) -> Backbone:
    """``bench``, ``tiny-random`` or ``tiny`` (the last one assembles SmolLM2 on first use)."""
    if name == "bench":
        return build_bench()
    from lavic.model.backbone import load_backbone

    return load_backbone(name)


def shapes_of(backbone: Backbone) -> tuple[VisionShape, TextShape]:
    """The count's shapes of any loaded LLaVA-NeXT (so tiny-random and tiny get counted too)."""
    from lavic.model.backbone import unwrap

    cfg = unwrap(backbone.model).config
    v, t = cfg.vision_config, cfg.text_config
    vision = VisionShape(
        v.hidden_size,
        v.intermediate_size,
        v.num_hidden_layers,
        v.num_attention_heads,
        v.image_size,
        v.patch_size,
    )
    text = TextShape(
        t.hidden_size,
        t.intermediate_size,
        t.num_hidden_layers,
        t.num_attention_heads,
        t.num_key_value_heads or t.num_attention_heads,
        t.vocab_size,
    )
    return vision, text


def describe(backbone: Backbone) -> dict[str, Any]:
    vision, text = shapes_of(backbone)
    params = sum(p.numel() for p in backbone.model.parameters())
    return {"vision": asdict(vision), "text": asdict(text), "parameters": params}


# --------------------------------------------------------------------------------------------
# Workload: one conversation with 10 candidates, padded to ~1,500 prompt tokens
# --------------------------------------------------------------------------------------------


def candidates(k: int = CANDIDATES) -> list[tuple[str, str]]:
    return [(f"B{i:09d}", f"Acme Product {i}, Durable Everyday Model, Size M") for i in range(k)]


def conversation(tokenizer, cands, prompt_tokens: int = PROMPT_TOKENS) -> str:
    """The same conversation as bench/gpu_bench.py: comments added until the prompt has
    ``prompt_tokens`` tokens."""
    conv = "<submission>I am looking for something that looks great. </submission>\n"

    def length(c: str) -> int:
        text = build_recommend_prompt(tokenizer, c, cands, max_length=10**6).text
        return len(tokenizer(text).input_ids)

    while length(conv) < prompt_tokens:
        conv += "<comment>Have you considered the one with stripes? It looked nice.</comment>\n"
    return conv


def product_images(k: int = CANDIDATES, size: tuple[int, int] = IMAGE_SIZE) -> list[Image.Image]:
    """Product-photo-sized images with some texture (JPEG-encodable, distinct per item)."""
    images = []
    for i in range(k):
        g = torch.Generator().manual_seed(i)
        small = (torch.rand(3, 16, 16, generator=g) * 255).to(torch.uint8)
        img = Image.fromarray(small.permute(1, 2, 0).numpy(), "RGB").resize(size)
        images.append(img)
    return images


if __name__ == "__main__":  # print the count
    import json

    print(
        json.dumps(
            {
                "real": flop_count(REAL_VISION, REAL_TEXT, prompt_tokens=PROMPT_TOKENS),
                "bench": flop_count(BENCH_VISION, BENCH_TEXT, prompt_tokens=PROMPT_TOKENS),
            },
            indent=1,
        )
    )
