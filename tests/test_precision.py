"""`--precision auto` / `--dtype auto`: the choice (capability mocked), the fp32-equality check
that guards CPU bf16, and on this machine a real tiny-random forward under CPU bf16 autocast."""

from __future__ import annotations

import logging

import pytest
import torch

from lavic import precision as P
from lavic.model.compute import prompt_logits
from lavic.model.inference import load_model, probe_bf16
from lavic.model.tiny_random import build_tiny_random


@pytest.fixture()
def cpu_only(monkeypatch):
    """A machine without CUDA, whatever this one has."""
    monkeypatch.setattr(P, "runs_on_cuda", lambda accelerator: False)


def _passing() -> P.CheckResult:
    return P.CheckResult(True, 1.0, 1.001, 1.0, "loss 1.0010 vs 1.0000")


def _failing() -> P.CheckResult:
    return P.CheckResult(False, 1.0, 1.5, 0.2, "loss 1.5000 under bf16 vs 1.0000 in fp32")


@pytest.mark.parametrize("chosen", ["32-true", "bf16-mixed", "16-mixed", "64-true"])
def test_an_explicit_precision_is_kept(chosen):
    def check():
        raise AssertionError("no check for an explicit choice")

    assert P.resolve_precision(chosen, "cpu", check=check) == chosen


def test_cpu_without_native_bf16_stays_fp32_and_runs_no_check(cpu_only, monkeypatch, caplog):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    caplog.set_level(logging.INFO, logger="lavic")

    def check():
        raise AssertionError("the check runs only where bf16 is native")

    assert P.resolve_precision("auto", "auto", check=check) == "32-true"
    assert "no native bf16" in caplog.text


def test_cpu_with_native_bf16_picks_bf16_when_the_check_passes(cpu_only, monkeypatch, caplog):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    caplog.set_level(logging.INFO, logger="lavic")
    calls = []

    def check():
        calls.append(1)
        return _passing()

    assert P.resolve_precision("auto", "cpu", check=check) == "bf16-mixed"
    assert calls == [1] and "bf16-mixed on this CPU" in caplog.text


def test_a_failed_check_falls_back_to_fp32_and_says_why(cpu_only, monkeypatch, caplog):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    caplog.set_level(logging.INFO, logger="lavic")
    assert P.resolve_precision("auto", "auto", check=_failing) == "32-true"
    assert "failed the fp32 check: loss 1.5000 under bf16" in caplog.text


def test_no_check_means_no_cpu_bf16(cpu_only, monkeypatch):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    assert P.resolve_precision("auto", "cpu") == "32-true"


def test_cuda_with_bf16_picks_bf16_without_the_cpu_check(monkeypatch):
    monkeypatch.setattr(P, "runs_on_cuda", lambda accelerator: True)
    monkeypatch.setattr(P, "cuda_has_bf16", lambda: True)
    assert P.resolve_precision("auto", "gpu", check=_failing) == "bf16-mixed"
    monkeypatch.setattr(P, "cuda_has_bf16", lambda: False)
    assert P.resolve_precision("auto", "gpu") == "32-true"


def test_other_accelerators_keep_fp32(cpu_only, monkeypatch):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    assert P.resolve_precision("auto", "mps", check=_passing) == "32-true"


def test_one_load_dtype_rule_for_both_stages(cpu_only, monkeypatch):
    """Half-precision weights only on a GPU; on a CPU `*-mixed` and `auto` keep float32
    weights (autocast computes in bf16), `*-true` casts everything."""
    assert P.load_dtype("auto", "cpu") == P.load_dtype("bf16-mixed", "cpu") == torch.float32
    assert P.load_dtype("32-true", "auto") == torch.float32
    assert P.load_dtype("bf16-true", "cpu") == torch.bfloat16
    monkeypatch.setattr(P, "runs_on_cuda", lambda accelerator: True)
    monkeypatch.setattr(P, "cuda_has_bf16", lambda: True)
    assert P.load_dtype("auto", "gpu") == P.load_dtype("bf16-mixed", "gpu") == torch.bfloat16
    assert P.load_dtype("16-mixed", "gpu") == torch.float16
    monkeypatch.setattr(P, "cuda_has_bf16", lambda: False)
    assert P.load_dtype("auto", "gpu") == torch.float32


@pytest.mark.parametrize(
    ("flags", "native"),
    [("fpu sse avx2 avx512f", False), ("avx512f avx512_bf16 avx512vl", True), ("amx_bf16", True)],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, monkeypatch, flags, native):
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(P, "CPUINFO", cpuinfo)
    assert P.cpu_has_native_bf16() is native


