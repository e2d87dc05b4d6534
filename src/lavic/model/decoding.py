"""Turning a recommendation prompt into an answer: ``generate``, ``constrained`` or ``score``.

* ``generate`` — the reference's greedy decoding of a few new tokens, then the answer is the first
  candidate ID found in the text (the reference's regex ``B[A-Z0-9]{9}`` could never return the
  numeric ISBN-style IDs, e.g. ``0060188782``, that real candidate lists hold). May be invalid.
* ``constrained`` — greedy decoding where each step may only continue one of the candidates'
  token sequences (a prefix trie over ``ID tokens + EOS``): always a candidate.
* ``score`` — every candidate ranked by the log-likelihood of its answer (``ID tokens + EOS``,
  the exact sequence prompt tuning trains on). The prompt and all K answers run in ONE forward
  under a "tree" attention mask (each answer sees the prompt and its own earlier tokens only),
  so nothing is copied and the cost stays close to the bare prompt forward. Gives a full
  ranking.

``generate`` and ``constrained`` are transformers' greedy ``generate`` from the prompts'
embeddings (the item tokens are in them), with the item tokens suppressed, resp. a
``prefix_allowed_tokens_fn`` walking the candidates' trie; what ``generate`` has no notion of
stays here: reading a candidate ID out of free text (:func:`parse_answer`) and the answers'
log-probabilities under the full distribution. ``score`` is ours: ``generate`` ranks nothing.

All three read the same batch: left-padded prompt ids with the items' visual tokens already
inserted into the embeddings (:func:`prepare_prompts`), so row ``b``'s prompt always ends at
the last column and its answer's positions continue from its own length.

Shapes: B conversations, P prompt width, K candidates, L answer width, V vocabulary, D width.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from lavic.model.backbone import unwrap
from lavic.model.compute import embed_prompts
from lavic.model.inputs import build_batch, encode_target

logger = logging.getLogger(__name__)

Decoding = Literal["generate", "constrained", "score"]
DECODINGS: tuple[str, ...] = ("generate", "constrained", "score")

# The reference implementation generated this many new tokens. Mistral's tokenizer spells digits one token each, so
# a 10-digit ID is 11 tokens (with its leading "▁"): ``generate`` therefore allows at least the
# longest candidate's answer length, never fewer than the reference's 10.
REFERENCE_MAX_NEW_TOKENS = 10

# The fallback for an answer that names no candidate: something shaped like an Amazon ID
# (ASIN or ISBN-10), recorded as an invalid prediction rather than dropped.
GENERIC_ID_PATTERN = re.compile(r"(?<![A-Za-z0-9])[A-Z0-9]{10}(?![A-Za-z0-9])")


# --------------------------------------------------------------------------------------------
# Answer parsing (generate)
# --------------------------------------------------------------------------------------------


def parse_answer(text: str, candidates: Sequence[str]) -> str | None:
    """The item a free-text answer names.

    The candidate ID that occurs first in ``text`` (as a whole token: not inside a longer run
    of letters and digits; on a tie the longest); if none occurs, the first 10-character
    ID-like string (an invalid answer, kept so it is counted as such); else None.
    """
    best: tuple[int, int, str] | None = None  # (start, -length, id)
    for candidate in dict.fromkeys(candidates):
        pattern = r"(?<![A-Za-z0-9])" + re.escape(candidate) + r"(?![A-Za-z0-9])"
        match = re.search(pattern, text)
        if match is not None:
            key = (match.start(), -len(candidate), candidate)
            if best is None or key < best:
                best = key
    if best is not None:
        return best[2]
    match = GENERIC_ID_PATTERN.search(text)
    return match.group(0) if match else None


# --------------------------------------------------------------------------------------------
# Candidate answers as token sequences, and their prefix trie (constrained)
# --------------------------------------------------------------------------------------------


def answer_token_ids(tokenizer, item_id: str) -> list[int]:
    """The tokens of the answer ``item_id`` exactly as prompt tuning's target: ID + EOS."""
    return encode_target(tokenizer, item_id)


@dataclass
class _Node:
    children: dict[int, _Node] = field(default_factory=dict)
    item_id: str | None = None  # set on the node reached by a complete answer (after EOS)


