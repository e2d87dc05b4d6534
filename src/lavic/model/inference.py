"""Load a model to answer with: a tune artefact, a distill artefact, or a backbone as it is.

``lavic evaluate`` and ``lavic serve`` load the same way (:func:`load_model`), so their picks
match. What may be given as ``--model_dir``:

* a tune artefact, or the ``FINETUNE_OUTPUT_DIR`` holding its ``trained_lora_adapter/``;
* a distill artefact (stage 1 only): its vision adapter merged, the language model untuned;
* a backbone name (``tiny``, ``tiny-random``, a Hub id or a local LLaVA-NeXT checkpoint),
  evaluated as it is: the zero-shot row, and with ``--no_images`` the LM's text skill.

``--dtype auto``: bfloat16 weights on CUDA; on a CPU with native bf16, float32 weights with
the forwards under bf16 autocast (:attr:`Backbone.autocast_dtype`) if that gives the same
loss and picks as float32 on a probe batch; else float32.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

from lavic.artifacts import ARTIFACT_FILE, TUNED_ADAPTER_DIR, read_artifact_info
from lavic.errors import LavicError
from lavic.model.backbone import Backbone, load_backbone
from lavic.precision import CheckResult, bf16_matches_fp32, cpu_has_native_bf16

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_model_dir(model_dir: str | Path) -> Path:
    """The artefact to load: ``model_dir`` itself if it holds ``lavic.json``, else its
    ``trained_lora_adapter/`` if that does (a FINETUNE_OUTPUT_DIR), else ``model_dir`` (a
    backbone name or checkpoint)."""
    model_dir = Path(model_dir)
    if (model_dir / ARTIFACT_FILE).is_file():
        return model_dir
    if (model_dir / TUNED_ADAPTER_DIR / ARTIFACT_FILE).is_file():
        return model_dir / TUNED_ADAPTER_DIR
    return model_dir


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA if present, else CPU; refuses CUDA where there is none."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LavicError(f"--device {device}: CUDA is not available here")
    return torch.device(device)


def weights_dtype_for(device: torch.device, dtype: str) -> torch.dtype | None:
    """The weights dtype for ``--dtype`` (None: keep the checkpoint's / float32 built-ins)."""
    if dtype not in DTYPES:
        raise LavicError(f"--dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return getattr(torch, dtype)


def probe_bf16(backbone: Backbone) -> CheckResult:
    """Compare float32 and CPU bf16 autocast on a fixed text-only recommendation prompt.

    The probe is the reference's prompt with three made-up candidates; the "picks" are the argmax
    next tokens at every position, the loss the prompt's own next-token NLL.
    """
    from lavic.model.compute import prompt_logits
    from lavic.model.inputs import encode_prompt
    from lavic.prompts import render_recommend_prompt

    text = render_recommend_prompt(
        "<submission>Looking for a red coffee mug for my desk.</submission>"
        "<comment>A big ceramic one is nice.</comment>",
        [("B000000001", "Red ceramic mug"), ("B000000002", "Blue lamp"), ("0060188782", "Bag")],
        with_images=False,
    )
    ids = torch.tensor([encode_prompt(backbone.tokenizer, text)])  # (1, T)
    device = next(backbone.model.parameters()).device
    batch = {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "labels": ids.to(device),
        "item_tokens": None,
    }
    return bf16_matches_fp32(
        functools.partial(prompt_logits, backbone.model, backbone.tokenizer), [batch]
    )


def load_model(model_dir: str | Path, *, device: str = "auto", dtype: str = "auto") -> Backbone:
    """Load an artefact (adapters merged) or a backbone for inference on ``device``.

    Args:
        model_dir: see the module docstring.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16`` (the weights).

    Returns:
        The backbone in eval mode; ``autocast_dtype`` set when ``auto`` chose CPU bf16.
    """
    dev = resolve_device(device)
    torch_dtype = weights_dtype_for(dev, dtype)
    artefact = resolve_model_dir(model_dir)
    info = read_artifact_info(artefact)
    if info is None:
        log.info("%s is a backbone, not a LaViC artefact: evaluating it zero-shot", artefact)
    elif info.get("kind") != "tune":
        log.warning(
            "%s is a %r artefact, not a tuned one: evaluating zero-shot", artefact, info.get("kind")
        )
    backbone = load_backbone(artefact, dtype=torch_dtype)
    backbone.model.to(dev)
    backbone.model.eval()
    if dtype == "auto" and dev.type == "cpu" and cpu_has_native_bf16():
        result = probe_bf16(backbone)
        if result.ok:
            backbone.autocast_dtype = torch.bfloat16
            log.info("dtype auto: float32 weights, bf16 autocast on this CPU (%s)", result.reason)
        else:
            log.warning("dtype auto: float32; bf16 on this CPU failed the check: %s", result.reason)
    return backbone


__all__ = [
    "DTYPES",
    "load_model",
    "probe_bf16",
    "resolve_device",
    "resolve_model_dir",
    "weights_dtype_for",
]
