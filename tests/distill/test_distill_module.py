"""Stage-1 pieces on tiny-random: which parameters train, the loss against the model's own
loss, student/teacher batches, the sampler, and the artefact round trip with equal logits."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from PIL import Image
from torch import nn

from lavic.artifacts import write_artifact
from lavic.constants import IGNORE_INDEX, ITEM_TOKENS, ITEM_TOKENS_TEXT
from lavic.data.records import DescribedImage
from lavic.distill import module as dm
from lavic.distill.train import Args
from lavic.model.backbone import load_backbone, unwrap
from lavic.model.item_tokens import encode_item_tokens, insert_item_tokens
from lavic.model.lora import add_vision_lora, vision_lora_targets
from lavic.model.tiny_random import build_tiny_random
from lavic.training import sampler as sm
from lavic.training.module import clean_param_name
from lora_artefacts import randomise_lora_b

R, ALPHA = 4, 8


def _sample(i: int, title: str, description: str) -> dict:
    colour = [(220, 30, 30), (30, 30, 220), (30, 200, 30)][i % 3]
    return {
        "sample": DescribedImage(f"B{i:09d}", title, f"B{i:09d}_0.jpg", description),
        "image": Image.new("RGB", (40 + 8 * i, 30 + 12 * i), colour),
        "outcome": "loaded",
        "key": f"val/B{i:09d}_0.jpg",
    }


ITEMS = [
    _sample(0, "red mug", "a plain red mug with a handle"),
    _sample(1, "blue striped hoodie for the cold", "a blue hoodie"),
    _sample(2, "lamp", "a green lamp with a white striped shade and a black base"),
]


@pytest.fixture
def wrapped():
    backbone = build_tiny_random()
    targets = vision_lora_targets(backbone.model)
    shapes = {n: m for n, m in unwrap(backbone.model).named_modules() if n in targets}
    peft_model = add_vision_lora(
        backbone.model, r=R, alpha=ALPHA, dropout=0.0, base_model="tiny-random"
    )
    return backbone, peft_model, shapes


def _module(backbone, peft_model):
    return dm.DistillModule(peft_model, backbone.item_token_ids, lr=1e-3, weight_decay=0.0)


# ------------------------------------------------------------------ trainable parameters


def test_only_vision_and_projector_lora_trains_with_the_exact_count(wrapped):
    backbone, peft_model, shapes = wrapped
    assert shapes, "tiny-random has vision/projector linear layers"
    assert all(isinstance(m, nn.Linear) for m in shapes.values())
    assert any(n.startswith("model.multi_modal_projector.") for n in shapes)
    assert any(n.startswith("model.vision_tower.") for n in shapes)
    # Oracle: LoRA adds A (r x in) and B (out x r) to each targeted linear layer.
    expected = sum(R * (m.in_features + m.out_features) for m in shapes.values())
    trainable = {n: p.numel() for n, p in peft_model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == expected
    assert len(trainable) == 2 * len(shapes)
    assert all(("lora_A" in n or "lora_B" in n) for n in trainable)
    assert not any(".language_model." in n or "lm_head" in n for n in trainable)
    # The language model, its embeddings and the head are frozen.
    llava = unwrap(peft_model)
    for p in llava.model.language_model.parameters():
        assert not p.requires_grad
    assert not llava.lm_head.weight.requires_grad
    # The optimizer sees exactly those parameters.
    opt = _module(backbone, peft_model).configure_optimizers()
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == expected


def test_a_training_step_changes_only_lora_weights(wrapped):
    backbone, peft_model, _ = wrapped
    module = _module(backbone, peft_model)
    collate = dm.StudentCollator(backbone.tokenizer, backbone.image_processor, 256)
    batch = collate(ITEMS[:2])
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    opt = module.configure_optimizers()
    nll, count = module.student_nll(batch)
    (nll / count).backward()
    opt.step()
    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)


# ------------------------------------------------------------------ loss


def test_target_nll_matches_the_models_own_loss(wrapped):
    backbone, peft_model, _ = wrapped
    randomise_lora_b(peft_model, seed=0, std=0.5)
    module = _module(backbone, peft_model).eval()
    batch = dm.StudentCollator(backbone.tokenizer, backbone.image_processor, 256)(ITEMS)
    with torch.no_grad():
        nll, count = module.student_nll(batch)
        llava = unwrap(peft_model)
        items = encode_item_tokens(llava, batch["pixel_values"])
        embeds = insert_item_tokens(
            llava.get_input_embeddings()(batch["input_ids"]),
            batch["input_ids"],
            backbone.item_token_ids,
            items,
        )
        out = llava(
            inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
    n_labels = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert int(count) == n_labels
    torch.testing.assert_close(nll / count, out.loss, rtol=1e-5, atol=1e-6)


def test_untrained_lora_equals_the_base_model(wrapped):
    backbone, peft_model, _ = wrapped
    module = _module(backbone, peft_model).eval()
    batch = dm.StudentCollator(backbone.tokenizer, backbone.image_processor, 256)(ITEMS)
    with torch.no_grad():
        wrapped_nll, _ = module.student_nll(batch)
        with peft_model.disable_adapter():
            base_nll, _ = module.student_nll(batch)
    torch.testing.assert_close(wrapped_nll, base_nll)  # LoRA B starts at zero


# ------------------------------------------------------------------ batches


def test_student_and_teacher_score_the_same_target_tokens(wrapped):
    backbone, peft_model, _ = wrapped
    module = _module(backbone, peft_model).eval()
    for max_length in (512, 230):  # 230: the long description is cut for both
        student = dm.StudentCollator(backbone.tokenizer, backbone.image_processor, max_length)
        teacher = dm.TeacherCollator(backbone.processor, backbone.tokenizer, max_length)
        s, t = student(ITEMS), teacher(ITEMS)
        for i in range(len(ITEMS)):
            s_targets = s["labels"][i][s["labels"][i] != IGNORE_INDEX].tolist()
            t_targets = t["labels"][i][t["labels"][i] != IGNORE_INDEX].tolist()
            assert s_targets == t_targets
            # The teacher reads the full image tokens, the student the five item tokens.
            image_id = backbone.model.config.image_token_id
            assert int((t["input_ids"][i] == image_id).sum()) > 5
            assert (
                int(torch.isin(s["input_ids"][i], torch.tensor(backbone.item_token_ids)).sum()) == 5
            )
        if max_length == 230:
            assert s["truncated_targets"] >= 1
        with torch.no_grad():
            _, s_count = module.student_nll(s)
            t_nll, t_count = module.teacher_nll(t)
        assert int(s_count) == int(t_count)
        assert torch.isfinite(t_nll)
    assert s["pixel_values"].shape[:2] == (3, 5)
    assert t["image_sizes"].tolist() == [[im["image"].height, im["image"].width] for im in ITEMS]


def test_text_with_placeholder_strings_cannot_break_the_prompt(wrapped):
    backbone, peft_model, _ = wrapped
    nasty = _sample(0, f"mug {ITEM_TOKENS[0]} <image>", f"desc {ITEM_TOKENS_TEXT} and <image>")
    batch = dm.StudentCollator(backbone.tokenizer, backbone.image_processor, 256)([nasty])
    ids = torch.tensor(backbone.item_token_ids)
    assert int(torch.isin(batch["input_ids"], ids).sum()) == 5
    teacher = dm.TeacherCollator(backbone.processor, backbone.tokenizer, 256)([nasty])
    with torch.no_grad():
        _module(backbone, peft_model).eval().teacher_nll(teacher)


def test_dataset_counts_broken_images_and_gives_the_placeholder(tmp_path):
    (tmp_path / "ok_0.jpg").write_bytes(b"")  # zero bytes: unreadable
    samples = [
        DescribedImage("ok", "t", "ok_0.jpg", "d"),
        DescribedImage("x", "t", "x_0.jpg", "d"),
        DescribedImage("e", "t", "../e_0.jpg", "d"),
    ]
    ds = dm.DescribedImageDataset(samples, tmp_path, "train")
    outcomes = [ds[i]["outcome"] for i in range(3)]
    assert outcomes == ["unreadable", "missing", "unsafe"]
    assert all(ds[i]["image"].size == (336, 336) for i in range(3))


# ------------------------------------------------------------------ sampler


def test_shard_sampler_eval_shards_are_disjoint_and_complete(monkeypatch):
    shards = []
    for rank in range(3):
        monkeypatch.setattr(sm, "_dist_rank_world", lambda rank=rank: (rank, 3))
        shards.append(list(sm.ShardSampler(10, shuffle=False, pad=False)))
    assert sorted(i for s in shards for i in s) == list(range(10))


def test_shard_sampler_train_pads_to_equal_lengths_and_resumes(monkeypatch):
    lengths = []
    for rank in range(3):
        monkeypatch.setattr(sm, "_dist_rank_world", lambda rank=rank: (rank, 3))
        sampler = sm.ShardSampler(10, shuffle=True, pad=True, seed=5)
        lengths.append(len(list(sampler)))
    assert lengths == [4, 4, 4]
    monkeypatch.setattr(sm, "_dist_rank_world", lambda: (0, 1))
    sampler = sm.ShardSampler(10, shuffle=True, pad=True, seed=5)
    sampler.use_epoch(2)
    epoch2 = list(sampler)
    assert sorted(epoch2) == list(range(10))
    sampler.use_epoch(0)
    assert list(sampler) != epoch2
    sampler.resume_at(2, 4)
    assert list(sampler) == epoch2[4:]
    assert len(sampler) == 10  # the epoch's length is unchanged (Lightning counts done batches)
    assert list(sampler) == epoch2  # the skip applied once


def test_shard_sampler_views_give_each_epoch_its_block(monkeypatch):
    monkeypatch.setattr(sm, "_dist_rank_world", lambda: (0, 1))
    plain = sm.ShardSampler(10, shuffle=True, pad=True, seed=5)
    staged = sm.ShardSampler(10, shuffle=True, pad=True, seed=5, views=3)
    for epoch in range(5):
        plain.use_epoch(epoch)
        staged.use_epoch(epoch)
        block = min(epoch, 2) * 10  # the curriculum's stages, then the last view for good
        assert list(staged) == [block + i for i in plain] and len(staged) == 10
    staged.resume_at(1, 4)  # a mid-epoch resume stays in that epoch's block
    plain.use_epoch(1)
    assert list(staged) == [10 + i for i in list(plain)[4:]]
    with pytest.raises(ValueError, match="equal views"):
        sm.make_loader(list(range(7)), list, batch_size=1, num_workers=0, shuffle=True, views=2)


# ------------------------------------------------------------------ artefact round trip


def _student_logits(backbone, model, batch):
    module = dm.DistillModule(model, backbone.item_token_ids, lr=1.0, weight_decay=0.0).eval()
    llava = unwrap(model)
    with torch.no_grad():
        items = encode_item_tokens(llava, batch["pixel_values"])
        embeds = insert_item_tokens(
            llava.get_input_embeddings()(batch["input_ids"]),
            batch["input_ids"],
            module.item_token_ids,
            items,
        )
        return llava(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits


def test_artifact_round_trip_gives_equal_logits(wrapped, tmp_path, tiny_catalogue):
    backbone, peft_model, _ = wrapped
    randomise_lora_b(peft_model, seed=3, std=0.5)
    args = Args(**tiny_catalogue, model_name="tiny-random", lora_r=R, lora_alpha=ALPHA)
    out = write_artifact(
        tmp_path / "runs" / "best",
        kind="distill",
        model=peft_model,
        backbone=backbone,
        config=args,
        metrics={"val_ppl_best": 1.5},
        base_model="tiny-random",
    )
    batch = dm.StudentCollator(backbone.tokenizer, backbone.image_processor, 256)(ITEMS)
    peft_model.eval()
    in_memory = _student_logits(backbone, peft_model, batch)
    with peft_model.disable_adapter():
        base = _student_logits(backbone, peft_model, batch)
    assert not torch.allclose(in_memory, base, atol=1e-3)  # the adapter matters

    names = {p.name for p in out.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "config.yaml",
        "metrics.json",
        "lavic.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
    } <= names
    assert [p.name for p in out.parent.iterdir()] == ["best"]  # no temp dirs left
    info = json.loads((out / "lavic.json").read_text())
    assert info["kind"] == "distill" and info["base_model"] == "tiny-random"
    assert info["parent"] is None and info["lavic_version"] and info["created"]

    # A fresh process-equivalent load: base rebuilt from its name, adapter merged.
    fresh = load_backbone(out)
    assert fresh.tokenizer.convert_tokens_to_ids(list(ITEM_TOKENS)) == backbone.item_token_ids
    torch.testing.assert_close(
        _student_logits(fresh, fresh.model, batch), in_memory, rtol=1e-4, atol=1e-5
    )
    # PEFT's own loader on a fresh base reads it too.
    base_model = build_tiny_random().model
    loaded = PeftModel.from_pretrained(base_model, str(out)).eval()
    torch.testing.assert_close(
        _student_logits(fresh, loaded, batch), in_memory, rtol=1e-4, atol=1e-5
    )


def test_a_failed_write_leaves_the_previous_artifact(
    wrapped, tmp_path, tiny_catalogue, monkeypatch
):
    backbone, peft_model, _ = wrapped
    args = Args(**tiny_catalogue, model_name="tiny-random")
    kwargs = dict(
        kind="distill", model=peft_model, backbone=backbone, config=args, base_model="tiny-random"
    )
    out = write_artifact(tmp_path / "runs" / "best", metrics={"n": 1}, **kwargs)

    def boom(directory):
        raise OSError("disk full")

    monkeypatch.setattr(backbone, "save_preprocessing", boom)
    with pytest.raises(OSError, match="disk full"):
        write_artifact(out, metrics={"n": 2}, **kwargs)
    assert json.loads((out / "metrics.json").read_text()) == {"n": 1}
    assert sorted(p.name for p in out.parent.iterdir()) == ["best"]  # no temp dir left


def test_parameter_names_are_cleaned_of_fsdp_wrappers(wrapped):
    name = "model.base_model.model._fsdp_wrapped_module.model.vision_tower.encoder.layers.0."
    name += "_fsdp_wrapped_module._checkpoint_wrapped_module.mlp.fc1.lora_A.default.weight"
    assert clean_param_name(name) == (
        "model.base_model.model.model.vision_tower.encoder.layers.0.mlp.fc1.lora_A.default.weight"
    )
    backbone, peft_model, _ = wrapped
    module = _module(backbone, peft_model)
    state = module.adapter_state_dict()  # no trainer: the local weights
    assert {f"model.{k}" for k in state} == module.trainable_keys()
    assert all(t.device.type == "cpu" for t in state.values())


def test_adapter_from_an_explicit_state_dict_equals_peft_own_save(
    wrapped, tmp_path, tiny_catalogue
):
    from safetensors.torch import load_file

    backbone, peft_model, _ = wrapped
    randomise_lora_b(peft_model, seed=4, std=0.5)
    args = Args(**tiny_catalogue, model_name="tiny-random")
    kwargs = dict(
        kind="distill",
        model=peft_model,
        backbone=backbone,
        config=args,
        metrics={},
        base_model="tiny-random",
    )
    by_peft = write_artifact(tmp_path / "peft", **kwargs)
    state = _module(backbone, peft_model).adapter_state_dict()
    ours = write_artifact(tmp_path / "ours", state_dict=state, **kwargs)
    a = load_file(str(by_peft / "adapter_model.safetensors"))
    b = load_file(str(ours / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) == len(state)
    for key in a:
        assert torch.equal(a[key], b[key])
    assert json.loads((ours / "adapter_config.json").read_text()) == json.loads(
        (by_peft / "adapter_config.json").read_text()
    )


def test_mismatched_images_pair_each_sample_with_another_items_image(tmp_path):
    ids = ["A", "A", "B", "C", "C", "D"]  # two items with two images each
    samples = [DescribedImage(x, f"t{x}", f"{x}_{k}.jpg", f"d{k}") for k, x in enumerate(ids)]
    base = dm.DescribedImageDataset(samples, tmp_path, "val")
    mismatched = dm.MismatchedImages(base)
    assert len(mismatched) == len(base)
    for i in range(len(samples)):
        item = mismatched[i]
        assert item["sample"] == samples[i]  # the same text target...
        partner = samples[mismatched.partner[i]]
        assert partner.item_id != samples[i].item_id  # ...shown with another item's image
        assert item["key"] == f"val/{partner.image_name}"
    assert dm.MismatchedImages(base).partner == mismatched.partner  # fixed pairs
