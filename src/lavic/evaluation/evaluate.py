"""``lavic evaluate``: answer every conversation of a split with a tuned model, score it against
baselines and write the seed's result files.

Outputs in ``OUTPUT_DIR``:

* ``<split>_results_<candidate_type>.jsonl`` — each conversation's original JSON fields plus
  ``recommended_<key>`` and ``response_<key>`` (``key`` = candidate type without
  ``candidates_``), as the seed writes them, and ``ranking_<key>`` / ``scores_<key>`` when the
  decoding ranks every candidate;
* ``results_summary.csv`` — one row appended per evaluation, the seed's columns first;
* ``metrics.json`` — under ``evaluation.<split>_<candidate_type>``: Recall@1 (the seed's
  definition), Validity@1, the Recall@1 ceiling, HR@k / MRR / NDCG@k, counts of truncated
  prompts and missing titles and images, throughput, and the same metrics for the baselines;
* ``recall_at_1_<split>_<candidate_type>.png`` — the comparison as a bar plot.

The baselines: a seeded random candidate, the retriever's first candidate (the lists are
ranked by the retriever), and text-only (the model given ``--text_only_model_dir``, or with
``--text_only_baseline`` the same model, reading the prompt without item tokens).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from tqdm import tqdm

from lavic.data.images import ImageStats, item_image_name, placeholder_image, read_image
from lavic.data.loaders import item_title, items_without_title, load_item_meta, load_split
from lavic.data.records import CANDIDATES_PREFIX, Conversation, ItemMeta, LoadReport
from lavic.errors import LavicError
from lavic.evaluation.decoding import DECODINGS, Decoded, decode_batch, prepare_prompts
from lavic.evaluation.metrics import (
    hit_rate_at_k,
    mrr,
    ndcg_at_k,
    recall_at_1,
    recall_at_1_ceiling,
    validity_at_1,
)
from lavic.evaluation.report import format_table, write_plot
from lavic.io import atomic_open, atomic_write_json
from lavic.model.backbone import ARTIFACT_FILE, Backbone, load_backbone, read_artifact_info, unwrap
from lavic.model.item_tokens import encode_item_tokens, pixel_views
from lavic.tune.prompt import build_recommend_prompt

logger = logging.getLogger(__name__)

RANK_KS: tuple[int, ...] = (1, 3, 5, 10)
SUMMARY_FILE = "results_summary.csv"
METRICS_FILE = "metrics.json"
# The seed's columns first, in its order; then ours.
SEED_SUMMARY_COLUMNS: tuple[str, ...] = (
    "model_dir",
    "candidate_type",
    "lr",
    "weight_decay",
    "num_epochs",
    "recall@1",
    "validity@1",
    "output_file",
)
SUMMARY_COLUMNS: tuple[str, ...] = SEED_SUMMARY_COLUMNS + (
    "recall@1_ceiling",
    "mrr",
    "hr@5",
    "decoding",
    "no_images",
    "split",
    "category",
    "num_conversations",
    "timestamp",
)
TUNED_ADAPTER_DIR = "trained_lora_adapter"


@dataclass
class Args:
    model_dir: Path = field(
        metadata={
            "help": "tune artefact (FINETUNE_OUTPUT_DIR or its "
            "trained_lora_adapter/); a distill artefact or a "
            "backbone name evaluates zero-shot"
        }
    )
    data_dir: Path = field(metadata={"help": "dataset root holding <category>/<split>.jsonl"})
    category: str = field(metadata={"help": "domain subdirectory, e.g. all_beauty"})
    item_meta_path: Path = field(metadata={"help": "item metadata (titles): item2meta_*.json[l]"})
    output_dir: Path = field(metadata={"help": "where the result files are written"})
    candidate_type: str = field(
        default="candidates_st", metadata={"help": "candidate list key, e.g. candidates_st"}
    )
    split: str = field(default="test", metadata={"help": "split to evaluate: valid or test"})
    image_dir: Path | None = field(
        default=None, metadata={"help": "item images <item>_0.jpg (missing: placeholder, counted)"}
    )
    decoding: Literal["score", "constrained", "generate"] = field(
        default="score",
        metadata={
            "help": "score: rank candidates by likelihood; constrained: "
            "greedy over candidate IDs; generate: the seed's free "
            "greedy text + ID parsing"
        },
    )
    no_images: bool = field(
        default=False, metadata={"help": "text-only prompt (no item tokens) for the model"}
    )
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
    max_length: int = field(default=2048, metadata={"help": "token budget of prompt + answer"})
    batch_size: int = field(default=1, metadata={"help": "conversations per forward"})
    max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "generate only: new tokens (default: longest candidate "
            "answer, at least the seed's 10)"
        },
    )
    cache_dir: Path | None = field(
        default=None, metadata={"help": "item visual-token cache folder (reused across runs)"}
    )
    lenient: bool = field(default=False, metadata={"help": "skip bad records (counted)"})
    limit: int | None = field(
        default=None, metadata={"help": "evaluate only the first N conversations"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the random-candidate baseline"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda"})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto", metadata={"help": "weights dtype; auto: bfloat16 on CUDA, else float32"}
    )

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError("--batch_size must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("--limit must be >= 1")
        if self.decoding not in DECODINGS:
            raise ValueError(f"--decoding must be one of {DECODINGS}")


def run(args: Args) -> int:
    metrics = evaluate_split(
        model_dir=args.model_dir,
        data_dir=args.data_dir,
        category=args.category,
        candidate_type=args.candidate_type,
        split=args.split,
        item_meta_path=args.item_meta_path,
        image_dir=args.image_dir,
        output_dir=args.output_dir,
        decoding=args.decoding,
        no_images=args.no_images,
        max_length=args.max_length,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        lenient=args.lenient,
        text_only_model_dir=args.text_only_model_dir,
        limit=args.limit,
        text_only_baseline=args.text_only_baseline,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
    )
    print(format_table(metrics))
    print(f"results: {metrics['output_file']}\nplot: {metrics['plot_file']}")
    return 0


# --------------------------------------------------------------------------------------------
# Model and item tokens
# --------------------------------------------------------------------------------------------


def resolve_model_dir(model_dir: Path) -> Path:
    """The artefact to load: ``model_dir`` itself if it holds ``lavic.json``, else its
    ``trained_lora_adapter/`` if that does (a FINETUNE_OUTPUT_DIR), else ``model_dir`` (a
    backbone name or checkpoint)."""
    model_dir = Path(model_dir)
    if (model_dir / ARTIFACT_FILE).is_file():
        return model_dir
    if (model_dir / TUNED_ADAPTER_DIR / ARTIFACT_FILE).is_file():
        return model_dir / TUNED_ADAPTER_DIR
    return model_dir


def _device_and_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype | None]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LavicError(f"--device {device}: CUDA is not available here")
    dev = torch.device(device)
    if dtype == "auto":
        return dev, (torch.bfloat16 if dev.type == "cuda" else None)
    return dev, getattr(torch, dtype)


def load_model(model_dir: Path, *, device: str = "auto", dtype: str = "auto") -> Backbone:
    """Load an artefact (adapters merged) for inference on ``device``."""
    dev, torch_dtype = _device_and_dtype(device, dtype)
    artefact = resolve_model_dir(model_dir)
    info = read_artifact_info(artefact)
    if info is not None and info.get("kind") != "tune":
        logger.warning(
            "%s is a %r artefact, not a tuned one: evaluating zero-shot", artefact, info.get("kind")
        )
    backbone = load_backbone(artefact, dtype=torch_dtype)
    backbone.model.to(dev)
    backbone.model.eval()
    return backbone


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
    and is counted in ``stats``.
    """
    llava = unwrap(backbone.model)
    device = next(llava.parameters()).device
    tokens: dict[str, torch.Tensor] = {}
    placeholder: torch.Tensor | None = None
    pending: list[tuple[str, Any]] = []

    def flush():
        if not pending:
            return
        views = pixel_views(backbone.image_processor, [img for _, img in pending])
        encoded = encode_item_tokens(llava, views.to(device))  # (n, 5, D)
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
                views = pixel_views(backbone.image_processor, [placeholder_image()])
                placeholder = encode_item_tokens(llava, views.to(device))[0]
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