class CandidateTrie:
    """A prefix trie over the candidates' answer token sequences (each ends with EOS).

    Walking it from the root and taking only allowed tokens can only spell a candidate's
    answer; a candidate whose tokens are a prefix of another's is told apart by its EOS.
    """

    def __init__(self, sequences: dict[str, Sequence[int]]):
        self.root = _Node()
        self.depth = 0
        for item_id, tokens in sequences.items():
            if not tokens:
                raise ValueError(f"candidate {item_id!r} has an empty answer")
            node = self.root
            for token in tokens:
                node = node.children.setdefault(int(token), _Node())
            if node.item_id is not None and node.item_id != item_id:
                raise ValueError(
                    f"candidates {node.item_id!r} and {item_id!r} tokenize identically"
                )
            if node.children:
                raise ValueError(f"candidate {item_id!r}'s answer does not end the sequence")
            node.item_id = item_id
            self.depth = max(self.depth, len(tokens))

    @classmethod
    def from_candidates(cls, tokenizer, candidates: Sequence[str]) -> CandidateTrie:
        return cls({c: answer_token_ids(tokenizer, c) for c in dict.fromkeys(candidates)})

    def walk(self, tokens: Sequence[int]) -> _Node | None:
        """The node ``tokens`` lead to from the root; None where they leave the trie."""
        node = self.root
        for token in tokens:
            node = node.children.get(int(token))
            if node is None:
                return None
        return node

    def allowed(self, prefix: Sequence[int], finished: int) -> list[int]:
        """The tokens that may follow ``prefix``: the children of its node.

        Once an answer is complete (its EOS taken) ``generate`` still steps the row, feeding
        it padding: every such prefix gets ``[finished]`` (never an empty list, which
        ``generate`` refuses), and the row's tokens after its EOS are dropped anyway.
        """
        node = self.walk(prefix)
        if node is None or not node.children:
            return [finished]
        return list(node.children)


# --------------------------------------------------------------------------------------------
# Prompt batches
# --------------------------------------------------------------------------------------------


