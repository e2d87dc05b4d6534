"""The zero-shot rows: `lavic evaluate --model_dir` a backbone name or a stage-1 artefact (no
stage-2 adapter) evaluates the model as it is; with --no_images, the language model's text
skill. Oracle: a stage-1 adapter changes the vision side only, so its text-only scores are
the backbone's, to the last digit, and its scores with images are not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lavic.cli import main
from lora_artefacts import write_stage1_artifact
from tune.fixtures import CATEGORY, write_catalogue

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero_shot")
    return write_stage1_artifact(root / "distill"), write_catalogue(root)


def _evaluate(model_dir, cat, out: Path, *extra: str) -> tuple[dict, list[dict]]:
    argv = ["evaluate", "--model_dir", str(model_dir), "--data_dir", str(cat["data_dir"])]
    argv += ["--category", CATEGORY, "--item_meta_path", str(cat["item_meta_path"])]
    argv += ["--image_dir", str(cat["image_dir"]), "--output_dir", str(out), "--max_length", "512"]
    assert main([*argv, *extra]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["evaluation"]["test_candidates_st"]
    assert metrics["model_dir"] == str(model_dir) and metrics["num_conversations"] == 3
    rows = (out / "test_results_candidates_st.jsonl").read_text().splitlines()
    return metrics, [json.loads(r)["scores_st"] for r in rows]


def test_a_backbone_name_and_a_stage1_artefact_evaluate_zero_shot(setup, tmp_path, caplog):
    stage1, cat = setup
    caplog.set_level("INFO", logger="lavic")
    base_text, base_text_scores = _evaluate("tiny-random", cat, tmp_path / "a", "--no_images")
    assert base_text["method"] == "text-only" and "LaViC" not in base_text["methods"]
    assert "a backbone, not a LaViC artefact: evaluating it zero-shot" in caplog.text

    s1_text, s1_text_scores = _evaluate(stage1, cat, tmp_path / "b", "--no_images")
    assert s1_text_scores == base_text_scores  # the vision LoRA leaves the LM as it was
    assert "'distill' artefact, not a tuned one: evaluating zero-shot" in caplog.text

    base, base_scores = _evaluate("tiny-random", cat, tmp_path / "c")
    s1, s1_scores = _evaluate(stage1, cat, tmp_path / "d")
    assert base["method"] == s1["method"] == "LaViC"
    assert s1_scores != base_scores  # ... and the item tokens are the adapted tower's
    for m in (base_text, s1_text, base, s1):
        assert 0.0 <= m["recall@1"] <= 1.0 and m["validity@1"] == 1.0  # score decoding
