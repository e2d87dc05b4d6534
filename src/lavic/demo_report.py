"""The demo's report: training curves of both stages, results as bars, and a sheet of example
conversations with their candidates' images and the pick (right or wrong)."""

from __future__ import annotations

import csv
import json
import math
import textwrap
from pathlib import Path
from typing import Any

from lavic.artifacts import read_metrics
from lavic.io import atomic_write_text

METHOD_ORDER = ("random", "retriever-first", "text-only", "LaViC", "described")
COLOURS = {
    "random": "#9e9e9e",
    "retriever-first": "#64b5f6",
    "text-only": "#ffb74d",
    "LaViC": "#43a047",
    "described": "#8e24aa",
}


def compare_to_text_only(methods: dict[str, Any], n: int) -> str:
    """One sentence: is LaViC's Recall@1 above text-only's beyond sampling noise?

    The two rates are compared against twice the standard error of their difference
    (``sqrt(p1(1-p1)/n + p2(1-p2)/n)``, at least ``1/n``), so a 20-conversation demo does not
    call a one-answer difference a win.
    """
    lavic, text = methods["LaViC"]["recall@1"], methods["text-only"]["recall@1"]
    n = max(int(n), 1)
    margin = 2 * max((lavic * (1 - lavic) / n + text * (1 - text) / n) ** 0.5, 1 / n)
    diff = lavic - text
    if diff > margin:
        verdict = "above text-only"
    elif diff < -margin:
        verdict = "below text-only"
    else:
        verdict = "not distinguishable from text-only"
    return f"LaViC {lavic:.3f} vs text-only {text:.3f} ({diff:+.3f}, noise +/-{margin:.3f} on {n}): {verdict}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _csv_series(run_dir: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of ``key`` from the run's Lightning CSV logs (latest version)."""
    files = sorted(run_dir.glob("logs/**/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        return []
    points = []
    with files[-1].open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row.get(key) not in (None, "") and row.get("step") not in (None, ""):
                points.append((int(float(row["step"])), float(row[key])))
    return points


def plot_training(stage1_dir: Path, tune_dir: Path, path: Path) -> None:
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    stage1 = read_metrics(stage1_dir) or {}
    train = [p for k in ("train_loss_step", "train_loss") for p in _csv_series(stage1_dir, k)]
    if train:
        ax1.plot(*zip(*sorted(train), strict=True), color="#90a4ae", label="train loss")
    val = [(e["step"], e["val_loss"]) for e in stage1.get("epochs", []) if "val_loss" in e]
    if stage1.get("val_ppl_before"):  # validated at step 0, before any training
        val.insert(0, (0, math.log(stage1["val_ppl_before"])))
    if val:
        ax1.plot(*zip(*val, strict=True), "o-", color="#d81b60", label="validation loss")
    mismatched = stage1.get("val_ppl_best_mismatched")
    best_step = stage1.get("best_step")
    if mismatched and best_step is not None:
        ax1.plot(
            [best_step],
            [math.log(mismatched)],
            "x",
            ms=9,
            color="#d81b60",
            label="validation, another item's image",
        )
    teacher = stage1.get("val_ppl_teacher")
    if teacher:
        ax1.axhline(math.log(teacher), ls="--", color="k", lw=1, label="teacher (full image)")
    ax1.set(
        title="Stage 1: distillation (5 tokens per image)",
        xlabel="step",
        ylabel="description NLL / token",
    )
    ax1.legend(fontsize=8)
    steps = (read_metrics(tune_dir) or {}).get("train_steps", [])
    if steps:
        ax2.plot([s["step"] for s in steps], [s["train_loss"] for s in steps], color="#43a047")
    ax2.set(
        title="Stage 2: recommendation prompt tuning (all categories)",
        xlabel="step",
        ylabel="answer NLL / token",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_results(categories: list[str], evaluations: dict[str, dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(2.6 + 2.4 * len(categories), 3.8))
    width = 0.16
    for i, category in enumerate(categories):
        methods = evaluations[category]["methods"]
        for j, name in enumerate(METHOD_ORDER):
            if name in methods:
                value = methods[name]["recall@1"]
                x = i + (j - (len(METHOD_ORDER) - 1) / 2) * width
                ax.bar(x, value, width, color=COLOURS[name], label=name if i == 0 else None)
                ax.text(x, value + 0.01, f"{value:.2f}", ha="center", fontsize=7)
        ceiling = evaluations[category]["recall@1_ceiling"]
        ax.hlines(
            ceiling,
            i - 0.45,
            i + 0.45,
            colors="k",
            linestyles="--",
            label="ceiling" if i == 0 else None,
        )
    ax.set_xticks(range(len(categories)), categories)
    ax.set(ylabel="Recall@1 (test)", ylim=(0, 1.05), title="Which candidate is the one asked for?")
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _request_text(context: str, width: int = 150) -> str:
    import re

    text = re.sub(r"</?(submission|comment)>", " ", context)
    text = " ".join(text.split())
    return "\n".join(textwrap.wrap(text, width)[:3])


def plot_examples(
    out: Path, categories: list[str], data: Path, path: Path, per_category: int = 2
) -> None:
    """Rows of candidates' images for a few test conversations: the pick framed green when
    right, red when wrong; the asked-for item marked with a star."""
    from lavic.data.images import item_image_name, load_image

    plt = _pyplot()
    rows = []
    for category in categories:
        results = out / category / "eval" / f"test_results_{'candidates_st'}.jsonl"
        if not results.is_file():
            continue
        entries = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines()]
        right = [e for e in entries if e.get("recommended_st") in e["gt_items"]]
        wrong = [
            e
            for e in entries
            if e.get("recommended_st") not in e["gt_items"]
            and any(g in e["candidates_st"] for g in e["gt_items"])
        ]
        chosen = (right[: per_category - 1] + wrong[:1]) if wrong else right[:per_category]
        rows += [(category, e) for e in chosen[:per_category]]
    if not rows:
        return
    k = max(len(e["candidates_st"]) for _, e in rows)
    # Per conversation: a text row (the request) above a row of candidate images.
    fig, axes = plt.subplots(
        2 * len(rows),
        k,
        figsize=(1.45 * k, 2.6 * len(rows)),
        squeeze=False,
        gridspec_kw={"height_ratios": [0.45, 2.0] * len(rows)},
    )
    for r, (category, entry) in enumerate(rows):
        pick, gts = entry.get("recommended_st"), set(entry["gt_items"])
        verdict = "right" if pick in gts else "wrong"
        text_row, image_row = axes[2 * r], axes[2 * r + 1]
        for ax in text_row:
            ax.axis("off")
        text_row[0].text(
            0,
            0.5,
            f"[{category}] LaViC is {verdict}: " + _request_text(entry["context"]),
            fontsize=7,
            va="center",
            transform=text_row[0].transAxes,
        )
        for c in range(k):
            ax = image_row[c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(entry["candidates_st"]):
                ax.axis("off")
                continue
            item = entry["candidates_st"][c]
            ax.imshow(load_image(data / "train_images", item_image_name(item)))
            ax.set_xlabel(("★ " if item in gts else "") + item, fontsize=6)
            if item == pick:
                for spine in ax.spines.values():
                    spine.set_edgecolor("#2e7d32" if item in gts else "#c62828")
                    spine.set_linewidth(3)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.98, bottom=0.03, hspace=0.35, wspace=0.1)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _look_lines(looks: dict[str, dict[str, float]] | None) -> list[str]:
    """The stage-1 paragraph on the look words (colour, pattern) alone, if measured."""
    if not looks:
        return []
    real, other = looks["student_real"], looks["student_shuffled"]
    return [
        "Most description tokens are template words that do not depend on the image; the look "
        "words do. Their NLL per token after distillation, given the item's own image "
        f"**{real['look_nll']:.2f}**, given another item's image **{other['look_nll']:.2f}** "
        f"({real['look_tokens']} look-word tokens; the rest: {real['other_nll']:.2f} and "
        f"{other['other_nll']:.2f}).",
        "",
    ]


def _ladder_lines(categories: list[str], ladder: list[tuple[str, dict[str, str]]] | None):
    if not ladder:
        return []
    return [
        "## The ladder (test split, Recall@1, the same conversations on every rung)",
        "",
        "Where the accuracy is lost: the answer among the candidates (ceiling); this run's "
        "model reading each candidate's image description in words instead of its item tokens "
        "(what the images can tell, as text, to a model tuned on the tokens); LaViC reading the "
        "five tokens, the reference trained long (when one is shipped) and this run's model; "
        "the same model without the tokens; a random pick. "
        "The last column pools every category, with its 95% noise band.",
        "",
        f"| rung | {' | '.join(categories)} | all |",
        f"|---|{'---|' * len(categories)}---|",
        *(
            f"| {name} | {' | '.join(row[c] for c in categories)} | {row['all']} |"
            for name, row in ladder
        ),
        "",
    ]


def write_report(
    out: Path,
    categories: list[str],
    evaluations: dict[str, dict[str, Any]],
    budget: dict[str, Any],
    *,
    stage1_dir: Path,
    tune_dir: Path,
    stage1_looks: dict[str, dict[str, float]] | None = None,
    ladder: list[tuple[str, dict[str, str]]] | None = None,
) -> Path:
    """Write ``report.md`` and its PNGs into ``out``; returns the report's path.

    ``ladder``: :func:`lavic.demo.ladder`'s rows (where the accuracy is lost, rung by rung)."""
    plot_training(stage1_dir, tune_dir, out / "training_curves.png")
    plot_results(categories, evaluations, out / "results.png")
    plot_examples(out, categories, out / "data", out / "examples.png")
    stage1 = read_metrics(stage1_dir) or {}
    lines = [
        "# LaViC demo report",
        "",
        "A synthetic catalogue whose titles do not reveal an item's look while the conversations "
        "ask for it: text alone cannot tell the candidates apart, the images can. Test answers "
        "and test candidates were never an answer in training (cold items). Text-only is the "
        "same tuned model given the prompt without the five item tokens. One stage-2 model is "
        "tuned on the train conversations of every category and tested on each.",
        "",
        *_ladder_lines(categories, ladder),
        "## Results (test split, Recall@1 / Validity@1)",
        "",
        "| category | random | retriever first | text-only | LaViC | described | ceiling |",
        "|---|---|---|---|---|---|---|",
    ]
    for category in categories:
        m = evaluations[category]["methods"]

        def cell(name: str, m=m) -> str:
            if name not in m:
                return "-"
            return f"{m[name]['recall@1']:.3f} / {m[name]['validity@1']:.2f}"

        lines.append(
            f"| {category} | {cell('random')} | {cell('retriever-first')} | {cell('text-only')} "
            f"| {cell('LaViC')} | {cell('described')} "
            f"| {evaluations[category]['recall@1_ceiling']:.3f} |"
        )
    lines.append("")
    for category in categories:
        metrics = evaluations[category]
        comparison = compare_to_text_only(metrics["methods"], metrics["num_conversations"])
        lines.append(f"- {category}: {comparison}.")
    lines += [
        "",
        "![results](results.png)",
        "",
        "## Stage 1: does the 5-token compression work?",
        "",
        "Validation perplexity of the descriptions given the 5 item tokens before training "
        f"**{stage1.get('val_ppl_before', float('nan')):.2f}**, after distillation "
        f"**{stage1.get('val_ppl_best', float('nan')):.2f}**, and given the full image tokens "
        f"(teacher) **{(stage1.get('val_ppl_teacher') or float('nan')):.2f}**; the distilled "
        "tokens given another item's image (the control: how much of the gain is visual) "
        f"**{(stage1.get('val_ppl_best_mismatched') or float('nan')):.2f}**.",
        "",
        *_look_lines(stage1_looks),
        "![training curves](training_curves.png)",
        "",
        "## Token budget per candidate",
        "",
        f"LaViC: **{budget['lavic_tokens_per_candidate']}** visual tokens. This backbone's full "
        f"image tokens: {budget['backbone_full_tokens_per_candidate_mean']:.0f} on average "
        f"(max {budget['backbone_full_tokens_per_candidate_max']}); LLaVA-v1.6: up to "
        f"{budget['llava_v16_full_tokens_per_candidate_max']}.",
        "",
        "## Examples",
        "",
        "Each row is one test conversation and its candidates; the pick is framed (green: right,"
        " red: wrong) and the item asked for is starred.",
        "",
        "![examples](examples.png)",
        "",
    ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