@dataclass
class PromptBatch:
    """Prompts of B conversations, left-padded, with item tokens inserted.

    Attributes:
        input_ids: ``(B, P)``.
        attention_mask: ``(B, P)``, 1 on real tokens (left padding is 0).
        inputs_embeds: ``(B, P, D)``: token embeddings, item placeholders overwritten.
        lengths: ``(B,)`` real prompt tokens per row.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    inputs_embeds: torch.Tensor
    lengths: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


def prepare_prompts(
    model,
    tokenizer,
    prompts: Sequence[str],
    item_embeds: Sequence[torch.Tensor | None],
    *,
    max_length: int,
) -> PromptBatch:
    """Tokenize, left-pad and embed ``prompts``.

    Args:
        model: the LLaVA-NeXT model (or a PeftModel around it).
        tokenizer: its tokenizer with the item tokens.
        prompts: one rendered recommendation prompt per conversation.
        item_embeds: per prompt, ``(n_b, 5, D)`` visual tokens of the candidates it shows, in
            prompt order, or None for a text-only prompt.
        max_length: token budget of prompt + answer (the prompt must leave room).
    """
    batch = build_batch(tokenizer, prompts, max_length=max_length, padding_side="left")
    device = unwrap(model).get_input_embeddings().weight.device
    input_ids = batch.input_ids.to(device)
    present = [e for e in item_embeds if e is not None and e.shape[0] > 0]
    stacked = torch.cat([e.to(device) for e in present]) if present else None
    with torch.no_grad():
        embeds = embed_prompts(model, tokenizer, input_ids, stacked)  # tuning's own embedding
    return PromptBatch(
        input_ids=input_ids,
        attention_mask=batch.attention_mask.to(device),
        inputs_embeds=embeds,
        lengths=torch.tensor(batch.prompt_lengths, device=device),
    )


def _prefill(model, batch: PromptBatch, *, logits_to_keep: int = 1):
    """Run the prompts once: (last-position logits ``(B, V)`` in float32, the KV cache)."""
    positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)
    out = model(
        inputs_embeds=batch.inputs_embeds,
        attention_mask=batch.attention_mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=logits_to_keep,
    )
    return out.logits[:, -1].float(), out.cache


# --------------------------------------------------------------------------------------------
# score: rank every candidate by log P(ID + EOS | prompt), prefix computed once
# --------------------------------------------------------------------------------------------


@dataclass
class Decoded:
    """The answer for one conversation.

    Attributes:
        recommended: the predicted item (None when a generated answer names nothing).
        response: the raw decoded answer text.
        ranking: candidates best first (``score`` only).
        scores: summed answer log-probabilities: aligned with ``ranking`` for ``score``; the
            one decoded answer's for ``constrained`` and ``generate``.
    """

    recommended: str | None
    response: str
    ranking: list[str] | None = None
    scores: list[float] | None = None


# Attention implementations whose kernels take an arbitrary 4D mask as given (transformers'
# masking_utils returns a 4D ``attention_mask`` untouched): ``sdpa`` reads a boolean mask
# (True = attend), ``eager`` adds a float mask. Flash and paged kernels only know causal +
# padding, so they keep the cache-repeat path.
TREE_MASK_ATTENTION = ("sdpa", "eager")

ScoreStrategy = Literal["auto", "tree", "repeat"]


def _answer_grid(tokenizer, candidates: Sequence[Sequence[str]], device):
    """The distinct candidates of each row and their answers as a right-padded grid.

    Returns:
        ``(uniq, tokens (B, K, L), real (B, K, L) bool)``; slots past a row's own candidate
        count and positions past an answer's end hold the pad token and ``real`` False.
    """
    uniq = [list(dict.fromkeys(c)) for c in candidates]
    k = max(len(u) for u in uniq)
    answers = [[answer_token_ids(tokenizer, c) for c in u] for u in uniq]
    width = max(len(a) for row in answers for a in row)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokens = torch.full((len(uniq), k, width), pad, dtype=torch.long)  # (B, K, L)
    real = torch.zeros((len(uniq), k, width), dtype=torch.bool)
    for i, row in enumerate(answers):
        for j, a in enumerate(row):
            tokens[i, j, : len(a)] = torch.tensor(a)
            real[i, j, : len(a)] = True
    return uniq, tokens.to(device), real.to(device)


def _answer_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log-softmax of ``logits (..., V)`` at ``targets (...)``, in float32, without
    materialising the full log-softmax (one float copy of the logits, not two)."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def _tree_supported(model, seq_len: int) -> str | None:
    """Why the one-forward tree path cannot run on ``model`` (None when it can)."""
    text_config = unwrap(model).config.text_config
    impl = getattr(text_config, "_attn_implementation", None)
    if impl not in TREE_MASK_ATTENTION:
        return f"attention implementation {impl!r} takes no custom 4D mask"
    window = getattr(text_config, "sliding_window", None)
    if window is not None and seq_len > window:
        # the tree mask would drop the model's window (applied on cache indices)
        return f"sliding window {window} < tree sequence {seq_len}"
    return None


def _tree_mask(prompt_mask: torch.Tensor, k: int, w: int, impl: str, dtype) -> torch.Tensor:
    """The 4D attention mask of ``[prompt | answer_1 | ... | answer_K]`` per row.

    Query ``q`` may see key ``s`` iff ``s <= q``, ``s`` is a real prompt token or a token of
    ``q``'s own answer (never another answer, never left padding). Every query also sees
    itself, so a padding row is never empty (an all-masked softmax row gives NaN in sdpa).

    Args:
        prompt_mask: ``(B, P)``, 1 on real prompt tokens.
        k, w: answers per row and tokens fed per answer (S = P + K*W).
        impl: ``sdpa`` (boolean mask, True = attend) or ``eager`` (additive float mask).
        dtype: the model's activations dtype (eager's mask).

    Returns:
        ``(B, 1, S, S)``.
    """
    b, p = prompt_mask.shape
    device = prompt_mask.device
    s = p + k * w
    # block of each column: -1 for the prompt, j for answer j
    block = torch.cat(
        [
            torch.full((p,), -1, dtype=torch.long, device=device),
            torch.arange(k, device=device).repeat_interleave(w),
        ]
    )  # (S,)
    idx = torch.arange(s, device=device)
    causal = idx.unsqueeze(1) >= idx.unsqueeze(0)  # (S, S) [query, key]
    same = (block.unsqueeze(0) == -1) | (block.unsqueeze(0) == block.unsqueeze(1))  # (S, S)
    key_real = torch.cat(
        [prompt_mask.bool(), torch.ones((b, k * w), dtype=torch.bool, device=device)], dim=1
    )  # (B, S)
    allowed = (causal & same).unsqueeze(0) & key_real.unsqueeze(1)  # (B, S, S)
    allowed = allowed | torch.eye(s, dtype=torch.bool, device=device)
    allowed = allowed.unsqueeze(1)  # (B, 1, S, S)
    if impl == "sdpa":
        return allowed
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def _score_tree(model, batch: PromptBatch, tokens: torch.Tensor) -> torch.Tensor:
    """Answer token log-probs ``(B, K, L)`` from ONE forward of prompt + all K answers.

    Row layout: ``[prompt (P, left-padded) | answer_1 | ... | answer_K]``; each answer feeds
    its first ``W = L - 1`` tokens (the last one predicts nothing we need). Answer ``j``'s
    token ``t`` sits at position ``length + t``, as if it followed the prompt alone (the prompt
    holds positions ``0 .. length-1``). The first answer token is read off the prompt's last
    column; token ``t >= 1`` off answer ``j``'s column ``t - 1``. Since the prompt is left-
    padded, the needed columns are exactly the last ``1 + K*W``: ``logits_to_keep`` keeps
    only those, so the LM head never runs on the prompt.
    """
    b, k, width = tokens.shape
    w = width - 1
    device = tokens.device
    embed = unwrap(model).get_input_embeddings()
    fed = tokens[:, :, :w].reshape(b, k * w)  # (B, K*W)
    embeds = torch.cat(
        [batch.inputs_embeds, embed(fed).to(batch.inputs_embeds.dtype)], dim=1
    )  # (B, S, D)
    prompt_pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)
    answer_pos = batch.lengths.view(b, 1, 1) + torch.arange(w, device=device)  # (B, 1, W)
    positions = torch.cat([prompt_pos, answer_pos.expand(b, k, w).reshape(b, k * w)], dim=1)
    impl = unwrap(model).config.text_config._attn_implementation
    mask = _tree_mask(batch.attention_mask, k, w, impl, embeds.dtype)
    out = model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        use_cache=False,
        logits_to_keep=1 + k * w,
    )
    logits = out.logits  # (B, 1 + K*W, V): prompt's last column, then the answers'
    first = logits[:, 0].float().log_softmax(-1).gather(1, tokens[:, :, 0])  # (B, K)
    if w == 0:
        return first.unsqueeze(-1)
    rest = _answer_logprobs(logits[:, 1:].reshape(b, k, w, -1), tokens[:, :, 1:])  # (B,K,W)
    return torch.cat([first.unsqueeze(-1), rest], dim=2)


def _score_repeat(model, batch: PromptBatch, tokens: torch.Tensor) -> torch.Tensor:
    """Answer token log-probs ``(B, K, L)``: the prompt runs once with the cache on, the cache
    is repeated K times per row and the K answers run in a second forward ``(B*K, L)``.

    The fallback for attention kernels without custom masks. Answers are right-padded; a
    padded position only follows the real tokens, so (causal attention) it changes nothing.
    """
    b, k, width = tokens.shape
    device = tokens.device
    last_logits, cache = _prefill(model, batch)  # (B, V)
    first = last_logits.log_softmax(-1)  # (B, V): log P(answer's first token | prompt)
    logp = first.gather(1, tokens[:, :, 0]).unsqueeze(-1)  # (B, K, 1)
    if width > 1:
        cache.batch_repeat_interleave(k)  # every row's prefix K times: (B*K, ...)
        flat = tokens.reshape(b * k, width)
        mask = torch.cat(
            [
                batch.attention_mask.repeat_interleave(k, dim=0),
                torch.ones((b * k, width), dtype=batch.attention_mask.dtype, device=device),
            ],
            dim=1,
        )  # (B*K, P+L)
        positions = batch.lengths.repeat_interleave(k).unsqueeze(1) + torch.arange(
            width, device=device
        )  # (B*K, L): each answer continues from its own prompt length
        embeds = unwrap(model).get_input_embeddings()(flat)
        out = model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        )
        # column t predicts token t+1
        rest = _answer_logprobs(out.logits[:, :-1], flat[:, 1:]).reshape(b, k, width - 1)
        logp = torch.cat([logp, rest], dim=2)  # (B, K, L)
    return logp


@torch.no_grad()
def score_candidates(
    model,
    tokenizer,
    batch: PromptBatch,
    candidates: Sequence[Sequence[str]],
    *,
    strategy: ScoreStrategy = "auto",
) -> list[dict[str, float]]:
    """Log-likelihood of each candidate's answer (ID tokens + EOS) after each prompt.

    Args:
        model, tokenizer: the backbone's.
        batch: from :func:`prepare_prompts`.
        candidates: each conversation's candidate IDs (duplicates are scored once).
        strategy: ``tree``: one forward of ``[prompt | answer_1 | ... | answer_K]`` per row
            under a tree attention mask (no KV-cache copy); ``repeat``: prompt forward, KV
            cache repeated K times, answers in a second forward; ``auto`` (default): ``tree``
            where the attention implementation takes a 4D mask (sdpa, eager), else ``repeat``.

    Returns:
        per conversation, ``{item_id: sum of log-probs}`` over its distinct candidates.

    Raises:
        ValueError: ``strategy="tree"`` on a model whose attention cannot take the mask.
    """
    uniq, tokens, real = _answer_grid(tokenizer, candidates, batch.input_ids.device)
    b, k, width = tokens.shape
    if strategy not in ("auto", "tree", "repeat"):
        raise ValueError(f"unknown score strategy {strategy!r}")
    if strategy != "repeat":
        why_not = _tree_supported(model, batch.input_ids.shape[1] + k * (width - 1))
        if why_not is None:
            strategy = "tree"
        elif strategy == "tree":
            raise ValueError(f"tree scoring is not possible: {why_not}")
        else:
            logger.debug("score: cache-repeat path (%s)", why_not)
            strategy = "repeat"
    score = _score_tree if strategy == "tree" else _score_repeat
    logp = score(model, batch, tokens)  # (B, K, L)
    totals = (logp * real).sum(-1).cpu()  # (B, K)
    return [{c: float(totals[i, j]) for j, c in enumerate(u)} for i, u in enumerate(uniq)]


def rank(scores: dict[str, float]) -> list[str]:
    """Items by score, best first; ties keep the candidate order."""
    order = list(scores)
    return sorted(order, key=lambda c: (-scores[c], order.index(c)))


# --------------------------------------------------------------------------------------------
# greedy decoding: generate (free, item tokens suppressed) and constrained (trie)
# --------------------------------------------------------------------------------------------


def _greedy_config(tokenizer, max_new_tokens: int, suppress_ids: Sequence[int]):
    """Plain greedy search: every setting that could change it is given here, so a
    checkpoint's ``generation_config.json`` (filled in where a setting is None) cannot: its
    EOS (possibly a list) is replaced by the tokenizer's, the one answers end with."""
    from transformers import GenerationConfig

    eos = tokenizer.eos_token_id
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        min_new_tokens=0,  # takes precedence over a min_length
        suppress_tokens=[int(t) for t in suppress_ids],
        begin_suppress_tokens=[],
        return_dict_in_generate=True,
        output_logits=True,  # the raw logits: log-probs under the full distribution
    )


