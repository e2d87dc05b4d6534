"""Self-describing artefact directories: what one stage hands to the next.

An artefact directory holds everything needed to rebuild the trained model from it alone:

* ``adapter_config.json`` + ``adapter_model.safetensors``: the PEFT adapter;
* the tokenizer (with the five item tokens) and the processor, so the next stage never
  re-creates the special tokens by copy;
* ``config.yaml``: the resolved command config (loadable again with ``--config``);
* ``metrics.json``: what the run measured;
* ``lavic.json``: ``{"kind", "base_model", "parent", "created", "lavic_version"}``, read by
  :func:`lavic.model.backbone.load_backbone` to rebuild base + adapters.

This module is the one place that knows that layout: the writer (:func:`write_artifact`), the
reader of ``lavic.json`` (:func:`read_artifact_info`), the walk up an artefact's lineage
(:func:`artifact_lineage`, used by the loader and by the item-token cache's fingerprint) and
the folder names the stages write (:data:`TUNED_ADAPTER_DIR`).

The directory is written under a temporary name beside its destination and renamed into
place, so a reader never sees a half-written artefact. Replacing an existing artefact is one
atomic exchange of the two folders (Linux ``renameat2(RENAME_EXCHANGE)``): the path always holds
the old artefact or the new one, and a kill at any point leaves one of them in place.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lavic.config import save_config
from lavic.errors import LavicError
from lavic.io import apply_umask, atomic_write_json, fsync_directory

log = logging.getLogger(__name__)

ARTIFACT_FILE = "lavic.json"  # marks a LaViC artefact directory; records how to rebuild it
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
# Where `lavic tune` puts its artefact inside FINETUNE_OUTPUT_DIR (the seed's name).
TUNED_ADAPTER_DIR = "trained_lora_adapter"


def _relative_parent(parent: str | os.PathLike[str], out_dir: Path) -> str:
    # Stored relative to the artefact, so a run directory moved as a whole keeps its lineage
    # (load_backbone resolves a relative parent against the artefact directory).
    return os.path.relpath(Path(parent).resolve(), out_dir.resolve())


RENAME_EXCHANGE = 2  # linux/fs.h: swap two existing paths atomically


def _exchange(a: Path, b: Path) -> bool:
    """Swap the folders ``a`` and ``b`` in one atomic step; False where the platform or the
    filesystem cannot (then the caller falls back to two renames)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # not Linux / glibc < 2.28
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # e.g. a filesystem without it
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def atomic_directory(out_dir: str | os.PathLike[str]):
    """Yield a fresh temporary directory beside ``out_dir``; on success it becomes ``out_dir``.

    If ``out_dir`` exists the two folders are exchanged in one atomic step and the old one is
    then deleted; where the filesystem cannot exchange, the old one is moved aside first (two
    renames: for an instant the path is absent, never partial). The folder gets the mode the
    umask gives. On an exception the temporary directory is removed and ``out_dir`` is left as
    it was.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        apply_umask(tmp, directory=True)
        yield tmp
        if out.exists() and _exchange(tmp, out):
            fsync_directory(out.parent)
            shutil.rmtree(tmp, ignore_errors=True)  # now the old artefact
            return
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.rmdir(old)
            os.replace(out, old)
        os.replace(tmp, out)
        fsync_directory(out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_adapter(model, state_dict: dict[str, Any], out_dir: Path, adapter: str = "default"):
    """Write a PEFT adapter (config + safetensors) from an explicit state dict.

    PEFT's own ``save_pretrained(state_dict=...)`` picks the adapter's entries by the live
    module names, which under FSDP carry wrapper segments and so miss every wrapped block;
    the keys here are taken as given and converted the way PEFT converts them (the adapter
    name dropped: ``...lora_A.default.weight`` -> ``...lora_A.weight``).
    """
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
        if state_dict is None:
            model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)
        else:
            save_adapter(model, state_dict, tmp)
        if not (tmp / ADAPTER_WEIGHTS).is_file():
            raise RuntimeError(f"PEFT wrote no {ADAPTER_WEIGHTS} in {tmp}")
        backbone.save_preprocessing(tmp)
        save_config(config, tmp / CONFIG_FILE)
        atomic_write_json(tmp / METRICS_FILE, metrics)
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


def read_metrics(artifact_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``metrics.json`` of an artefact directory, or None if it has none."""
    path = Path(artifact_dir) / METRICS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


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
    "atomic_directory",
    "read_metrics",
    "save_adapter",
    "write_artifact",
]
