"""Model core: vectorised item-token insertion, per-row label masking, item-token shapes and
the budgeted recommendation prompt, each against a hand-written oracle."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lavic.constants import IGNORE_INDEX, ITEM_TOKENS, ITEM_TOKENS_TEXT, NUM_ITEM_TOKENS
from lavic.errors import LavicError
from lavic.model.inputs import build_batch, encode_prompt, encode_target, pad_views
from lavic.model.item_tokens import encode_item_tokens, insert_item_tokens, pixel_views
from lavic.model.tiny_random import build_tiny_random
from lavic.prompts import build_recommend_prompt


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_tiny_random()


# --------------------------------------------------------------------------- insertion


def naive_insert(embeds, input_ids, item_ids, item_embeds):
    """The reference's approach, written plainly: walk every position in Python."""
    out = embeds.clone()
    flat = item_embeds.reshape(-1, item_embeds.shape[-1])
    k = 0
    for b in range(input_ids.shape[0]):
        for t in range(input_ids.shape[1]):
            if int(input_ids[b, t]) in item_ids:
                out[b, t] = flat[k]
                k += 1
    assert k == flat.shape[0]
    return out


def _ids_with_items(item_ids, layout, width, filler=7):
    """Rows of filler ids with a run of the five item ids starting at each given offset."""
    rows = torch.full((len(layout), width), filler, dtype=torch.long)
    for r, starts in enumerate(layout):
        for s in starts:
            rows[r, s : s + NUM_ITEM_TOKENS] = torch.tensor(item_ids)
    return rows


def test_vectorised_insertion_matches_naive_loop():
    item_ids = [101, 102, 103, 104, 105]
    # Row 0 holds two items, row 1 one item, at different offsets; width 20, D = 6.
    input_ids = _ids_with_items(item_ids, [[1, 10], [4]], width=20)
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(2, 20, 6, generator=g)
    items = torch.randn(3, NUM_ITEM_TOKENS, 6, generator=g)
    got = insert_item_tokens(embeds, input_ids, item_ids, items)
    want = naive_insert(embeds, input_ids, item_ids, items)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # The items land in reading order: row 0's two runs, then row 1's.
    torch.testing.assert_close(got[0, 10:15], items[1], rtol=0, atol=0)
    torch.testing.assert_close(got[1, 4:9], items[2], rtol=0, atol=0)
    # Everything else is untouched.
    mask = torch.isin(input_ids, torch.tensor(item_ids))
    torch.testing.assert_close(got[~mask], embeds[~mask], rtol=0, atol=0)


def test_insertion_keeps_the_gradient_path_to_the_item_tokens():
    item_ids = [101, 102, 103, 104, 105]
    input_ids = _ids_with_items(item_ids, [[2]], width=9)
    items = torch.randn(1, NUM_ITEM_TOKENS, 4, requires_grad=True)
    out = insert_item_tokens(torch.zeros(1, 9, 4), input_ids, item_ids, items)
    out.sum().backward()
    assert torch.equal(items.grad, torch.ones_like(items))


@pytest.mark.parametrize("n_items", [1, 3])
def test_insertion_raises_on_count_mismatch(n_items):
    item_ids = [101, 102, 103, 104, 105]
    input_ids = _ids_with_items(item_ids, [[1, 10]], width=20)  # two runs in the prompt
    with pytest.raises(LavicError, match="10 item-token placeholders"):
        insert_item_tokens(torch.zeros(1, 20, 4), input_ids, item_ids, torch.zeros(n_items, 5, 4))


def test_insertion_raises_on_a_cut_or_shuffled_run():
    item_ids = [101, 102, 103, 104, 105]
    cut = _ids_with_items(item_ids, [[1, 10]], width=20)
    cut[0, 14] = 7  # second run loses its last token; add a stray first token elsewhere
    cut[0, 18] = 101
    with pytest.raises(LavicError, match="complete runs"):
        insert_item_tokens(torch.zeros(1, 20, 4), cut, item_ids, torch.zeros(2, 5, 4))
    shuffled = _ids_with_items(item_ids, [[1]], width=8)
    shuffled[0, 1], shuffled[0, 2] = 102, 101
    with pytest.raises(LavicError, match="complete runs"):
        insert_item_tokens(torch.zeros(1, 8, 4), shuffled, item_ids, torch.zeros(1, 5, 4))


