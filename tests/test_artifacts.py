"""The one artefact module: lavic.json read and written in one place, and the one lineage walk
that the loader and the item-token cache's fingerprint both use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lavic.artifacts import (
    ARTIFACT_FILE,
    artifact_info,
    artifact_lineage,
    read_artifact_info,
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
