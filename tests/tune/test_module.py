"""Stage-2 model side: cached tokens give the logits of recomputed ones, the vision tower never
runs in a tuning step, only the language model's LoRA trains, the loss is the HF loss."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lavic.cache.store import ItemTokenCache, adapter_fingerprint, build_item_token_cache
from lavic.data.images import ImageStats, item_image_name, load_image
from lavic.errors import LavicError
from lavic.model.backbone import load_backbone, unwrap
from lavic.model.compute import embed_prompts, target_loss_sums
from lavic.model.inputs import build_batch
from lavic.model.item_tokens import encode_item_tokens, pixel_views
from lavic.model.lora import add_language_lora, count_parameters
from lavic.model.tiny_random import build_tiny_random
from lavic.prompts import build_recommend_prompt
from lavic.tune.data import RecommendCollator, RecommendDataset, TuneSample
from lavic.tune.module import RecommendTuner

from .fixtures import ITEMS, NO_IMAGE

torch.set_num_threads(1)

ROWS = [  # (conversation, candidates): two rows of different lengths and candidate counts
    ("<submission>red mug please</submission>", ITEMS[0:4]),
    (
        "<submission>a blue one</submission>\n<comment>striped?</comment>",
        [ITEMS[6], NO_IMAGE, ITEMS[10]],
    ),
]


@pytest.fixture(scope="module")
def merged(stage1):
    """The stage-1 artefact's model: tiny-random with its vision LoRA merged."""
    return load_backbone(stage1)


def _prompts(backbone):
    return [
        build_recommend_prompt(
            backbone.tokenizer, conv, [(i, f"title {i}") for i in cands], max_length=1024
        )
        for conv, cands in ROWS
    ]


def _recomputed_tokens(backbone, item_ids, image_dir):
    """The reference's way: images -> 5 views -> vision tower + projector, every time."""
    images = [load_image(image_dir, item_image_name(i, 0)) for i in item_ids]
    with torch.no_grad():
        return encode_item_tokens(
            unwrap(backbone.model), pixel_views(backbone.image_processor, images)
        )


