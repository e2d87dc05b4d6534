"""A 100,000-character conversation, odd but valid Unicode and skippable bad records, through
the real ``tune`` (lenient, which then evaluates the test split) and ``evaluate``: the long
conversation is cut (never a candidate) and counted, every bad record is skipped and counted,
and every good conversation gets an answer."""

from __future__ import annotations

import json
from pathlib import Path

from lavic.cli import main
from lavic.model.tiny_random import build_tiny_random
from lavic.prompts import ANSWER_RESERVE, CUT_MARKER, build_recommend_prompt

from .corpus import CONVERSATION_CASES, ODD_BUT_VALID_TEXT, conversation, line

CATEGORY = "toys"
LONG_CHARS = 100_000
MAX_LENGTH = 512


def _long_context() -> str:
    head = "<submission>I need a red mug for my desk, sturdy and big.</submission>\n"
    tail = "<comment>Go for the striped red one.</comment>\n"
    filler = "<comment>" + ("blah \u00e2\u0080\u0099 " * 12) + "</comment>\n"
    body = filler * ((LONG_CHARS - len(head) - len(tail)) // len(filler) + 1)
    return (head + body)[: LONG_CHARS - len(tail)] + tail


def test_long_conversation_prompt_keeps_every_candidate(tally):
    tokenizer = build_tiny_random().tokenizer
    context = _long_context()
    assert len(context) == LONG_CHARS
    candidates = [(f"B0000000{k:02d}", f"red mug number {k}") for k in range(10)]
    with tally.case("input", "conversations (prompt)", "100,000 characters, 10 candidates"):
        # (tiny-random's 400-token byte-level BPE spends ~64 tokens per candidate line)
        prompt = build_recommend_prompt(tokenizer, context, candidates, max_length=1024)
        assert prompt.truncated and prompt.conversation_tokens_dropped > 10_000
        assert len(tokenizer(prompt.text)["input_ids"]) <= 1024 - ANSWER_RESERVE
        assert CUT_MARKER in prompt.text
        assert prompt.text.index("I need a red mug") < prompt.text.index(CUT_MARKER)
        positions = [prompt.text.index(f"{i}: {t}\n") for i, t in candidates]
        assert positions == sorted(positions) and prompt.candidate_ids == tuple(
            i for i, _ in candidates
        )  # every candidate, in order


def _write_split(data_dir: Path, split: str, rows: list[bytes]) -> None:
    path = data_dir / CATEGORY / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(r + b"\n" for r in rows))


def test_tune_and_evaluate_lenient_with_long_and_odd_conversations(
    stage1, catalogue, tmp_path, capsys, tally
):
    long_record = conversation(3, context=_long_context())
    bad = [c for c in CONVERSATION_CASES if c.name != "truncated last line"]
    bad_lines = [c.data.split(b"\n")[1] for c in bad[:6]]
    odd = [
        line(conversation(k, context=f"<submission>{text}</submission>\n"))
        for k, text in enumerate(ODD_BUT_VALID_TEXT.values())
    ]
    data_dir = tmp_path / "data"
    _write_split(
        data_dir,
        "train",
        [line(conversation(k)) for k in range(4)] + [line(long_record)] + bad_lines,
    )
    _write_split(data_dir, "valid", [line(conversation(5)), line(long_record), bad_lines[0]])
    _write_split(data_dir, "test", [line(long_record), *odd, *bad_lines[:3]])
    out = tmp_path / "ft"
    common = [
        "--model_dir", stage1, "--item_meta_path", catalogue["item_meta_path"], "--image_dir",
        catalogue["image_dir"], "--data_dir", data_dir, "--category", CATEGORY,
        "--max_length", MAX_LENGTH, "--lenient",
    ]  # fmt: skip
    with tally.case("input", "conversations (tune --lenient)", "100,000 chars + 6 bad records"):
        argv = ["tune", *common, "--finetune_output_dir", out, "--num_epochs", "1"]
        assert main([str(a) for a in argv]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["skipped_records"] == {"train": len(bad_lines), "valid": 1}
        assert metrics["train_conversations"] == 5 and metrics["valid_conversations"] == 2
        assert metrics["truncated_prompts"] == {"train": 1, "valid": 1}
        assert min(metrics["conversation_tokens_dropped"].values()) > 1000
        assert metrics["truncated_targets"] == 0
    with tally.case("input", "conversations (evaluate --lenient)", "100,000 chars, odd text"):
        evaluation = metrics["evaluation"]["test_candidates_st"]  # tune evaluated the test split
        assert evaluation["skipped_records"] == 3
        assert evaluation["num_conversations"] == 1 + len(odd)
        assert evaluation["truncated_conversations"] == 1
        assert evaluation["validity@1"] == 1.0
        rows = [
            json.loads(x)
            for x in (out / "test_results_candidates_st.jsonl").read_text().splitlines()
        ]
        assert len(rows) == 1 + len(odd)
        assert rows[0]["context"] == long_record["context"]  # echoed whole, not the cut
        for row in rows:
            assert sorted(row["ranking_st"]) == sorted(row["candidates_st"])  # all candidates
        for row, text in zip(rows[1:], ODD_BUT_VALID_TEXT.values(), strict=True):
            assert row["context"] == f"<submission>{text}</submission>\n"  # verbatim
    with tally.case("input", "conversations (evaluate --lenient)", "the same split, CLI"):
        capsys.readouterr()
        argv = [
            "evaluate",
            *common,
            "--output_dir",
            tmp_path / "ev",
            "--cache_dir",
            out / "item_tokens",
        ]
        assert main([str(a) for a in argv]) == 0
        again = json.loads((tmp_path / "ev" / "metrics.json").read_text())
        again = again["evaluation"]["test_candidates_st"]
        assert again["skipped_records"] == 3 and again["truncated_conversations"] == 1
        assert again["recall@1"] == evaluation["recall@1"]