def _greedy(
    model,
    tokenizer,
    batch: PromptBatch,
    max_new_tokens: int,
    *,
    suppress_ids: Sequence[int] = (),
    prefix_allowed_tokens_fn=None,
) -> tuple[list[list[int]], list[float]]:
    """Greedy decoding with transformers' ``generate`` from the prompts' embeddings.

    Positions continue each row's own prompt (``generate`` derives them from the left-padded
    attention mask) and the KV cache is reused between steps. A row stops at EOS.

    Returns:
        each row's tokens (EOS kept) and their summed log-probabilities under the model's full
        distribution (before suppression or the trie's restriction).
    """
    eos = tokenizer.eos_token_id
    out = unwrap(model).generate(
        inputs_embeds=batch.inputs_embeds,
        attention_mask=batch.attention_mask,
        generation_config=_greedy_config(tokenizer, max_new_tokens, suppress_ids),
        prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
    )
    sequences = out.sequences.cpu()  # (B, n): starting from embeddings, the new tokens only
    step_logps = (
        torch.stack(out.logits, dim=1)
        .float()
        .log_softmax(-1)  # (B, n, V)
        .gather(-1, out.sequences.unsqueeze(-1))
        .squeeze(-1)
        .cpu()
    )  # (B, n)
    tokens: list[list[int]] = []
    logps: list[float] = []
    for row, row_logps in zip(sequences.tolist(), step_logps.tolist(), strict=True):
        end = row.index(eos) + 1 if eos in row else len(row)
        total = 0.0
        for value in row_logps[:end]:
            total += value
        tokens.append(row[:end])
        logps.append(total)
    return tokens, logps


