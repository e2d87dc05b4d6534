"""The evaluation's comparison of methods: the table printed (text) and its plot (PNG: Recall@1
per method, the Recall@1 ceiling as a line). The result files are :mod:`results`'s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lavic.io import atomic_open

# (metric key, column header) of the printed table, in order.
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("recall@1", "Recall@1"),
    ("validity@1", "Valid@1"),
    ("hr@3", "HR@3"),
    ("hr@5", "HR@5"),
    ("hr@10", "HR@10"),
    ("mrr", "MRR"),
    ("ndcg@10", "NDCG@10"),
)


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_table(metrics: dict[str, Any]) -> str:
    """A fixed-width table of every method in ``metrics["methods"]``, then the ceiling.

    ``-`` marks a metric the method cannot give (ranking metrics of a single answer).
    """
    methods: dict[str, dict[str, Any]] = metrics["methods"]
    name_width = max(len("method"), *(len(m) for m in methods))
    header = f"{'method':<{name_width}}  " + "  ".join(f"{h:>8}" for _, h in TABLE_COLUMNS)
    lines = [
        f"{metrics.get('category', '')} / {metrics.get('split', '')} / "
        f"{metrics.get('candidate_type', '')}: {metrics.get('num_conversations', 0)} "
        f"conversations, {metrics.get('num_gt_items', 0)} ground-truth items, decoding "
        f"{metrics.get('decoding', '')}",
        header,
        "-" * len(header),
    ]
    for name, values in methods.items():
        cells = "  ".join(f"{_cell(values.get(key)):>8}" for key, _ in TABLE_COLUMNS)
        lines.append(f"{name:<{name_width}}  {cells}")
    lines.append("-" * len(header))
    lines.append(
        f"Recall@1 ceiling (gt in the candidate list): {_cell(metrics.get('recall@1_ceiling'))}"
    )
    return "\n".join(lines)


def write_plot(metrics: dict[str, Any], path: str | Path) -> Path:
    """Bars of Recall@1 per method with the Recall@1 ceiling as a dashed line; PNG, atomic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods: dict[str, dict[str, Any]] = metrics["methods"]
    names = list(methods)
    values = [methods[n].get("recall@1") or 0.0 for n in names]
    ceiling = metrics.get("recall@1_ceiling")
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(names), 3.6), dpi=120)
    bars = ax.bar(names, values, color="#4C72B0")
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], padding=2, fontsize=8)
    if ceiling is not None:
        ax.axhline(
            ceiling, color="#C44E52", linestyle="--", linewidth=1.2, label=f"ceiling {ceiling:.3f}"
        )
        ax.legend(loc="upper right", fontsize=8)
    top = max([*values, ceiling or 0.0, 0.05])
    ax.set_ylim(0, min(1.0, top * 1.25) if top < 0.8 else 1.05)
    ax.set_ylabel("Recall@1")
    ax.set_title(
        f"{metrics.get('category', '')} {metrics.get('split', '')} "
        f"{metrics.get('candidate_type', '')} (n={metrics.get('num_conversations', 0)})",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)
    return path
