"""`lavic demo` end to end on tiny-random: every stage runs and the report's files are written."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from lavic.cli import main

SMALL_DEMO = [
    "--model_name", "tiny-random", "--categories", "synthetic_home", "--num_train", "6",
    "--num_valid", "3", "--num_test", "4", "--distill_steps", "1", "--tune_steps", "1",
]  # fmt: skip


def _files_and_mtimes(*folders: Path) -> dict[str, int]:
    return {
        str(p): p.stat().st_mtime_ns for folder in folders for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.slow
def test_demo_end_to_end_writes_results_and_report(tmp_path, capsys, caplog, monkeypatch):
    from lavic import demo
    from lora_artefacts import write_tuned_lineage

    # The shipped reference is built on `tiny`; a tiny-random lineage stands in for it here.
    monkeypatch.setattr(demo, "REFERENCE_DIR", write_tuned_lineage(tmp_path / "reference"))
    out = tmp_path / "demo"
    assert main(["demo", "--output_dir", str(out), *SMALL_DEMO]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"synthetic_home", "stage1_look_words", "all_categories", "reference"}
    looks = results["stage1_look_words"]
    assert set(looks) == {"student_real", "student_shuffled"}
    assert looks["student_real"]["look_tokens"] > 0
    assert all(looks[k]["look_nll"] > 0 for k in looks)  # measured (tiny-random: no signal)
    # one stage-2 model, tuned on the train conversations of every category
    combined = out / "data" / "all_categories" / "train.jsonl"
    home = out / "data" / "synthetic_home" / "train.jsonl"
    assert combined.read_text() == home.read_text()
    tuned = json.loads((out / "tune" / "metrics.json").read_text())
    # the demo's default stage 2: ten candidates from the first step, four samples a step, 2e-4
    assert tuned["candidate_curriculum"] == [] and tuned["lr"] == 2e-4
    assert tuned["train_samples_seen"] == 4 * tuned["steps"] > 0
    row = results["synthetic_home"]
    methods = ("lavic", "text_only", "described", "random", "retriever_first")
    assert set(row) == {*methods, "ceiling"}
    for method in methods:
        assert set(row[method]) == {"recall@1", "validity@1"}
        assert 0.0 <= row[method]["recall@1"] <= 1.0
        assert row[method]["validity@1"] == 1.0  # score decoding always answers a candidate
    assert 0.0 < row["ceiling"] <= 1.0
    # One category: the pooled rates are its own, over its gt items, with a noise band.
    pooled = results["all_categories"]
    n = pooled["lavic"]["n"]
    assert n >= 4 and all(pooled[m]["n"] == n for m in (*methods, "ceiling"))
    for method in methods:
        assert pooled[method]["hits"] == round(row[method]["recall@1"] * n)
        assert pooled[method]["recall@1"] == pooled[method]["hits"] / n
    # The reference, under its own key, scored on the same test conversations.
    reference = results["reference"]
    assert set(reference) == {"model_dir", "synthetic_home", "all_categories"}
    assert reference["all_categories"]["n"] == n
    assert (out / "item_tokens_reference").is_dir()  # its own stage 1: its own tokens
    report = (out / "report.md").read_text()
    assert "## The ladder" in report and "LaViC, reference" in report
    for picture in ("results.png", "training_curves.png", "examples.png"):
        assert picture in report
        assert (out / picture).stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "report:" in printed and "LaViC" in printed
    # A second run reuses every finished stage: it says so for stage 1 and stage 2, and leaves
    # the catalogue and both artefacts untouched (evaluation and the report are redone).
    stage1 = out / "distill" / "vision_lora_adapter_best"
    stage2 = out / "tune" / "trained_lora_adapter"
    assert (stage1 / "lavic.json").is_file() and (stage2 / "lavic.json").is_file()
    finished = _files_and_mtimes(out / "data", out / "distill", out / "tune")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lavic"):
        assert main(["demo", "--output_dir", str(out), *SMALL_DEMO]) == 0
    reused = [r.getMessage() for r in caplog.records if "already" in r.getMessage()]
    assert any(str(stage1) in m for m in reused), reused
    assert any(str(stage2) in m for m in reused), reused
    again = _files_and_mtimes(out / "data", out / "distill", out / "tune")
    assert again == finished


def test_compare_to_text_only_needs_more_than_noise():
    from lavic.demo_report import compare_to_text_only

    def methods(lavic, text):
        return {"LaViC": {"recall@1": lavic}, "text-only": {"recall@1": text}}

    assert compare_to_text_only(methods(0.85, 0.10), 20).endswith(": above text-only")
    assert compare_to_text_only(methods(0.15, 0.10), 20).endswith(
        "not distinguishable from text-only"
    )
    assert compare_to_text_only(methods(0.10, 0.15), 20).endswith(
        "not distinguishable from text-only"
    )
    assert compare_to_text_only(methods(0.00, 0.60), 20).endswith(": below text-only")
    # All-or-nothing rates have zero variance; one answer (1/n) is still within noise.
    assert "not distinguishable" in compare_to_text_only(methods(0.05, 0.0), 20)
    assert compare_to_text_only(methods(0.5, 0.4), 2000).endswith(": above text-only")


def test_pooled_recall_and_its_noise_band():
    from lavic.demo import pooled

    got = pooled([(0.5, 50), (0.2, 50), (0.1, 40)])  # 25 + 10 + 4 hits
    assert got["hits"] == 39 and got["n"] == 140
    assert got["recall@1"] == pytest.approx(39 / 140)
    assert got["noise95"] == pytest.approx(1.96 * ((39 / 140) * (101 / 140) / 140) ** 0.5)


def test_the_reference_is_used_only_on_its_own_base(tmp_path, monkeypatch):
    from lavic import demo
    from lora_artefacts import write_tuned_lineage

    monkeypatch.setattr(demo, "REFERENCE_DIR", write_tuned_lineage(tmp_path / "ref"))
    assert demo.reference_artifact("tiny-random") == demo.REFERENCE_DIR
    assert demo.reference_artifact("tiny") is None  # not the base it was trained on
    monkeypatch.setattr(demo, "REFERENCE_DIR", tmp_path / "absent")
    assert demo.reference_artifact("tiny-random") is None
