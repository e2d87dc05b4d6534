"""The pictures of many renderings the [CLS]-path warm start trains on (lavic.pretrain.pictures):
pure, balanced, and showing the colour family they are labelled with."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lavic.pretrain import pictures as pc


def test_pictures_are_a_pure_function_of_count_and_seed():
    a, b = pc.draw_pictures(12, seed=3), pc.draw_pictures(12, seed=3)
    assert [(p.colour, p.pattern, p.image.tobytes()) for p in a] == [
        (p.colour, p.pattern, p.image.tobytes()) for p in b
    ]
    c = pc.draw_pictures(12, seed=4)
    assert [p.image.tobytes() for p in a] != [p.image.tobytes() for p in c]


def test_colours_and_patterns_are_balanced_and_the_renderings_vary():
    drawn = pc.draw_pictures(len(pc.COLOUR_WORDS) * len(pc.PATTERN_WORDS), seed=0)
    assert Counter(p.colour for p in drawn) == {c: len(pc.PATTERN_WORDS) for c in pc.COLOUR_WORDS}
    assert Counter(p.pattern for p in drawn) == {w: len(pc.COLOUR_WORDS) for w in pc.PATTERN_WORDS}
    sizes = {p.image.size for p in drawn}
    assert len(sizes) > 50  # sizes and aspect ratios vary
    assert min(w / h for w, h in sizes) < 0.7 and max(w / h for w, h in sizes) > 1.4


@pytest.mark.parametrize("word", pc.COLOUR_WORDS)
def test_a_family_colour_is_in_its_family(word):
    rng = random.Random(word)
    for _ in range(200):
        assert pc.family_of(pc.colour_in_family(rng, word)) == word


@pytest.mark.parametrize("word", ["red", "blue", "yellow", "green", "black"])
def test_a_plain_picture_is_mostly_its_colour(word):
    """The item's surface dominates the picture: the commonest family among a plain
    picture's pixels, backdrop shades (white, grey) aside, is the label's."""
    rng = random.Random(f"plain/{word}")
    for _ in range(10):
        image = pc.draw_picture(rng, word, "plain").convert("RGB").resize((48, 48))
        families = Counter(pc.family_of(px) for px in image.getdata())
        for backdrop in (None, "white", "grey"):
            families.pop(backdrop, None)
        assert families.most_common(1)[0][0] == word


def test_patterns_put_a_second_shade_on_the_surface():
    """A patterned item shows two clearly different shades inside its surface; a plain one
    (without shading) one. Measured on the picture's own pixel spread, large views only."""
    rng = random.Random(1)
    spread = {}
    for pattern in pc.PATTERN_WORDS:
        values = []
        for _ in range(8):
            image = pc.draw_picture(rng, "blue", pattern).convert("L")
            w, h = image.size
            centre = image.crop((w * 3 // 8, h * 3 // 8, w * 5 // 8, h * 5 // 8))
            px = sorted(centre.getdata())
            values.append(px[len(px) * 9 // 10] - px[len(px) // 10])
        spread[pattern] = sorted(values)[len(values) // 2]
    assert all(spread[p] > spread["plain"] for p in pc.PATTERN_WORDS if p != "plain")