@torch.no_grad()
def generate_answers(
    model, tokenizer, batch: PromptBatch, *, max_new_tokens: int, suppress_ids: Sequence[int]
) -> list[tuple[str, float]]:
    """Greedy free decoding of up to ``max_new_tokens`` tokens; ``suppress_ids`` (the item
    tokens) are never produced.

    Returns:
        per conversation ``(decoded text with special tokens skipped, its log-probability)``.
    """
    tokens, logps = _greedy(model, tokenizer, batch, max_new_tokens, suppress_ids=suppress_ids)
    return [
        (tokenizer.decode(t, skip_special_tokens=True), lp)
        for t, lp in zip(tokens, logps, strict=True)
    ]


@torch.no_grad()
def constrained_answers(
    model, tokenizer, batch: PromptBatch, candidates: Sequence[Sequence[str]]
) -> list[tuple[str, str, float]]:
    """Greedy decoding restricted to the candidates' answers; always a candidate.

    Returns:
        per conversation ``(item_id, decoded text, log-probability of its answer)``.
    """
    tries = [CandidateTrie.from_candidates(tokenizer, c) for c in candidates]
    eos = tokenizer.eos_token_id

    def allowed(batch_id: int, generated: torch.Tensor) -> list[int]:
        # Starting from inputs_embeds, generate passes the generated tokens only.
        return tries[batch_id].allowed(generated.tolist(), eos)

    depth = max(t.depth for t in tries)
    tokens, logps = _greedy(model, tokenizer, batch, depth, prefix_allowed_tokens_fn=allowed)
    results = []
    for trie, toks, lp in zip(tries, tokens, logps, strict=True):
        node = trie.walk(toks)
        if node is None or node.item_id is None:  # cannot happen: the trie only spells answers
            raise RuntimeError("constrained decoding stopped inside the candidate trie")
        results.append((node.item_id, tokenizer.decode(toks, skip_special_tokens=True), lp))
    return results


