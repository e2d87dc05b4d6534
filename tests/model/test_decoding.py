"""Decoding: the answer parser, the candidate trie, and the three decoders against brute-force
oracles that recompute the whole sequence at every step (no KV cache, no batching)."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from PIL import Image

from lavic.constants import ITEM_TOKENS
from lavic.model.backbone import unwrap
from lavic.model.compute import embed_prompts
from lavic.model.decoding import (
    CandidateTrie,
    answer_token_ids,
    constrained_answers,
    decode_batch,
    generate_answers,
    parse_answer,
    prepare_prompts,
    rank,
    score_candidates,
)
from lavic.model.inputs import encode_prompt
from lavic.model.item_tokens import encode_item_tokens, pixel_views
from lavic.model.tiny_random import build_tiny_random
from lavic.prompts import build_recommend_prompt

torch.set_num_threads(1)

MAX_LENGTH = 1024


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_random()


def random_ids(rng: random.Random, n: int) -> list[str]:
    """Distinct IDs mixing ASINs, numeric ISBN-style IDs and IDs that share long prefixes."""
    ids: list[str] = []
    while len(ids) < n:
        kind = rng.random()
        if kind < 0.35:
            new = "B" + "".join(
                rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(9)
            )
        elif kind < 0.65:
            new = "".join(rng.choice("0123456789") for _ in range(9)) + rng.choice("0123456789X")
        elif ids:  # a sibling of an earlier ID: same first 6-9 characters
            base = rng.choice(ids)
            cut = rng.randint(6, 9)
            new = base[:cut] + "".join(rng.choice("0123456789") for _ in range(10 - cut))
        else:
            continue
        if new not in ids:
            ids.append(new)
    return ids


def make_batch(backbone, candidate_lists, rng, with_images=True):
    """Prompts of different lengths (so left padding matters) with random item tokens."""
    tok = backbone.tokenizer
    prompts, embeds = [], []
    for i, cands in enumerate(candidate_lists):
        words = " ".join(
            rng.choice(["red", "mug", "lamp", "blue", "bag"]) for _ in range(3 + 9 * i)
        )
        prompt = build_recommend_prompt(
            tok,
            f"<submission>{words}</submission>",
            [(c, "striped mug") for c in cands],
            max_length=MAX_LENGTH,
            with_images=with_images,
        )
        prompts.append(prompt.text)
        if with_images:
            images = [
                Image.new("RGB", (40 + 3 * j, 30), (rng.randrange(256), 40, 90))
                for j in range(len(cands))
            ]
            with torch.no_grad():
                embeds.append(
                    encode_item_tokens(
                        backbone.model, pixel_views(backbone.image_processor, images)
                    )
                )
        else:
            embeds.append(None)
    return (
        prompts,
        embeds,
        prepare_prompts(backbone.model, tok, prompts, embeds, max_length=MAX_LENGTH),
    )


@torch.no_grad()
def full_logprobs(backbone, prompt: str, item_embeds, continuation: list[int]) -> torch.Tensor:
    """Oracle: one full forward of prompt + continuation; log-softmax at every position."""
    tok = backbone.tokenizer
    ids = torch.tensor([encode_prompt(tok, prompt) + continuation])
    embeds = embed_prompts(backbone.model, tok, ids, item_embeds)
    return backbone.model(inputs_embeds=embeds).logits[0].float().log_softmax(-1)


# ------------------------------------------------------------------------------ parse_answer


def test_parse_answer_finds_numeric_and_b_ids():
    cands = ["B0012GVT7O", "0060188782", "B07GL3RKRN"]
    assert parse_answer("0060188782", cands) == "0060188782"  # the reference's regex misses this
    assert parse_answer(" B07GL3RKRN</s>", cands) == "B07GL3RKRN"
    assert parse_answer("I recommend 0060188782 or B0012GVT7O", cands) == "0060188782"
    assert parse_answer("B0012GVT7O then 0060188782", cands) == "B0012GVT7O"
    assert parse_answer("ID:B07GL3RKRN.", cands) == "B07GL3RKRN"


def test_parse_answer_whole_ids_longest_on_tie_and_fallback():
    assert parse_answer("B0012GVT7OX", ["B0012GVT7O"]) is None  # not inside a longer token
    assert parse_answer("00601887823", ["0060188782"]) is None
    # "12345" also starts where "1234567890" does: the longer candidate wins the tie
    assert parse_answer("1234567890", ["12345", "1234567890"]) == "1234567890"
    # no candidate: an ID-shaped string is kept as an (invalid) answer
    assert parse_answer("maybe B999999999 ok", ["B0012GVT7O"]) == "B999999999"
    assert parse_answer("sorry, no idea", ["B0012GVT7O"]) is None
    assert parse_answer("", ["B0012GVT7O"]) is None


# ------------------------------------------------------------------------------ trie


def _paths(node, prefix=()):
    if not node.children:
        yield prefix, node.item_id
    for token, child in node.children.items():
        yield from _paths(child, (*prefix, token))


def test_trie_paths_are_exactly_the_candidate_answers(tiny):
    rng = random.Random(1)
    for _ in range(20):
        ids = random_ids(rng, rng.randint(1, 12))
        trie = CandidateTrie.from_candidates(tiny.tokenizer, ids + ids[:2])  # duplicates too
        got = {item: list(path) for path, item in _paths(trie.root)}
        assert got == {i: answer_token_ids(tiny.tokenizer, i) for i in ids}
        assert trie.depth == max(len(v) for v in got.values())


def test_trie_allowed_is_what_generate_may_take_next():
    """``allowed(prefix)``: the children of the prefix's node; once an answer is complete
    (and ``generate`` keeps feeding the finished row padding) only the finishing token."""
    trie = CandidateTrie({"A": [5, 2], "AB": [5, 6, 2], "C": [7, 2]})  # 2 = EOS
    assert trie.allowed([], 2) == [5, 7]
    assert trie.allowed([5], 2) == [2, 6]
    assert trie.allowed([5, 6], 2) == [2]
    assert trie.allowed([5, 2], 2) == [2]  # complete
    assert trie.allowed([5, 2, 0, 0], 2) == [2]  # complete, then padded
    assert trie.walk([5, 6, 2]).item_id == "AB" and trie.walk([9]) is None


def test_trie_separates_a_prefix_by_eos_and_rejects_clashes():
    trie = CandidateTrie({"A": [5, 2], "AB": [5, 6, 2]})  # 2 = EOS
    assert set(trie.root.children[5].children) == {2, 6}
    with pytest.raises(ValueError, match="tokenize identically"):
        CandidateTrie({"A": [5, 2], "a": [5, 2]})


# ------------------------------------------------------------------------------ score


def assert_scores_match_oracle(backbone, lists, strategy, rng, with_images=True):
    """score_candidates against one full forward per (prompt, candidate): same log-probs
    (1e-4), same ranking, duplicates scored once."""
    prompts, embeds, batch = make_batch(backbone, lists, rng, with_images=with_images)
    scored = score_candidates(backbone.model, backbone.tokenizer, batch, lists, strategy=strategy)
    for prompt, item_embeds, cands, scores in zip(prompts, embeds, lists, scored, strict=True):
        p = len(encode_prompt(backbone.tokenizer, prompt))
        oracle = {}
        for c in dict.fromkeys(cands):
            answer = answer_token_ids(backbone.tokenizer, c)
            lp = full_logprobs(backbone, prompt, item_embeds, answer)
            oracle[c] = sum(float(lp[p - 1 + j, t]) for j, t in enumerate(answer))
        assert list(scores) == list(oracle)  # distinct candidates, prompt order
        for c in oracle:
            assert scores[c] == pytest.approx(oracle[c], abs=1e-4)
        assert rank(scores) == sorted(oracle, key=lambda c: -oracle[c])
    return batch


@pytest.mark.parametrize("strategy", ["tree", "repeat"])
def test_score_matches_brute_force_full_forwards(tiny, strategy):
    # a re-drawn, larger head: the tiny model's near-uniform logits would hide e.g. answer
    # positions shifted by one below the 1e-4 tolerance
    model = randomised(tiny, 2)
    rng = random.Random(2)
    short = ["X", "12", "B0"]  # answers of 2-3 tokens next to 10-11-token ones
    lists = [
        random_ids(rng, 10) + short,
        (lambda ids: ids + ids[::2])(random_ids(rng, 7)),  # duplicated candidates
        random_ids(rng, 4),
        random_ids(rng, 1),  # K = 1 in a batch of K = 13
    ]
    batch = assert_scores_match_oracle(model, lists, strategy, rng)
    assert len(set(batch.lengths.tolist())) == 4  # rows really are padded differently
    # every row K = 1, text-only: the tree holds a single answer per row
    assert_scores_match_oracle(model, [random_ids(rng, 1), ["7"]], strategy, rng, False)


def count_forwards(model):
    """Hooks counting language-model forwards and the columns the LM head sees."""
    llava = unwrap(model)
    calls = {"lm": [], "head": []}
    hooks = [
        llava.model.language_model.register_forward_hook(
            lambda m, a, kw, out: calls["lm"].append(kw["inputs_embeds"].shape[:2]),
            with_kwargs=True,
        ),
        llava.lm_head.register_forward_hook(
            lambda m, a, out: calls["head"].append(tuple(a[0].shape[:2]))
        ),
    ]
    return calls, hooks


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_score_tree_agrees_with_cache_repeat(tiny, attn):
    """The one-forward tree path and the prompt-then-repeated-cache path give the same
    log-probs on a sharper random model, for both attention kernels that take a 4D mask;
    the tree runs ONE language-model forward and the LM head only on the needed columns."""
    model = randomised(tiny, 11)
    model.model.set_attn_implementation(attn)
    assert unwrap(model.model).config.text_config._attn_implementation == attn
    rng = random.Random(9)
    lists = [random_ids(rng, 9) + ["X"], random_ids(rng, 3), random_ids(rng, 6) * 2]
    _, _, batch = make_batch(model, lists, rng)
    calls, hooks = count_forwards(model.model)
    try:
        tree = score_candidates(model.model, model.tokenizer, batch, lists, strategy="tree")
        tree_calls = {key: list(v) for key, v in calls.items()}
        repeat = score_candidates(model.model, model.tokenizer, batch, lists, strategy="repeat")
    finally:
        for h in hooks:
            h.remove()
    for t, r in zip(tree, repeat, strict=True):
        assert list(t) == list(r)
        for c in t:
            assert t[c] == pytest.approx(r[c], abs=1e-4)
        assert rank(t) == rank(r)
    width = max(len(answer_token_ids(model.tokenizer, c)) for cs in lists for c in cs)
    k = max(len(set(cs)) for cs in lists)
    p = batch.input_ids.shape[1]
    assert tree_calls["lm"] == [(3, p + k * (width - 1))]
    assert tree_calls["head"] == [(3, 1 + k * (width - 1))]
    assert len(calls["lm"]) == 3  # repeat: the prompt, then the (B*K, L) answers


def test_score_auto_falls_back_where_the_tree_mask_is_unsupported(tiny, monkeypatch, caplog):
    import lavic.model.decoding as decoding

    rng = random.Random(10)
    lists = [random_ids(rng, 3)]
    _, _, batch = make_batch(tiny, lists, rng, with_images=False)
    seen = []

    def fake_repeat(model, batch, tokens):  # flash kernels cannot run here: record the call
        seen.append(tuple(tokens.shape))
        return torch.zeros(tokens.shape)

    monkeypatch.setattr(decoding, "_score_repeat", fake_repeat)
    text_config = tiny.model.config.text_config
    monkeypatch.setattr(text_config, "_attn_implementation", "flash_attention_2")
    with caplog.at_level("DEBUG", logger="lavic.model.decoding"):
        (scores,) = score_candidates(tiny.model, tiny.tokenizer, batch, lists)
    assert seen and set(scores) == set(lists[0])
    assert "cache-repeat path" in caplog.text and "flash_attention_2" in caplog.text
    with pytest.raises(ValueError, match="flash_attention_2"):
        score_candidates(tiny.model, tiny.tokenizer, batch, lists, strategy="tree")
    # a sliding window shorter than the tree sequence would be silently dropped: fall back
    monkeypatch.setattr(text_config, "_attn_implementation", "sdpa")
    monkeypatch.setattr(text_config, "sliding_window", 16, raising=False)
    seen.clear()
    score_candidates(tiny.model, tiny.tokenizer, batch, lists)
    assert seen
    monkeypatch.setattr(text_config, "sliding_window", 10**6, raising=False)
    seen.clear()
    score_candidates(tiny.model, tiny.tokenizer, batch, lists)
    assert not seen  # a window longer than the sequence changes nothing: tree


def test_score_ranking_is_full_and_deduplicated(tiny):
    rng = random.Random(3)
    cands = random_ids(rng, 5)
    _, _, batch = make_batch(tiny, [cands + cands[:2]], rng, with_images=False)
    (decoded,) = decode_batch(tiny.model, tiny.tokenizer, batch, [cands + cands[:2]], "score")
    assert sorted(decoded.ranking) == sorted(cands)
    assert decoded.recommended == decoded.ranking[0] == decoded.response
    assert decoded.scores == sorted(decoded.scores, reverse=True)


# ------------------------------------------------------------------------------ constrained


@torch.no_grad()
def oracle_constrained(backbone, prompt, item_embeds, cands):
    """Greedy over the trie, recomputing the full sequence at every step: (item, log-prob)."""
    tok = backbone.tokenizer
    p = len(encode_prompt(tok, prompt))
    answers = {c: answer_token_ids(tok, c) for c in cands}
    chosen: list[int] = []
    total = 0.0
    while True:
        alive = {c: a for c, a in answers.items() if a[: len(chosen)] == chosen}
        if len(chosen) and any(a == chosen for a in alive.values()):
            return next(c for c, a in alive.items() if a == chosen), total
        allowed = sorted({a[len(chosen)] for a in alive.values()})
        lp = full_logprobs(backbone, prompt, item_embeds, chosen)[p - 1 + len(chosen)]
        chosen.append(max(allowed, key=lambda t: float(lp[t])))
        total += float(lp[chosen[-1]])


def randomised(backbone, seed):
    """The same backbone with a re-drawn output head: a different random model."""
    other = copy.copy(backbone)
    other.model = copy.deepcopy(backbone.model)
    gen = torch.Generator().manual_seed(seed)
    head = other.model.get_output_embeddings().weight
    with torch.no_grad():
        head.copy_(torch.randn(head.shape, generator=gen) * 2.0)
    return other


def test_constrained_never_leaves_the_candidates(tiny):
    """Property: over random candidate sets (numeric IDs, shared prefixes) and random models
    the answer is always one of the candidates, and its text spells that candidate."""
    rng = random.Random(4)
    for trial in range(6):
        model = randomised(tiny, trial)
        lists = [random_ids(rng, rng.randint(1, 10)) for _ in range(3)]
        _, _, batch = make_batch(model, lists, rng, with_images=trial % 2 == 0)
        for (item, text, _), cands in zip(
            constrained_answers(model.model, model.tokenizer, batch, lists), lists, strict=True
        ):
            assert item in cands
            assert text.strip() == item


def test_constrained_matches_brute_force_greedy(tiny):
    rng = random.Random(5)
    for trial in range(3):
        model = randomised(tiny, 100 + trial)
        lists = [random_ids(rng, 8), random_ids(rng, 5)]
        prompts, embeds, batch = make_batch(model, lists, rng)
        got = constrained_answers(model.model, model.tokenizer, batch, lists)
        want = [
            oracle_constrained(model, p, e, c)
            for p, e, c in zip(prompts, embeds, lists, strict=True)
        ]
        assert [g[0] for g in got] == [w[0] for w in want]
        # the cached, left-padded steps give the same log-probs as full recomputation
        for (_, _, logp), (_, oracle_logp) in zip(got, want, strict=True):
            assert logp == pytest.approx(oracle_logp, abs=1e-4)


# ------------------------------------------------------------------------------ generate


@torch.no_grad()
def oracle_generate(backbone, prompt, item_embeds, max_new, suppress):
    """Greedy free decoding by full recomputation: (text, log-prob of its tokens)."""
    tok = backbone.tokenizer
    p = len(encode_prompt(tok, prompt))
    out: list[int] = []
    total = 0.0
    for _ in range(max_new):
        lp = full_logprobs(backbone, prompt, item_embeds, out)[p - 1 + len(out)]
        masked = lp.clone()
        masked[suppress] = float("-inf")
        out.append(int(masked.argmax()))
        total += float(lp[out[-1]])
        if out[-1] == tok.eos_token_id:
            break
    return tok.decode(out, skip_special_tokens=True), total


def test_generate_matches_brute_force_and_never_emits_item_tokens(tiny):
    model = randomised(tiny, 7)
    item_ids = model.tokenizer.convert_tokens_to_ids(list(ITEM_TOKENS))
    head = model.model.get_output_embeddings()  # make the item tokens its favourite answer
    original = head.forward

    def biased(x):
        logits = original(x)
        logits[..., item_ids] += 1e4
        return logits

    head.forward = biased
    rng = random.Random(6)
    lists = [random_ids(rng, 4), random_ids(rng, 6)]
    prompts, embeds, batch = make_batch(model, lists, rng)
    texts = generate_answers(
        model.model, model.tokenizer, batch, max_new_tokens=10, suppress_ids=item_ids
    )
    unsuppressed = generate_answers(
        model.model, model.tokenizer, batch, max_new_tokens=3, suppress_ids=[]
    )
    for (text, logp), prompt, e in zip(texts, prompts, embeds, strict=True):
        assert not any(t in text for t in ITEM_TOKENS)
        oracle_text, oracle_logp = oracle_generate(model, prompt, e, 10, item_ids)
        assert text == oracle_text
        assert logp == pytest.approx(oracle_logp, abs=1e-3)
    # the bias really does push the item tokens: unsuppressed, only they come out (special
    # tokens, hidden by skip_special_tokens), while the suppressed answers say something
    assert all(t == "" for t, _ in unsuppressed)
    assert all(text for text, _ in texts)


def test_generate_decoding_parses_its_text(tiny):
    rng = random.Random(8)
    lists = [random_ids(rng, 5)]
    _, _, batch = make_batch(tiny, lists, rng)
    (decoded,) = decode_batch(
        tiny.model, tiny.tokenizer, batch, lists, "generate", suppress_ids=tiny.item_token_ids
    )
    assert decoded.recommended == parse_answer(decoded.response, lists[0])
    assert decoded.ranking is None


def test_a_checkpoints_generation_config_cannot_change_greedy(tiny):
    """Settings a checkpoint's generation_config.json may carry (a repetition penalty, a
    minimum length, another EOS, suppressed tokens) do not reach the answers."""
    model = randomised(tiny, 21)
    rng = random.Random(21)
    lists = [random_ids(rng, 6), random_ids(rng, 3)]
    _, _, batch = make_batch(model, lists, rng)
    m, tok = model.model, model.tokenizer

    def answers():
        return (
            constrained_answers(m, tok, batch, lists),
            generate_answers(m, tok, batch, max_new_tokens=8, suppress_ids=[]),
        )

    plain = answers()
    config = m.generation_config
    config.repetition_penalty = 3.0
    config.no_repeat_ngram_size = 1
    config.min_new_tokens = 6
    config.eos_token_id = [tok.eos_token_id, 5]
    config.suppress_tokens = answer_token_ids(tok, lists[0][0])[:1]
    assert answers() == plain
