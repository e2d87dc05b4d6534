"""The one LoRA module: each stage's parts named once, its targets and its trainable check
derived from those names."""

from __future__ import annotations

from lavic.model.lora import (
    LANGUAGE_MODULES,
    VISION_MODULES,
    add_language_lora,
    add_lora,
    add_vision_lora,
    language_lora_targets,
    module_segments,
    vision_lora_targets,
)
from lavic.model.tiny_random import build_tiny_random


def _trainable(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def test_the_stages_targets_lie_under_their_named_parts_and_do_not_overlap():
    model = build_tiny_random().model
    vision, language = vision_lora_targets(model), language_lora_targets(model)
    assert vision and language and not set(vision) & set(language)
    for targets, modules in ((vision, VISION_MODULES), (language, LANGUAGE_MODULES)):
        assert all(t.startswith(tuple(f"model.{m}." for m in modules)) for t in targets)
    assert {t.split(".")[1] for t in vision} == set(VISION_MODULES)  # every part is adapted
    assert module_segments(VISION_MODULES) == (".vision_tower.", ".multi_modal_projector.")


def test_each_stage_trains_only_its_parts():
    vision = add_vision_lora(build_tiny_random().model, r=2, alpha=4, dropout=0.0)
    language = add_language_lora(build_tiny_random().model, r=2, alpha=4, dropout=0.0)
    for model, modules in ((vision, VISION_MODULES), (language, LANGUAGE_MODULES)):
        names = _trainable(model)
        assert names and all("lora_" in n for n in names)
        assert all(any(s in n for s in module_segments(modules)) for n in names)


def test_a_peft_regex_target_is_taken_whole():
    """``tiny``'s instruction LoRA names its layers by a regex: it is one pattern, not a list
    of its characters."""
    model = add_lora(
        build_tiny_random().model,
        r".*language_model\.layers\.0\.self_attn\.q_proj",
        r=2,
        alpha=4,
        dropout=0.0,
        trainable_under=module_segments(LANGUAGE_MODULES),
    )
    names = _trainable(model)
    assert names and all(".layers.0.self_attn.q_proj.lora_" in n for n in names)
