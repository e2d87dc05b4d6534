"""Test-wide settings: offline, CPU, deterministic; GPU tests skip themselves without CUDA."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reddit_amazon"


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real published conversations; tests using it skip when ../shared is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data/reddit_amazon is absent")
    return SHARED_DATA


@pytest.fixture
def force_cpu_bf16(monkeypatch):
    """Make ``--precision auto`` / ``--dtype auto`` take the CPU bf16-autocast path on any CPU.

    On a CPU with native bf16 (AVX512-BF16 or AMX) that is what ``auto`` picks anyway; on an
    AVX2-only CPU bf16 is emulated (slower, the same numbers), so the tests that use this fixture
    exercise the bf16 path wherever the suite runs, beside their float32 twins.
    """
    from lavic import precision
    from lavic.model import inference

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: True)
