"""``lavic demo``: the whole LaViC pipeline, end to end, on a synthetic catalogue.

synthesize -> distill (stage 1) -> the look-word check of stage 1 -> encode + tune (stage 2, one
model on the train conversations of every category) -> evaluate on each category's test split.
The text-only baseline is the same tuned model given the same prompt without the item
tokens (``lavic tune --no_images`` trains the separate text-only ablation); then one table per category, ``results.json`` and
``report.md`` with its pictures. Offline and on CPU with the default ``tiny`` backbone; with
``--model_name llava-hf/llava-v1.6-mistral-7b-hf`` on a GPU the same command runs the real
model.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lavic.artifacts import ARTIFACT_FILE
from lavic.errors import LavicError
from lavic.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

CANDIDATE_TYPE = "candidates_st"
RESULTS_FILE = "results.json"
# The folder (under the catalogue) of every category's train/valid conversations: one
# stage-2 model is tuned on all of them.
TUNE_CATEGORY = "all_categories"
REPORT_FILE = "report.md"
# LLaVA-v1.6's full image tokens for its largest anyres layout (5 views x 577, as the paper
# counts them); the processor's exact count for the demo's images is reported beside it.
LLAVA_V16_MAX_IMAGE_TOKENS = 2885


@dataclass
class Args:
    """Options of ``lavic demo``."""

    output_dir: Path = field(default=Path("runs/demo"), metadata={"help": "run folder"})
    model_name: str = field(
        default="tiny",
        metadata={"help": "backbone: `tiny` (offline, CPU), `tiny-random`, a Hub id or a dir"},
    )
    seed: int = field(default=0, metadata={"help": "seed of the catalogue and of training"})
    style: Literal["default", "heldout"] = field(
        default="default",
        metadata={"help": "synthetic catalogue style (heldout: drawn differently)"},
    )
    categories: list[str] | None = field(
        default=None, metadata={"help": "synthetic categories (default: all of the style's)"}
    )
    # 60 a category: 180 conversations, of which stage 2's 40 steps of 4 see 160 once.
    num_train: int = field(default=60, metadata={"help": "train conversations per category"})
    num_valid: int = field(default=6, metadata={"help": "valid conversations per category"})
    # 50 a category, 150 in all: a difference of 0.1 in Recall@1 is then beyond the noise of
    # the pooled rate (about +/-0.07 at 0.3), which 20 a category never allowed.
    num_test: int = field(default=50, metadata={"help": "test conversations per category"})
    num_candidates: int = field(default=10, metadata={"help": "candidates per conversation"})
    distill_steps: int = field(default=40, metadata={"help": "stage-1 optimizer steps"})
    distill_batch_size: int = field(default=4, metadata={"help": "stage-1 images per step"})
    # 1e-4: a larger rate moves the five item tokens of `tiny` away from the look words' input
    # embeddings, where its warm start put them and its language model already reads them (LaViC
    # zero-shot 0.25 on 150 test conversations, 0.12 after stage 1 at 1e-4, 0.10 (one category)
    # at 1e-3; after the same stage 2, 0.66 from no stage 1, 0.53 from stage 1 at 1e-4, and the
    # long 1e-3 run stayed at chance: docs/tune.md).
    distill_lr: float = field(default=1e-4, metadata={"help": "stage-1 learning rate"})
    tune_steps: int = field(
        default=40,
        metadata={"help": "stage-2 optimizer steps of the one model tuned on every category"},
    )
    tune_batch_size: int = field(default=4, metadata={"help": "stage-2 samples per step"})
    tune_lr: float = field(default=2e-4, metadata={"help": "stage-2 learning rate"})
    # Ten candidates from the first step, four samples a step at lr 2e-4: on the reference
    # catalogue 160 such samples took LaViC from 0.12 after stage 1 to 0.53 on 150 test
    # conversations, where 80 two-candidate samples at batch 1 had reached 0.24 in the demo
    # (docs/tune.md has the runs). 36 steps over 48 conversations a category saved a minute of the
    # demo and cost LaViC 0.49 -> 0.33 (docs/demo.md).
    tune_curriculum: list[int] | None = field(
        default=None,
        metadata={
            "help": "stage 2's candidates per sample in its first epochs (lavic tune "
            "--candidate_curriculum; one epoch each, then the whole lists; no value: none); "
            "--tune_steps still caps the run"
        },
    )
    max_length: int = field(default=2048, metadata={"help": "prompt + answer token budget"})
    decoding: Literal["score", "constrained", "generate"] = field(
        default="score", metadata={"help": "how the answer is read (see lavic evaluate)"}
    )
    overwrite: bool = field(default=False, metadata={"help": "start again from an empty folder"})
    reference: bool = field(
        default=True,
        metadata={
            "help": "also evaluate the shipped reference LaViC-tiny (both stages trained long, "
            "on a catalogue of another seed: docs/tiny.md) on this run's test conversations "
            "(only when --model_name is the reference's base, `tiny`)"
        },
    )


# The reference LaViC-tiny: stage 1 and stage 2 trained long once (docs/tiny.md has the
# command), shipped as two small artefacts; `tune/` names `distill/` as its parent.
REFERENCE_DIR = Path(__file__).resolve().parent / "assets" / "reference" / "tune"


def reference_artifact(model_name: str) -> Path | None:
    """The shipped reference artefact if it is built on ``model_name``, else None."""
    from lavic.artifacts import read_artifact_info

    info = read_artifact_info(REFERENCE_DIR) if (REFERENCE_DIR / ARTIFACT_FILE).is_file() else None
    if info is None or info.get("base_model") != model_name:
        return None
    return REFERENCE_DIR


def pooled(rows: list[tuple[float, int]]) -> dict[str, float | int]:
    """Recall@1 over every category's gt items (``(recall@1, num_gt_items)`` per category),
    with its 95% noise band (normal approximation of a binomial rate)."""
    n = sum(count for _, count in rows)
    hits = sum(round(rate * count) for rate, count in rows)
    rate = hits / n if n else 0.0
    return {
        "recall@1": rate,
        "hits": hits,
        "n": n,
        "noise95": 1.96 * (rate * (1 - rate) / max(n, 1)) ** 0.5,
    }


class StageClock:
    """Logs `[i/n] stage` with elapsed time and an estimate of the time left."""

    def __init__(self, weights: list[tuple[str, float]]):
        self.weights = weights  # (stage name, expected relative cost)
        self.start = time.perf_counter()
        self.done_weight = 0.0
        self.index = 0

    def begin(self, name: str) -> None:
        self.index += 1
        elapsed = time.perf_counter() - self.start
        total = sum(w for _, w in self.weights)
        left = (
            f", about {elapsed / self.done_weight * (total - self.done_weight) / 60:.1f} min left"
            if self.done_weight
            else ""
        )
        log.info(
            "[%d/%d] %s (elapsed %.1f min%s)",
            self.index,
            len(self.weights),
            name,
            elapsed / 60,
            left,
        )

    def end(self) -> None:
        self.done_weight += self.weights[self.index - 1][1]


def _distill(args: Args, data: Path, out: Path) -> Path:
    from lavic.distill import train as distill

    best = out / distill.BEST_DIR
    if (best / ARTIFACT_FILE).is_file():
        log.info("stage 1 already done: %s", best)
        return best
    distill.run(
        distill.Args(
            train_data=data / "item2meta_train.json",
            val_data=data / "item2meta_valid.jsonl",
            train_images_dir=data / "train_images",
            val_images_dir=data / "valid_images",
            model_name=args.model_name,
            output_dir=out,
            lr=args.distill_lr,
            batch_size=args.distill_batch_size,
            num_epochs=1,
            max_steps=args.distill_steps,
            seed=args.seed,
            log_every_n_steps=2,  # enough points for the report's training curve
            validate_before_training=True,
        )
    )
    return best


def _all_categories(data: Path, categories: list[str]) -> str:
    """A category folder holding the train and valid conversations of every category, so one
    stage-2 model learns from all of them (conversations are self-contained records; the items
    are shared through ``item2meta_train.json``). Returns its name."""
    folder = data / TUNE_CATEGORY
    for split in ("train", "valid"):
        target = folder / f"{split}.jsonl"
        if target.is_file():
            continue
        parts = [(data / c / f"{split}.jsonl").read_text(encoding="utf-8") for c in categories]
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, "".join(p if p.endswith("\n") else p + "\n" for p in parts))
    return TUNE_CATEGORY


def _stage1_looks(args: Args, stage1: Path, data: Path) -> dict[str, Any] | None:
    """Stage 1's visual check on the look words: their NLL given the distilled tokens of the
    item's own image and of another item's (:func:`lavic.pretrain.measure.look_word_nll`)."""
    from lavic.model.backbone import load_backbone
    from lavic.pretrain.captions import catalogue_samples
    from lavic.pretrain.measure import look_word_nll

    path = stage1.parent / "look_words.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    backbone = load_backbone(str(stage1))
    samples = catalogue_samples(data, style=args.style, split="valid")
    looks = {
        f"student_{mode}": look_word_nll(backbone, samples, image_mode=mode, style=args.style)
        for mode in ("real", "shuffled")
    }
    atomic_write_json(path, looks)
    return looks


def _tune(
    args: Args,
    stage1: Path,
    data: Path,
    category: str,
    out: Path,
    *,
    cache_dir: Path,
) -> Path:
    from lavic.tune import train as tune

    adapter = out / tune.ADAPTER_DIR
    if (adapter / ARTIFACT_FILE).is_file():
        log.info("already tuned: %s", adapter)
        return adapter
    tune.run(
        tune.Args(
            model_dir=stage1,
            data_dir=data,
            category=category,
            candidate_type=CANDIDATE_TYPE,
            finetune_output_dir=out,
            item_meta_path=data / "item2meta_train.json",
            image_dir=data / "train_images",
            max_length=args.max_length,
            lr=args.tune_lr,
            batch_size=args.tune_batch_size,
            # one epoch per curriculum stage, then one on the whole candidate lists
            num_epochs=len(args.tune_curriculum or []) + 1,
            candidate_curriculum=args.tune_curriculum,
            max_steps=args.tune_steps,
            seed=args.seed,
            log_every_n_steps=2,
            cache_dir=cache_dir,
            skip_eval=True,
        )
    )
    return adapter


def _token_budget(backbone_dir: Path, data: Path) -> dict[str, Any]:
    """Visual tokens per candidate: LaViC's 5 against the full tokens of the backbone."""
    from transformers import AutoProcessor

    from lavic.constants import NUM_ITEM_TOKENS
    from lavic.data.images import load_image

    processor = AutoProcessor.from_pretrained(str(backbone_dir))
    images = sorted((data / "train_images").glob("*_0.jpg"))[:50]
    counts = []
    for path in images:
        image = load_image(path.parent, path.name)
        text = processor(text=processor.image_token, images=[image], return_tensors="pt")
        counts.append(int((text["input_ids"] == processor.image_token_id).sum()))
    return {
        "lavic_tokens_per_candidate": NUM_ITEM_TOKENS,
        "backbone_full_tokens_per_candidate_mean": sum(counts) / max(len(counts), 1),
        "backbone_full_tokens_per_candidate_max": max(counts, default=0),
        "llava_v16_full_tokens_per_candidate_max": LLAVA_V16_MAX_IMAGE_TOKENS,
    }


