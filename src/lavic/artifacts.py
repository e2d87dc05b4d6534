"""Self-describing artefact directories: what one stage hands to the next.

An artefact directory holds everything needed to rebuild the trained model from it alone:

* ``adapter_config.json`` + ``adapter_model.safetensors``: the PEFT adapter;
* the tokenizer (with the five item tokens) and the processor, so the next stage never
  re-creates the special tokens by copy;
* ``config.yaml``: the resolved command config (loadable again with ``--config``);
* ``metrics.json``: what the run measured;
* ``lavic.json``: ``{"kind", "base_model", "parent", "created", "lavic_version"}``, read by
  :func:`lavic.model.backbone.load_backbone` to rebuild base + adapters.

This module is the one reader and writer of these files, and the one place that spells their
names: the writer of a whole artefact (:func:`write_artifact`) and of its adapter
(:func:`save_adapter`); ``lavic.json`` (:func:`read_artifact_info`, :func:`artifact_info`);
``config.yaml`` (:func:`read_config`); ``metrics.json`` (:func:`read_metrics` /
:func:`write_metrics`, also for the run and evaluation folders that hold one); the walk up an
artefact's lineage (:func:`artifact_lineage`, used by the loader and by the item-token cache's
fingerprint) and the folder names the stages write (:data:`TUNED_ADAPTER_DIR`).

The directory is written under a temporary name beside its destination and renamed into
place (:func:`lavic.io.atomic_directory`), so a reader never sees a half-written artefact.
Replacing an existing artefact is one atomic exchange of the two folders (Linux
``renameat2(RENAME_EXCHANGE)``): the path always holds the old artefact or the new one, and a
kill at any point leaves one of them in place.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from lavic.config import save_config
from lavic.errors import LavicError
from lavic.io import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

ARTIFACT_FILE = "lavic.json"  # marks a LaViC artefact directory; records how to rebuild it
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
# Where `lavic tune` puts its artefact inside FINETUNE_OUTPUT_DIR (the reference's name).
TUNED_ADAPTER_DIR = "trained_lora_adapter"


def _relative_parent(parent: str | os.PathLike[str], out_dir: Path) -> str:
    # Stored relative to the artefact, so a run directory moved as a whole keeps its lineage
    # (load_backbone resolves a relative parent against the artefact directory).
    return os.path.relpath(Path(parent).resolve(), out_dir.resolve())


def save_adapter(
    model,
    out_dir: str | os.PathLike[str],
    *,
    state_dict: dict[str, Any] | None = None,
    adapter: str = "default",
    dtype: Any = None,
    metadata: dict[str, str] | None = None,
    model_card: bool = True,
) -> None:
    """Write a PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``) into the
    existing folder ``out_dir`` (an :func:`lavic.io.atomic_directory`'s temporary one).

    Args:
        model: the ``peft.PeftModel``.
        out_dir: the folder to write into.
        state_dict: the adapter weights, named as in ``model.state_dict()``, when the live
            model cannot give them whole (sharded by FSDP). PEFT's own
            ``save_pretrained(state_dict=...)`` picks the adapter's entries by the live module
            names, which under FSDP carry wrapper segments and so miss every wrapped block;
            these keys are taken as given and converted the way PEFT converts them (the
            adapter name dropped: ``...lora_A.default.weight`` -> ``...lora_A.weight``).
            Default: PEFT's ``save_pretrained`` (embedding layers not saved: the item-token
            rows are re-created deterministically at every load).
        adapter: the adapter's name in ``model``.
        dtype: store the weights in this ``torch.dtype`` (default: as trained).
        metadata: extra safetensors metadata (beside ``format: pt``).
        model_card: keep PEFT's ``README.md`` model card beside the adapter.
    """
    out = Path(out_dir)
    if state_dict is None:
        model.save_pretrained(str(out), safe_serialization=True, save_embedding_layers=False)
    else:
        _save_adapter_state(model, state_dict, out, adapter)
    weights_path = out / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        raise RuntimeError(f"PEFT wrote no {ADAPTER_WEIGHTS} in {out}")
    if dtype is not None or metadata:
        from safetensors.torch import load_file, save_file

        weights = load_file(str(weights_path))
        if dtype is not None:
            weights = {k: v.to(dtype).contiguous() for k, v in weights.items()}
        save_file(weights, str(weights_path), metadata={"format": "pt", **(metadata or {})})
    if not model_card:
        (out / "README.md").unlink(missing_ok=True)


def _save_adapter_state(model, state_dict: dict[str, Any], out_dir: Path, adapter: str) -> None:
    """The adapter of an explicit state dict, written as ``PeftModel.save_pretrained`` would."""
    from safetensors.torch import save_file

    marker = f".{adapter}."
    weights = {
        k.replace(marker, ".", 1) if ".lora_" in k else k: v.detach().contiguous()
        for k, v in state_dict.items()
        if ".lora_" in k and marker in k
    }
    if not weights:
        raise ValueError(f"no LoRA weights of adapter {adapter!r} in the state dict")
    save_file(weights, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    # The config as PeftModel.save_pretrained writes it: marked for inference, with the base
    # class recorded for AutoPeftModel.
    config = model.peft_config[adapter]
    auto_mapping = None
    if config.task_type is None:
        base_class = type(model.get_base_model())
        auto_mapping = {
            "base_model_class": base_class.__name__,
            "parent_library": base_class.__module__,
        }
    training_mode, config.inference_mode = config.inference_mode, True
    try:
        config.save_pretrained(str(out_dir), auto_mapping_dict=auto_mapping)
    finally:
        config.inference_mode = training_mode
    model.create_or_update_model_card(str(out_dir))


def artifact_info(*, kind: str, base_model: str, parent: str | None) -> dict[str, Any]:
    """The ``lavic.json`` record of an artefact."""
    from lavic import __version__

    return {
        "kind": kind,
        "base_model": base_model,
        "parent": parent,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "lavic_version": __version__,
    }


def write_artifact(
    out_dir: str | os.PathLike[str],
    *,
    kind: str,
    model,
    backbone,
    config: Any,
    metrics: dict[str, Any],
    base_model: str,
    parent: str | os.PathLike[str] | None = None,
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """Write a self-describing artefact directory atomically.

    Args:
        out_dir: The artefact directory (created or replaced).
        kind: ``"distill"`` or ``"tune"``.
        model: A ``peft.PeftModel``; its adapter is saved as safetensors (embedding layers are
            not saved: the item-token rows are re-created deterministically at every load).
        backbone: The :class:`lavic.model.backbone.Backbone` whose tokenizer and processor
            are saved beside the adapter.
        config: The resolved command config (a dataclass), saved as ``config.yaml``.
        metrics: Saved as ``metrics.json``.
        base_model: The model the adapter (lineage) applies to: what ``--model_name`` named.
        parent: The artefact this one was trained on top of (stage 2: the distill artefact),
            stored relative to ``out_dir``; None for the first stage.
        state_dict: The adapter weights, named as in ``model.state_dict()``, when the live
            model cannot give them whole (sharded by FSDP); default: read from ``model``.

    Returns:
        ``out_dir`` as a Path.
    """
    out = Path(out_dir)
    with atomic_directory(out) as tmp:
        save_adapter(model, tmp, state_dict=state_dict)
        backbone.save_preprocessing(tmp)
        save_config(config, tmp / CONFIG_FILE)
        write_metrics(tmp, metrics)
        rel_parent = _relative_parent(parent, out) if parent is not None else None
        atomic_write_json(
            tmp / ARTIFACT_FILE, artifact_info(kind=kind, base_model=base_model, parent=rel_parent)
        )
    log.info("wrote %s artefact %s", kind, out)
    return out


def read_artifact_info(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``lavic.json`` of an artefact directory, or None if ``path`` is not one.

    Raises:
        LavicError: if the file is there but unreadable or lacks ``kind`` / ``base_model``.
    """
    info_path = Path(path) / ARTIFACT_FILE
    if not info_path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LavicError(f"{info_path}: unreadable artefact description ({exc})") from None
    if not isinstance(info, dict) or "base_model" not in info or "kind" not in info:
        raise LavicError(f"{info_path}: must be an object with 'kind' and 'base_model'")
    for key, optional in (("kind", False), ("base_model", False), ("parent", True)):
        value = info.get(key)
        if not (isinstance(value, str) and value) and not (optional and value is None):
            raise LavicError(f"{info_path}: {key!r} must be a non-empty string, got {value!r}")
    return info


