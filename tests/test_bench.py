"""bench/: every benchmark module imports against today's package (a moved function breaks
`make bench` here, not at the next measurement), and the harness's ratios on hand-built runs."""

from __future__ import annotations

import importlib
import statistics
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
MODULES = sorted(p.stem for p in BENCH.glob("*.py"))


@pytest.fixture(scope="module")
def bench_path():
    sys.path.insert(0, str(BENCH))
    yield
    sys.path.remove(str(BENCH))


@pytest.mark.parametrize("name", MODULES)
def test_bench_module_imports(bench_path, name):
    module = importlib.import_module(name)
    assert module.__doc__, f"bench/{name}.py says what it measures"


def test_run_all_runs_every_section(bench_path):
    run_all = importlib.import_module("run_all")
    for section in (
        "bench_inference",
        "bench_tune_cache",
        "bench_tune_vs_reference",
        "bench_distill",
        "bench_memory",
        "context_fit",
    ):
        assert callable(getattr(run_all, section)), section


def test_paired_ratio_is_the_median_of_the_per_round_ratios(bench_path):
    harness = importlib.import_module("harness")
    # Round 2 is slow for both sides (the machine was busy): the paired ratio ignores it,
    # the ratio of the medians would not.
    run = {"times_s": {"ref": [2.0, 20.0, 2.2, 2.1, 1.9], "ours": [1.0, 10.0, 1.1, 1.0, 1.0]}}
    ratios = [2.0, 2.0, 2.0, 2.1, 1.9]
    assert harness.paired_ratio(run, "ref", "ours") == pytest.approx(statistics.median(ratios))
    run["median_s"] = {k: statistics.median(v) for k, v in run["times_s"].items()}
    assert harness.per_second(run, 4) == pytest.approx({"ref": 4 / 2.1, "ours": 4 / 1.0})


def test_alternate_warms_up_then_rotates_the_order(bench_path):
    harness = importlib.import_module("harness")
    calls: list[str] = []
    fns = {n: (lambda n=n: calls.append(n)) for n in ("a", "b", "c")}
    run = harness.alternate(fns, repeats=3, warmup=1)
    assert calls == ["a", "b", "c"] + ["a", "b", "c"] + ["b", "c", "a"] + ["c", "a", "b"]
    assert {k: len(v) for k, v in run["times_s"].items()} == {"a": 3, "b": 3, "c": 3}
    assert set(run["median_s"]) == {"a", "b", "c"}
