"""Load a LLaVA-NeXT backbone with the five item tokens: a Hub id, a local checkpoint, a LaViC
artefact directory (its adapters merged onto its recorded base), `tiny` or `tiny-random`.

LLaVA-v1.6 checkpoints are LLaVA-NeXT: they load with ``LlavaNextForConditionalGeneration``
(the reference used ``LlavaForConditionalGeneration``, which cannot read their anyres layout).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoTokenizer,
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

from lavic.artifacts import ADAPTER_WEIGHTS, artifact_lineage, read_artifact_info
from lavic.constants import ITEM_TOKENS, NUM_ITEM_TOKENS
from lavic.errors import LavicError

log = logging.getLogger(__name__)


@dataclass
class Backbone:
    """A LLaVA-NeXT model with its tokenizer (holding the five item tokens) and processor."""

    model: LlavaNextForConditionalGeneration
    tokenizer: Any  # PreTrainedTokenizerBase with ITEM_TOKENS added
    processor: LlavaNextProcessor  # .image_processor makes the views; the processor itself
    # expands <image> for the ordinary full-image-token path (teacher, describe)
    name: str  # what the user passed: recorded in artefacts as the base model
    # Set by lavic.model.inference.load_model when `--dtype auto` chose bf16 autocast on a CPU
    # (float32 weights); the answering forwards run under `autocast()`.
    autocast_dtype: torch.dtype | None = None
    # The base model of an artefact's lineage (`tiny`, a Hub id, ...); `name` if not an artefact.
    base_model: str = ""

    def __post_init__(self) -> None:
        self.base_model = self.base_model or self.name

    @property
    def is_stand_in(self) -> bool:
        """Built on the offline ``tiny`` stand-ins: synthetic shapes, not a model for photos."""
        return self.base_model in ("tiny", "tiny-random")

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the answering forwards run in: CPU bf16 autocast, or nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=self.autocast_dtype)

    @property
    def image_processor(self):
        return self.processor.image_processor

    @property
    def item_token_ids(self) -> list[int]:
        return self.tokenizer.convert_tokens_to_ids(list(ITEM_TOKENS))

    def save_preprocessing(self, out_dir: str | Path) -> None:
        """Save the tokenizer (with the item tokens) and the processor beside an adapter."""
        self.processor.save_pretrained(str(out_dir))
        self.tokenizer.save_pretrained(str(out_dir))


def add_item_tokens(tokenizer, model) -> list[int]:
    """Add the five item tokens to ``tokenizer`` and grow ``model``'s embeddings to match.

    New rows are set to the mean of the existing embeddings, deterministically: the input rows
    are always overwritten by visual tokens, but with tied or untied heads the output rows still
    enter every softmax, so they must be the same at every load.
    """
    missing = [t for t in ITEM_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": list(ITEM_TOKENS)}, replace_extra_special_tokens=False
        )
    ids = tokenizer.convert_tokens_to_ids(list(ITEM_TOKENS))
    old = model.get_input_embeddings().weight.shape[0]
    needed = max(len(tokenizer), max(ids) + 1)
    if needed > old:
        model.resize_token_embeddings(needed, mean_resizing=False)
        with torch.no_grad():
            for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
                if emb is not None and emb.weight.shape[0] == needed:
                    emb.weight[old:] = emb.weight[:old].mean(dim=0, keepdim=True)
    return ids


def _set_pad_token(tokenizer) -> None:
    if tokenizer.pad_token is None:
        # A separate pad token is not needed: labels are masked by the attention mask per row,
        # never by the pad id, so an EOS target is never masked.
        tokenizer.pad_token = tokenizer.eos_token


# --------------------------------------------------------------------------------------------
# tiny-random: a from-config LLaVA-NeXT (CLIP + Mistral) with an in-process tokenizer, for tests
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _load_hf(name: str, dtype: torch.dtype | None) -> Backbone:
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        processor = LlavaNextProcessor.from_pretrained(name)
        model = LlavaNextForConditionalGeneration.from_pretrained(
            name, use_safetensors=True, **kwargs
        )
    except (OSError, ValueError) as exc:  # ValueError: HFValidationError for a bad local path
        raise LavicError(
            f"cannot load LLaVA-NeXT checkpoint {name!r}: {exc}".splitlines()[0]
            + " (give a local directory, a Hub id reachable online, `tiny` or `tiny-random`)"
        ) from None
    tokenizer = processor.tokenizer
    _set_pad_token(tokenizer)
    add_item_tokens(tokenizer, model)
    return Backbone(model=model, tokenizer=tokenizer, processor=processor, name=name)


# The backbones known by name: name -> loader(dtype). Any other name is a LLaVA-NeXT
# checkpoint (a Hub id or a local folder, `_load_hf`). A new family plugs in by registering
# its loader from its own module, imported by `lavic.model` (as `lavic.model.tiny` does).
BACKBONES: dict[str, Callable[[torch.dtype | None], Backbone]] = {}


def register_backbone(name: str, loader: Callable[[torch.dtype | None], Backbone]) -> None:
    """Make ``load_backbone(name)`` (and artefacts whose base model is ``name``) use ``loader``."""
    BACKBONES[name] = loader


def _tiny_random(dtype: torch.dtype | None) -> Backbone:
    backbone = build_tiny_random()
    if dtype is not None:
        backbone.model.to(dtype)
    return backbone


register_backbone("tiny-random", _tiny_random)


def _load_base(name: str, dtype: torch.dtype | None) -> Backbone:
    loader = BACKBONES.get(name)
    return loader(dtype) if loader is not None else _load_hf(name, dtype)


def load_backbone(
    name_or_dir: str | Path, *, dtype: torch.dtype | None = None, merge: bool = True
) -> Backbone:
    """Load a backbone by name, checkpoint directory or LaViC artefact directory.

    An artefact directory (``lavic.json`` inside) is rebuilt from its recorded base model with
    every adapter of its lineage applied in order (stage 1's vision LoRA, then stage 2's LM
    LoRA), merged into the weights when ``merge`` (the default), else the last one left as a
    ``PeftModel`` for further training.

    Args:
        name_or_dir: ``tiny``, ``tiny-random``, a Hub id, a local LLaVA-NeXT checkpoint or a
            LaViC artefact directory.
        dtype: weights dtype (``None`` keeps the checkpoint's).
        merge: merge adapters into the base weights.
    """
    from peft import PeftModel

    if read_artifact_info(name_or_dir) is None:
        return _load_base(str(name_or_dir), dtype)
    lineage = artifact_lineage(name_or_dir)  # this artefact first, its root last
    backbone = _load_base(lineage[-1][1]["base_model"], dtype)
    for i, (adapter_dir, _) in enumerate(reversed(lineage)):
        last = i == len(lineage) - 1
        # Spelled out: tests/robustness/test_loading.py checks that every from_pretrained of an
        # adapter follows a check for exactly this file (no pickled adapter_model.bin).
        if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
            raise LavicError(
                f"{adapter_dir}: no adapter_model.safetensors (only safetensors "
                "adapters are loaded)"
            )
        try:
            peft_model = PeftModel.from_pretrained(backbone.model, str(adapter_dir))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
            first = str(exc).splitlines()[0][:300] if str(exc) else ""
            raise LavicError(
                f"{adapter_dir}: cannot load the adapter ({type(exc).__name__}: {first})"
            ) from None
        _check_adapter_weights(peft_model, adapter_dir)
        backbone.model = peft_model.merge_and_unload() if (merge or not last) else peft_model
    backbone.name = str(name_or_dir)
    backbone.base_model = str(lineage[-1][1]["base_model"])
    backbone.model.eval()
    return backbone


def _check_adapter_weights(peft_model, adapter_dir: Path) -> None:
    """Every LoRA weight the adapter's config creates must come from its file: PEFT only warns
    about missing ones and leaves them at their init (B = 0: a silent no-op adapter)."""
    with safe_open(str(adapter_dir / ADAPTER_WEIGHTS), "pt") as weights:
        saved = set(weights.keys())
    wanted = {
        name.replace(".default.", ".")
        for name, _ in peft_model.named_parameters()
        if ".lora_" in name
    }
    missing = sorted(wanted - saved)
    if missing:
        raise LavicError(
            f"{adapter_dir}: adapter_model.safetensors lacks {len(missing)} of the {len(wanted)} "
            f"LoRA weights its adapter_config.json names (e.g. {missing[0]}): not its weights"
        )


def unwrap(model) -> LlavaNextForConditionalGeneration:
    """The LlavaNextForConditionalGeneration inside a PeftModel (or the model itself)."""
    while not isinstance(model, LlavaNextForConditionalGeneration):
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "model"):
            model = model.model
        else:
            raise TypeError(f"not a LLaVA-NeXT model: {type(model).__name__}")
    return model


def load_tokenizer_from(directory: str | Path):
    """The tokenizer an artefact saved (with the item tokens)."""
    return AutoTokenizer.from_pretrained(str(directory))


__all__ = [
    "Backbone",
    "NUM_ITEM_TOKENS",
    "add_item_tokens",
    "build_tiny_random",
    "load_backbone",
    "load_tokenizer_from",
    "unwrap",
]