def _titles(meta: dict[str, ItemMeta], candidates: Sequence[str]) -> list[tuple[str, str]]:
    return [(c, item_title(meta, c)) for c in candidates]


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
) -> PassResult:
    """Answer every conversation (prompts with item tokens unless ``item_tokens`` is None)."""
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
                _titles(meta, candidates),
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
# Metrics, baselines, files
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


def answer_key(candidate_type: str) -> str:
    """``candidates_st`` -> ``st`` (the seed's suffix of ``recommended_`` / ``response_``)."""
    return candidate_type.removeprefix(CANDIDATES_PREFIX)


def results_file_name(split: str, candidate_type: str) -> str:
    return f"{split}_results_{candidate_type}.jsonl"


def write_results(
    path: Path,
    conversations: Sequence[Conversation],
    decoded: Sequence[Decoded],
    candidate_type: str,
) -> None:
    """The seed's results file: each original record + ``recommended_<key>``, ``response_<key>``
    (+ ``ranking_<key>``, ``scores_<key>`` when ranked)."""
    key = answer_key(candidate_type)
    with atomic_open(path, "w", encoding="utf-8") as handle:
        for conv, d in zip(conversations, decoded, strict=True):
            entry = dict(conv.raw)
            entry[f"recommended_{key}"] = d.recommended
            entry[f"response_{key}"] = d.response
            if d.ranking is not None:
                entry[f"ranking_{key}"] = d.ranking
                entry[f"scores_{key}"] = d.scores
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")


