"""``lavic evaluate``: answer every conversation of a split with a model, score it against
baselines and write the reference's result files (:mod:`lavic.evaluation.results`).

The model is a tune artefact, or, for the zero-shot row, a distill artefact or a backbone as it
is (``--model_dir tiny``; with ``--no_images`` that measures the language model's text skill);
see :mod:`lavic.model.inference`.

Outputs in ``OUTPUT_DIR``: ``<split>_results_<candidate_type>.jsonl``, ``results_summary.csv``,
``metrics.json`` (under ``evaluation.<split>_<candidate_type>``: Recall@1 (the reference's
definition), Validity@1, the Recall@1 ceiling, HR@k / MRR / NDCG@k, counts of truncated prompts
and missing titles and images, throughput, and the same metrics for the baselines) and
``recall_at_1_<split>_<candidate_type>.png``, the comparison as a bar plot.

The baselines: a seeded random candidate, the retriever's first candidate (the lists are
ranked by the retriever), and text-only (the model given ``--text_only_model_dir``, or with
``--text_only_baseline`` the same model, reading the prompt without item tokens;
``--described_baseline`` the same model reading each candidate's image description in words).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from lavic.config import InferenceArgs, RecommendDataArgs
from lavic.data.images import ImageStats, item_image_name, placeholder_image, read_image
from lavic.data.loaders import item_title, items_without_title, load_item_meta, load_split
from lavic.data.records import Conversation, ItemMeta, LoadReport
from lavic.errors import LavicError
from lavic.evaluation.comparison import format_table, write_plot
from lavic.evaluation.results import (
    REFERENCE_SUMMARY_COLUMNS,
    SUMMARY_COLUMNS,
    SUMMARY_FILE,
    append_summary,
    results_file_name,
    summary_row,
    training_hyperparameters,
    update_metrics_file,
    write_results,
)
from lavic.metrics import (
    hit_rate_at_k,
    mrr,
    ndcg_at_k,
    recall_at_1,
    recall_at_1_ceiling,
    validity_at_1,
)
from lavic.model.backbone import Backbone, unwrap
from lavic.model.decoding import DECODINGS, Decoded, decode_batch, prepare_prompts
from lavic.model.inference import load_model, resolve_model_dir
from lavic.model.item_tokens import make_item_encoder
from lavic.prompts import build_recommend_prompt

logger = logging.getLogger(__name__)

RANK_KS: tuple[int, ...] = (1, 3, 5, 10)


@dataclass(kw_only=True)
class Args(RecommendDataArgs, InferenceArgs):
    """Options of ``lavic evaluate``: the data and prompt options (:class:`RecommendDataArgs`),
    where the model answers (:class:`InferenceArgs`), and its own."""

    model_dir: Path = field(
        metadata={
            "help": "tune artefact (FINETUNE_OUTPUT_DIR or its "
            "trained_lora_adapter/); a distill artefact or a "
            "backbone name evaluates zero-shot"
        }
    )
    output_dir: Path = field(metadata={"help": "where the result files are written"})
    split: str = field(default="test", metadata={"help": "split to evaluate: valid or test"})
    text_only_model_dir: Path | None = field(
        default=None, metadata={"help": "a text-only tuned model run as the text-only baseline"}
    )
    text_only_baseline: bool = field(
        default=False,
        metadata={
            "help": "also run the same model on the text-only prompt as "
            "the text-only baseline (a second pass)"
        },
    )
    described_baseline: bool = field(
        default=False,
        metadata={
            "help": "also run the same model on the text-only prompt whose candidates carry "
            "their image's description in words (from the metadata: `lavic describe` writes "
            "the teacher's) after the title: what the images can tell, as text (a third pass)"
        },
    )
    batch_size: int = field(default=1, metadata={"help": "conversations per forward"})
    max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "generate only: new tokens (default: longest candidate "
            "answer, at least the reference's 10)"
        },
    )
    cache_dir: Path | None = field(
        default=None, metadata={"help": "item visual-token cache folder (reused across runs)"}
    )
    limit: int | None = field(
        default=None, metadata={"help": "evaluate only the first N conversations"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the random-candidate baseline"})

    def __post_init__(self):
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError("--batch_size must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("--limit must be >= 1")
        if self.decoding not in DECODINGS:
            raise ValueError(f"--decoding must be one of {DECODINGS}")

    @classmethod
    def following(cls, run_config: RecommendDataArgs, **values: Any) -> Args:
        """The evaluation of a training run's artefact: the run's :class:`RecommendDataArgs`
        options, plus ``values`` (``model_dir``, ``output_dir``, ``split``, ``batch_size``,
        ...)."""
        return cls(**{**RecommendDataArgs.values_of(run_config), **values})


def run(args: Args) -> int:
    metrics = Evaluator(args).evaluate()
    print(format_table(metrics))
    print(f"results: {metrics['output_file']}\nplot: {metrics['plot_file']}")
    return 0


# --------------------------------------------------------------------------------------------
# Item tokens
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_items(
    backbone: Backbone,
    item_ids: Sequence[str],
    image_dir: Path | None,
    *,
    stats: ImageStats,
    batch_size: int = 16,
) -> dict[str, torch.Tensor]:
    """Each item's five visual tokens ``(5, D)`` from its ``<item>_0.jpg``, in memory.

    An item whose image is missing or unreadable gets the placeholder's tokens (encoded once)
    and is counted in ``stats``. The tokens come from the same encoder as the token cache's
    (:func:`lavic.model.item_tokens.make_item_encoder`).
    """
    encode = make_item_encoder(backbone)
    tokens: dict[str, torch.Tensor] = {}
    placeholder: torch.Tensor | None = None
    pending: list[tuple[str, Any]] = []

    def flush():
        if not pending:
            return
        encoded = encode([img for _, img in pending])  # (n, 5, D)
        for (item_id, _), t in zip(pending, encoded, strict=True):
            tokens[item_id] = t
        pending.clear()

    for item_id in tqdm(item_ids, desc="item tokens", unit="item", leave=False):
        image, outcome = (
            (None, "missing")
            if image_dir is None
            else read_image(image_dir, item_image_name(item_id))
        )
        stats.add(outcome)
        if image is None:
            if placeholder is None:
                placeholder = encode([placeholder_image()])[0]
            tokens[item_id] = placeholder
            continue
        pending.append((item_id, image))
        if len(pending) >= batch_size:
            flush()
    flush()
    return tokens


def _item_tokens(
    backbone: Backbone,
    artefact: Path,
    item_ids: list[str],
    image_dir: Path | None,
    cache_dir: Path | None,
    stats: ImageStats,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    if cache_dir is None or image_dir is None:  # no images: all placeholders, nothing to cache
        return encode_items(backbone, item_ids, image_dir, stats=stats, batch_size=batch_size)
    from lavic.cache.store import adapter_fingerprint, build_item_token_cache

    cache = build_item_token_cache(
        backbone,
        item_ids,
        image_dir,
        cache_dir,
        fingerprint=adapter_fingerprint(artefact),
        batch_size=batch_size,
        stats=stats,
    )
    stacked = cache.get(item_ids)  # (M, 5, D)
    return dict(zip(item_ids, stacked, strict=True))


# --------------------------------------------------------------------------------------------
# One decoding pass over the conversations
# --------------------------------------------------------------------------------------------


@dataclass
class PassResult:
    decoded: list[Decoded]
    truncated: int  # prompts whose conversation was cut to fit max_length
    tokens_dropped: int  # conversation tokens cut, in total
    seconds: float


def _titles(
    meta: dict[str, ItemMeta], candidates: Sequence[str], *, described: bool = False
) -> list[tuple[str, str]]:
    """``(id, title)`` per candidate; ``described``: the title followed by the description of
    the item's first described image, in words (the ``described`` baseline's prompt)."""
    title = described_title if described else item_title
    return [(c, title(meta, c)) for c in candidates]


def described_title(meta: dict[str, ItemMeta], item_id: str) -> str:
    """``title — description`` (whitespace folded); the title alone when nothing is described."""
    title = item_title(meta, item_id)
    item = meta.get(item_id)
    if item is None:
        return title
    names = list(item.image_names) + [n for n in item.descriptions if n not in item.image_names]
    text = next((item.descriptions[n] for n in names if item.descriptions.get(n, "").strip()), "")
    text = " ".join(text.split())
    return f"{title} — {text}" if text else title


def decode_conversations(
    backbone: Backbone,
    conversations: Sequence[Conversation],
    candidate_type: str,
    meta: dict[str, ItemMeta],
    item_tokens: dict[str, torch.Tensor] | None,
    *,
    decoding: str,
    max_length: int,
    batch_size: int,
    max_new_tokens: int | None = None,
    desc: str = "evaluate",
    described: bool = False,
) -> PassResult:
    """Answer every conversation (prompts with item tokens unless ``item_tokens`` is None;
    ``described``: each candidate's title followed by its image's description in words)."""
    tok = backbone.tokenizer
    with_images = item_tokens is not None
    decoded: list[Decoded] = []
    truncated = dropped = 0
    device = next(unwrap(backbone.model).parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    bar = tqdm(total=len(conversations), desc=desc, unit="conv")
    for lo in range(0, len(conversations), batch_size):
        chunk = conversations[lo : lo + batch_size]
        prompts, embeds, cands = [], [], []
        for conv in chunk:
            candidates = conv.candidate_list(candidate_type)
            prompt = build_recommend_prompt(
                tok,
                conv.context,
                _titles(meta, candidates, described=described),
                max_length=max_length,
                with_images=with_images,
            )
            truncated += prompt.truncated
            dropped += prompt.conversation_tokens_dropped
            prompts.append(prompt.text)
            cands.append(list(candidates))
            embeds.append(
                torch.stack([item_tokens[c] for c in candidates]) if with_images else None
            )
        with backbone.autocast():  # CPU bf16 when `--dtype auto` chose it
            batch = prepare_prompts(backbone.model, tok, prompts, embeds, max_length=max_length)
            decoded.extend(
                decode_batch(
                    backbone.model,
                    tok,
                    batch,
                    cands,
                    decoding,
                    max_new_tokens=max_new_tokens,
                    suppress_ids=backbone.item_token_ids,
                )
            )
        bar.update(len(chunk))
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return PassResult(decoded, truncated, dropped, time.perf_counter() - start)


# --------------------------------------------------------------------------------------------
# Metrics and baselines
# --------------------------------------------------------------------------------------------


def method_metrics(
    predictions: Sequence[str | None],
    rankings: Sequence[Sequence[str]] | None,
    candidate_lists: Sequence[Sequence[str]],
    gt_items: Sequence[Sequence[str]],
) -> dict[str, float | None]:
    """Recall@1, Validity@1 and (given a full ranking) HR@k, MRR and NDCG@k."""
    out: dict[str, float | None] = {
        "recall@1": recall_at_1(predictions, gt_items),
        "validity@1": validity_at_1(predictions, candidate_lists),
    }
    for k in RANK_KS:
        out[f"hr@{k}"] = hit_rate_at_k(rankings, gt_items, k) if rankings is not None else None
    out["mrr"] = mrr(rankings, gt_items) if rankings is not None else None
    for k in RANK_KS:
        out[f"ndcg@{k}"] = ndcg_at_k(rankings, gt_items, k) if rankings is not None else None
    return out


def random_rankings(candidate_lists: Sequence[Sequence[str]], seed: int) -> list[list[str]]:
    """A seeded uniformly random order of each list's distinct candidates."""
    rng = random.Random(seed)
    out = []
    for candidates in candidate_lists:
        ranking = list(dict.fromkeys(candidates))
        rng.shuffle(ranking)
        out.append(ranking)
    return out