def artifact_lineage(artifact_dir: str | os.PathLike[str]) -> list[tuple[Path, dict[str, Any]]]:
    """``[(directory, lavic.json)]`` from ``artifact_dir`` up to its root artefact.

    The root's ``base_model`` is what the whole chain applies to; a relative ``parent`` is
    resolved against the directory that names it.

    Raises:
        LavicError: if ``artifact_dir`` is not an artefact, a parent is missing, or the chain
            loops.
    """
    first = Path(artifact_dir)
    info = read_artifact_info(first)
    if info is None:
        raise LavicError(f"{first}: not a LaViC artefact (no {ARTIFACT_FILE})")
    lineage = [(first, info)]
    seen = {first.resolve()}
    while info.get("parent"):
        parent = Path(info["parent"])
        if not parent.is_absolute():
            parent = (lineage[-1][0] / parent).resolve()
        if parent.resolve() in seen:  # a parent chain that loops would never end
            raise LavicError(f"{lineage[-1][0]}: parent artefact {parent} makes a cycle")
        seen.add(parent.resolve())
        info = read_artifact_info(parent)
        if info is None:
            raise LavicError(f"{lineage[-1][0]}: parent artefact {parent} is missing")
        lineage.append((parent, info))
    return lineage


def read_metrics(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``metrics.json`` of ``folder`` (an artefact, a run or an evaluation folder), or None
    if it has none.

    Raises:
        LavicError: if the file is there but unreadable or not a JSON object.
    """
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LavicError(f"{path}: unreadable metrics ({exc})") from None
    if not isinstance(data, dict):
        raise LavicError(f"{path}: must be a JSON object, got {type(data).__name__}")
    return data


def write_metrics(folder: str | os.PathLike[str], metrics: dict[str, Any]) -> Path:
    """Write ``folder/metrics.json`` atomically (the folder is created if needed); returns its
    path."""
    path = Path(folder) / METRICS_FILE
    atomic_write_json(path, metrics)
    return path


def read_config(folder: str | os.PathLike[str], *, parent: bool = False) -> dict[str, Any]:
    """The resolved command config saved in ``folder`` (``config.yaml``), as a mapping.

    Only settings a reader can do without are looked up this way (the prompt settings a served
    model was tuned with, a summary's hyperparameter columns): a missing file or one holding
    no mapping gives ``{}``, and an unreadable one is skipped with a warning.

    Args:
        folder: the artefact directory.
        parent: also read the parent folder's ``config.yaml`` (a run folder around the
            artefact) for the keys ``folder``'s lacks.
    """
    folders = [Path(folder)] + ([Path(folder).parent] if parent else [])
    found: dict[str, Any] = {}
    for where in folders:
        path = where / CONFIG_FILE
        if not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            log.warning("%s: unreadable (%s); its settings are not used", path, exc)
            continue
        if isinstance(data, dict):
            found = {**data, **found}
    return found


__all__ = [
    "ARTIFACT_FILE",
    "TUNED_ADAPTER_DIR",
    "artifact_lineage",
    "read_artifact_info",
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "CONFIG_FILE",
    "METRICS_FILE",
    "artifact_info",
    "read_config",
    "read_metrics",
    "save_adapter",
    "write_artifact",
    "write_metrics",
]