LADDER = (
    ("ceiling (the answer is among the candidates)", None, "ceiling"),
    ("this run's model reading each image's description in words", None, "described"),
    ("LaViC, reference (shipped; trained long on another catalogue)", "reference", "lavic"),
    ("LaViC, this run (5 item tokens)", None, "lavic"),
    ("text-only, this run (no item tokens)", None, "text_only"),
    ("random candidate", None, "random"),
)


def ladder(results: dict[str, Any], categories: list[str]) -> list[tuple[str, dict[str, str]]]:
    """The report's ladder: one row per rung, Recall@1 per category and over all of them with
    its 95% noise band, on the same test conversations."""
    rows = []
    for name, group, key in LADDER:
        source = results.get(group) if group else results
        if source is None:
            continue
        row = {}
        for c in categories:
            value = source[c] if group else source[c][key]
            row[c] = f"{value if isinstance(value, float) else value['recall@1']:.3f}"
        total = source["all_categories"] if group else source["all_categories"][key]
        row["all"] = (
            f"{total['recall@1']:.3f} +/- {total['noise95']:.3f} ({total['hits']}/{total['n']})"
        )
        rows.append((name, row))
    return rows


def run(args: Args) -> int:
    from lavic.data import synthetic
    from lavic.demo_report import compare_to_text_only
    from lavic.evaluation.comparison import format_table
    from lavic.evaluation.evaluate import evaluate_split

    out = Path(args.output_dir)
    if args.overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    planned = args.categories or sorted(synthetic.STYLES[args.style].categories)
    reference = reference_artifact(args.model_name) if args.reference else None
    # The clock starts before the catalogue, so the first estimate of the time left counts it.
    clock = StageClock(
        # relative costs: the minutes each stage took with `tiny` on an idle 2-core CPU
        # (float32); a category's evaluation is three passes over its 50 test conversations
        # (measured 2.7 min under bf16 beside stage 2's 2.3), a fourth with the reference
        [("synthetic catalogue", 0.2), ("stage 1: distill", 3.6), ("stage 1: look words", 0.4)]
        + [("stage 2: tune (all categories)", 4.6)]
        + [(f"{c}: evaluate", 5.4 * (4 if reference else 3) / 3) for c in planned]
        + [("report", 0.3)]
    )
    clock.begin("synthetic catalogue")
    if not (data / "item2meta_train.json").is_file():
        synthetic.run(
            synthetic.Args(
                output_dir=data,
                seed=args.seed,
                style=args.style,
                categories=args.categories,
                num_train=args.num_train,
                num_valid=args.num_valid,
                num_test=args.num_test,
                num_candidates=args.num_candidates,
            )
        )
    categories = args.categories or sorted(
        p.name for p in data.iterdir() if (p / "test.jsonl").is_file()
    )
    if not categories:
        raise LavicError(f"{data}: no categories were written")

    clock.end()
    clock.begin("stage 1: distill")
    stage1 = _distill(args, data, out / "distill")
    clock.end()

    clock.begin("stage 1: look words")
    looks = _stage1_looks(args, stage1, data)
    real, other = looks["student_real"], looks["student_shuffled"]
    print(
        f"\nstage 1, look words' NLL per token: own image {real['look_nll']:.2f}, "
        f"another item's image {other['look_nll']:.2f}"
    )
    clock.end()

    cache_dir = out / "item_tokens"  # one cache: every category reads the same stage-1 tokens
    clock.begin("stage 2: tune (all categories)")
    tune_dir = out / "tune"
    lavic_dir = _tune(
        args, stage1, data, _all_categories(data, categories), tune_dir, cache_dir=cache_dir
    )
    clock.end()
    results: dict[str, Any] = {"stage1_look_words": looks}
    evaluations: dict[str, dict[str, Any]] = {}
    references: dict[str, dict[str, Any]] = {}
    test_split = {
        "data_dir": data,
        "candidate_type": CANDIDATE_TYPE,
        "split": "test",
        "item_meta_path": data / "item2meta_train.json",
        "image_dir": data / "train_images",
        "decoding": args.decoding,
        "max_length": args.max_length,
        "seed": args.seed,
        "batch_size": 8,  # conversations per scoring forward: the evaluations' own speed-up
    }
    for category in categories:
        clock.begin(f"{category}: evaluate")
        metrics = evaluate_split(
            model_dir=lavic_dir,
            category=category,
            output_dir=out / category / "eval",
            cache_dir=cache_dir,
            text_only_baseline=True,
            described_baseline=True,  # the ladder's rung: the descriptions in words, no tokens
            **test_split,
        )
        if reference is not None:
            references[category] = evaluate_split(
                model_dir=reference,
                category=category,
                output_dir=out / category / "eval_reference",
                cache_dir=out / "item_tokens_reference",  # its own stage 1, its own tokens
                **test_split,
            )
        clock.end()
        evaluations[category] = metrics
        methods = metrics["methods"]
        results[category] = {
            name: {"recall@1": methods[key]["recall@1"], "validity@1": methods[key]["validity@1"]}
            for name, key in (
                ("lavic", "LaViC"),
                ("text_only", "text-only"),
                ("described", "described"),
                ("random", "random"),
                ("retriever_first", "retriever-first"),
            )
        }
        results[category]["ceiling"] = metrics["recall@1_ceiling"]
        print(f"\n== {category} (test, {metrics['num_conversations']} conversations) ==")
        print(format_table(metrics))
        print(compare_to_text_only(metrics["methods"], metrics["num_conversations"]))
        if category in references:
            print(f"reference LaViC-tiny: Recall@1 {references[category]['recall@1']:.3f}")

    # Every category's test conversations together (the noise band shrinks with n).
    gts = [evaluations[c]["num_gt_items"] for c in categories]
    results["all_categories"] = {
        name: pooled(
            [(results[c][name]["recall@1"], n) for c, n in zip(categories, gts, strict=True)]
        )
        for name in ("lavic", "text_only", "described", "random", "retriever_first")
    }
    results["all_categories"]["ceiling"] = pooled(
        [(results[c]["ceiling"], n) for c, n in zip(categories, gts, strict=True)]
    )
    if references:
        # Its own key: the shipped model, trained long elsewhere, not this run's.
        results["reference"] = {
            "model_dir": str(reference),
            **{
                c: {"recall@1": m["recall@1"], "validity@1": m["validity@1"]}
                for c, m in references.items()
            },
            "all_categories": pooled(
                [(references[c]["recall@1"], references[c]["num_gt_items"]) for c in categories]
            ),
        }

    clock.begin("report")
    atomic_write_json(out / RESULTS_FILE, results)
    budget = _token_budget(stage1, data)
    from lavic.demo_report import write_report

    rungs = ladder(results, categories)
    report = write_report(
        out,
        categories,
        evaluations,
        budget,
        stage1_dir=out / "distill",
        tune_dir=tune_dir,
        stage1_looks=looks,
        ladder=rungs,
    )
    clock.end()
    print(
        f"\nvisual tokens per candidate: LaViC {budget['lavic_tokens_per_candidate']}, "
        f"full image tokens of this backbone {budget['backbone_full_tokens_per_candidate_mean']:.0f}"
        f" on average (LLaVA-v1.6: up to {LLAVA_V16_MAX_IMAGE_TOKENS})"
    )
    for name, row in rungs:
        print(f"{name:<60} {row['all']}")
    print(f"results: {out / RESULTS_FILE}\nreport:  {report}")
    atomic_write_text(out / "token_budget.json", json.dumps(budget, indent=2) + "\n")
    return 0
