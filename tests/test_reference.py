"""The reference LaViC-tiny that `lavic demo` evaluates: how it is shipped (configs/
ship_reference.py) and what is shipped (src/lavic/assets/reference)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from lavic.artifacts import artifact_lineage, read_artifact_info
from lavic.model.backbone import load_backbone

REPO = Path(__file__).resolve().parents[1]


def _ship_module():
    spec = importlib.util.spec_from_file_location(
        "ship_reference", REPO / "configs" / "ship_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _logits(backbone) -> torch.Tensor:
    ids = torch.tensor([backbone.tokenizer("a plain red mug with a handle")["input_ids"]])
    with torch.no_grad():
        return backbone.model(input_ids=ids).logits


def test_shipping_keeps_the_lineage_and_the_model(tmp_path):
    """A run's two artefacts become `distill/` and `tune/` (parent `../distill`), fp16
    weights, no model card; loaded, the shipped model gives the run's logits up to fp16."""
    from lora_artefacts import write_stage1_artifact, write_stage2_artifact

    run = tmp_path / "run"
    distilled = write_stage1_artifact(run / "distill" / "vision_lora_adapter_best")
    write_stage2_artifact(run / "tune" / "trained_lora_adapter", parent=distilled, seed=2)
    (distilled / "README.md").write_text("PEFT's empty card")
    dest = tmp_path / "reference"
    _ship_module().main(str(run), str(dest))

    assert sorted(p.name for p in dest.iterdir()) == ["distill", "tune"]
    assert not (dest / "distill" / "README.md").exists()
    assert read_artifact_info(dest / "tune")["parent"] == "../distill"
    lineage = [path.resolve() for path, _ in artifact_lineage(dest / "tune")]
    assert lineage == [(dest / "tune").resolve(), (dest / "distill").resolve()]
    for part in ("distill", "tune"):
        weights = load_file(dest / part / "adapter_model.safetensors")
        assert weights and all(t.dtype == torch.float16 for t in weights.values())
    original = _logits(load_backbone(run / "tune" / "trained_lora_adapter"))
    shipped = _logits(load_backbone(dest / "tune"))
    assert torch.allclose(original, shipped, atol=1e-2, rtol=1e-3)
    assert not torch.equal(original, _logits(load_backbone("tiny-random")))  # adapters applied


def test_the_shipped_reference_is_two_small_fp16_adapters_on_tiny():
    """What `lavic demo` evaluates: stage 2 on stage 1 on `tiny`, each adapter only where its
    stage trains (vision side / language model), float16 safetensors, small enough to ship."""
    from lavic.demo import REFERENCE_DIR
    from lavic.model.lora import LANGUAGE_MODULES, VISION_MODULES

    lineage = artifact_lineage(REFERENCE_DIR)
    assert [info["kind"] for _, info in lineage] == ["tune", "distill"]
    assert lineage[-1][1]["base_model"] == "tiny"
    for (folder, info), parts in zip(lineage, (LANGUAGE_MODULES, VISION_MODULES), strict=True):
        weights = load_file(folder / "adapter_model.safetensors")
        assert weights and all(t.dtype == torch.float16 for t in weights.values())
        assert all(any(f".{p}." in name for p in parts) for name in weights), info["kind"]
        assert (folder / "adapter_model.safetensors").stat().st_size < 8 * 2**20
        assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))


def test_the_shipped_reference_was_trained_on_the_shipped_tiny():
    """A reference trained on other `tiny` weights evaluates a model nobody trained: when
    `tiny`'s weights change, train the reference again (OUT=runs/reference SHIP=1 bash
    configs/reference_tiny.sh), which records the weights it was trained on."""
    from lavic.demo import REFERENCE_DIR

    ship = _ship_module()
    recorded = json.loads((REFERENCE_DIR.parent / ship.TRAINED_ON).read_text())["tiny"]
    assert {"vision.safetensors", "lm_adapter/adapter_model.safetensors"} <= set(recorded)
    assert recorded == ship.tiny_digest()
