"""Fixtures for stage 2: a tiny synthetic catalogue and a tiny-random stage-1 artefact."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_artefacts import write_stage1_artifact

from .fixtures import write_catalogue


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory) -> dict[str, Path]:
    return write_catalogue(tmp_path_factory.mktemp("catalogue"))


@pytest.fixture(scope="session")
def stage1(tmp_path_factory) -> Path:
    return write_stage1_artifact(tmp_path_factory.mktemp("distill") / "vision_lora_adapter_best")
