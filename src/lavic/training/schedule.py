"""The learning-rate schedule of every loop on the training core: a linear warm-up, then a
constant rate or a cosine decay to a floor."""

from __future__ import annotations

import math

import torch

DECAYS = ("constant", "cosine")


def warmup_factor(
    step: int, total: int, warmup: int, *, decay: str = "cosine", floor: float = 0.1
) -> float:
    """The rate's factor at optimizer step ``step`` (0-based) of ``total``: ``(step + 1) /
    warmup`` during the warm-up, then 1 (``constant``) or a cosine from 1 down to ``floor`` at
    ``total`` (``cosine``)."""
    if decay not in DECAYS:
        raise ValueError(f"decay {decay!r}: choose from {DECAYS}")
    warmup = max(1, warmup)
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_schedule(
    optimizer: torch.optim.Optimizer,
    total: int,
    warmup: int,
    *,
    decay: str = "cosine",
    floor: float = 0.1,
) -> dict:
    """:func:`warmup_factor` as a Lightning ``lr_scheduler`` entry, stepped every optimizer step
    (each parameter group keeps its own base rate)."""
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_factor(step, total, warmup, decay=decay, floor=floor)
    )
    return {"scheduler": schedule, "interval": "step"}


__all__ = ["DECAYS", "warmup_factor", "warmup_schedule"]
