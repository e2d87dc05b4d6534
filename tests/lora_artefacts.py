"""The one builder of stage artefacts with random LoRA weights on tiny-random, for tests.

Every artefact is written by :func:`lavic.artifacts.write_artifact`, the writer the stages use,
so a test artefact has the same files and the same ``lavic.json`` as a trained one and cannot
drift from it. LoRA's B matrices start at zero (the wrapped model equals the base), so they are
drawn at random here: loading such an artefact has a visible effect on the logits.

Imported as ``lora_artefacts`` (``tests/`` is on ``sys.path`` under pytest's default import
mode, as for ``tune.fixtures``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

R, ALPHA = 4, 8
B_STD = 0.2  # large enough that the adapter changes every logit of tiny-random visibly


@dataclass
class TinyConfig:
    """Stands in for a stage's resolved config (write_artifact saves it as config.yaml)."""

    model_name: str = "tiny-random"
    max_length: int = 2048


@dataclass
class TuneConfig(TinyConfig):
    """A stage-2 config with the hyperparameters the evaluation summary reads back."""

    lr: float = 3e-4
    weight_decay: float = 0.01
    num_epochs: int = 2


def randomise_lora_b(model: torch.nn.Module, *, seed: int, std: float = B_STD) -> None:
    """Draw every ``lora_B`` matrix of ``model`` from N(0, std^2), in place, seeded."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def random_lora(backbone, targets: list[str], *, seed: int, r: int = R, alpha: int = ALPHA):
    """``backbone.model`` wrapped with LoRA on ``targets``, A and B both random (seeded)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # A's initialisation
    model = get_peft_model(
        backbone.model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets)
    )
    randomise_lora_b(model, seed=seed)
    return model


def write_random_lora_artifact(
    out_dir: Path,
    *,
    kind: str,
    backbone,
    targets: list[str],
    seed: int,
    parent: Path | None = None,
    config: Any = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """A ``kind`` artefact of tiny-random at ``out_dir`` whose LoRA on ``targets`` is random."""
    from lavic.artifacts import write_artifact

    return write_artifact(
        out_dir,
        kind=kind,
        model=random_lora(backbone, targets, seed=seed),
        backbone=backbone,
        config=config if config is not None else TinyConfig(),
        metrics=metrics if metrics is not None else {},
        base_model="tiny-random",
        parent=parent,
    )


def write_stage1_artifact(out_dir: Path, *, seed: int = 1) -> Path:
    """A distill artefact of tiny-random whose vision LoRA is not the identity."""
    from lavic.model.lora import vision_lora_targets
    from lavic.model.tiny_random import build_tiny_random

    backbone = build_tiny_random()
    return write_random_lora_artifact(
        out_dir,
        kind="distill",
        backbone=backbone,
        targets=vision_lora_targets(backbone.model),
        seed=seed,
        metrics={"val_loss": 1.0},
    )


def write_stage2_artifact(
    out_dir: Path, *, parent: Path | None = None, seed: int = 2, config: Any = None
) -> Path:
    """A tune artefact whose language-model LoRA is random, on top of ``parent`` (a distill
    artefact) or, with no parent, directly on tiny-random."""
    from lavic.model.backbone import load_backbone
    from lavic.model.lora import language_lora_targets
    from lavic.model.tiny_random import build_tiny_random

    backbone = load_backbone(parent) if parent is not None else build_tiny_random()
    return write_random_lora_artifact(
        out_dir,
        kind="tune",
        backbone=backbone,
        targets=language_lora_targets(backbone.model),
        seed=seed,
        parent=parent,
        config=config,
    )


def write_tuned_lineage(root: Path) -> Path:
    """``root/distilled`` (random vision LoRA) and ``root/tuned`` on top of it (random LM LoRA);
    returns the tune artefact."""
    distilled = write_stage1_artifact(root / "distilled", seed=1)
    return write_stage2_artifact(root / "tuned", parent=distilled, seed=2)
