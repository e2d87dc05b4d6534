"""LoRA in one place: which parts of the model each stage adapts, and the wrapping that checks
exactly what trains.

The parts are named once (:data:`VISION_MODULES`: stage 1, :data:`LANGUAGE_MODULES`: stage 2,
submodules of a ``LlavaNextForConditionalGeneration``'s ``model``); the LoRA targets (every
linear layer under them) and the check that nothing outside them trains are both derived from
those names. A backbone whose towers live elsewhere adds its names here.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lavic.errors import LavicError
from lavic.model.backbone import unwrap

# Stage 1 (distill): the vision tower and the multimodal projector.
VISION_MODULES: tuple[str, ...] = ("vision_tower", "multi_modal_projector")
# Stage 2 (tune): the language model (not the LM head).
LANGUAGE_MODULES: tuple[str, ...] = ("language_model",)


def module_segments(modules: Sequence[str]) -> tuple[str, ...]:
    """``("vision_tower",)`` -> ``(".vision_tower.",)``: what a parameter's name holds when it
    lies under one of ``modules`` (whatever wraps the model: PEFT, FSDP)."""
    return tuple(f".{m}." for m in modules)


def lora_targets(model, modules: Sequence[str]) -> list[str]:
    """Every linear layer under ``model.<module>`` for each of ``modules``, by name."""
    prefixes = tuple(f"model.{m}." for m in modules)
    llava = unwrap(model)
    return sorted(
        name
        for name, module in llava.named_modules()
        if isinstance(module, nn.Linear) and name.startswith(prefixes)
    )


def vision_lora_targets(model) -> list[str]:
    """Stage 1: every linear layer of the vision tower and the multimodal projector."""
    return lora_targets(model, VISION_MODULES)


def language_lora_targets(model) -> list[str]:
    """Stage 2: every linear layer of the language model (not the LM head)."""
    return lora_targets(model, LANGUAGE_MODULES)


def add_lora(
    model,
    targets: Sequence[str] | str,
    *,
    r: int,
    alpha: int,
    dropout: float,
    trainable_under: Sequence[str],
    base_model: str | None = None,
):
    """Wrap ``model`` in a PeftModel with LoRA on ``targets``; everything else frozen.

    Args:
        model: a ``LlavaNextForConditionalGeneration``.
        targets: names of the linear layers to adapt (:func:`lora_targets`), or a PEFT regex.
        r, alpha, dropout: the LoRA settings (scale = alpha / r).
        trainable_under: name segments (:func:`module_segments`, ``".vision_tower."``) one of
            which every trainable parameter's name must hold; the check that nothing else
            trains.
        base_model: recorded as the adapter config's ``base_model_name_or_path``.

    Returns:
        The ``PeftModel``. LoRA's B starts at 0, so it computes exactly what ``model`` did.

    Raises:
        LavicError: if ``targets`` is empty or a parameter outside the LoRA layers of
            ``trainable_under`` would train.
    """
    from peft import LoraConfig, get_peft_model

    if not targets:
        raise LavicError(f"the model has no linear layer to adapt under {list(trainable_under)}")
    for p in model.parameters():
        p.requires_grad_(False)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    if base_model is not None:
        peft_model.peft_config["default"].base_model_name_or_path = base_model
    wrong = [
        n
        for n, p in peft_model.named_parameters()
        if p.requires_grad and not ("lora_" in n and any(s in n for s in trainable_under))
    ]
    if wrong:
        raise LavicError(f"unexpected trainable parameters outside the LoRA layers: {wrong[:3]}")
    if not any(p.requires_grad for p in peft_model.parameters()):
        raise LavicError("no trainable parameters (the LoRA wrapping found no target)")
    return peft_model


def add_vision_lora(model, *, r: int, alpha: int, dropout: float, base_model: str | None = None):
    """Stage 1: LoRA on every linear layer of the vision tower and projector; everything else
    frozen. Raises if any parameter outside those LoRA layers would train."""
    return add_lora(
        model,
        vision_lora_targets(model),
        r=r,
        alpha=alpha,
        dropout=dropout,
        trainable_under=module_segments(VISION_MODULES),
        base_model=base_model,
    )


def add_language_lora(model, *, r: int, alpha: int, dropout: float):
    """Stage 2: LoRA on every linear layer of the language model; everything else (vision
    tower, projector, embeddings, LM head) frozen."""
    return add_lora(
        model,
        language_lora_targets(model),
        r=r,
        alpha=alpha,
        dropout=dropout,
        trainable_under=module_segments(LANGUAGE_MODULES),
    )


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


__all__ = [
    "LANGUAGE_MODULES",
    "VISION_MODULES",
    "add_language_lora",
    "add_lora",
    "add_vision_lora",
    "count_parameters",
    "language_lora_targets",
    "lora_targets",
    "module_segments",
    "vision_lora_targets",
]