# --------------------------------------------------------------------------- label masking


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_labels_are_masked_per_row_and_keep_eos(tiny, padding_side):
    tok = tiny.tokenizer
    assert tok.pad_token_id == tok.eos_token_id  # the case where masking by pad id masks EOS
    prompts = ["Conversation: a", "Conversation: looking for a red striped mug and a lamp"]
    targets = ["blue", "a mug"]
    batch = build_batch(tok, prompts, targets, max_length=128, padding_side=padding_side)
    assert batch.input_ids.shape[0] == 2
    width = batch.input_ids.shape[1]
    for i, (p, t) in enumerate(zip(prompts, targets, strict=True)):
        p_ids = tok(p)["input_ids"]
        t_ids = tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        row = p_ids + t_ids
        pad = width - len(row)
        oracle_labels = [IGNORE_INDEX] * len(p_ids) + t_ids
        oracle_mask = [1] * len(row)
        if padding_side == "right":
            oracle_labels += [IGNORE_INDEX] * pad
            oracle_mask += [0] * pad
            oracle_ids = row + [tok.pad_token_id] * pad
        else:
            oracle_labels = [IGNORE_INDEX] * pad + oracle_labels
            oracle_mask = [0] * pad + oracle_mask
            oracle_ids = [tok.pad_token_id] * pad + row
        assert batch.labels[i].tolist() == oracle_labels
        assert batch.attention_mask[i].tolist() == oracle_mask
        assert batch.input_ids[i].tolist() == oracle_ids
        assert batch.prompt_lengths[i] == len(p_ids)
        # The EOS target is a label even though it is also the pad id.
        labelled = [x for x in batch.labels[i].tolist() if x != IGNORE_INDEX]
        assert labelled[-1] == tok.eos_token_id
    # The rows really have different prompt lengths (masking by the padded width would fail).
    assert batch.prompt_lengths[0] != batch.prompt_lengths[1]


def test_long_target_is_cut_and_counted_prompt_too_long_raises(tiny):
    tok = tiny.tokenizer
    prompt = "Conversation: a"
    p_len = len(tok(prompt)["input_ids"])
    batch = build_batch(tok, [prompt], ["red blue green yellow " * 10], max_length=p_len + 3)
    assert batch.truncated_targets == 1
    assert batch.input_ids.shape[1] == p_len + 3
    assert (batch.labels[0] != IGNORE_INDEX).sum() == 3
    with pytest.raises(LavicError, match="does not fit"):
        build_batch(tok, [prompt * 5], ["x"], max_length=p_len)


def test_rows_given_as_ids_are_batched_as_they_are(tiny):
    """Encoded rows (the processor's <image> expansion) go through the same builder: no BOS
    or EOS added, no budget with max_length None, the pad id as asked; same as text rows."""
    tok = tiny.tokenizer
    prompts = ["Conversation: a", "Conversation: looking for a red striped mug"]
    targets = ["blue", "a mug"]
    text = build_batch(tok, prompts, targets, max_length=128)
    ids = build_batch(
        None,
        [encode_prompt(tok, p) for p in prompts],
        [encode_target(tok, t) for t in targets],
        max_length=None,
        pad_id=tok.pad_token_id,
    )
    for field in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(getattr(ids, field), getattr(text, field)), field
    assert ids.prompt_lengths == text.prompt_lengths and ids.truncated_targets == 0
    long = build_batch(None, [[5] * 300], [[6, 7]], max_length=None, pad_id=0)
    assert long.input_ids.shape == (1, 302) and long.labels[0, -2:].tolist() == [6, 7]
    padded = build_batch(None, [[5], [5, 5, 5]], [[6], []], max_length=None, pad_id=9)
    assert (
        padded.input_ids[0].tolist() == [5, 6, 9]
        and padded.labels[1].tolist() == [IGNORE_INDEX] * 3
    )


def test_pad_views_zero_pads_each_image_to_the_most_views():
    a, b = torch.ones(3, 3, 4, 4), torch.full((5, 3, 4, 4), 2.0)
    stacked = pad_views([a, b])
    assert stacked.shape == (2, 5, 3, 4, 4) and stacked.dtype == a.dtype
    assert torch.equal(stacked[0, :3], a) and not stacked[0, 3:].any()
    assert torch.equal(stacked[1], b)


