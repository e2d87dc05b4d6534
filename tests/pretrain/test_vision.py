"""The tiny stand-in's vision pretraining and its teacher-path batches (on tiny-random: fast)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lavic.constants import IGNORE_INDEX, ITEM_TOKENS_TEXT
from lavic.errors import LavicError
from lavic.model.tiny import vision_state_dict
from lavic.model.tiny_random import build_tiny_random
from lavic.pretrain.captions import (
    CaptionSample,
    PromptHead,
    _collate,
    _encode,
    _look_vocabulary,
    caption_nll,
    look_words,
    write_pretraining_catalogue,
)
from lavic.pretrain.measure import teacher_perplexity
from lavic.pretrain.vision import PretrainConfig, pretrain
from lavic.prompts import teacher_prompt, text_selection_prompt


def _image(size, rgb=(200, 40, 40), stripes=False):
    image = Image.new("RGB", size, rgb)
    if stripes:
        for y in range(0, size[1], 12):
            image.paste((20, 20, 20), (0, y, size[0], y + 4))
    return image


@pytest.fixture(scope="module")
def random_backbone():
    return build_tiny_random()


def _samples():
    return [
        CaptionSample(_image((64, 64)), "Acme mug", "a red mug with dots", ("red", "mug")),
        CaptionSample(_image((64, 32), (30, 30, 200), True), "Lamp", "blue lamp", ("blue",)),
        CaptionSample(_image((40, 40), (30, 200, 30)), "Bag, large", "green", ("green",)),
    ]


def test_caption_nll_equals_the_full_forward_loss(random_backbone):
    """Oracle: the cached prompt head + logits at label positions only == the model's own
    loss over the whole prompt (one sample at a time, no padding)."""
    b = random_backbone
    samples = _samples()
    head = PromptHead(b)
    rows = [_encode(b, head, s, s.image) for s in samples]
    with torch.no_grad():
        nll, n = caption_nll(b, head, _collate(rows, b.tokenizer.pad_token_id, len(head)))
    total, count = 0.0, 0
    with torch.no_grad():
        for s in samples:
            enc = b.processor(images=[s.image], text=[teacher_prompt(s.title)], return_tensors="pt")
            target = b.tokenizer(s.description, add_special_tokens=False)["input_ids"]
            target = torch.tensor([target + [b.tokenizer.eos_token_id]])
            ids = torch.cat([enc["input_ids"], target], dim=1)
            labels = ids.clone()
            labels[:, : enc["input_ids"].shape[1]] = IGNORE_INDEX
            out = b.model(
                input_ids=ids,
                pixel_values=enc["pixel_values"],
                image_sizes=enc["image_sizes"],
                labels=labels,
            )
            total += out.loss.item() * target.shape[1]
            count += target.shape[1]
    assert n == count
    assert float(nll) / n == pytest.approx(total / count, rel=1e-4)
    ppl = teacher_perplexity(b, samples, batch_size=2)
    assert ppl == pytest.approx(torch.tensor(total / count).exp().item(), rel=1e-4)


def test_pretrain_trains_only_the_vision_side(tmp_path):
    b = build_tiny_random(seed=1)
    lm_before = {k: v.clone() for k, v in b.model.model.language_model.state_dict().items()}
    vision_before = {k: v.clone() for k, v in vision_state_dict(b.model).items()}
    config = PretrainConfig(
        align_steps=3, align_batch_size=2, caption_steps=3, batch_size=2, lr=1e-2, align_lr=1e-2
    )
    record = pretrain(b, _samples(), config, work_dir=tmp_path)
    assert record["align"]["loss_last50"] is not None and record["caption"]["loss_last20"] > 0
    # each phase ran its steps on the training core, whose checkpoint holds the trainable
    # weights alone (the vision side, none of the language model's)
    for phase in ("align", "caption"):
        ckpt = torch.load(tmp_path / phase / "checkpoints" / "last.ckpt", weights_only=False)
        assert ckpt["global_step"] == 3
        assert ckpt["state_dict"] and not any("language_model" in k for k in ckpt["state_dict"])
    lm_after = b.model.model.language_model.state_dict()
    assert all(torch.equal(lm_before[k], lm_after[k]) for k in lm_before)
    vision_after = vision_state_dict(b.model)
    for part in ("vision_tower.", "multi_modal_projector.", "image_newline"):
        keys = [k for k in vision_before if k.startswith(part)]
        assert any(not torch.equal(vision_before[k], vision_after[k]) for k in keys), part
    assert not any(p.requires_grad for p in b.model.parameters())


def test_text_selection_prompt():
    cands = [("B000000001", "Acme Mug", "A red mug."), ("0060188782", "Book", "A blue book.")]
    prompt = text_selection_prompt("<submission>hi</submission>", cands)
    assert "B000000001: Acme Mug\nA red mug.\n0060188782: Book\nA blue book.\n" in prompt
    assert prompt.endswith("\nAssistant:") and ITEM_TOKENS_TEXT not in prompt


def test_look_words_and_seed_guard(tmp_path):
    vocab = _look_vocabulary("default")
    words = look_words("The image shows a mug with a red body covered in dark stripes.", vocab)
    assert words == ("mug", "red", "dark", "stripes")
    with pytest.raises(LavicError, match="reserved"):
        write_pretraining_catalogue(tmp_path, seed=7)
