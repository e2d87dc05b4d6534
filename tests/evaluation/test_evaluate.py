"""The evaluator end to end with tiny-random on a reference-layout dataset written here: the
reference's output files, the baselines, a tuned artefact, the CLI, and the real published
conversations."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from lavic.cli import main
from lavic.evaluation.evaluate import (
    REFERENCE_SUMMARY_COLUMNS,
    SUMMARY_COLUMNS,
    append_summary,
    evaluate_split,
    random_rankings,
    resolve_model_dir,
)
from lora_artefacts import TuneConfig, write_stage2_artifact

torch.set_num_threads(1)

# Candidates mix ASINs and numeric ISBN-style ids; conversation 2's gt is not in its st list
# (it still counts in Recall@1's denominator), conversation 3 has two gt items.
CONVERSATIONS = [
    {
        "context": "<submission>red striped mug please</submission>\n<comment>a mug</comment>\n",
        "context_items": [],
        "gt": "get B000000001",
        "gt_items": ["B000000001"],
        "candidates_st": ["B000000001", "0060188782", "B000000003"],
        "candidates_gpt_large": ["0060188782", "B000000001"],
    },
    {
        "context": "<submission>a blue lamp</submission>\n",
        "context_items": ["B000000003"],
        "gt": "this one",
        "gt_items": ["B0000000ZZ"],
        "candidates_st": ["B000000003", "B000000004", "0060188782"],
        "candidates_gpt_large": ["B000000004", "B000000003"],
    },
    {
        "context": "<submission>black bag or yellow bottle</submission>\n",
        "context_items": [],
        "gt": "both",
        "gt_items": ["0060188782", "B000000004"],
        "candidates_st": ["0060188782", "B000000004", "B000000001", "B000000003"],
        "candidates_gpt_large": ["B000000001", "0060188782"],
    },
]
TITLES = {
    "B000000001": "Red striped mug",
    "0060188782": None,
    "B000000003": "Blue lamp",
    "B000000004": "Black bag",
}
ITEMS = list(TITLES)
# images: two good ones, one corrupt file, one missing
IMAGES = {"B000000001": (200, 30, 30), "B000000003": (30, 30, 200)}
CORRUPT = "B000000004"
EXPECTED_KEYS = {
    "recall@1",
    "validity@1",
    "recall@1_ceiling",
    "hr@1",
    "hr@3",
    "hr@5",
    "hr@10",
    "mrr",
    "ndcg@1",
    "ndcg@3",
    "ndcg@5",
    "ndcg@10",
    "methods",
    "truncated_conversations",
    "items_without_title",
    "items_without_image",
    "images",
    "throughput_conversations_per_s",
    "num_conversations",
    "num_gt_items",
    "output_file",
    "plot_file",
    "decoding",
    "split",
}


def write_dataset(root: Path) -> dict[str, Path]:
    data = root / "data"
    (data / "toy").mkdir(parents=True)
    for split in ("valid", "test"):
        with open(data / "toy" / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            for conv in CONVERSATIONS:
                handle.write(json.dumps(conv) + "\n")
    meta = data / "item2meta_valid.jsonl"
    with open(meta, "w", encoding="utf-8") as handle:
        for item, title in TITLES.items():
            handle.write(
                json.dumps(
                    {
                        "title": title,
                        "image_name": f"{item}_0.jpg",
                        "image": "",
                        "image_description_llava_cleaned": "x",
                    }
                )
                + "\n"
            )
    images = data / "valid_images"
    images.mkdir()
    for item, colour in IMAGES.items():
        Image.new("RGB", (48, 40), colour).save(images / f"{item}_0.jpg")
    (images / f"{CORRUPT}_0.jpg").write_bytes(b"not a jpeg")
    return {"data_dir": data, "item_meta_path": meta, "image_dir": images}


@pytest.fixture()
def dataset(tmp_path):
    return write_dataset(tmp_path)


def run_eval(dataset, out: Path, **kwargs):
    options = dict(
        model_dir=Path("tiny-random"),
        category="toy",
        candidate_type="candidates_st",
        split="test",
        output_dir=out,
        max_length=512,
        **dataset,
    )
    options.update(kwargs)
    return evaluate_split(**options)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def reference_recall(predictions, gts) -> float:
    """The reference's loop, verbatim in spirit: hits over every gt item."""
    hits = total = 0
    for rec, gt_items in zip(predictions, gts, strict=True):
        for gt in gt_items:
            hits += rec == gt
            total += 1
    return hits / total