def _logits_fn(bf16_logits):
    """Fixed fp32 logits; under autocast, ``bf16_logits`` instead (what bf16 would compute)."""
    torch.manual_seed(0)
    logits = torch.randn(40, 11) * 3
    labels = torch.randint(0, 11, (40,))

    def fn(batch):
        if torch.is_autocast_enabled("cpu"):
            return bf16_logits(logits), labels
        return logits, labels

    return fn


def test_the_check_passes_on_bf16_rounding():
    result = P.bf16_matches_fp32(_logits_fn(lambda x: x.bfloat16()), [None, None])
    assert result.ok and result.pick_agreement > 0.9, result
    assert abs(result.loss_bf16 - result.loss_fp32) < 0.01 * result.loss_fp32


def test_the_check_catches_a_loss_mismatch():
    result = P.bf16_matches_fp32(_logits_fn(lambda x: x * 0.5), [None])  # same picks, other loss
    assert not result.ok and result.pick_agreement == 1.0 and "loss" in result.reason


def test_the_check_catches_different_picks():
    # Each row shifted by one class: the argmax moves on every row (the loss tolerance is
    # opened wide so that the picks alone decide).
    result = P.bf16_matches_fp32(_logits_fn(lambda x: x.roll(1, dims=-1)), [None], loss_rtol=10.0)
    assert not result.ok and result.pick_agreement < 0.5 and "picks agree" in result.reason


def test_the_check_fails_with_nothing_to_compare():
    empty = (torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))
    assert not P.bf16_matches_fp32(lambda b: empty, [None]).ok
    assert not P.bf16_matches_fp32(lambda b: empty, []).ok


def test_check_on_loader_runs_lazily_on_the_first_batches():
    seen = []

    def fn(batch):
        seen.append(batch)
        return torch.eye(3), torch.arange(3)

    check = P.check_on_loader(fn, iter(range(10)), num_batches=2)
    assert seen == []
    assert check().ok and seen == [0, 0, 1, 1]  # each batch in fp32, then under autocast


def test_real_bf16_autocast_on_tiny_random_matches_fp32():
    """On this CPU (bf16 native or emulated), autocast changes the loss by rounding only."""
    backbone = build_tiny_random()
    tok = backbone.tokenizer
    ids = torch.tensor([tok("red mug for the desk, a blue lamp, striped bag")["input_ids"]] * 2)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    batch["item_tokens"] = None
    with torch.no_grad():
        logits, labels = prompt_logits(backbone.model, tok, batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits16, _ = prompt_logits(backbone.model, tok, batch)
    assert logits16.dtype == torch.float32  # labelled_logits returns float32 under autocast
    assert not torch.equal(logits, logits16)  # autocast did compute in bf16
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss16 = torch.nn.functional.cross_entropy(logits16, labels)
    assert abs(float(loss16 - loss)) < 0.01 * float(loss)
    assert probe_bf16(backbone).ok


def test_load_model_autocasts_on_a_bf16_cpu_only_after_the_probe(monkeypatch):
    import lavic.model.inference as inference

    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: True)
    assert load_model("tiny-random", device="cpu").autocast_dtype == torch.bfloat16
    assert load_model("tiny-random", device="cpu", dtype="float32").autocast_dtype is None
    monkeypatch.setattr(inference, "probe_bf16", lambda backbone: _failing())
    assert load_model("tiny-random", device="cpu").autocast_dtype is None
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: False)
    assert load_model("tiny-random", device="cpu").autocast_dtype is None


@pytest.mark.skipif(
    not P.cpu_has_native_bf16(),
    reason="this CPU has no native bf16 (AVX512-BF16/AMX), so `auto` rightly keeps float32 here; "
    "the bf16 numerics still run everywhere through the forced-bf16 tests (force_cpu_bf16, "
    "--precision bf16-mixed)",
)
def test_auto_takes_bf16_on_this_native_bf16_cpu(cpu_only):
    """Nothing mocked: on a CPU with native bf16 both `auto`s choose bf16 autocast for real."""
    backbone = load_model("tiny-random", device="cpu")
    assert backbone.autocast_dtype == torch.bfloat16
    check = P.check_on_loader(
        lambda batch: prompt_logits(backbone.model, backbone.tokenizer, batch),
        [_prompt_batch(backbone.tokenizer)],
    )
    assert P.resolve_precision("auto", "cpu", check=check) == "bf16-mixed"


def _prompt_batch(tok) -> dict:
    ids = torch.tensor([tok("a plain white mug; a striped blue tote; a dotted jar")["input_ids"]])
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": ids,
        "item_tokens": None,
    }
