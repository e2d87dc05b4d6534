"""`lavic distill` end to end on a tiny catalogue (tiny-random): the artefact file set, the
metrics written, the merged model, broken images counted, bad input reported in one line."""

from __future__ import annotations

import json
import math

import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from lavic.config import load_yaml_config
from lavic.distill.module import StudentCollator
from lavic.distill.train import BEST_DIR, CHECKPOINT_DIR, LAST_CHECKPOINT, MERGED_DIR, Args
from lavic.model.backbone import load_backbone, read_artifact_info

from .helpers import distill_argv, run_distill

ARTIFACT_FILES = {
    "adapter_config.json",
    "adapter_model.safetensors",
    "config.yaml",
    "metrics.json",
    "lavic.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "processor_config.json",
}
METRIC_KEYS = {
    "epochs",
    "best_epoch",
    "val_loss_before",
    "val_ppl_before",
    "val_loss_best",
    "val_ppl_best",
    "val_loss_teacher",
    "val_ppl_teacher",
    "train_images_per_s",
    "image_stats",
    "trainable_parameters",
    "steps",
}


def test_distill_end_to_end(tiny_catalogue, tmp_path):
    out = tmp_path / "out"
    rc = run_distill(
        tiny_catalogue, out, "--num_epochs", "2", "--merge", "--validate_before_training"
    )
    assert rc == 0
    best = out / BEST_DIR
    names = {p.name for p in best.iterdir()}
    assert names >= ARTIFACT_FILES
    assert names - ARTIFACT_FILES <= {"README.md"}  # PEFT's model card, nothing else
    assert {p.name for p in out.iterdir()} == {
        BEST_DIR,
        MERGED_DIR,
        CHECKPOINT_DIR,
        "metrics.json",
        "logs",
    }
    assert (out / CHECKPOINT_DIR / LAST_CHECKPOINT).is_file()
    # Every LoRA tensor is in the adapter (A and B per targeted layer).
    adapter = load_file(str(best / "adapter_model.safetensors"))
    checkpoint = torch.load(out / CHECKPOINT_DIR / LAST_CHECKPOINT, weights_only=True)
    assert len(adapter) == len(checkpoint["state_dict"]) > 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= METRIC_KEYS
    assert [e["epoch"] for e in metrics["epochs"]] == [0, 1]
    for e in metrics["epochs"]:
        assert math.isclose(e["val_ppl"], math.exp(e["val_loss"]), rel_tol=1e-9)
    best_epoch = min(metrics["epochs"], key=lambda e: e["val_loss"])
    assert metrics["best_epoch"] == best_epoch["epoch"]
    assert metrics["val_loss_best"] == best_epoch["val_loss"]
    assert all("val_ppl_mismatched" in e for e in metrics["epochs"])
    assert metrics["val_ppl_best_mismatched"] == best_epoch["val_ppl_mismatched"]
    for key in (
        "val_ppl_before",
        "val_ppl_best",
        "val_ppl_teacher",
        "train_images_per_s",
        "val_ppl_best_mismatched",
    ):
        assert math.isfinite(metrics[key]) and metrics[key] > 0
    # The catalogue's broken images: one missing and one corrupt (train), one escaping (val).
    assert metrics["image_stats"]["train"] == {
        "loaded": 4,
        "missing": 1,
        "unreadable": 1,
        "unsafe": 0,
        "oversized": 0,
    }
    assert metrics["image_stats"]["val"] == {
        "loaded": 3,
        "missing": 0,
        "unreadable": 0,
        "unsafe": 1,
        "oversized": 0,
    }
    assert metrics["steps"] == 6  # 6 train images, batch 2, 2 epochs
    # The artefact describes itself and its config is loadable again with --config.
    info = read_artifact_info(best)
    assert info["kind"] == "distill" and info["base_model"] == "tiny-random"
    config = load_yaml_config(Args, best / "config.yaml")
    assert config["num_epochs"] == 2 and config["model_name"] == "tiny-random"
    assert (
        json.loads((best / "metrics.json").read_text())["val_ppl_best"] == metrics["val_ppl_best"]
    )

    # The merged model and the artefact (base + merged adapter) compute the same logits.
    from_artifact = load_backbone(best)
    merged = load_backbone(out / MERGED_DIR)
    collate = StudentCollator(merged.tokenizer, merged.image_processor, 256)
    from lavic.data.records import DescribedImage

    item = {
        "sample": DescribedImage("X", "red mug", "X_0.jpg", "a red mug"),
        "image": Image.new("RGB", (50, 40), (200, 0, 0)),
        "outcome": "loaded",
        "key": "v/X",
    }
    batch = collate([item])
    from lavic.distill.module import DistillModule

    def nll(backbone):
        module = DistillModule(backbone.model, backbone.item_token_ids, lr=1, weight_decay=0)
        with torch.no_grad():
            return module.eval().student_nll(batch)[0]

    torch.testing.assert_close(nll(merged), nll(from_artifact), rtol=1e-4, atol=1e-5)


def test_yaml_config_gives_options_and_flags_override(tiny_catalogue, tmp_path):
    out = tmp_path / "out"
    config = tmp_path / "distill.yaml"
    config.write_text(
        yaml.safe_dump({"num_epochs": 3, "max_steps": 1, "lora_r": 2, "teacher_eval": False})
    )
    from lavic.cli import main

    assert main(distill_argv(tiny_catalogue, out, "--config", str(config), "--lora_r", "4")) == 0
    saved = yaml.safe_load((out / BEST_DIR / "config.yaml").read_text())
    assert saved["num_epochs"] == 3 and saved["max_steps"] == 1 and saved["lora_r"] == 4
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 1 and metrics["val_ppl_teacher"] is None
    adapter = json.loads((out / BEST_DIR / "adapter_config.json").read_text())
    assert adapter["r"] == 4


def test_bad_input_is_one_line_exit_2(tiny_catalogue, tmp_path, capsys):
    paths = dict(tiny_catalogue, train_data=tmp_path / "nope.json")
    assert run_distill(paths, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lavic distill: error: {tmp_path / 'nope.json'}: no such metadata file"]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "x", "image_name": "A_0.jpg"}\n{broken\n')
    assert run_distill(dict(tiny_catalogue, val_data=bad), tmp_path / "out") == 2
    assert f"{bad}:2: malformed JSON" in capsys.readouterr().err
    assert run_distill(tiny_catalogue, tmp_path / "out", "--lora_dropout", "1.5") == 2
    assert "--lora_dropout" in capsys.readouterr().err


def test_no_descriptions_is_a_clear_error(tiny_catalogue, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"title": "x", "image_name": "A_0.jpg"}\n')
    assert run_distill(dict(tiny_catalogue, val_data=empty), tmp_path / "out") == 2
    assert "no validation item image has a description" in capsys.readouterr().err
