"""The broad phrasings the stand-in's selection skill is trained on (lavic.pretrain.phrasing):
pure, answerable only from colour *and* pattern, and free of the unseen generator's words."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from lavic.data.unseen import vocabulary as unseen
from lavic.errors import LavicError
from lavic.pretrain import phrasing as ph
from lavic.pretrain import pictures


def _look_of(text: str) -> tuple[set[int], set[int]]:
    """The colour families and pattern indices a text names."""
    low = text.lower()
    families = {
        k
        for k, family in enumerate(ph.COLOUR_FAMILIES)
        if any(re.search(rf"\b{re.escape(c)}\b", low) for c in family)
    }
    patterns = {
        k
        for k, p in enumerate(ph.PATTERNS)
        if any(
            re.search(rf"\b{re.escape(w.lower())}\b", low)
            for w in (*p.adjectives, *p.nouns, *p.withs)
        )
    }
    return families, patterns


def test_samples_are_a_pure_function_of_their_arguments():
    assert ph.broad_samples(3, 20, 10) == ph.broad_samples(3, 20, 10)
    assert ph.broad_samples(3, 20, 10) != ph.broad_samples(4, 20, 10)


@pytest.mark.parametrize("n", [2, 4, 10])
def test_each_list_holds_the_answer_once_with_distinct_ids_and_looks(n):
    for context, candidates, target in ph.broad_samples(0, 200, n):
        ids = [i for i, _ in candidates]
        assert len(candidates) == n and len(set(ids)) == n and ids.count(target) == 1
        assert context.startswith("<submission>") and context.endswith("\n")
        looks = [_look_of(text) for _, text in candidates]
        keys = [(frozenset(c), frozenset(p)) for c, p in looks]
        assert len(set(keys)) == n  # one item per look


def test_only_colour_and_pattern_together_pick_the_answer():
    """Over many lists some negatives share the answer's colour and some its pattern, so a
    reader of one word alone cannot reach the ceiling; both words always find it."""
    share_colour = share_pattern = 0
    for _context, candidates, target in ph.broad_samples(1, 300, 10):
        looks = {i: _look_of(text) for i, text in candidates}
        answer_c, answer_p = looks[target]
        assert len(answer_c) == 1 and len(answer_p) == 1
        both = [i for i, (c, p) in looks.items() if c == answer_c and p == answer_p]
        assert both == [target]
        share_colour += sum(c == answer_c for i, (c, _) in looks.items() if i != target)
        share_pattern += sum(p == answer_p for i, (_, p) in looks.items() if i != target)
    assert share_colour > 300 and share_pattern > 300


def test_the_request_names_the_answers_look_in_its_own_words():
    """The request names the answer's colour family and pattern; sometimes by another word
    of the family than the title's (matching by meaning), never ambiguously."""
    siblings = 0
    for context, candidates, target in ph.broad_samples(2, 300, 4):
        families, patterns = _look_of(context)
        want = _look_of(dict(candidates)[target])
        assert want[0] <= families and want[1] <= patterns
        words = {c for c in ph.COLOURS if re.search(rf"\b{re.escape(c)}\b", context.lower())}
        title_words = {
            c
            for c in ph.COLOURS
            if re.search(rf"\b{re.escape(c)}\b", dict(candidates)[target].lower())
        }
        siblings += not words & title_words
    assert 0.15 < siblings / 300 < 0.45  # SIBLING_RATE of the families with several words


def test_the_look_is_written_in_many_ways():
    slots = set()
    for _c, candidates, _t in ph.broad_samples(5, 200, 10):
        for _, text in candidates:
            slots.add("\n" in text)
    assert slots == {True, False}  # on its own line (LaViC's slot) and inside the title
    assert len(ph.LOOK_SLOTS) >= 10 and len(ph.COLOURS) >= 60 and len(ph.PATTERNS) >= 15
    assert len(set(ph.COLOURS)) == len(ph.COLOURS)  # one family per word


def test_none_of_the_unseen_generators_words_is_drawn():
    """lavic synthesize-unseen measures what travels: its colours, patterns and kinds never
    appear in these training texts."""
    unseen_words = {c.word for c in unseen.COLOURS}
    unseen_words |= {p.stem for p in unseen.PATTERNS} | {p.word for p in unseen.PATTERNS}
    unseen_words |= {k.name for kinds in unseen.CATEGORIES.values() for k in kinds}
    assert unseen_words <= {w for w in ph.UNSEEN_WORDS} | {p.word for p in unseen.PATTERNS}
    drawn = ph.broad_samples(0, 500, 10) + ph.broad_samples(0, 500, 10, generic=True)
    text = " ".join(" ".join([c, *(t for _, t in cands)]) for c, cands, _ in drawn).lower()
    for word in unseen_words:
        stem = word.split("-")[0]
        assert not re.search(rf"\b{re.escape(stem)}", text), word


def test_generic_looks_are_written_in_common_words_and_requested_in_any():
    """generic: every candidate's look is its family's first word and the pattern's plain noun
    (as the item tokens read), mostly on its own line; the request names the colour by any
    word of the family, so most requests say another word than the candidate's."""
    heads = {f[0] for f in ph.COLOUR_FAMILIES}
    plain_nouns = {p.nouns[0] for p in ph.PATTERNS}
    other_word = on_line = 0
    for context, candidates, target in ph.broad_samples(3, 300, 4, generic=True):
        for _, text in candidates:
            on_line += text.endswith(tuple(f" {n}" for n in plain_nouns)) and "\n" in text
            written = {c for c in ph.COLOURS if re.search(rf"\b{re.escape(c)}\b", text.lower())}
            assert written <= heads and len(written) == 1
        families, patterns = _look_of(context)
        want = _look_of(dict(candidates)[target])
        assert want[0] <= families and want[1] <= patterns
        head = ph.COLOUR_FAMILIES[next(iter(want[0]))][0]
        other_word += not re.search(rf"\b{re.escape(head)}\b", context.lower())
    assert other_word / 300 > 0.5
    assert 0.5 < on_line / 1200 < 0.9  # GENERIC_LINE_RATE
    assert ph.broad_samples(3, 5, 4, generic=True) != ph.broad_samples(3, 5, 4)


def _imports(module) -> set[str]:
    tree = ast.parse(Path(module.__file__).read_text())
    return {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }


@pytest.mark.parametrize("module", [ph, pictures], ids=["phrasing", "pictures"])
def test_the_module_imports_neither_catalogue_generator(module):
    names = _imports(module)
    assert not any(n.startswith(("lavic.data.synthetic", "lavic.data.unseen")) for n in names)


def test_fewer_than_two_candidates_is_refused():
    with pytest.raises(LavicError, match="need >= 2"):
        ph.broad_samples(0, 1, 1)