def decode_batch(
    model,
    tokenizer,
    batch: PromptBatch,
    candidates: Sequence[Sequence[str]],
    decoding: str,
    *,
    max_new_tokens: int | None = None,
    suppress_ids: Sequence[int] = (),
) -> list[Decoded]:
    """Answer a batch of prompts with ``decoding`` (``generate``, ``constrained``, ``score``).

    Args:
        model, tokenizer: the backbone's.
        batch: from :func:`prepare_prompts`.
        candidates: each conversation's candidate IDs (prompt order).
        decoding: the method.
        max_new_tokens: ``generate``'s budget; default: the longest candidate answer's token
            count, at least the reference's 10.
        suppress_ids: tokens ``generate`` may never produce (the five item tokens).
    """
    if decoding == "score":
        results = []
        for scores in score_candidates(model, tokenizer, batch, candidates):
            ranking = rank(scores)
            results.append(Decoded(ranking[0], ranking[0], ranking, [scores[c] for c in ranking]))
        return results
    if decoding == "constrained":
        return [
            Decoded(item, text, scores=[lp])
            for item, text, lp in constrained_answers(model, tokenizer, batch, candidates)
        ]
    if decoding == "generate":
        if max_new_tokens is None:
            longest = max(len(answer_token_ids(tokenizer, c)) for cs in candidates for c in cs)
            max_new_tokens = max(REFERENCE_MAX_NEW_TOKENS, longest)
        answers = generate_answers(
            model, tokenizer, batch, max_new_tokens=max_new_tokens, suppress_ids=suppress_ids
        )
        return [
            Decoded(parse_answer(t, cs), t, scores=[lp])
            for (t, lp), cs in zip(answers, candidates, strict=True)
        ]
    raise ValueError(f"unknown decoding {decoding!r}; choose from {DECODINGS}")
