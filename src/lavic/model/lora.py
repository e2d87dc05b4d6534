"""Which linear layers each stage adapts with LoRA."""

from __future__ import annotations

from torch import nn

from lavic.model.backbone import unwrap


def _linear_names(model, prefixes: tuple[str, ...]) -> list[str]:
    llava = unwrap(model)
    return sorted(
        name
        for name, module in llava.named_modules()
        if isinstance(module, nn.Linear) and name.startswith(prefixes)
    )


def vision_lora_targets(model) -> list[str]:
    """Stage 1: every linear layer of the vision tower and the multimodal projector."""
    return _linear_names(model, ("model.vision_tower.", "model.multi_modal_projector."))


def language_lora_targets(model) -> list[str]:
    """Stage 2: every linear layer of the language model (not the LM head)."""
    return _linear_names(model, ("model.language_model.",))


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
