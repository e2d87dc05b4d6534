"""Which numeric precision a run uses, and the check that lets ``auto`` pick bf16 on a CPU.

``--precision auto`` (training) and ``--dtype auto`` (inference) resolve to:

* ``bf16-mixed`` on a CUDA GPU that supports bf16;
* ``bf16-mixed`` on a CPU with native bf16 arithmetic (AVX512-BF16 or AMX), *if* a few batches
  give the same loss and the same picks under ``torch.autocast("cpu", torch.bfloat16)`` as in
  float32 (:func:`bf16_matches_fp32`); there, one forward + backward of SmolLM2-135M runs
  2.2-2.8x faster than float32. Without native support bf16 is emulated and slower, so it is
  not chosen;
* ``32-true`` otherwise, or when the check fails (the reason is logged).

Lightning's ``precision="bf16-mixed"`` on a CPU is CPU autocast; inference wraps its forwards
in :func:`autocast` itself.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = (
    "auto",
    "32-true",
    "bf16-mixed",
    "bf16-true",
    "16-mixed",
    "16-true",
    "64-true",
)
# How close bf16 autocast must stay to float32 on the check's batches: the token-mean loss
# within this relative tolerance, and at least this share of the argmax picks the same (bf16
# keeps 8 bits of mantissa, ~0.4% per rounding; near-ties may flip a few picks).
LOSS_RTOL = 0.02
PICK_AGREEMENT = 0.9
CHECK_BATCHES = 3

# A batch -> ((N, V) logits at the labelled positions, (N,) labels); see labelled_logits.
LogitsFn = Callable[[Any], tuple[torch.Tensor, torch.Tensor]]
CPUINFO = Path("/proc/cpuinfo")


def cpu_has_native_bf16() -> bool:
    """True if this CPU computes in bf16 natively (AVX512-BF16 or AMX tiles)."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None:
            try:
                if fn():
                    return True
            except RuntimeError:
                pass
    try:
        flags = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    words = set(flags.split())
    return "avx512_bf16" in words or "amx_bf16" in words


def cuda_has_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def runs_on_cuda(accelerator: str) -> bool:
    """Whether a run with Lightning's ``accelerator`` lands on a CUDA GPU here."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def load_dtype(precision: str, accelerator: str) -> torch.dtype:
    """The dtype a training stage loads its frozen weights in, before ``precision`` is final.

    The one rule of both stages: half-precision weights only where the work runs on a GPU
    (:func:`weights_dtype`); on a CPU, ``*-mixed`` is autocast over float32 weights, which is
    also the model ``auto``'s bf16 check compares (:func:`resolve_precision` then settles the
    precision on the run's own batches). ``*-true`` casts everything, on any device.
    """
    on_gpu = runs_on_cuda(accelerator)
    if precision == "auto":  # what resolve_precision picks without a check
        precision = "bf16-mixed" if on_gpu and cuda_has_bf16() else "32-true"
    if precision.endswith("-mixed") and not on_gpu:
        return torch.float32
    return weights_dtype(precision)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of :func:`bf16_matches_fp32`."""

    ok: bool
    loss_fp32: float
    loss_bf16: float
    pick_agreement: float
    reason: str


