"""The evaluation's files: the reference's results JSONL, the summary CSV and ``metrics.json``.

* ``<split>_results_<candidate_type>.jsonl``: each conversation's original JSON fields plus
  ``recommended_<key>`` and ``response_<key>`` (``key`` = candidate type without
  ``candidates_``), as the reference writes them, and ``ranking_<key>`` / ``scores_<key>`` when the
  decoding ranks every candidate;
* ``results_summary.csv``: one row appended per evaluation (:data:`SUMMARY_COLUMNS`, the reference's
  columns first);
* ``metrics.json``: each evaluation under ``evaluation.<split>_<candidate_type>``, the rest of
  the file (a training run's metrics) kept.

Every file is replaced atomically.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lavic.artifacts import read_config, read_metrics, write_metrics
from lavic.data.records import CANDIDATES_PREFIX, Conversation
from lavic.errors import LavicError
from lavic.io import atomic_open
from lavic.model.decoding import Decoded

logger = logging.getLogger(__name__)

SUMMARY_FILE = "results_summary.csv"
# The reference's columns first, in its order; then ours.
REFERENCE_SUMMARY_COLUMNS: tuple[str, ...] = (
    "model_dir",
    "candidate_type",
    "lr",
    "weight_decay",
    "num_epochs",
    "recall@1",
    "validity@1",
    "output_file",
)
SUMMARY_COLUMNS: tuple[str, ...] = REFERENCE_SUMMARY_COLUMNS + (
    "recall@1_ceiling",
    "mrr",
    "hr@5",
    "decoding",
    "no_images",
    "split",
    "category",
    "num_conversations",
    "timestamp",
)
# Training hyperparameters of the summary row (the reference's columns), from the run or its config.
HYPERPARAMETERS: tuple[str, ...] = ("lr", "weight_decay", "num_epochs")


def answer_key(candidate_type: str) -> str:
    """``candidates_st`` -> ``st`` (the reference's suffix of ``recommended_`` / ``response_``)."""
    return candidate_type.removeprefix(CANDIDATES_PREFIX)


def results_file_name(split: str, candidate_type: str) -> str:
    return f"{split}_results_{candidate_type}.jsonl"


def write_results(
    path: Path,
    conversations: Sequence[Conversation],
    decoded: Sequence[Decoded],
    candidate_type: str,
) -> None:
    """The reference's results file: each original record + ``recommended_<key>``,
    ``response_<key>`` (+ ``ranking_<key>``, ``scores_<key>`` when ranked)."""
    key = answer_key(candidate_type)
    with atomic_open(path, "w", encoding="utf-8") as handle:
        for conv, d in zip(conversations, decoded, strict=True):
            entry = dict(conv.raw)
            entry[f"recommended_{key}"] = d.recommended
            entry[f"response_{key}"] = d.response
            if d.ranking is not None:
                entry[f"ranking_{key}"] = d.ranking
                entry[f"scores_{key}"] = d.scores
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")


def training_hyperparameters(artefact: Path, train_info: dict | None) -> dict[str, Any]:
    """``lr``, ``weight_decay``, ``num_epochs`` from ``train_info``, else from the artefact's
    (or its parent folder's) ``config.yaml``; blank when unknown."""
    keys = HYPERPARAMETERS
    found: dict[str, Any] = {}
    if train_info:
        found.update({k: train_info[k] for k in keys if k in train_info})
    if len(found) < len(keys):
        config = read_config(artefact, parent=True)
        found.update({k: config[k] for k in keys if k in config and k not in found})
    return {k: found.get(k, "") for k in keys}


def append_summary(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the CSV (header once). An existing file keeps its own columns."""
    existing = path.read_text(encoding="utf-8") if path.is_file() else ""
    columns = list(SUMMARY_COLUMNS)
    if existing.strip():
        header = next(csv.reader(io.StringIO(existing)), None)
        if header and header != columns:
            logger.warning(
                "%s has other columns than this version writes; keeping its header", path
            )
            columns = header
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    if not existing.strip():
        writer.writeheader()
    elif not existing.endswith("\n"):
        buffer.write("\n")
    writer.writerow({c: row.get(c, "") for c in columns})
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(existing + buffer.getvalue())


def update_metrics_file(folder: Path, name: str, metrics: dict[str, Any]) -> None:
    """Store ``metrics`` under ``evaluation.<name>`` of ``folder``'s ``metrics.json``, keeping
    the rest."""
    try:
        data = read_metrics(folder) or {}
    except LavicError as exc:
        logger.warning("%s; rewriting it", exc)
        data = {}
    evaluation = data.get("evaluation")
    if not isinstance(evaluation, dict):
        evaluation = {}
    evaluation[name] = metrics
    data["evaluation"] = evaluation
    write_metrics(folder, data)


def summary_row(metrics: dict[str, Any], hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The summary CSV's row of an evaluation: its metrics under :data:`SUMMARY_COLUMNS`."""
    row = {c: metrics[c] for c in SUMMARY_COLUMNS if c in metrics}
    row.update({k: hyperparameters.get(k, "") for k in HYPERPARAMETERS})
    return row


__all__ = [
    "HYPERPARAMETERS",
    "REFERENCE_SUMMARY_COLUMNS",
    "SUMMARY_COLUMNS",
    "SUMMARY_FILE",
    "answer_key",
    "append_summary",
    "results_file_name",
    "summary_row",
    "training_hyperparameters",
    "update_metrics_file",
    "write_results",
]
