"""The backbone: a LLaVA-NeXT model with the five item tokens, its tokenizer and processor
(:class:`Backbone`), the registry of backbones known by name (:data:`BACKBONES`), and
:func:`load_backbone`: a registered name, any other name through the default family
(``llava-next``: a Hub id or a local checkpoint), or a LaViC artefact directory (its adapters
merged onto its recorded base).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoTokenizer, LlavaNextForConditionalGeneration, LlavaNextProcessor

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


def set_pad_token(tokenizer) -> None:
    """Give ``tokenizer`` a pad token (its EOS) if it has none."""
    if tokenizer.pad_token is None:
        # A separate pad token is not needed: labels are masked by the attention mask per row,
        # never by the pad id, so an EOS target is never masked.
        tokenizer.pad_token = tokenizer.eos_token


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


# The backbones known by name: name -> loader(name, dtype). Each family registers itself from
# its own module, which `lavic.model` imports (so the names are known wherever any part of
# `lavic.model` is): `llava-next` (llava_next.py, the default: any name nobody registered is a
# Hub id or a local checkpoint folder it loads), `tiny-random` (tiny_random.py), `tiny`
# (tiny.py). `load_backbone` only looks the name up.
BackboneLoader = Callable[[str, torch.dtype | None], Backbone]
BACKBONES: dict[str, BackboneLoader] = {}
_DEFAULT: list[str] = []  # the name whose loader takes every unregistered name
# name -> check(items, source) -> bool: a family's own word on a catalogue it is given (the
# stand-in `tiny` warns on one it was not built for). The stages call `check_catalogue`, so the
# method's modules never import a stand-in's.
CatalogueCheck = Callable[[dict, "str | os.PathLike[str]"], bool]
CATALOGUE_CHECKS: dict[str, CatalogueCheck] = {}


def register_backbone(
    name: str,
    loader: BackboneLoader,
    *,
    default: bool = False,
    catalogue_check: CatalogueCheck | None = None,
) -> None:
    """Make ``load_backbone(name)`` (and artefacts whose base model is ``name``) use ``loader``.

    Args:
        name: what ``--model_name`` / ``--model_dir`` / an artefact's ``base_model`` says.
        loader: ``(name, dtype) -> Backbone``; ``dtype`` None keeps the checkpoint's.
        default: also load every name that no one registered (a Hub id, a folder) with it.
        catalogue_check: ``(items, source) -> bool``, run by :func:`check_catalogue` on every
            catalogue a command gives this backbone (e.g. a warning, returning whether it
            warned).
    """
    BACKBONES[name] = loader
    if default:
        _DEFAULT[:] = [name]
    if catalogue_check is not None:
        CATALOGUE_CHECKS[name] = catalogue_check


def check_catalogue(base_model: str, items: dict, source: str | os.PathLike[str]) -> bool:
    """Run the catalogue check ``base_model``'s family registered, if any (``describe``,
    ``distill`` and ``index`` call it on the items they read). Returns what the check returns
    (False when there is none)."""
    check = CATALOGUE_CHECKS.get(str(base_model))
    return bool(check(items, source)) if check is not None else False


def _load_base(name: str, dtype: torch.dtype | None) -> Backbone:
    loader = BACKBONES.get(name) or (BACKBONES[_DEFAULT[0]] if _DEFAULT else None)
    if loader is None:
        raise LavicError(f"no backbone is registered as {name!r} and there is no default")
    backbone = loader(name, dtype)
    backbone.name = backbone.base_model = name  # what artefacts record as their base
    return backbone


def load_backbone(
    name_or_dir: str | Path, *, dtype: torch.dtype | None = None, merge: bool = True
) -> Backbone:
    """Load a backbone by name, checkpoint directory or LaViC artefact directory.

    An artefact directory (``lavic.json`` inside) is rebuilt from its recorded base model with
    every adapter of its lineage applied in order (stage 1's vision LoRA, then stage 2's LM
    LoRA), merged into the weights when ``merge`` (the default), else the last one left as a
    ``PeftModel`` for further training.

    Args:
        name_or_dir: a registered name (``tiny``, ``tiny-random``, ...), a Hub id or a local
            LLaVA-NeXT checkpoint (the default family), or a LaViC artefact directory.
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
    "BACKBONES",
    "CATALOGUE_CHECKS",
    "Backbone",
    "NUM_ITEM_TOKENS",
    "add_item_tokens",
    "load_backbone",
    "load_tokenizer_from",
    "check_catalogue",
    "register_backbone",
    "set_pad_token",
    "unwrap",
]
