"""The stand-in's instruction skill (LM candidate selection from text) and the item-token warm
start, on the from-config ``tiny-random`` model: data, training, resume, save and merge."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from lavic.errors import LavicError
from lavic.model.item_tokens import encode_item_tokens, pixel_views
from lavic.model.tiny import merge_lm_adapter
from lavic.model.tiny_random import build_tiny_random
from lavic.pretrain import instruct as ins
from lavic.pretrain.captions import CaptionSample
from lavic.pretrain.vision import (
    ItemTokenConfig,
    _patch_tokens,
    look_pictures,
    warm_start_item_tokens,
)


def test_curriculum_is_parsed_and_checked():
    assert ins.parse_curriculum("2:400:line,4:300:line+title,10:800") == [
        (2, 400, ("line",)),
        (4, 300, ("line", "title")),
        (10, 800, None),
    ]
    for bad in ("2", "1:10", "2:0", "a:b", "2:5:poem", "2:5:line:x"):
        with pytest.raises(LavicError, match="curriculum stage"):
            ins.parse_curriculum(bad)


def test_an_unknown_learning_rate_schedule_is_refused():
    # (the schedule itself is the training core's: tests/training/test_schedule.py)
    with pytest.raises(LavicError, match="lr_schedule"):
        ins.instruct(None, ins.InstructConfig(lr_schedule="linear"), work_dir=None)


def test_selection_samples_hold_the_answer_and_the_look_in_words():
    rows = ins.selection_samples(1100, "train", 30, 4, ins.LOOK_FORMATS)
    assert len(rows) == 30
    assert rows == ins.selection_samples(1100, "train", 30, 4, ins.LOOK_FORMATS)  # deterministic
    formats_seen = set()
    for r in rows:
        ids = [i for i, _ in r.candidates]
        assert len(ids) == 4 and r.target in ids
        texts = [t for _, t in r.candidates]
        formats_seen.add("\n" in texts[0])
        # candidates differ in their look, and the text says it
        assert len(set(texts)) == 4
    assert formats_seen == {True, False}  # both "own line" and "in the title" formats occur
    with pytest.raises(LavicError, match=">= 1000"):
        ins.selection_samples(7, "train", 5, 2, ins.LOOK_FORMATS)


def test_look_text_formats():
    plan_item = ins.plan_catalogue(seed=1100, num_train=2, num_valid=2, num_test=2)
    item = next(iter(plan_item.items.values()))
    c, p = item.look.colour.word, item.look.pattern
    assert ins.look_text(item, "line") == f"{item.title}\n{c} {p}"
    assert ins.look_text(item, "title") == f"{item.title}, {c} {p}"
    assert ins.look_text(item, "description").startswith(item.title + "\n")
    with pytest.raises(LavicError, match="unknown look format"):
        ins.look_text(item, "poem")


def _tiny_config(**kw):
    base = dict(
        curriculum="2:8,3:4",
        batch_size=4,
        rank=4,
        alpha=8,
        lr=1e-2,
        warmup_samples=4,
        eval_every=8,
        eval_conversations=4,
        checkpoint_every_n_steps=1,
        eval_candidates=3,
        max_length=4096,  # tiny-random's tokenizer spells text in many small pieces
        describe_weight=0.0,
    )
    base.update(kw)
    return ins.InstructConfig(**base)


def test_instruct_trains_only_the_lm_lora_checkpoints_and_resumes(tmp_path):
    b = build_tiny_random(seed=3)
    vision_before = {k: v.clone() for k, v in b.model.model.vision_tower.state_dict().items()}
    config = _tiny_config()
    model, record = ins.instruct(b, config, work_dir=tmp_path / "w")
    curve = record["curve"]
    assert [c["samples"] for c in curve] == [0, 8, 12]
    assert all(0.0 <= c["accuracy"] <= 1.0 for c in curve)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    after = model.base_model.model.model.vision_tower.state_dict()
    assert all(torch.equal(vision_before[k], after[k]) for k in vision_before)
    # the training core's checkpoint, with the stage's own state (the curve, the samples seen)
    ckpt = torch.load(tmp_path / "w" / "checkpoints" / "last.ckpt", weights_only=False)
    state = ckpt["lavic"]
    assert state["seen"] == 12 and state["curve"] == curve
    assert all("lora_" in k for k in ckpt["state_dict"])
    # the training time goes on from the checkpoint's, not from the last measurement's
    assert state["train_s"] == pytest.approx(curve[-1]["train_s"], abs=0.05)
    assert state["train_s"] > 0
    # resume from the finished checkpoint: nothing left to train, the same curve comes back
    b2 = build_tiny_random(seed=3)
    model2, record2 = ins.instruct(b2, config, work_dir=tmp_path / "w", resume=True)
    assert record2["curve"] == curve
    lora1 = {n: p for n, p in model.named_parameters() if "lora_" in n}
    lora2 = dict(model2.named_parameters())
    assert all(torch.allclose(p, lora2[n]) for n, p in lora1.items())


def test_an_interrupted_run_resumes_to_the_uninterrupted_runs_adapter_and_curve(
    tmp_path, monkeypatch
):
    """The training core's step checkpoints: a run that dies mid-curriculum (after its second
    step) and is resumed ends with the same LoRA and curve as a run never stopped."""
    config = _tiny_config()
    whole, record = ins.instruct(build_tiny_random(seed=3), config, work_dir=tmp_path / "whole")
    after_step = ins.InstructModule.after_step

    def stop_at_second_step(self, rows, seconds):
        after_step(self, rows, seconds)
        if self.seen == 8:
            raise RuntimeError("power cut")

    monkeypatch.setattr(ins.InstructModule, "after_step", stop_at_second_step)
    with pytest.raises(RuntimeError, match="power cut"):
        ins.instruct(build_tiny_random(seed=3), config, work_dir=tmp_path / "cut")
    monkeypatch.setattr(ins.InstructModule, "after_step", after_step)
    resumed, record2 = ins.instruct(
        build_tiny_random(seed=3), config, work_dir=tmp_path / "cut", resume=True
    )
    lora = {n: p for n, p in resumed.named_parameters() if "lora_" in n}
    assert lora and all(
        torch.allclose(p, lora[n]) for n, p in whole.named_parameters() if n in lora
    )
    strip = [{k: v for k, v in c.items() if k != "train_s"} for c in record["curve"]]
    assert [{k: v for k, v in c.items() if k != "train_s"} for c in record2["curve"]] == strip


def test_saved_adapter_merges_into_the_same_model(tmp_path):
    """Oracle: the fp16 adapter merged at load gives the logits of the trained LoRA model
    (up to the fp16 rounding of the LoRA weights)."""
    b = build_tiny_random(seed=4)
    model, _ = ins.instruct(
        b, _tiny_config(curriculum="2:4", eval_every=100), work_dir=tmp_path / "w"
    )
    ins.write_lm_adapter(model, tmp_path / "adapter")
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    ids = b.tokenizer("a red mug, please. Assistant:", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = model(input_ids=ids).logits
        fresh = build_tiny_random(seed=4)
        merged = merge_lm_adapter(fresh.model, tmp_path / "adapter")
        got = merged(input_ids=ids).logits
        base = build_tiny_random(seed=4).model(input_ids=ids).logits
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert torch.allclose(got, want, atol=2e-3)
    assert not torch.allclose(base, want, atol=2e-3)  # the adapter did change the model


def test_merge_refuses_an_adapter_outside_the_language_model(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"target_modules": ["fc1"]}))
    with pytest.raises(LavicError, match="language model only"):
        merge_lm_adapter(build_tiny_random().model, tmp_path)


def _look_samples():
    out = []
    # words whose first tokens differ in tiny-random's tokenizer (" red" and " stripes" share one)
    for rgb, colour in (((30, 30, 200), "blue"), ((30, 160, 40), "green")):
        for stripes, pattern in ((False, "plain"), (True, "stripes")):
            image = Image.new("RGB", (64, 64), rgb)
            if stripes:
                for y in range(0, 64, 8):
                    image.paste((240, 240, 240), (0, y, 64, y + 3))
            out.append(
                CaptionSample(image, "Acme mug", f"a {colour} mug, {pattern}", (colour, pattern))
            )
    return out


def test_item_token_warm_start_moves_the_cls_path_and_keeps_the_patch_path(tmp_path):
    b = build_tiny_random(seed=5)
    samples = _look_samples()
    views = pixel_views(b.processor.image_processor, [s.image for s in samples])
    with torch.no_grad():
        patches_before = _patch_tokens(b.model, views[:, 0])
        before = encode_item_tokens(b.model, views)
    lower = {
        k: v.clone()
        for k, v in b.model.model.vision_tower.state_dict().items()
        if ".layers." in k
        and f".layers.{b.model.config.vision_config.num_hidden_layers - 1}." not in k
    }
    record = warm_start_item_tokens(
        b,
        look_pictures(samples),
        ItemTokenConfig(steps=150, batch_size=4, lr=3e-2, warmup_fraction=0.05),
        work_dir=tmp_path,
    )
    assert record["loss_last20"] < 0.5 * record["loss_first20"]
    # the item tokens move towards their look words (nearest-word accuracy over the table;
    # on tiny-random's 32-pixel views some crops of a striped and a plain image are the same)
    assert record["word_accuracy_last20"] >= record["word_accuracy_first20"] + 0.1
    with torch.no_grad():
        after = encode_item_tokens(b.model, views)
        patches_after = _patch_tokens(b.model, views[:, 0])
    assert not torch.allclose(before, after)
    # the teacher path barely moves; the layers below the last one do not move at all
    drift = (patches_after - patches_before).pow(2).mean() / patches_before.pow(2).mean()
    assert drift < 0.05
    state = b.model.model.vision_tower.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in lower.items())
    assert not any(p.requires_grad for p in b.model.parameters())


def test_describing_is_trained_beside_the_selection_and_measured(tmp_path):
    """The instruction LoRA must not forget to describe (issue 11: the teacher's perplexity rose
    6x without this): with describe_weight the teacher path's descriptions are trained each step,
    their held-out NLL is on the curve, and the batches are a function of the step (resume)."""
    b = build_tiny_random(seed=3)
    captions = _look_samples()
    with pytest.raises(LavicError, match="describe_weight"):
        ins.instruct(b, _tiny_config(describe_weight=1.0), work_dir=tmp_path / "none")
    config = _tiny_config(describe_weight=1.0, describe_batch_size=2)
    model, record = ins.instruct(
        b, config, work_dir=tmp_path / "w", captions=captions, held_captions=captions
    )
    curve = record["curve"]
    assert all("describe_nll" in c for c in curve)
    assert curve[-1]["describe_nll"] < curve[0]["describe_nll"]
    assert "describe_loss" in curve[-1]
    retention = ins.DescribeRetention(b, captions, captions, config)
    with torch.no_grad():
        assert torch.equal(retention.loss(3), retention.loss(3))
        assert not torch.equal(retention.loss(0), retention.loss(1))


def test_broad_format_mixes_in_the_phrasing_generators_conversations():
    rows = ins.mixed_samples(1100, "train", 12, 4, ["line", "broad", "broad"])
    assert len(rows) == 12
    catalogue = ins.selection_samples(1100, "train", 4, 4, ["line"])
    # a third from the synthetic catalogue (the same draws as without the broad share) ...
    assert sum(r in catalogue for r in rows) == 4
    # ... the rest from lavic.pretrain.phrasing, all answerable
    assert all(r.target in dict(r.candidates) and len(r.candidates) == 4 for r in rows)
    held = ins.mixed_samples(1100, "test", 4, 4, ["broad"])
    assert not set(held) & set(rows)  # the test split is another stream
    assert ins.parse_curriculum("10:8:line+broad") == [(10, 8, ("line", "broad"))]


def test_instruct_continues_from_a_saved_adapter_in_bf16_and_measures_the_broad_share(tmp_path):
    b = build_tiny_random(seed=4)
    model, _ = ins.instruct(
        b, _tiny_config(curriculum="2:4", eval_every=100), work_dir=tmp_path / "w"
    )
    ins.write_lm_adapter(model, tmp_path / "adapter")
    b2 = build_tiny_random(seed=4)
    config = _tiny_config(
        curriculum="2:4:broad",
        eval_every=100,
        lr=0.0,  # nothing moves: the start is the saved adapter, exactly (up to fp16)
        init_adapter=str(tmp_path / "adapter"),
        precision="bf16-mixed",
    )
    model2, record = ins.instruct(b2, config, work_dir=tmp_path / "w2")
    lora1 = {n: p for n, p in model.named_parameters() if "lora_" in n}
    lora2 = dict(model2.named_parameters())
    assert lora1 and all(torch.allclose(p, lora2[n], atol=1e-3) for n, p in lora1.items())
    assert {"accuracy", "broad_accuracy"} <= set(record["curve"][0])
    with pytest.raises(LavicError, match="does not fit this LoRA"):
        ins.instruct(
            build_tiny_random(seed=4),
            _tiny_config(curriculum="2:4", rank=2, alpha=4, init_adapter=str(tmp_path / "adapter")),
            work_dir=tmp_path / "w3",
        )
    with pytest.raises(LavicError, match="precision"):
        ins.instruct(b2, _tiny_config(precision="fp8"), work_dir=tmp_path / "w4")
