"""The training core's one learning-rate schedule (warm-up, then constant or cosine)."""

from __future__ import annotations

import pytest
import torch

from lavic.training.schedule import warmup_factor, warmup_schedule


def test_the_rate_warms_up_then_holds_or_decays_to_the_floor():
    for decay in ("constant", "cosine"):
        assert warmup_factor(0, 250, 10, decay=decay) == pytest.approx(0.1)
        assert warmup_factor(9, 250, 10, decay=decay) == pytest.approx(1.0)
    assert [warmup_factor(s, 250, 10, decay="constant") for s in (10, 125, 250)] == [1, 1, 1]
    cosine = [warmup_factor(s, 250, 10) for s in (10, 130, 250, 400)]
    assert cosine == pytest.approx([1.0, 0.55, 0.1, 0.1])
    with pytest.raises(ValueError, match="decay"):
        warmup_factor(0, 10, 1, decay="linear")


def test_the_schedule_scales_each_groups_own_rate():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 10.0}])
    entry = warmup_schedule(opt, total=20, warmup=4)
    assert entry["interval"] == "step"
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.25, 2.5])
    for _ in range(3):
        opt.step()
        entry["scheduler"].step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1.0, 10.0])
