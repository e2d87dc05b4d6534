"""Stage 1's look-word measurement and the title-look control catalogue."""

from __future__ import annotations

import pytest
from PIL import Image

from lavic.data.synthetic import STYLES, plan_catalogue
from lavic.model.tiny_random import build_tiny_random
from lavic.pretrain.captions import CaptionSample
from lavic.pretrain.measure import _look_token_mask, look_word_nll


def test_look_token_mask_marks_exactly_the_look_words():
    b = build_tiny_random()
    text = "The image shows a mug with a red body covered in polka dots. Red is bold."
    words = frozenset({"red", "dots"})
    flags = _look_token_mask(b.tokenizer, text, words)
    enc = b.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert len(flags) == len(enc["input_ids"]) + 1 and flags[-1] is False  # + EOS
    marked = "".join(
        text[a:e] for (a, e), f in zip(enc["offset_mapping"], flags, strict=False) if f
    ).lower()
    assert marked.replace(" ", "") == "reddotsred"


def test_look_word_nll_splits_all_tokens_and_sees_the_image():
    b = build_tiny_random(seed=2)
    samples = [
        CaptionSample(Image.new("RGB", (64, 64), rgb), "Acme mug", f"a {c} mug with {p}", (c, p))
        for rgb, c, p in (((200, 30, 30), "red", "stripes"), ((30, 30, 200), "blue", "dots"))
    ]
    real = look_word_nll(b, samples, path="student")
    shuffled = look_word_nll(b, samples, path="student", image_mode="shuffled")
    teacher = look_word_nll(b, samples, path="teacher")
    for r in (real, shuffled, teacher):
        assert r["look_tokens"] >= 2 and r["other_tokens"] > r["look_tokens"]
        assert r["ppl"] > 1
    assert real["look_tokens"] == shuffled["look_tokens"] == teacher["look_tokens"]
    assert real != shuffled  # another item's image changes the student's NLL


@pytest.mark.parametrize("title_look", [False, True])
def test_title_look_puts_the_look_in_titles_only_when_asked(title_look):
    plan = plan_catalogue(seed=5, num_train=4, num_valid=2, num_test=2, title_look=title_look)
    style = STYLES["default"]
    for item in plan.items.values():
        stated = item.title.endswith(f", {item.look.colour.word} {item.look.pattern}")
        assert stated == title_look
        if not title_look:
            assert not set(item.title.lower().replace(",", " ").split()) & style.look_words
