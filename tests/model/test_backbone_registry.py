"""The backbone registry: every family registers a loader under its name and load_backbone
only dispatches; a new VLM family plugs in the same way (docs/architecture.md)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lavic.artifacts import ARTIFACT_FILE
from lavic.errors import LavicError
from lavic.model import backbone as bb
from lavic.model.backbone import BACKBONES, Backbone, load_backbone, register_backbone
from lavic.model.llava_next import load_llava_next
from lavic.model.tiny_random import build_tiny_random
from lora_artefacts import write_stage1_artifact


def test_every_family_is_registered_on_import():
    assert {"llava-next", "tiny", "tiny-random"} <= set(BACKBONES)
    assert BACKBONES["llava-next"] is load_llava_next
    assert bb._DEFAULT == ["llava-next"]  # the family of every name nobody registered


@pytest.fixture
def fake_vlm():
    """A made-up family "fake-vlm": its loader returns any Backbone (tiny-random's here)."""
    calls = []

    def load_fake(name: str, dtype: torch.dtype | None) -> Backbone:
        calls.append((name, dtype))
        backbone = build_tiny_random()  # any Backbone: load_backbone records the name
        if dtype is not None:
            backbone.model.to(dtype)
        return backbone

    register_backbone("fake-vlm", load_fake)
    try:
        yield calls
    finally:
        del BACKBONES["fake-vlm"]


def test_a_registered_name_loads_through_load_backbone(fake_vlm, tmp_path):
    loaded = load_backbone("fake-vlm", dtype=torch.float64)
    assert fake_vlm == [("fake-vlm", torch.float64)]
    assert loaded.name == loaded.base_model == "fake-vlm"
    assert next(loaded.model.parameters()).dtype == torch.float64
    # An artefact whose lineage starts at the new name is rebuilt from the same loader, its
    # adapter applied: the same model as the artefact of the backbone the fake one returns.
    artefact = write_stage1_artifact(tmp_path / "stage1")
    info = json.loads((artefact / ARTIFACT_FILE).read_text())
    moved = tmp_path / "on-fake"
    shutil.copytree(artefact, moved)
    (moved / ARTIFACT_FILE).write_text(json.dumps({**info, "base_model": "fake-vlm"}))
    rebuilt = load_backbone(moved)
    assert fake_vlm[-1] == ("fake-vlm", None) and rebuilt.base_model == "fake-vlm"
    want = load_backbone(artefact).model.state_dict()
    got = rebuilt.model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_any_other_name_goes_to_the_default_family(monkeypatch, tmp_path):
    seen = []

    def fake_default(name, dtype):
        seen.append(name)
        return build_tiny_random()

    monkeypatch.setitem(BACKBONES, "llava-next", fake_default)
    folder = str(tmp_path / "some-checkpoint")
    assert load_backbone(folder).base_model == folder and seen == [folder]
    with pytest.raises(LavicError, match="cannot load LLaVA-NeXT checkpoint.*`tiny-random`"):
        load_llava_next(str(tmp_path / "nothing-here"))
