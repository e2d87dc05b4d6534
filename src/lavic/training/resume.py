"""The one resume rule of both LoRA stages.

A run's checkpoint is ``<output dir>/checkpoints/last.ckpt`` (:mod:`lavic.training.trainer`
keeps it current). A run first deletes what a killed predecessor left half-written beside it;
with ``--resume`` it continues from that file if there is one (else starts afresh, saying so).
A checkpoint holds only the trainable (LoRA) weights, and loading one whose weights are not
exactly this run's trainable ones (names and shapes) is refused (:func:`check_trainable_state`):
another ``--lora_r`` or other targets would otherwise fail deep inside Lightning, or resume
from a partial state.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lavic.errors import LavicError
from lavic.io import remove_partial_writes

log = logging.getLogger(__name__)


def peek_checkpoint(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(epoch, global_step)`` of one of our training checkpoints, read without unpickling
    code (``weights_only=True``); a damaged one is a one-line error (Lightning would raise deep
    inside ``fit``)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... here
        raise LavicError(
            f"{path}: unreadable checkpoint ({type(exc).__name__}); delete it to start over"
        ) from None
    if not isinstance(ckpt, dict):
        raise LavicError(f"{path}: not a training checkpoint; delete it to start over")
    return int(ckpt.get("epoch", 0)), int(ckpt.get("global_step", 0))


def checkpoint_to_resume(ckpt_path: Path, *, resume: bool) -> str | None:
    """The checkpoint ``trainer.fit`` should continue from, or None to start afresh.

    Args:
        ckpt_path: the run's ``last.ckpt``.
        resume: ``--resume``.
    """
    ckpt_path = Path(ckpt_path)
    if remove_partial_writes(ckpt_path):
        log.warning("removed a partly written checkpoint beside %s (a killed run)", ckpt_path)
    if not resume:
        return None
    if not ckpt_path.is_file():
        log.warning("--resume: no checkpoint at %s; starting from scratch", ckpt_path)
        return None
    epoch, step = peek_checkpoint(ckpt_path)  # a damaged file is a one-line error here
    log.info("resuming from %s epoch %d step %d", ckpt_path, epoch, step)
    return str(ckpt_path)


def check_trainable_state(have: Mapping[str, Any], want: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose saved weights are not this run's trainable ones.

    Args:
        have: the checkpoint's ``state_dict`` (name -> tensor).
        want: this run's trainable parameters (name, as in a full state dict -> tensor).

    Raises:
        LavicError: naming a few missing, unexpected or differently shaped weights (another
            ``--lora_r`` keeps the names and changes the shapes).
    """
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    reshaped = sorted(
        k for k in set(have) & set(want) if tuple(have[k].shape) != tuple(want[k].shape)
    )
    if not (missing or extra or reshaped):
        return
    details = [
        f"{len(found)} {what}, e.g. {found[:3]}"
        for what, found in (
            ("weights missing", missing),
            ("unexpected", extra),
            ("of another shape", reshaped),
        )
        if found
    ]
    raise LavicError(
        f"checkpoint does not match this run's LoRA settings ({'; '.join(details)}): resume "
        "with the same model and --lora_* options"
    )


__all__ = ["check_trainable_state", "checkpoint_to_resume", "peek_checkpoint"]