@torch.no_grad()
def bf16_matches_fp32(
    logits_fn: LogitsFn,
    batches: Iterable[Any],
    *,
    loss_rtol: float = LOSS_RTOL,
    min_pick_agreement: float = PICK_AGREEMENT,
) -> CheckResult:
    """Run ``logits_fn`` on ``batches`` in float32 and under CPU bf16 autocast, and compare.

    Args:
        logits_fn: a batch -> ``(logits (N, V), labels (N,))`` at the labelled positions, i.e.
            the stage's own forward (the model in float32, as the run would train it).
        batches: a few of the run's batches.
        loss_rtol: allowed relative difference of the token-mean cross-entropy.
        min_pick_agreement: required share of positions whose argmax is the same.

    Returns:
        A :class:`CheckResult`; ``ok`` is False also when there was nothing to compare.
    """
    nll = {"fp32": 0.0, "bf16": 0.0}
    same = count = 0
    for batch in batches:
        logits32, labels = logits_fn(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits16, _ = logits_fn(batch)
        logits16 = logits16.float()
        nll["fp32"] += float(torch.nn.functional.cross_entropy(logits32, labels, reduction="sum"))
        nll["bf16"] += float(torch.nn.functional.cross_entropy(logits16, labels, reduction="sum"))
        same += int((logits32.argmax(-1) == logits16.argmax(-1)).sum())
        count += labels.numel()
    if count == 0:
        return CheckResult(False, math.nan, math.nan, math.nan, "no labelled tokens to compare")
    loss32, loss16, agreement = nll["fp32"] / count, nll["bf16"] / count, same / count
    if not math.isfinite(loss16) or abs(loss16 - loss32) > loss_rtol * max(abs(loss32), 1e-6):
        reason = f"loss {loss16:.4f} under bf16 vs {loss32:.4f} in fp32 (rtol {loss_rtol})"
        return CheckResult(False, loss32, loss16, agreement, reason)
    if agreement < min_pick_agreement:
        reason = f"only {agreement:.0%} of {count} picks agree (need {min_pick_agreement:.0%})"
        return CheckResult(False, loss32, loss16, agreement, reason)
    reason = f"loss {loss16:.4f} vs {loss32:.4f} in fp32, {agreement:.0%} of {count} picks agree"
    return CheckResult(True, loss32, loss16, agreement, reason)


def check_on_loader(
    logits_fn: LogitsFn, loader: Iterable[Any], num_batches: int = CHECK_BATCHES
) -> Callable[[], CheckResult]:
    """A ``check`` for :func:`resolve_precision`: :func:`bf16_matches_fp32` on the first
    ``num_batches`` batches of ``loader``, run only if the check is needed.

    Give a loader in a fixed order (a validation loader): a training loader's sampler may hold
    a resume position that iterating it would use up.
    """

    def check() -> CheckResult:
        return bf16_matches_fp32(logits_fn, itertools.islice(loader, num_batches))

    return check


def resolve_precision(
    precision: str,
    accelerator: str = "auto",
    *,
    check: Callable[[], CheckResult] | None = None,
) -> str:
    """The Lightning precision for ``--precision`` (``auto`` resolved as the module says).

    Args:
        precision: the requested precision; anything but ``auto`` is returned as is.
        accelerator: Lightning's accelerator (``auto``, ``cpu``, ``gpu``, ...).
        check: on a CPU with native bf16, runs :func:`bf16_matches_fp32` on the run's own
            batches; without one, bf16 is not chosen on a CPU (nothing was checked).

    Returns:
        A Lightning precision string; the choice and its reason are logged.
    """
    if precision != "auto":
        return precision
    if runs_on_cuda(accelerator):
        if cuda_has_bf16():
            log.info("precision auto: bf16-mixed (a CUDA GPU with bf16)")
            return "bf16-mixed"
        log.info("precision auto: 32-true (this CUDA GPU has no bf16)")
        return "32-true"
    if accelerator not in ("auto", "cpu"):
        return "32-true"  # mps and others: Lightning's default
    if not cpu_has_native_bf16():
        log.info("precision auto: 32-true (this CPU has no native bf16: AVX512-BF16 or AMX)")
        return "32-true"
    if check is None:
        log.info("precision auto: 32-true (CPU bf16 not checked against fp32 for this run)")
        return "32-true"
    result = check()
    if result.ok:
        log.info("precision auto: bf16-mixed on this CPU (native bf16; %s)", result.reason)
        return "bf16-mixed"
    log.warning(
        "precision auto: 32-true, bf16 on this CPU failed the fp32 check: %s", result.reason
    )
    return "32-true"


def weights_dtype(precision: str) -> torch.dtype:
    """Dtype of the frozen backbone's weights for a Lightning precision.

    With ``*-mixed`` on a GPU the frozen weights are loaded in half precision too (they never
    update, and a 7B model in float32 would double the memory), while the LoRA weights that
    train stay float32 (PEFT keeps adapters float32 on a half-precision base) under autocast.
    ``*-true`` casts everything, LoRA included, to half precision: at lr 5e-5 Adam's updates
    are near bfloat16's resolution, so it is not the default. (When ``auto`` picks bf16 on a
    CPU, the weights were loaded in float32 for the check and stay so: autocast computes in
    bf16, as the check measured.)
    """
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    if precision.startswith("64"):
        return torch.float64
    return torch.float32


def autocast(dtype: torch.dtype | None, device_type: str = "cpu") -> AbstractContextManager:
    """``torch.autocast(device_type, dtype)``, or a no-op context for ``dtype=None``."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type, dtype=dtype)


__all__ = [
    "CHECK_BATCHES",
    "CheckResult",
    "PRECISIONS",
    "autocast",
    "bf16_matches_fp32",
    "check_on_loader",
    "load_dtype",
    "cpu_has_native_bf16",
    "cuda_has_bf16",
    "resolve_precision",
    "runs_on_cuda",
    "weights_dtype",
]