# --------------------------------------------------------------------------- item tokens


def test_item_tokens_shape_and_independence_from_batch(tiny):
    images = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (64, 64), (0, 0, 250))]
    views = pixel_views(tiny.image_processor, images)
    size = 32  # tiny-random's view size
    assert views.shape == (2, NUM_ITEM_TOKENS, 3, size, size)
    # A 40x30 image makes the base view + 2 crops: the remaining views are zero padding.
    n_real = tiny.image_processor([images[0]], return_tensors="pt")["pixel_values"][0].shape[0]
    assert n_real < NUM_ITEM_TOKENS
    assert views[0, n_real:].abs().sum() == 0 and views[0, :n_real].abs().sum() > 0
    tokens = encode_item_tokens(tiny.model, views)
    d = tiny.model.config.text_config.hidden_size
    assert tokens.shape == (2, NUM_ITEM_TOKENS, d)
    alone = encode_item_tokens(tiny.model, pixel_views(tiny.image_processor, images[:1]))
    torch.testing.assert_close(alone[0], tokens[0], rtol=1e-5, atol=1e-6)


def test_item_tokens_are_the_projected_cls_of_each_view(tiny):
    views = pixel_views(tiny.image_processor, [Image.new("RGB", (64, 64), (9, 99, 199))])
    tower = tiny.model.model.vision_tower
    cls = torch.stack([tower(views[0, v : v + 1]).last_hidden_state[0, 0] for v in range(5)])
    oracle = tiny.model.model.multi_modal_projector(cls)
    torch.testing.assert_close(encode_item_tokens(tiny.model, views)[0], oracle)


def test_the_tokenizer_holds_the_five_item_tokens_once(tiny):
    ids = tiny.item_token_ids
    assert len(set(ids)) == NUM_ITEM_TOKENS
    encoded = tiny.tokenizer(ITEM_TOKENS_TEXT, add_special_tokens=False)["input_ids"]
    assert encoded == ids
    assert tiny.model.get_input_embeddings().weight.shape[0] > max(ids)
    assert tiny.tokenizer.convert_ids_to_tokens(ids) == list(ITEM_TOKENS)


# --------------------------------------------------------------------------- prompt builder


def _count(tok, text):
    return len(tok(text)["input_ids"])


def test_prompt_fits_untouched_when_short(tiny):
    cands = [("B000000001", "red mug"), ("0060188782", "blue lamp")]
    prompt = build_recommend_prompt(
        tiny.tokenizer, "<submission>hi</submission>", cands, max_length=2048
    )
    assert not prompt.truncated and prompt.conversation_tokens_dropped == 0
    assert prompt.candidate_ids == ("B000000001", "0060188782")
    assert prompt.text.count(ITEM_TOKENS_TEXT) == 2


def test_long_conversation_is_cut_never_a_candidate(tiny):
    tok = tiny.tokenizer
    cands = [(f"B00000000{i}", f"striped {c} mug") for i, c in enumerate(["red", "blue", "green"])]
    conversation = "<submission>start " + "looking for a product " * 400 + "end</submission>"
    max_length = 800  # the head and 3 candidates take ~400 tiny-tokenizer tokens
    prompt = build_recommend_prompt(tok, conversation, cands, max_length=max_length)
    assert prompt.truncated and prompt.conversation_tokens_dropped > 0
    assert _count(tok, prompt.text) <= max_length - 16  # room kept for the answer
    for item_id, title in cands:  # every candidate whole, with its five tokens
        assert f"{item_id}: {title}\n{ITEM_TOKENS_TEXT}\n" in prompt.text
    assert prompt.text.count(ITEM_TOKENS_TEXT) == len(cands)
    # Both ends of the conversation survive; the middle is marked as cut.
    assert "<submission>start" in prompt.text and "end</submission>" in prompt.text
    assert "[...]" in prompt.text


def test_candidates_that_cannot_fit_raise(tiny):
    cands = [(f"B0000000{i:02d}", "red striped mug with a handle") for i in range(30)]
    with pytest.raises(LavicError, match="candidates are never cut"):
        build_recommend_prompt(tiny.tokenizer, "<submission>x</submission>", cands, max_length=200)
