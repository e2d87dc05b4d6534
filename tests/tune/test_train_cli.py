"""`lavic tune` end to end on a tiny synthetic catalogue with a tiny-random stage-1 artefact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from lavic.cache.store import ItemTokenCache, adapter_fingerprint
from lavic.cli import main
from lavic.data.loaders import item_title, load_item_meta, load_split
from lavic.model.backbone import load_backbone
from lavic.model.compute import target_loss_sums
from lavic.tune.data import RecommendCollator, RecommendDataset, make_samples

from .fixtures import CATEGORY, ITEMS

torch.set_num_threads(1)

ARTEFACT_FILES = {
    "adapter_config.json",
    "adapter_model.safetensors",
    "config.yaml",
    "metrics.json",
    "lavic.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "processor_config.json",
}
METRICS_KEYS = {
    "kind",
    "model_dir",
    "base_model",
    "candidate_type",
    "no_images",
    "lr",
    "weight_decay",
    "num_epochs",
    "train_samples",
    "valid_samples",
    "gt_inserted_into_candidates",
    "truncated_prompts",
    "conversation_tokens_dropped",
    "truncated_targets",
    "missing_images",
    "images",
    "items_without_title",
    "item_token_cache",
    "trainable_parameters",
    "steps",
    "epochs",
    "train_steps",
    "best",
    "train_samples_per_second",
    "train_seconds",
}


def tune(stage1: Path, catalogue: dict[str, Path], out: Path, *extra: str) -> int:
    return main(
        [
            "tune",
            "--model_dir",
            str(stage1),
            "--item_meta_path",
            str(catalogue["item_meta_path"]),
            "--image_dir",
            str(catalogue["image_dir"]),
            "--data_dir",
            str(catalogue["data_dir"]),
            "--category",
            CATEGORY,
            "--finetune_output_dir",
            str(out),
            "--max_length",
            "512",
            "--log_every_n_steps",
            "2",
            *extra,
        ]
    )


def valid_loss_of(
    artefact: Path, catalogue: dict[str, Path], cache_dir: Path, *, precision: str
) -> float:
    """Token-weighted validation loss of a saved artefact, recomputed from scratch as the run
    validated: under the ``precision`` that computed the recorded loss (bf16 autocast changes
    a loss by ~1e-3) and with the run's batch shape (one sample per batch: a padded batch under
    bf16 differs from a single sample by a few 1e-4)."""
    backbone = load_backbone(artefact)
    convs = load_split(catalogue["data_dir"], CATEGORY, "valid")
    meta = load_item_meta(catalogue["item_meta_path"])
    ds = RecommendDataset(
        make_samples(convs, "candidates_st", seed=42),
        backbone.tokenizer,
        lambda i: item_title(meta, i),
        max_length=512,
        progress=False,
    )
    cache = ItemTokenCache.open(cache_dir, fingerprint=adapter_fingerprint(artefact))
    total, tokens = 0.0, 0
    bf16 = precision == "bf16-mixed"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for batch in DataLoader(
            ds,
            batch_size=1,  # the run's --batch_size, which its validation loader uses too
            collate_fn=RecommendCollator(backbone.tokenizer, cache, max_length=512),
        ):
            s, n = target_loss_sums(backbone.model, backbone.tokenizer, batch)
            total, tokens = total + float(s), tokens + int(n)
    return total / tokens


# Both numeric paths on every CPU: bf16-mixed is CPU autocast, native on AVX512-BF16/AMX and
# emulated (slower, the same numbers) elsewhere; `auto` picks one of the two per machine.
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_tune_end_to_end(stage1, catalogue, tmp_path: Path, precision: str):
    out = tmp_path / "ft"
    argv = ["--num_epochs", "3", "--lr", "2e-2", "--skip_eval", "--precision", precision]
    assert tune(stage1, catalogue, out, *argv) == 0
    adapter = out / "trained_lora_adapter"
    files = {p.name for p in adapter.iterdir()}
    assert files >= ARTEFACT_FILES and files - ARTEFACT_FILES <= {"README.md"}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    info = json.loads((adapter / "lavic.json").read_text())
    assert info["kind"] == "tune" and info["base_model"] == "tiny-random"
    assert (adapter / info["parent"]).resolve() == stage1.resolve()
    config = yaml.safe_load((adapter / "config.yaml").read_text())
    assert config["lr"] == 2e-2 and config["candidate_type"] == "candidates_st"

    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all("language_model" in k and "lora_" in k for k in weights)
    assert sum(t.numel() for t in weights.values()) == 8192  # r=8 on tiny-random's 14 linears

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= METRICS_KEYS
    assert metrics == json.loads((adapter / "metrics.json").read_text())
    assert metrics["train_samples"] == 8 and metrics["valid_samples"] == 4  # one per gt item
    assert metrics["gt_inserted_into_candidates"] == {"train": 3, "valid": 1}
    assert metrics["missing_images"] == 1 and metrics["items_without_title"] == 1
    assert metrics["item_token_cache"]["encoded"] == len(ITEMS)
    assert metrics["steps"] == 3 * 8 and metrics["trainable_parameters"] == 8192
    assert [e["epoch"] for e in metrics["epochs"]] == [0, 1, 2]
    assert all("train_loss" in e and "val_loss" in e for e in metrics["epochs"])
    assert [s["step"] for s in metrics["train_steps"]] == list(range(2, 25, 2))
    assert metrics["train_samples_per_second"] > 0
    val_losses = [e["val_loss"] for e in metrics["epochs"]]
    assert metrics["best"]["val_loss"] == min(val_losses)
    assert metrics["precision"] == metrics["best"]["precision"] == precision
    # The artefact holds the best epoch's adapter: reloading it gives that epoch's val loss,
    # recomputed under the precision recorded beside it.
    recomputed = valid_loss_of(
        adapter, catalogue, out / "item_tokens", precision=metrics["best"]["precision"]
    )
    assert recomputed == pytest.approx(metrics["best"]["val_loss"], abs=1e-4)
    if precision == "bf16-mixed":
        # ...and the other precision gives another number: the record needs its precision.
        other = valid_loss_of(adapter, catalogue, out / "item_tokens", precision="32-true")
        assert other != pytest.approx(metrics["best"]["val_loss"], abs=1e-6)

    # A second run on the same cache encodes nothing; --max_steps stops mid-epoch, validated.
    out2 = tmp_path / "ft2"
    assert (
        tune(
            stage1,
            catalogue,
            out2,
            "--max_steps",
            "3",
            "--skip_eval",
            "--cache_dir",
            str(out / "item_tokens"),
            "--precision",
            precision,  # the cache is keyed by the precision that encoded it
        )
        == 0
    )
    metrics2 = json.loads((out2 / "metrics.json").read_text())
    assert metrics2["item_token_cache"]["encoded"] == 0
    assert metrics2["item_token_cache"]["reused"] == len(ITEMS)
    assert metrics2["steps"] == 3 and metrics2["best"]["step"] == 3
    assert not (out2 / "item_tokens").exists()


def test_tune_candidate_curriculum(stage1, catalogue, tmp_path: Path, monkeypatch):
    """`--candidate_curriculum 2 3`: epoch 1 trains on two candidates per sample, epoch 2 on
    three, epoch 3 on the whole list (4); validation always sees the whole list."""
    from lavic.tune import data

    seen: list[tuple[int, ...]] = []
    collate = data.RecommendCollator.__call__

    def recording(self, rows):
        seen.append(tuple(len(r.candidate_ids) for r in rows))
        return collate(self, rows)

    monkeypatch.setattr(data.RecommendCollator, "__call__", recording)
    out = tmp_path / "ft"
    argv = ["--num_epochs", "3", "--skip_eval", "--candidate_curriculum", "2", "3"]
    assert tune(stage1, catalogue, out, *argv, "--no_images") == 0
    # batch_size 1, in call order: (sanity check,) epoch 1's 8 samples, its validation (4
    # samples of 4 candidates), epoch 2's 8, validation, epoch 3's 8, validation(s)
    sizes = [n for batch in seen for n in batch]
    assert [n for n in sizes if n != 4] == [2] * 8 + [3] * 8
    last_two, first_three = len(sizes) - 1 - sizes[::-1].index(2), sizes.index(3)
    assert sizes[last_two + 1 : first_three] == [4] * 4  # validation: the whole list
    last_three = len(sizes) - 1 - sizes[::-1].index(3)
    tail = sizes[last_three + 1 :]  # epoch 3 and the validations after it
    assert set(tail) == {4} and len(tail) >= 8 + 4
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["candidate_curriculum"] == [2, 3] and metrics["steps"] == 24
    assert len(metrics["epochs"]) == 3 and all("val_loss" in e for e in metrics["epochs"])
    # every epoch validates on the whole list, and the best of them is kept, curriculum or not
    assert metrics["best"]["val_loss"] == min(e["val_loss"] for e in metrics["epochs"])


def test_tune_candidate_curriculum_needs_a_full_epoch(stage1, catalogue, tmp_path, capsys):
    argv = ["--num_epochs", "2", "--candidate_curriculum", "2", "3", "--no_images"]
    assert tune(stage1, catalogue, tmp_path / "ft", *argv) == 2
    assert "no epoch on the whole candidate list" in capsys.readouterr().err


def test_tune_text_only_and_resume(stage1, catalogue, tmp_path: Path):
    out = tmp_path / "ft"
    assert (
        tune(
            stage1,
            catalogue,
            out,
            "--no_images",
            "--max_steps",
            "2",
            "--skip_eval",
            "--checkpoint_every_n_steps",
            "1",
            "--log_every_n_steps",
            "1",
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["no_images"] is True and metrics["missing_images"] is None
    assert metrics["item_token_cache"] is None and not (out / "item_tokens").exists()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])  # LoRA only
    assert (
        tune(
            stage1,
            catalogue,
            out,
            "--no_images",
            "--max_steps",
            "4",
            "--skip_eval",
            "--resume",
            "--log_every_n_steps",
            "1",
        )
        == 0
    )
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["steps"] == 4
    assert [s["step"] for s in resumed["train_steps"]] == [1, 2, 3, 4]  # history carried over


@pytest.mark.parametrize(("on_gpu", "frozen"), [(True, "bfloat16"), (False, "float32")])
def test_tune_bf16_mixed(stage1, catalogue, tmp_path: Path, monkeypatch, on_gpu, frozen):
    """On a GPU (the rule, emulated here): frozen weights, and so the cached tokens, in bf16;
    on a CPU: float32 weights under bf16 autocast (lavic.precision.load_dtype, as stage 1).
    The LoRA trains in float32 either way."""
    from lavic import precision as P

    monkeypatch.setattr(P, "runs_on_cuda", lambda accelerator: on_gpu)
    out = tmp_path / "ft"
    assert (
        tune(stage1, catalogue, out, "--precision", "bf16-mixed", "--max_steps", "2", "--skip_eval")
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["precision"] == "bf16-mixed" and metrics["steps"] == 2
    assert json.loads((out / "item_tokens" / "index.json").read_text())["dtype"] == frozen
    weights = load_file(out / "trained_lora_adapter" / "adapter_model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}
    assert any(t.abs().sum() > 0 for k, t in weights.items() if "lora_B" in k)  # it trained


def test_tune_then_evaluate(stage1, catalogue, tmp_path: Path):
    out = tmp_path / "ft"
    assert tune(stage1, catalogue, out, "--max_steps", "2") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "tune" and metrics["steps"] == 2  # training metrics kept
    evaluation = metrics["evaluation"]["test_candidates_st"]
    assert evaluation["num_conversations"] == 3 and 0 <= evaluation["recall@1"] <= 1
    assert (out / "test_results_candidates_st.jsonl").is_file()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--image_dir": None}, "--image_dir is required"),
        ({"--candidate_type": "candidates_nope"}, "candidates_nope"),
        ({"--category": "absent"}, "no such split"),
        ({"--model_dir": "/nonexistent/vision_lora_adapter_best"}, "no such directory"),
    ],
)
def test_tune_bad_input_is_one_line(stage1, catalogue, tmp_path: Path, capsys, change, message):
    args = {
        "--model_dir": str(stage1),
        "--item_meta_path": str(catalogue["item_meta_path"]),
        "--image_dir": str(catalogue["image_dir"]),
        "--data_dir": str(catalogue["data_dir"]),
        "--category": CATEGORY,
        "--finetune_output_dir": str(tmp_path / "ft"),
    }
    args.update(change)
    argv = ["tune"] + [x for k, v in args.items() if v is not None for x in (k, v)]
    assert main(argv + ["--skip_eval", "--max_steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("stopped_by", ["epochs", "max_steps"])
def test_tune_resume_a_finished_run_for_another_epoch(
    stage1, catalogue, tmp_path: Path, stopped_by
):
    """A run that ended at its last epoch's last step (by its epoch count or by a --max_steps
    that fell there), resumed with one epoch more, trains that epoch."""
    argv = ["--no_images", "--skip_eval", "--log_every_n_steps", "1"]
    assert tune(stage1, catalogue, tmp_path / "one", *argv, "--num_epochs", "1") == 0
    per_epoch = json.loads((tmp_path / "one" / "metrics.json").read_text())["steps"]
    out = tmp_path / "ft"
    first = ["--num_epochs", "1"]
    if stopped_by == "max_steps":
        first += ["--max_steps", str(per_epoch)]
    assert tune(stage1, catalogue, out, *argv, *first) == 0
    more = ["--num_epochs", "2", "--max_steps", str(2 * per_epoch), "--resume"]
    assert tune(stage1, catalogue, out, *argv, *more) == 0
    two = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in two["epochs"]] == [0, 1]
    assert two["steps"] == 2 * per_epoch