def test_cached_equals_recomputed_logits(merged, stage1, catalogue, tmp_path: Path):
    prompts = _prompts(merged)
    batch = build_batch(merged.tokenizer, [p.text for p in prompts], max_length=1024)
    order = [i for p in prompts for i in p.candidate_ids]  # reading order: row 0, then row 1
    cache_dir = tmp_path / "cache"
    stats = ImageStats()
    build_item_token_cache(
        merged,
        ITEMS,
        catalogue["image_dir"],
        cache_dir,
        fingerprint=adapter_fingerprint(stage1),
        batch_size=5,
        stats=stats,
    )
    assert stats.missing == 1 and stats.loaded == len(ITEMS) - 1
    cached = ItemTokenCache.open(cache_dir, fingerprint=adapter_fingerprint(stage1)).get(order)
    recomputed = _recomputed_tokens(merged, order, catalogue["image_dir"])
    llava = unwrap(merged.model)

    def logits(item_tokens):
        with torch.no_grad():
            embeds = embed_prompts(llava, merged.tokenizer, batch.input_ids, item_tokens)
            return llava(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits

    full_cached, full_recomputed = logits(cached), logits(recomputed)
    assert full_cached.shape == (2, batch.input_ids.shape[1], llava.config.text_config.vocab_size)
    torch.testing.assert_close(full_cached, full_recomputed, atol=1e-5, rtol=0)
    # The oracle can fail: the tokens of two items swapped give other logits.
    swapped = cached.clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert not torch.allclose(logits(swapped), full_recomputed, atol=1e-3)
    # And the stage-1 adapter matters: the bare base model's tokens differ.
    base = build_tiny_random()
    assert not torch.allclose(
        _recomputed_tokens(base, order, catalogue["image_dir"]), recomputed, atol=1e-3
    )


def test_embed_prompts_text_only_and_mismatch(merged):
    tok = merged.tokenizer
    llava = unwrap(merged.model)
    text = build_recommend_prompt(tok, "hi", [("A", "t")], max_length=512, with_images=False)
    ids = build_batch(tok, [text.text], max_length=512).input_ids
    torch.testing.assert_close(
        embed_prompts(llava, tok, ids, None), llava.get_input_embeddings()(ids)
    )
    with_images = build_recommend_prompt(tok, "hi", [("A", "t"), ("B", "u")], max_length=512)
    ids = build_batch(tok, [with_images.text], max_length=512).input_ids
    with pytest.raises(LavicError, match="placeholders"):
        embed_prompts(llava, tok, ids, None)
    with pytest.raises(LavicError, match="placeholders"):
        embed_prompts(llava, tok, ids, torch.zeros(1, 5, llava.config.text_config.hidden_size))
    # The PeftModel wrapper is accepted as well as the bare model.
    peft = add_language_lora(build_tiny_random().model, r=2, alpha=4, dropout=0.0)
    tokens = torch.randn(2, 5, llava.config.text_config.hidden_size)
    out = embed_prompts(peft, tok, ids, tokens)
    placeholders = torch.isin(ids, torch.tensor(merged.item_token_ids))
    torch.testing.assert_close(out[placeholders], tokens.reshape(-1, tokens.shape[-1]))


def test_target_loss_equals_hf_loss(merged):
    tok = merged.tokenizer
    llava = unwrap(merged.model)
    prompts = _prompts(merged)
    batch = build_batch(
        tok, [p.text for p in prompts], [ROWS[0][1][2], ROWS[1][1][0]], max_length=1024
    )
    tokens = torch.randn(7, 5, llava.config.text_config.hidden_size)
    data = {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "labels": batch.labels,
        "item_tokens": tokens,
    }
    with torch.no_grad():
        loss_sum, n = target_loss_sums(llava, tok, data)
        embeds = embed_prompts(llava, tok, batch.input_ids, tokens)
        hf = llava(
            inputs_embeds=embeds, attention_mask=batch.attention_mask, labels=batch.labels
        ).loss
    # Each row's target (10-character ID + EOS) is a label, padding and prompts are not.
    expected_n = sum(
        len(tok(t, add_special_tokens=False)["input_ids"]) + 1
        for t in (ROWS[0][1][2], ROWS[1][1][0])
    )
    assert int(n) == expected_n
    torch.testing.assert_close(loss_sum / n, hf, atol=1e-5, rtol=1e-5)


def test_only_language_model_lora_trains():
    backbone = build_tiny_random()
    r = 8
    linear = {
        name: m
        for name, m in unwrap(backbone.model).named_modules()
        if isinstance(m, torch.nn.Linear) and name.startswith("model.language_model.")
    }
    expected = sum(r * (m.in_features + m.out_features) for m in linear.values())
    assert len(linear) == 2 * 7  # q, k, v, o, gate, up, down in each of the two layers
    model = add_language_lora(backbone.model, r=r, alpha=32, dropout=0.1)
    trainable, total = count_parameters(model)
    assert trainable == expected == 8192
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("language_model" in n and ("lora_A" in n or "lora_B" in n) for n in names)
    assert len(names) == 2 * len(linear)
    frozen = [
        n
        for n, p in model.named_parameters()
        if (
            "vision_tower" in n
            or "multi_modal_projector" in n
            or "lm_head" in n
            or "embed_tokens" in n
        )
        and p.requires_grad
    ]
    assert frozen == []


def _tune_loaders(backbone, cache, *, with_images=True):
    samples = [
        TuneSample(conv, tuple(cands), cands[k % len(cands)], "x", k + 1)
        for k, (conv, cands) in enumerate(ROWS * 2)
    ]
    ds = RecommendDataset(
        samples,
        backbone.tokenizer,
        lambda i: f"title {i}",
        max_length=1024,
        with_images=with_images,
        progress=False,
    )
    collate = RecommendCollator(backbone.tokenizer, cache, max_length=1024)
    return (
        DataLoader(ds, batch_size=2, collate_fn=collate, shuffle=False),
        DataLoader(ds, batch_size=2, collate_fn=collate),
    )


def test_vision_tower_not_called_during_tuning(stage1, catalogue, tmp_path: Path, monkeypatch):
    backbone = load_backbone(stage1)
    cache = build_item_token_cache(
        backbone,
        ITEMS,
        catalogue["image_dir"],
        tmp_path / "cache",
        fingerprint=adapter_fingerprint(stage1),
        progress=False,
    )
    core = unwrap(backbone.model).model
    calls = []

    def forbidden(*args, **kwargs):
        calls.append(1)
        raise AssertionError("the vision tower ran inside a tuning step")

    monkeypatch.setattr(core.vision_tower, "forward", forbidden)
    monkeypatch.setattr(core.multi_modal_projector, "forward", forbidden)
    frozen_before = {n: p.detach().clone() for n, p in unwrap(backbone.model).named_parameters()}
    model = add_language_lora(backbone.model, r=4, alpha=8, dropout=0.0)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    train, valid = _tune_loaders(backbone, cache)
    module = RecommendTuner(
        model, backbone.tokenizer, lr=1e-2, weight_decay=0.0, log_every_n_steps=1
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        max_epochs=5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train, valid)
    assert calls == [] and trainer.global_step == 3
    changed = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and not torch.equal(p.detach(), lora_before[n])
    ]
    assert any("lora_B" in n for n in changed)  # B starts at 0: it moved, so training happened
    for name, p in unwrap(model).named_parameters():
        if "lora_" not in name:
            base_name = name.replace(".base_layer", "")
            assert torch.equal(p.detach(), frozen_before[base_name]), name
    # Validation ran (token-weighted) and the loss history was recorded per step.
    assert module.history["val_epochs"] and module.best is not None
    assert [r["step"] for r in module.history["train_steps"]] == [1, 2, 3]


def test_a_new_best_validation_hands_the_adapter_to_the_writer(merged):
    """The best-epoch policy both stages share (LoRAModule.keep_if_best): a new best record
    hands the record and the LoRA weights to on_new_best (which writes the artefact); a worse
    one does not, and the best so far stays."""
    model = add_language_lora(build_tiny_random().model, r=4, alpha=8, dropout=0.0)
    module = RecommendTuner(model, merged.tokenizer, lr=1e-2, weight_decay=0.0)
    written = []
    module.on_new_best = lambda record, state: written.append((record, state))
    assert module.keep_if_best({"epoch": 0, "val_loss": 2.0})
    assert not module.keep_if_best({"epoch": 1, "val_loss": 2.5})
    assert module.keep_if_best({"epoch": 2, "val_loss": 1.5})
    assert [r["epoch"] for r, _ in written] == [0, 2] and module.best["epoch"] == 2
    lora = {n for n, p in model.named_parameters() if p.requires_grad}
    state = written[-1][1]
    assert state and set(state) == lora and all(v.device.type == "cpu" for v in state.values())
