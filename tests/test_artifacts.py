"""The one artefact module: lavic.json, config.yaml and metrics.json read and written in one
place, the one adapter writer, and the one lineage walk that the loader and the item-token
cache's fingerprint both use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lavic.artifacts import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    ARTIFACT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    artifact_info,
    artifact_lineage,
    read_artifact_info,
    read_config,
    read_metrics,
    save_adapter,
    write_metrics,
)
from lavic.errors import LavicError


def _artefact(directory: Path, kind: str, parent: str | None, base: str = "tiny-random") -> Path:
    directory.mkdir(parents=True)
    info = artifact_info(kind=kind, base_model=base, parent=parent)
    (directory / ARTIFACT_FILE).write_text(json.dumps(info), encoding="utf-8")
    return directory


def test_lineage_walks_relative_and_absolute_parents_to_the_root(tmp_path):
    root = _artefact(tmp_path / "run" / "distill" / "best", "distill", None)
    mid = _artefact(tmp_path / "run" / "distill2", "distill", "../distill/best")
    tune = _artefact(tmp_path / "elsewhere" / "tuned", "tune", str(mid.resolve()))
    lineage = artifact_lineage(tune)
    assert [d.resolve() for d, _ in lineage] == [tune.resolve(), mid.resolve(), root.resolve()]
    assert [info["kind"] for _, info in lineage] == ["tune", "distill", "distill"]
    assert lineage[-1][1]["base_model"] == "tiny-random"


def test_lineage_refuses_a_loop_a_missing_parent_and_a_non_artefact(tmp_path):
    a = _artefact(tmp_path / "a", "distill", "../b")
    _artefact(tmp_path / "b", "distill", "../a")
    with pytest.raises(LavicError, match="makes a cycle"):
        artifact_lineage(a)
    c = _artefact(tmp_path / "c", "tune", "../gone")
    with pytest.raises(LavicError, match="is missing"):
        artifact_lineage(c)
    with pytest.raises(LavicError, match="not a LaViC artefact"):
        artifact_lineage(tmp_path)


def test_read_artifact_info(tmp_path):
    assert read_artifact_info(tmp_path) is None
    (tmp_path / ARTIFACT_FILE).write_text('{"kind": "tune"}', encoding="utf-8")
    with pytest.raises(LavicError, match="'kind' and 'base_model'"):
        read_artifact_info(tmp_path)
    (tmp_path / ARTIFACT_FILE).write_text("{", encoding="utf-8")
    with pytest.raises(LavicError, match="unreadable"):
        read_artifact_info(tmp_path)


# --------------------------------------------------------- config.yaml and metrics.json


def test_read_config_falls_back_to_the_parent_folder_and_tolerates_garbage(tmp_path, caplog):
    run = tmp_path / "run"
    artefact = run / "trained_lora_adapter"
    artefact.mkdir(parents=True)
    assert read_config(artefact, parent=True) == {}  # no config anywhere
    (run / CONFIG_FILE).write_text("lr: 0.1\nnum_epochs: 3\n", encoding="utf-8")
    (artefact / CONFIG_FILE).write_text("lr: 0.5\nno_images: true\n", encoding="utf-8")
    assert read_config(artefact) == {"lr": 0.5, "no_images": True}
    # the artefact's own keys win; the parent's fill in the rest
    assert read_config(artefact, parent=True) == {"lr": 0.5, "no_images": True, "num_epochs": 3}
    (artefact / CONFIG_FILE).write_bytes(b"lr: [unclosed\n\xff")
    with caplog.at_level("WARNING", logger="lavic.artifacts"):
        assert read_config(artefact, parent=True) == {"lr": 0.1, "num_epochs": 3}
    assert "unreadable" in caplog.text
    (artefact / CONFIG_FILE).write_text("- a list\n", encoding="utf-8")
    assert read_config(artefact) == {}  # no mapping: nothing to use


def test_metrics_written_atomically_and_read_back(tmp_path):
    folder = tmp_path / "new" / "folder"
    assert read_metrics(folder) is None
    path = write_metrics(folder, {"recall@1": 0.5, "nested": {"a": [1, 2]}})
    assert path == folder / METRICS_FILE
    assert read_metrics(folder) == {"recall@1": 0.5, "nested": {"a": [1, 2]}}
    assert [p.name for p in folder.iterdir()] == [METRICS_FILE]  # no temporary left
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(LavicError, match="JSON object"):
        read_metrics(folder)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(LavicError, match="unreadable metrics"):
        read_metrics(folder)


def test_save_adapter_casts_tags_and_drops_the_model_card(tmp_path):
    """The options the shipped ``tiny`` LM adapter is written with; the weights are PEFT's own
    save, only cast."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open

    from lavic.model.lora import language_lora_targets
    from lavic.model.tiny_random import build_tiny_random

    backbone = build_tiny_random(seed=0)
    targets = language_lora_targets(backbone.model)
    model = get_peft_model(backbone.model, LoraConfig(r=2, target_modules=targets))
    plain, shipped = tmp_path / "plain", tmp_path / "shipped"
    plain.mkdir()
    shipped.mkdir()
    save_adapter(model, plain)
    save_adapter(model, shipped, dtype=torch.float16, metadata={"lavic": "test"}, model_card=False)
    assert (plain / "README.md").is_file() and not (shipped / "README.md").exists()
    assert (shipped / ADAPTER_CONFIG).read_text() == (plain / ADAPTER_CONFIG).read_text()
    with (
        safe_open(str(plain / ADAPTER_WEIGHTS), "pt") as a,
        safe_open(str(shipped / ADAPTER_WEIGHTS), "pt") as b,
    ):
        keys = sorted(a.keys())
        assert keys and keys == sorted(b.keys())
        assert b.metadata() == {"format": "pt", "lavic": "test"}
        for key in keys:
            assert b.get_tensor(key).dtype == torch.float16
            assert torch.equal(b.get_tensor(key), a.get_tensor(key).to(torch.float16))