# --------------------------------------------------------------------------------------------
# The evaluator
# --------------------------------------------------------------------------------------------


@dataclass
class EvalData:
    """The conversations of a split and what the metrics compare against."""

    conversations: list[Conversation]
    meta: dict[str, ItemMeta]
    candidate_lists: list[list[str]]
    gt_items: list[list[str]]
    item_ids: list[str]  # every candidate, once, in first-seen order
    missing_titles: list[str]
    skipped_records: int


class Evaluator:
    """Evaluate one model on one split, as configured by :class:`Args`.

    The primary metric is ``recall@1`` of the model (``LaViC``, or ``text-only`` with
    ``no_images``); ``methods`` holds every method's metrics (the baselines too).

    Example:
        >>> metrics = Evaluator(Args(model_dir=Path("tiny-random"), ...)).evaluate()
    """

    primary_metric = "recall@1"

    def __init__(self, args: Args):
        self.args = args

    # ---------------------------------------------------------------------- steps

    def load_data(self) -> EvalData:
        """The split's conversations (``limit`` applied) and the items they show."""
        a = self.args
        report = LoadReport(str(a.data_dir))
        conversations = load_split(
            a.data_dir,
            a.category,
            a.split,
            lenient=a.lenient,
            report=report,
            candidate_key=a.candidate_type,
        )
        if a.limit is not None:
            conversations = conversations[: a.limit]
        if not conversations:
            raise LavicError(
                f"{a.data_dir}/{a.category}/{a.split}.jsonl: no conversations to evaluate"
            )
        meta = (
            load_item_meta(a.item_meta_path, lenient=a.lenient)
            if a.item_meta_path is not None
            else {}
        )
        candidate_lists = [list(c.candidate_list(a.candidate_type)) for c in conversations]
        item_ids = list(dict.fromkeys(i for cs in candidate_lists for i in cs))
        return EvalData(
            conversations=conversations,
            meta=meta,
            candidate_lists=candidate_lists,
            gt_items=[list(c.gt_items) for c in conversations],
            item_ids=item_ids,
            missing_titles=items_without_title(meta, item_ids),
            skipped_records=report.num_skipped,
        )

    def decode(
        self,
        backbone: Backbone,
        data: EvalData,
        tokens: dict[str, torch.Tensor] | None,
        desc: str,
        *,
        described: bool = False,
    ) -> PassResult:
        """One pass over the conversations (with item tokens unless ``tokens`` is None)."""
        a = self.args
        return decode_conversations(
            backbone,
            data.conversations,
            a.candidate_type,
            data.meta,
            tokens,
            decoding=a.decoding,
            max_length=a.max_length,
            batch_size=a.batch_size,
            max_new_tokens=a.max_new_tokens,
            desc=desc,
            described=described,
        )

    def score(self, result: PassResult, data: EvalData) -> dict[str, Any]:
        """A pass's metrics (rank metrics when every answer came with a full ranking)."""
        rankings = (
            [d.ranking for d in result.decoded]
            if all(d.ranking is not None for d in result.decoded)
            else None
        )
        values = method_metrics(
            [d.recommended for d in result.decoded], rankings, data.candidate_lists, data.gt_items
        )
        n = len(data.conversations)
        values["throughput_conversations_per_s"] = n / max(result.seconds, 1e-9)
        return values

    def baselines(self, data: EvalData) -> dict[str, dict[str, Any]]:
        """The seeded random candidate and the retriever's first candidate."""
        rand = random_rankings(data.candidate_lists, self.args.seed)
        retriever = [list(dict.fromkeys(c)) for c in data.candidate_lists]
        return {
            "random": method_metrics(
                [r[0] for r in rand], rand, data.candidate_lists, data.gt_items
            ),
            "retriever-first": method_metrics(
                [r[0] for r in retriever], retriever, data.candidate_lists, data.gt_items
            ),
        }

    # ---------------------------------------------------------------------- the whole run

    def evaluate(
        self, *, backbone: Backbone | None = None, train_info: dict | None = None
    ) -> dict[str, Any]:
        """Evaluate; write the result files; return the metrics.

        Args:
            backbone: an already loaded model for ``args.model_dir`` (e.g. from training).
            train_info: ``lr``, ``weight_decay``, ``num_epochs`` for the summary row (else read
                from the artefact's ``config.yaml``).

        Returns:
            The metrics (also written to ``metrics.json``); ``methods`` holds every method's.
        """
        a = self.args
        model_dir, output_dir = Path(a.model_dir), Path(a.output_dir)
        if a.decoding not in DECODINGS:
            raise LavicError(f"unknown decoding {a.decoding!r}; choose from {list(DECODINGS)}")
        data = self.load_data()
        artefact = resolve_model_dir(model_dir)
        if backbone is None:
            backbone = load_model(model_dir, device=a.device, dtype=a.dtype)
        image_stats = ImageStats()
        encode_seconds = 0.0
        tokens = None
        if not a.no_images:
            start = time.perf_counter()
            tokens = _item_tokens(
                backbone,
                artefact,
                data.item_ids,
                a.image_dir,
                a.cache_dir,
                image_stats,
                batch_size=max(16, a.batch_size),
            )
            encode_seconds = time.perf_counter() - start
            if image_stats.placeholders:
                logger.warning(
                    "%d of %d candidate items have no readable image (placeholder used)",
                    image_stats.placeholders,
                    len(data.item_ids),
                )
        if data.missing_titles:
            logger.warning(
                "%d of %d candidate items have no title (%r used)",
                len(data.missing_titles),
                len(data.item_ids),
                "No Title",
            )

        main_name = "text-only" if a.no_images else "LaViC"
        main = self.decode(backbone, data, tokens, main_name)
        if main.truncated:
            logger.warning(
                "%d of %d prompts were cut to fit max_length=%d (conversation only)",
                main.truncated,
                len(data.conversations),
                a.max_length,
            )
        methods = self.baselines(data)
        if not a.no_images and (a.text_only_model_dir is not None or a.text_only_baseline):
            text_backbone = (
                load_model(a.text_only_model_dir, device=a.device, dtype=a.dtype)
                if a.text_only_model_dir is not None
                else backbone
            )
            methods["text-only"] = self.score(
                self.decode(text_backbone, data, None, "text-only"), data
            )
            del text_backbone
        if a.described_baseline:
            described = sum(
                described_title(data.meta, i) != item_title(data.meta, i) for i in data.item_ids
            )
            if described < len(data.item_ids):
                logger.warning(
                    "described baseline: %d of %d candidate items have no description (title "
                    "alone)",
                    len(data.item_ids) - described,
                    len(data.item_ids),
                )
            methods["described"] = self.score(
                self.decode(backbone, data, None, "described", described=True), data
            )
        methods[main_name] = self.score(main, data)

        output_dir.mkdir(parents=True, exist_ok=True)
        results_path = output_dir / results_file_name(a.split, a.candidate_type)
        write_results(results_path, data.conversations, main.decoded, a.candidate_type)
        plot_path = output_dir / f"recall_at_1_{a.split}_{a.candidate_type}.png"
        primary = methods[main_name]
        metrics: dict[str, Any] = {
            "primary_metric": self.primary_metric,
            "method": main_name,
            **{k: v for k, v in primary.items() if k != "throughput_conversations_per_s"},
            "recall@1_ceiling": recall_at_1_ceiling(data.candidate_lists, data.gt_items),
            "methods": methods,
            "model_dir": str(model_dir),
            "text_only_model_dir": str(a.text_only_model_dir) if a.text_only_model_dir else None,
            "category": a.category,
            "split": a.split,
            "candidate_type": a.candidate_type,
            "decoding": a.decoding,
            "no_images": a.no_images,
            "max_length": a.max_length,
            "autocast": str(backbone.autocast_dtype).removeprefix("torch.")
            if backbone.autocast_dtype is not None
            else None,
            "num_conversations": len(data.conversations),
            "num_gt_items": sum(len(g) for g in data.gt_items),
            "num_candidate_items": len(data.item_ids),
            "skipped_records": data.skipped_records,
            "truncated_conversations": main.truncated,
            "conversation_tokens_dropped": main.tokens_dropped,
            "items_without_title": len(data.missing_titles),
            "items_without_image": image_stats.placeholders if not a.no_images else None,
            "images": image_stats.as_dict() if not a.no_images else None,
            "throughput_conversations_per_s": primary["throughput_conversations_per_s"],
            "decode_seconds": main.seconds,
            "item_encoding_seconds": encode_seconds,
            "output_file": str(results_path),
            "plot_file": str(plot_path),
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_plot(metrics, plot_path)
        update_metrics_file(output_dir, f"{a.split}_{a.candidate_type}", metrics)
        append_summary(
            output_dir / SUMMARY_FILE,
            summary_row(metrics, training_hyperparameters(artefact, train_info)),
        )
        logger.info(
            "%s %s/%s %s: Recall@1 %.4f (ceiling %.4f), Validity@1 %.4f; wrote %s",
            main_name,
            a.category,
            a.split,
            a.candidate_type,
            metrics["recall@1"],
            metrics["recall@1_ceiling"],
            metrics["validity@1"],
            output_dir,
        )
        return metrics


def evaluate_split(
    *, train_info: dict | None = None, backbone: Backbone | None = None, **options: Any
) -> dict[str, Any]:
    """``Evaluator(Args(**options)).evaluate(...)``: the evaluation as one call.

    Args:
        train_info: see :meth:`Evaluator.evaluate`.
        backbone: see :meth:`Evaluator.evaluate`.
        **options: the fields of :class:`Args` (``model_dir``, ``data_dir``, ``category``,
            ``split``, ``item_meta_path``, ``output_dir``, ...).
    """
    options.setdefault("item_meta_path", None)
    try:
        args = Args(**options)
    except ValueError as exc:
        raise LavicError(str(exc)) from None
    return Evaluator(args).evaluate(backbone=backbone, train_info=train_info)


__all__ = [
    "Args",
    "EvalData",
    "Evaluator",
    "REFERENCE_SUMMARY_COLUMNS",
    "SUMMARY_COLUMNS",
    "SUMMARY_FILE",
    "append_summary",
    "decode_conversations",
    "described_title",
    "encode_items",
    "evaluate_split",
    "load_model",
    "method_metrics",
    "random_rankings",
    "resolve_model_dir",
    "run",
]
