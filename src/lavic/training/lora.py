"""LoRA wrapping for a stage, with a check of exactly what trains.

Which layers each stage adapts is :mod:`lavic.model.lora` (``vision_lora_targets``: stage 1,
``language_lora_targets``: stage 2); :func:`add_lora` freezes everything, puts LoRA on those
layers and refuses to return a model in which anything else would train.
"""

from __future__ import annotations

from collections.abc import Sequence

from lavic.errors import LavicError


def add_lora(
    model,
    targets: Sequence[str],
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
        targets: names of the linear layers to adapt (from :mod:`lavic.model.lora`).
        r, alpha, dropout: the LoRA settings (scale = alpha / r).
        trainable_under: name segments (``".vision_tower."``) one of which every trainable
            parameter's name must hold; the check that nothing else trains.
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
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none"
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


__all__ = ["add_lora"]