def training_hyperparameters(artefact: Path, train_info: dict | None) -> dict[str, Any]:
    """``lr``, ``weight_decay``, ``num_epochs`` from ``train_info``, else from the artefact's
    (or its parent folder's) ``config.yaml``; blank when unknown."""
    keys = ("lr", "weight_decay", "num_epochs")
    found: dict[str, Any] = {}
    if train_info:
        found.update({k: train_info[k] for k in keys if k in train_info})
    for folder in (artefact, artefact.parent):
        config = folder / "config.yaml"
        if len(found) == len(keys) or not config.is_file():
            continue
        try:
            data = yaml.safe_load(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            logger.warning("%s: unreadable (%s); hyperparameters left blank", config, exc)
            continue
        if isinstance(data, dict):
            for k in keys:
                if k in data and k not in found:
                    found[k] = data[k]
    return {k: found.get(k, "") for k in keys}


def append_summary(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the CSV (header once). An existing file keeps its own columns."""
    existing = path.read_text(encoding="utf-8") if path.is_file() else ""
    columns = list(SUMMARY_COLUMNS)
    if existing.strip():
        header = next(csv.reader(io.StringIO(existing)), None)
        if header and header != columns:
            logger.warning(
                "%s has other columns than this version writes; keeping its header", path
            )
            columns = header
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    if not existing.strip():
        writer.writeheader()
    elif not existing.endswith("\n"):
        buffer.write("\n")
    writer.writerow({c: row.get(c, "") for c in columns})
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(existing + buffer.getvalue())


def update_metrics_file(path: Path, name: str, metrics: dict[str, Any]) -> None:
    """Store ``metrics`` under ``evaluation.<name>`` of ``metrics.json``, keeping the rest."""
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                data = loaded
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            logger.warning("%s: unreadable (%s); rewriting it", path, exc)
    evaluation = data.get("evaluation")
    if not isinstance(evaluation, dict):
        evaluation = {}
    evaluation[name] = metrics
    data["evaluation"] = evaluation
    atomic_write_json(path, data)


# --------------------------------------------------------------------------------------------
# The evaluator
# --------------------------------------------------------------------------------------------


def evaluate_split(
    *,
    model_dir: Path,
    data_dir: Path,
    category: str,
    candidate_type: str,
    split: str,
    item_meta_path: Path | None,
    image_dir: Path | None,
    output_dir: Path,
    decoding: str = "score",
    no_images: bool = False,
    max_length: int = 2048,
    batch_size: int = 1,
    cache_dir: Path | None = None,
    lenient: bool = False,
    train_info: dict | None = None,
    text_only_model_dir: Path | None = None,
    limit: int | None = None,
    text_only_baseline: bool = False,
    max_new_tokens: int | None = None,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    backbone: Backbone | None = None,
) -> dict[str, Any]:
    """Evaluate a model on one split; write the result files; return the metrics.

    Args:
        model_dir: a tune artefact (or FINETUNE_OUTPUT_DIR holding ``trained_lora_adapter/``);
            a distill artefact or backbone name evaluates zero-shot.
        data_dir, category, split: the conversations ``data_dir/category/split.jsonl``.
        candidate_type: the candidate list key (``candidates_st``, ``candidates_gpt_large``).
        item_meta_path: item titles; an item without one shows ``No Title`` (counted); None:
            no metadata at all.
        image_dir: item images ``<item>_0.jpg``; a missing one is the placeholder (counted).
        output_dir: where the files go.
        decoding: ``score`` (default), ``constrained`` or ``generate``.
        no_images: run the model on the text-only prompt.
        max_length: token budget of prompt + answer; long conversations are cut (counted).
        batch_size: conversations per forward.
        cache_dir: item-token cache folder (else the tokens are computed in memory).
        lenient: skip bad records (counted) instead of failing.
        train_info: ``lr``, ``weight_decay``, ``num_epochs`` for the summary row (else read
            from the artefact's ``config.yaml``).
        text_only_model_dir: a model run on the text-only prompt as the text-only baseline.
        limit: only the first ``limit`` conversations.
        text_only_baseline: run this same model on the text-only prompt as that baseline.
        max_new_tokens: ``generate``'s budget (default: longest candidate answer, >= 10).
        seed: the random baseline's seed.
        device, dtype: where and in what precision to run (``auto``: CUDA + bf16 if present).
        backbone: an already loaded model for ``model_dir`` (e.g. from training), reused.

    Returns:
        The metrics (also written to ``metrics.json``); ``methods`` holds every method's.
    """
    model_dir = Path(model_dir)
    output_dir = Path(output_dir)
    if decoding not in DECODINGS:
        raise LavicError(f"unknown decoding {decoding!r}; choose from {list(DECODINGS)}")
    report = LoadReport(str(data_dir))
    conversations = load_split(
        data_dir, category, split, lenient=lenient, report=report, candidate_key=candidate_type
    )
    if limit is not None:
        conversations = conversations[:limit]
    if not conversations:
        raise LavicError(f"{data_dir}/{category}/{split}.jsonl: no conversations to evaluate")
    meta = load_item_meta(item_meta_path, lenient=lenient) if item_meta_path is not None else {}
    candidate_lists = [list(c.candidate_list(candidate_type)) for c in conversations]
    gt_items = [list(c.gt_items) for c in conversations]
    item_ids = list(dict.fromkeys(i for cs in candidate_lists for i in cs))
    missing_titles = items_without_title(meta, item_ids)

    artefact = resolve_model_dir(model_dir)
    if backbone is None:
        backbone = load_model(model_dir, device=device, dtype=dtype)
    image_stats = ImageStats()
    encode_seconds = 0.0
    tokens = None
    if not no_images:
        start = time.perf_counter()
        tokens = _item_tokens(
            backbone,
            artefact,
            item_ids,
            image_dir,
            cache_dir,
            image_stats,
            batch_size=max(16, batch_size),
        )
        encode_seconds = time.perf_counter() - start
        if image_stats.placeholders:
            logger.warning(
                "%d of %d candidate items have no readable image (placeholder used)",
                image_stats.placeholders,
                len(item_ids),
            )
    if missing_titles:
        logger.warning(
            "%d of %d candidate items have no title (%r used)",
            len(missing_titles),
            len(item_ids),
            "No Title",
        )

    main_name = "text-only" if no_images else "LaViC"
    main = decode_conversations(
        backbone,
        conversations,
        candidate_type,
        meta,
        tokens,
        decoding=decoding,
        max_length=max_length,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        desc=main_name,
    )
    if main.truncated:
        logger.warning(
            "%d of %d prompts were cut to fit max_length=%d (conversation only)",
            main.truncated,
            len(conversations),
            max_length,
        )

    def scored(result: PassResult) -> dict[str, Any]:
        rankings = (
            [d.ranking for d in result.decoded]
            if all(d.ranking is not None for d in result.decoded)
            else None
        )
        values = method_metrics(
            [d.recommended for d in result.decoded], rankings, candidate_lists, gt_items
        )
        values["throughput_conversations_per_s"] = len(conversations) / max(result.seconds, 1e-9)
        return values

    methods: dict[str, dict[str, Any]] = {}
    rand = random_rankings(candidate_lists, seed)
    methods["random"] = method_metrics([r[0] for r in rand], rand, candidate_lists, gt_items)
    retriever = [list(dict.fromkeys(c)) for c in candidate_lists]
    methods["retriever-first"] = method_metrics(
        [r[0] for r in retriever], retriever, candidate_lists, gt_items
    )
    if not no_images and (text_only_model_dir is not None or text_only_baseline):
        if text_only_model_dir is not None:
            text_backbone = load_model(text_only_model_dir, device=device, dtype=dtype)
        else:
            text_backbone = backbone
        text_pass = decode_conversations(
            text_backbone,
            conversations,
            candidate_type,
            meta,
            None,
            decoding=decoding,
            max_length=max_length,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            desc="text-only",
        )
        methods["text-only"] = scored(text_pass)
        if text_backbone is not backbone:
            del text_backbone
    methods[main_name] = scored(main)

    output_dir.mkdir(parents=True, exist_ok=True)
    results_path = output_dir / results_file_name(split, candidate_type)
    write_results(results_path, conversations, main.decoded, candidate_type)
    plot_path = output_dir / f"recall_at_1_{split}_{candidate_type}.png"

    primary = methods[main_name]
    metrics: dict[str, Any] = {
        "primary_metric": "recall@1",
        "method": main_name,
        **{k: v for k, v in primary.items() if k != "throughput_conversations_per_s"},
        "recall@1_ceiling": recall_at_1_ceiling(candidate_lists, gt_items),
        "methods": methods,
        "model_dir": str(model_dir),
        "text_only_model_dir": str(text_only_model_dir) if text_only_model_dir else None,
        "category": category,
        "split": split,
        "candidate_type": candidate_type,
        "decoding": decoding,
        "no_images": no_images,
        "max_length": max_length,
        "num_conversations": len(conversations),
        "num_gt_items": sum(len(g) for g in gt_items),
        "num_candidate_items": len(item_ids),
        "skipped_records": report.num_skipped,
        "truncated_conversations": main.truncated,
        "conversation_tokens_dropped": main.tokens_dropped,
        "items_without_title": len(missing_titles),
        "items_without_image": image_stats.placeholders if not no_images else None,
        "images": image_stats.as_dict() if not no_images else None,
        "throughput_conversations_per_s": primary["throughput_conversations_per_s"],
        "decode_seconds": main.seconds,
        "item_encoding_seconds": encode_seconds,
        "output_file": str(results_path),
        "plot_file": str(plot_path),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_plot(metrics, plot_path)
    update_metrics_file(output_dir / METRICS_FILE, f"{split}_{candidate_type}", metrics)
    append_summary(
        output_dir / SUMMARY_FILE,
        {
            **training_hyperparameters(artefact, train_info),
            **{
                k: metrics[k]
                for k in (
                    "model_dir",
                    "candidate_type",
                    "recall@1",
                    "validity@1",
                    "output_file",
                    "recall@1_ceiling",
                    "mrr",
                    "hr@5",
                    "decoding",
                    "no_images",
                    "split",
                    "category",
                    "num_conversations",
                    "timestamp",
                )
            },
        },
    )
    logger.info(
        "%s %s/%s %s: Recall@1 %.4f (ceiling %.4f), Validity@1 %.4f; wrote %s",
        main_name,
        category,
        split,
        candidate_type,
        metrics["recall@1"],
        metrics["recall@1_ceiling"],
        metrics["validity@1"],
        output_dir,
    )
    return metrics


__all__ = [
    "Args",
    "append_summary",
    "decode_conversations",
    "encode_items",
    "evaluate_split",
    "load_model",
    "method_metrics",
    "random_rankings",
    "resolve_model_dir",
    "results_file_name",
    "run",
    "write_results",
]