def test_evaluate_split_writes_the_reference_files_and_metrics(dataset, tmp_path):
    out = tmp_path / "out"
    metrics = run_eval(dataset, out, text_only_baseline=True, batch_size=2)

    assert set(metrics) >= EXPECTED_KEYS
    assert list(metrics["methods"]) == ["random", "retriever-first", "text-only", "LaViC"]
    assert metrics["num_conversations"] == 3 and metrics["num_gt_items"] == 4
    # ceiling: conversations 1 and 3 can be hit, over 4 gt items (the reference's denominator)
    assert metrics["recall@1_ceiling"] == pytest.approx(2 / 4)
    retriever = metrics["methods"]["retriever-first"]
    assert retriever["recall@1"] == pytest.approx(2 / 4)  # B000000001 and 0060188782 hit
    assert retriever["mrr"] == pytest.approx((1 + 0 + 1 + 1 / 2) / 4)
    assert metrics["items_without_title"] == 1
    assert metrics["images"] == {
        "loaded": 2,
        "missing": 1,
        "unreadable": 1,
        "unsafe": 0,
        "oversized": 0,
    }
    assert metrics["items_without_image"] == 2
    assert metrics["truncated_conversations"] == 0
    assert metrics["throughput_conversations_per_s"] > 0

    # results jsonl: the original fields + the reference's recommended_/response_ keys + ranking
    entries = read_jsonl(out / "test_results_candidates_st.jsonl")
    assert len(entries) == 3
    for entry, conv in zip(entries, CONVERSATIONS, strict=True):
        assert {k: entry[k] for k in conv} == conv
        assert entry["recommended_st"] in conv["candidates_st"]
        assert entry["response_st"] == entry["recommended_st"]
        assert sorted(entry["ranking_st"]) == sorted(conv["candidates_st"])
        assert entry["ranking_st"][0] == entry["recommended_st"]
        assert entry["scores_st"] == sorted(entry["scores_st"], reverse=True)
    predictions = [e["recommended_st"] for e in entries]
    assert metrics["recall@1"] == pytest.approx(
        reference_recall(predictions, [c["gt_items"] for c in CONVERSATIONS])
    )
    assert metrics["hr@1"] == pytest.approx(metrics["recall@1"])
    assert metrics["validity@1"] == 1.0

    # summary csv: the reference's columns first, then ours; one row
    with open(out / "results_summary.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0])[: len(REFERENCE_SUMMARY_COLUMNS)] == REFERENCE_SUMMARY_COLUMNS
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    assert len(rows) == 1
    assert float(rows[0]["recall@1"]) == pytest.approx(metrics["recall@1"])
    assert rows[0]["candidate_type"] == "candidates_st"
    assert rows[0]["output_file"] == str(out / "test_results_candidates_st.jsonl")

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["evaluation"]["test_candidates_st"]["recall@1"] == metrics["recall@1"]
    assert (out / "recall_at_1_test_candidates_st.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_evaluation_appends_and_keeps_the_first(dataset, tmp_path):
    out = tmp_path / "out"
    (out).mkdir()
    (out / "metrics.json").write_text(json.dumps({"train": {"loss": 1.5}}))
    first = run_eval(dataset, out, decoding="constrained")
    second = run_eval(
        dataset,
        out,
        split="valid",
        candidate_type="candidates_gpt_large",
        decoding="generate",
        no_images=True,
    )
    assert first["validity@1"] == 1.0  # constrained is always a candidate
    assert first["hr@3"] is None  # one answer, no ranking
    assert list(second["methods"]) == ["random", "retriever-first", "text-only"]
    assert second["images"] is None
    entries = read_jsonl(out / "valid_results_candidates_gpt_large.jsonl")
    for entry in entries:
        assert {"recommended_gpt_large", "response_gpt_large"} <= set(entry)
        assert "ranking_gpt_large" not in entry
    # generate's prediction is whatever its text names (may be invalid or None)
    valid = [e["recommended_gpt_large"] in e["candidates_gpt_large"] for e in entries]
    assert second["validity@1"] == pytest.approx(sum(valid) / 3)
    with open(out / "results_summary.csv", newline="", encoding="utf-8") as handle:
        text = handle.read()
    assert text.count("model_dir,") == 1  # header once
    rows = list(csv.DictReader(text.splitlines()))
    assert [r["split"] for r in rows] == ["test", "valid"]
    assert [r["decoding"] for r in rows] == ["constrained", "generate"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["train"] == {"loss": 1.5}
    assert set(saved["evaluation"]) == {"test_candidates_st", "valid_candidates_gpt_large"}


def test_baselines_are_seeded_and_text_only_model_dir_runs(dataset, tmp_path):
    lists = [c["candidates_st"] for c in CONVERSATIONS]
    assert random_rankings(lists, 3) == random_rankings(lists, 3)
    assert any(random_rankings(lists, s) != random_rankings(lists, 0) for s in range(1, 6))
    metrics = run_eval(
        dataset, tmp_path / "o", limit=2, text_only_model_dir=Path("tiny-random"), seed=3
    )
    assert metrics["num_conversations"] == 2
    assert "text-only" in metrics["methods"]
    rand = random_rankings(lists[:2], 3)
    hits = [r[0] == c["gt_items"][0] for r, c in zip(rand, CONVERSATIONS, strict=False)]
    assert metrics["methods"]["random"]["recall@1"] == pytest.approx(sum(hits) / 2)


def make_tuned_artefact(root: Path) -> Path:
    """FINETUNE_OUTPUT_DIR/trained_lora_adapter: a non-zero LM LoRA on tiny-random."""
    write_stage2_artifact(root / "trained_lora_adapter", seed=0, config=TuneConfig())
    return root


def test_tuned_artefact_is_loaded_merged_and_its_config_summarised(dataset, tmp_path):
    tuned = make_tuned_artefact(tmp_path / "finetuned")
    assert resolve_model_dir(tuned) == tuned / "trained_lora_adapter"
    base_out, tuned_out = tmp_path / "base", tmp_path / "tuned"
    run_eval(dataset, base_out)
    run_eval(dataset, tuned_out, model_dir=tuned, train_info={"num_epochs": 5})
    base_scores = [
        e["scores_st"] for e in read_jsonl(base_out / "test_results_candidates_st.jsonl")
    ]
    tuned_scores = [
        e["scores_st"] for e in read_jsonl(tuned_out / "test_results_candidates_st.jsonl")
    ]
    assert base_scores != tuned_scores  # the adapter changed the model
    with open(tuned_out / "results_summary.csv", newline="", encoding="utf-8") as handle:
        (row,) = list(csv.DictReader(handle))
    # train_info wins; the rest comes from the artefact's config.yaml
    assert (row["lr"], row["weight_decay"], row["num_epochs"]) == ("0.0003", "0.01", "5")


def test_append_summary_keeps_an_existing_reference_header(tmp_path):
    path = tmp_path / "results_summary.csv"
    path.write_text(",".join(REFERENCE_SUMMARY_COLUMNS) + "\nold,candidates_st,1,2,3,0.1,0.9,f\n")
    append_summary(path, {"model_dir": "new", "recall@1": 0.5, "decoding": "score"})
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert list(rows[0]) == list(REFERENCE_SUMMARY_COLUMNS)
    assert [r["model_dir"] for r in rows] == ["old", "new"]
    assert rows[1]["recall@1"] == "0.5"


def test_cli_prints_the_table_and_reports_bad_input(dataset, tmp_path, capsys):
    argv = [
        "evaluate",
        "--model_dir",
        "tiny-random",
        "--data_dir",
        str(dataset["data_dir"]),
        "--category",
        "toy",
        "--item_meta_path",
        str(dataset["item_meta_path"]),
        "--image_dir",
        str(dataset["image_dir"]),
        "--output_dir",
        str(tmp_path / "cli"),
        "--max_length",
        "512",
        "--limit",
        "2",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "retriever-first" in printed and "LaViC" in printed and "ceiling" in printed
    assert main([*argv, "--candidate_type", "candidates_nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "candidates_nope" in err


@pytest.mark.parametrize("split", ["valid", "test"])
def test_real_published_conversations_run_with_everything_missing(shared_data, tmp_path, split):
    """The shared valid/test conversations: no titles for their items, no images at all."""
    metrics = evaluate_split(
        model_dir=Path("tiny-random"),
        data_dir=shared_data,
        category="all_beauty",
        candidate_type="candidates_st",
        split=split,
        item_meta_path=shared_data / "item2meta_valid.jsonl",
        image_dir=None,
        output_dir=tmp_path,
        limit=3,
        batch_size=3,
        max_length=1024,
    )
    lines = (shared_data / "all_beauty" / f"{split}.jsonl").read_text().splitlines()[:3]
    distinct = len({i for line in lines for i in json.loads(line)["candidates_st"]})
    assert metrics["num_conversations"] == 3
    assert metrics["items_without_title"] == metrics["num_candidate_items"] == distinct
    assert metrics["images"]["missing"] == metrics["items_without_image"] == distinct
    assert metrics["validity@1"] == 1.0
    entries = read_jsonl(tmp_path / f"{split}_results_candidates_st.jsonl")
    assert len(entries) == 3 and all("recommended_st" in e for e in entries)


def test_token_cache_gives_the_in_memory_results(dataset, tmp_path):
    """Item tokens read from the cache folder = tokens computed in memory (same scores),
    with the same image counts, on a first (encoding) and a second (reusing) run."""
    memory = run_eval(dataset, tmp_path / "memory")
    cached = [
        run_eval(dataset, tmp_path / f"cached{i}", cache_dir=tmp_path / "cache") for i in range(2)
    ]
    want = read_jsonl(tmp_path / "memory" / "test_results_candidates_st.jsonl")
    for i, metrics in enumerate(cached):
        got = read_jsonl(tmp_path / f"cached{i}" / "test_results_candidates_st.jsonl")
        assert [e["ranking_st"] for e in got] == [e["ranking_st"] for e in want]
        for g, w in zip(got, want, strict=True):
            assert g["scores_st"] == pytest.approx(w["scores_st"], abs=1e-4)
        assert metrics["images"] == memory["images"]


def test_described_title_puts_the_description_after_the_title():
    from lavic.constants import MISSING_TITLE
    from lavic.data.records import ItemMeta
    from lavic.evaluation.evaluate import described_title

    meta = {
        "A": ItemMeta("A", "Red mug", ("A_0.jpg", "A_1.jpg"), {}, {"A_1.jpg": " a red\n mug "}),
        "B": ItemMeta("B", "Lamp", ("B_0.jpg",), {}, {"B_0.jpg": "   "}),
        "C": ItemMeta("C", None, ("C_0.jpg",), {}, {"C_0.jpg": "a plain box"}),
    }
    assert described_title(meta, "A") == "Red mug — a red mug"  # first described image
    assert described_title(meta, "B") == "Lamp"  # nothing described: the title alone
    assert described_title(meta, "C") == f"{MISSING_TITLE} — a plain box"
    assert described_title(meta, "Z") == MISSING_TITLE  # not in the catalogue


def test_the_described_baseline_reads_descriptions_instead_of_item_tokens(
    dataset, tmp_path, monkeypatch
):
    """A third pass: the same model, no item tokens, each candidate's title followed by its
    image's description; the LaViC and text-only passes are unchanged."""
    from lavic.evaluation import evaluate

    seen: list[tuple[bool, tuple[str, ...]]] = []
    real = evaluate.build_recommend_prompt

    def recording(tok, context, titles, **kwargs):
        seen.append((kwargs["with_images"], tuple(t for _, t in titles)))
        return real(tok, context, titles, **kwargs)

    monkeypatch.setattr(evaluate, "build_recommend_prompt", recording)
    metrics = run_eval(dataset, tmp_path / "out", text_only_baseline=True, described_baseline=True)
    assert list(metrics["methods"]) == [
        "random",
        "retriever-first",
        "text-only",
        "described",
        "LaViC",
    ]
    n = len(CONVERSATIONS)
    assert len(seen) == 3 * n
    lavic, text, described = seen[:n], seen[n : 2 * n], seen[2 * n :]
    assert all(with_images for with_images, _ in lavic)
    assert not any(with_images for with_images, _ in text + described)
    assert [t for _, t in lavic] == [t for _, t in text]
    for (_, plain), (_, worded) in zip(text, described, strict=True):
        assert worded == tuple(f"{t} — x" for t in plain)  # every test item is described "x"
