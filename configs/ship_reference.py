"""Copy a finished reference run (configs/reference_tiny.sh) into the package as two small
artefacts: ``DEST/distill`` (stage 1) and ``DEST/tune`` (stage 2, whose parent is
``../distill``), the adapters' weights in float16, without PEFT's empty model card or the tokenizer and
processor (the loader rebuilds them from the base model). A reference on `tiny` also gets
``DEST/trained_on.json``: the sha256 of every weight file of the `tiny` it was trained on, so a
test fails when `tiny`'s weights change and the reference was not trained again.

Usage: python configs/ship_reference.py RUN_DIR DEST
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lavic.artifacts import (
    ADAPTER_WEIGHTS,
    ARTIFACT_FILE,
    METRICS_FILE,
    atomic_directory,
    read_artifact_info,
)
from lavic.io import atomic_write_json
from lavic.model.tiny import ASSETS_DIR

TRAINED_ON = "trained_on.json"


# Not shipped: PEFT's empty model card, and the tokenizer and processor a run saves beside its
# adapter. The loader rebuilds both from the base model (`tiny`, shipped once), so two more
# copies of the 3.5 MB tokenizer would only weigh on the package.
LEFT_OUT = ("README.md", "tokenizer", "special_tokens_map", "chat_template", "processor_config")


def ship(source: Path, dest: Path, *, parent: str | None) -> None:
    with atomic_directory(dest) as tmp:
        for path in source.iterdir():
            if path.is_file() and not path.name.startswith(LEFT_OUT):
                shutil.copy2(path, tmp / path.name)
        weights = tmp / ADAPTER_WEIGHTS
        state = {k: v.to(torch.float16).contiguous() for k, v in load_file(weights).items()}
        save_file(state, weights, metadata={"format": "pt", "lavic": "reference LaViC-tiny"})
        info = json.loads((tmp / ARTIFACT_FILE).read_text(encoding="utf-8"))
        info["parent"] = parent
        (tmp / ARTIFACT_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        for path in tmp.iterdir():
            path.chmod(0o644)  # package data: readable by all


def tiny_digest(assets: Path = ASSETS_DIR) -> dict[str, str]:
    """The sha256 of each of `tiny`'s shipped weight and config files (not its metrics record),
    by path under ``assets``."""
    return {
        path.relative_to(assets).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(assets.rglob("*"))
        if path.is_file() and path.name != METRICS_FILE
    }


def main(run_dir: str, dest: str) -> None:
    run, out = Path(run_dir), Path(dest)
    ship(run / "distill" / "vision_lora_adapter_best", out / "distill", parent=None)
    ship(run / "tune" / "trained_lora_adapter", out / "tune", parent="../distill")
    if read_artifact_info(out / "distill")["base_model"] == "tiny":
        atomic_write_json(out / TRAINED_ON, {"tiny": tiny_digest()})
        (out / TRAINED_ON).chmod(0o644)
    print(f"shipped {run} -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
