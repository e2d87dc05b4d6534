"""The tiny stand-in's vision pretraining: the vision side learns to make the frozen SmolLM2
describe the image (align, then caption; see docs/tiny.md)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lavic.config import TrainerArgs
from lavic.model.backbone import Backbone
from lavic.pretrain.captions import CaptionSample, PromptHead, _collate, _encode, caption_nll
from lavic.pretrain.pictures import LookPicture
from lavic.training.module import LoRAModule
from lavic.training.sampler import make_loader
from lavic.training.schedule import warmup_schedule
from lavic.training.trainer import build_trainer, raise_if_interrupted

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Pretraining: the vision side learns to make the frozen SmolLM2 describe the image
# --------------------------------------------------------------------------------------------


@dataclass
class PretrainConfig:
    """Hyper-parameters of :func:`pretrain` (defaults: what the shipped weights used)."""

    align_steps: int = 1000  # warm-up: image tokens -> embeddings of the look words (no LM)
    align_batch_size: int = 16
    align_lr: float = 2e-3
    align_mse_weight: float = 2.0
    align_weight: float = 1.0  # the align loss kept beside the caption loss
    caption_steps: int = 200  # description loss through the frozen LM
    batch_size: int = 4
    lr: float = 5e-4
    newline_lr_scale: float = 10.0
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0


def _vision_parameters(llava) -> list[torch.nn.Parameter]:
    core = llava.model
    params = list(core.vision_tower.parameters()) + list(core.multi_modal_projector.parameters())
    return params + [core.image_newline]


def _word_token_targets(
    backbone: Backbone, samples: Sequence[CaptionSample]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The look words' tokens of each sample, as indices into a small table of their ids.

    Returns:
        ``(targets, table)``: per sample a ``(L_i,)`` tensor of indices into ``table``, the
        token ids of every look word (tokenised as mid-sentence words, leading space).
    """
    table: dict[int, int] = {}
    targets = []
    for s in samples:
        words = s.words or tuple(s.description.split()[:4])
        ids = [
            i
            for w in words
            for i in backbone.tokenizer(" " + w, add_special_tokens=False)["input_ids"]
        ]
        targets.append(torch.tensor([table.setdefault(i, len(table)) for i in ids]))
    return targets, torch.tensor(list(table))


def _patch_tokens(llava, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected patch tokens of views ``(V, C, s, s)``: ``(V, P, D)``, before anyres packing
    (the features ``get_image_features`` packs: layer -2, [CLS] dropped)."""
    core = llava.model
    hidden = core.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    return core.multi_modal_projector(hidden[llava.config.vision_feature_layer][:, 1:])


class VisionPhase(LoRAModule):
    """One phase of the vision pretraining as a stage of the training core: AdamW over the
    trainable weights (``lr_scales``: a rate multiplier per parameter), a warm-up + cosine
    schedule over ``steps``, checkpoints of the trainable weights alone (the base's), and
    ``loss_fn(indices) -> (loss, metrics)`` on each batch of sample indices. The metrics of
    every step are kept in :attr:`history`."""

    def __init__(
        self,
        llava,
        loss_fn: Callable[[list[int]], tuple[torch.Tensor, dict[str, float]]],
        *,
        lr: float,
        weight_decay: float,
        steps: int,
        warmup_fraction: float,
        lr_scales: dict[torch.nn.Parameter, float] | None = None,
    ):
        super().__init__(llava, lr=lr, weight_decay=weight_decay)
        self.loss_fn = loss_fn
        self.steps = steps
        self.warmup = max(1, int(steps * warmup_fraction))
        self.lr_scales = lr_scales or {}
        self.history: dict[str, list[float]] = {}
        self.seconds = 0.0  # the fit's wall time (set by fit_phase)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        scales = sorted({self.lr_scales.get(p, 1.0) for p in params})
        groups = [
            {"params": [p for p in params if self.lr_scales.get(p, 1.0) == k], "lr": self.lr * k}
            for k in scales
        ]
        opt = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        return {"optimizer": opt, "lr_scheduler": warmup_schedule(opt, self.steps, self.warmup)}

    def on_train_epoch_start(self) -> None:
        self.start_epoch()

    def training_step(self, indices: list[int], batch_idx: int) -> torch.Tensor:
        loss, metrics = self.loss_fn(list(indices))
        self.count_samples(len(indices))
        for name, value in {"loss": loss.item(), **metrics}.items():
            self.history.setdefault(name, []).append(value)
            self.log(name, value, prog_bar=True, on_step=True, batch_size=len(indices))
        return loss


def fit_phase(
    llava,
    loss_fn: Callable[[list[int]], tuple[torch.Tensor, dict[str, float]]],
    num_samples: int,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    config: PretrainConfig | ItemTokenConfig,
    work_dir: Path,
    lr_scales: dict[torch.nn.Parameter, float] | None = None,
) -> VisionPhase:
    """Train ``llava``'s trainable weights for ``steps`` on ``loss_fn`` of batches of
    ``num_samples``' indices (each epoch a new shuffle), a :class:`VisionPhase` on the training
    core's trainer (CPU, float32; ``config`` gives the weight decay, warm-up, clipping and
    seed). Returns the fitted phase: its :attr:`~VisionPhase.history` and ``seconds``."""
    phase = VisionPhase(
        llava,
        loss_fn,
        lr=lr,
        weight_decay=config.weight_decay,
        steps=steps,
        warmup_fraction=config.warmup_fraction,
        lr_scales=lr_scales,
    )
    loader = make_loader(
        list(range(num_samples)),
        list,
        batch_size=min(batch_size, num_samples),
        num_workers=0,
        shuffle=True,
        seed=config.seed,
    )
    phase.train_sampler = loader.sampler
    args = TrainerArgs(
        num_epochs=math.ceil(steps / len(loader)),
        max_steps=steps,
        batch_size=batch_size,
        precision="32-true",
        accelerator="cpu",  # tiny's pretraining: CPU-sized, its batches are built there
        devices="1",
        log_every_n_steps=max(1, min(10, len(loader))),
    )
    trainer = build_trainer(
        args,
        model=llava,
        precision="32-true",
        output_dir=Path(work_dir),
        gradient_clip_val=config.max_grad_norm,
    )
    llava.train()
    start = time.perf_counter()
    trainer.fit(phase, train_dataloaders=loader)
    raise_if_interrupted(trainer)
    llava.eval()
    phase.seconds = round(time.perf_counter() - start, 1)
    return phase


def pretrain(
    backbone: Backbone,
    samples: Sequence[CaptionSample],
    config: PretrainConfig | None = None,
    *,
    work_dir: str | Path,
) -> dict[str, Any]:
    """Train the vision tower, projector and image newline with the language model frozen.

    1. Align (cheap, no language-model pass): the projected patch tokens of an item are pulled
       to the input embeddings of its description's look words (colour, pattern, tone, kind),
       cycling through them by patch position (cross-entropy over the look-word table + MSE),
       so the image tokens start out reading like those words to the language model.
    2. Caption: the stage-1 prompt with ``<image>`` (LLaVA-NeXT's full anyres image tokens),
       loss on the description tokens (+ EOS) only, through the frozen language model; the
       align loss stays on beside it (``align_weight``) so the look words are not washed out
       by the template words that dominate the caption loss.

    Args:
        backbone: from :func:`assemble_tiny` (its language model is frozen here).
        samples: images with their titles, descriptions and look words.
        config: hyper-parameters (default :class:`PretrainConfig`, the shipped run's).
        work_dir: the phases' trainer folders (``align/``, ``caption/``: logs, checkpoints).

    Returns:
        A record of the run: settings, losses along the way, seconds per phase.
    """
    from tqdm.auto import tqdm

    config = config or PretrainConfig()
    work_dir = Path(work_dir)
    llava = backbone.model
    for p in llava.parameters():
        p.requires_grad_(False)
    params = _vision_parameters(llava)
    for p in params:
        p.requires_grad_(True)
    torch.manual_seed(config.seed)
    head = PromptHead(backbone)
    start = time.perf_counter()
    encoded = [
        _encode(backbone, head, s, s.image)
        for s in tqdm(samples, desc="encoding", unit="image", leave=False)
    ]
    for e in encoded:  # halve the memory of the cached views
        e.pixel_values = e.pixel_values.half()
    record: dict[str, Any] = {"config": asdict(config), "num_samples": len(samples)}
    record["encode_s"] = round(time.perf_counter() - start, 1)
    pad_id = backbone.tokenizer.pad_token_id

    # 1. Align ---------------------------------------------------------------------------
    targets, table = _word_token_targets(backbone, samples)
    word_emb = backbone.model.get_input_embeddings().weight.detach()[table]  # (W, D)
    word_dir = torch.nn.functional.normalize(word_emb, dim=-1)
    scale = word_emb.pow(2).mean()

    def align_loss(idx: list[int]) -> torch.Tensor:
        views = torch.cat([encoded[i].pixel_values for i in idx]).float()  # (V, C, s, s)
        tokens = _patch_tokens(llava, views)  # (V, P, D)
        # Patch p of every view of item i is pulled to the embedding of its look-word token
        # p mod L_i: the image tokens start out reading like "blue pale stripes mug blue ...",
        # a context the language model already copies words from. Cross-entropy over the
        # look-word table (which word is this?) + MSE to the word's embedding (its scale).
        goal = torch.cat(
            [
                targets[i][torch.arange(tokens.shape[1]) % len(targets[i])]
                .unsqueeze(0)
                .expand(encoded[i].pixel_values.shape[0], -1)
                for i in idx
            ]
        )  # (V, P) indices into the table
        logits = torch.nn.functional.normalize(tokens, dim=-1) @ word_dir.T / 0.1  # (V, P, W)
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), goal.flatten())
        mse = (tokens - word_emb[goal]).pow(2).mean() / scale
        return ce + config.align_mse_weight * mse

    phase = fit_phase(
        llava,
        lambda idx: (align_loss(idx), {}),
        len(encoded),
        steps=config.align_steps,
        batch_size=config.align_batch_size,
        lr=config.align_lr,
        config=config,
        work_dir=work_dir / "align",
    )
    losses = phase.history["loss"]
    record["align"] = {
        "seconds": phase.seconds,
        "loss_first50": _mean(losses[:50]),
        "loss_last50": _mean(losses[-50:]),
    }
    log.info(
        "align: %d steps in %.0f s, loss %s -> %s",
        config.align_steps,
        record["align"]["seconds"],
        record["align"]["loss_first50"],
        record["align"]["loss_last50"],
    )

    # 2. Caption -------------------------------------------------------------------------
    # image_newline (one vector after every row of crop tokens) is shared by all images: a
    # higher rate lets it carry the "describe this product" format the frozen LM has to learn.
    newline = llava.model.image_newline

    def caption_step(idx: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        batch = _collate([encoded[i] for i in idx], pad_id, len(head))
        nll, n = caption_nll(backbone, head, batch)
        caption = nll / n
        loss = caption
        if config.align_weight:
            # Keeps the image tokens readable as look words while the caption loss, which
            # most of the description's (template) tokens dominate, shapes them.
            loss = loss + config.align_weight * align_loss(idx)
        return loss, {"caption_loss": caption.item()}

    phase = fit_phase(
        llava,
        caption_step,
        len(encoded),
        steps=config.caption_steps,
        batch_size=config.batch_size,
        lr=config.lr,
        config=config,
        work_dir=work_dir / "caption",
        lr_scales={newline: config.newline_lr_scale},
    )
    losses, caption_losses = phase.history["loss"], phase.history["caption_loss"]
    record["caption"] = {
        "seconds": phase.seconds,
        "loss_first20": _mean(caption_losses[:20]),
        "loss_last20": _mean(caption_losses[-20:]),
        "loss_curve": [
            _mean(caption_losses[i : i + 25]) for i in range(0, len(caption_losses), 25)
        ],
        "total_loss_last20": _mean(losses[-20:]),
    }
    log.info(
        "caption: %d steps in %.0f s, loss %s -> %s",
        config.caption_steps,
        record["caption"]["seconds"],
        record["caption"]["loss_first20"],
        record["caption"]["loss_last20"],
    )
    for p in params:
        p.requires_grad_(False)
    return record


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


# --------------------------------------------------------------------------------------------
# Item-token warm start: the [CLS] path that stage 1 distils into
# --------------------------------------------------------------------------------------------


@dataclass
class ItemTokenConfig:
    """Hyper-parameters of :func:`warm_start_item_tokens` (defaults: the shipped run's)."""

    steps: int = 600
    batch_size: int = 16
    lr: float = 1e-3
    mse_weight: float = 2.0
    keep_weight: float = 4.0  # holds the projected patch tokens (the teacher path) in place
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0


def look_pictures(samples: Sequence[CaptionSample], style: str = "default") -> list[LookPicture]:
    """The synthetic catalogue's described images as :class:`LookPicture` s: each image with
    its description's colour and pattern word."""
    from lavic.data.synthetic import STYLES

    st = STYLES[style]
    colours = {c.word for c in st.colours}
    patterns = set(st.patterns)
    out = []
    for s in samples:
        colour = next((w for w in s.words if w in colours), None)
        pattern = next((w for w in s.words if w in patterns), None)
        if colour is None or pattern is None:
            raise ValueError(f"description without a colour and a pattern word: {s.description!r}")
        out.append(LookPicture(s.image, colour, pattern))
    return out


def item_token_targets(backbone: Backbone, pictures: Sequence[LookPicture]):
    """Per picture, the token each of its real views' item token is pulled to, and the table.

    View ``k`` of an item gets its colour's token for even ``k`` and its pattern's for odd
    ``k`` (the first token of the word, as the language model reads it mid-sentence): the
    five item tokens start out reading like "red stripes red stripes red", the look written
    in words, which is where a candidate's look sits in LaViC's prompt.

    Returns:
        ``(targets, table)``: per picture a ``(2,)`` tensor of indices into ``table`` (colour,
        pattern), and ``table`` the token ids.
    """
    table: dict[int, int] = {}
    targets = []
    for p in pictures:
        ids = [
            backbone.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0]
            for w in (p.colour, p.pattern)
        ]
        targets.append(torch.tensor([table.setdefault(i, len(table)) for i in ids]))
    return targets, torch.tensor(list(table))


def nearest_word_accuracy(backbone: Backbone, pictures: Sequence[LookPicture]) -> dict[str, float]:
    """How often a picture's item tokens are nearest (cosine, over the pictures' own look
    words) to its colour word (even views) and its pattern word (odd views)."""
    from lavic.model.item_tokens import encode_item_tokens, pixel_views

    targets, table = item_token_targets(backbone, pictures)
    words = torch.nn.functional.normalize(
        backbone.model.get_input_embeddings().weight.detach()[table].float(), dim=-1
    )
    right = {"colour": [], "pattern": []}
    for lo in range(0, len(pictures), 32):
        chunk = pictures[lo : lo + 32]
        views = pixel_views(backbone.processor.image_processor, [p.image for p in chunk])
        real = views.flatten(2).abs().sum(-1) > 0  # (B, 5)
        with torch.no_grad():
            tokens = encode_item_tokens(backbone.model, views).float()  # (B, 5, D)
        nearest = (torch.nn.functional.normalize(tokens, dim=-1) @ words.T).argmax(-1)  # (B, 5)
        for b, t in enumerate(targets[lo : lo + 32]):
            for k in range(5):
                if real[b, k]:
                    right["colour" if k % 2 == 0 else "pattern"].append(
                        bool(nearest[b, k] == t[k % 2])
                    )
    return {k: round(sum(v) / max(1, len(v)), 4) for k, v in right.items()}


def warm_start_item_tokens(
    backbone: Backbone,
    pictures: Sequence[LookPicture],
    config: ItemTokenConfig | None = None,
    held_out: Sequence[LookPicture] = (),
    *,
    work_dir: str | Path,
) -> dict[str, Any]:
    """Teach the [CLS] path (tower's last layer + projector) to carry the look.

    LaViC's five item tokens are the projector applied to the last-layer [CLS] of each view.
    The vision pretraining above trains only the patch path (layer -2 through the projector),
    so a real CLIP's semantic [CLS] has no counterpart here: stage 1 on the stand-in learned
    the descriptions' template words and hardly the look (docs/distill.md). This phase gives
    the [CLS] path what a real VLM's has: each real view's item token is pulled to the input
    embedding of the item's colour or pattern word (cross-entropy over those words + MSE to
    the embedding), while the projected patch tokens (the teacher path) are held where they
    were (MSE to their values before this phase). Only the tower's last layer (whose output
    only the [CLS] path reads: patch features come from layer -2) and the projector train.
    No language-model pass: about 0.1 s a step.

    ``pictures`` are the synthetic catalogue's (:func:`look_pictures`) and, for a vision side
    that is not one renderer's, ``lavic.pretrain.pictures``'s; ``held_out`` pictures (drawn
    apart) are measured before and after (:func:`nearest_word_accuracy`). ``work_dir``: the
    phase's trainer folder (logs, checkpoints).
    """
    from lavic.model.item_tokens import pixel_views

    config = config or ItemTokenConfig()
    llava = backbone.model
    core = llava.model
    for p in llava.parameters():
        p.requires_grad_(False)
    params = list(core.vision_tower.encoder.layers[-1].parameters()) + list(
        core.multi_modal_projector.parameters()
    )
    for p in params:
        p.requires_grad_(True)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    views = pixel_views(backbone.processor.image_processor, [p.image for p in pictures]).half()
    real = views.flatten(2).abs().sum(-1) > 0  # (N, 5): padded views are all zeros
    targets, table = item_token_targets(backbone, pictures)
    word_emb = llava.get_input_embeddings().weight.detach()[table]  # (W, D)
    word_dir = torch.nn.functional.normalize(word_emb, dim=-1)
    scale = word_emb.pow(2).mean()
    with torch.no_grad():  # the teacher path's projected patch tokens, to be kept
        keep = [_patch_tokens(llava, views[i][real[i]].float()) for i in range(len(pictures))]
    record: dict[str, Any] = {"config": asdict(config), "num_samples": len(pictures)}
    record["encode_s"] = round(time.perf_counter() - start, 1)
    if held_out:
        record["held_out_before"] = nearest_word_accuracy(backbone, held_out)

    def loss_of(idx: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        pv = views[idx].float()  # (B, 5, C, s, s)
        b, v = pv.shape[:2]
        flat = pv.flatten(0, 1)  # (B*5, C, s, s)
        hidden = core.vision_tower(flat, output_hidden_states=True).hidden_states
        cls = core.multi_modal_projector(hidden[-1][:, 0]).reshape(b, v, -1)  # (B, 5, D)
        goal = torch.stack([targets[i][torch.arange(v) % 2] for i in idx])  # (B, 5)
        mask = real[idx]  # (B, 5)
        tok, goal = cls[mask], goal[mask]  # (K, D), (K,)
        logits = torch.nn.functional.normalize(tok, dim=-1) @ word_dir.T / 0.1  # (K, W)
        ce = torch.nn.functional.cross_entropy(logits, goal)
        mse = (tok - word_emb[goal]).pow(2).mean() / scale
        patches = core.multi_modal_projector(hidden[llava.config.vision_feature_layer][:, 1:])
        patches = patches.reshape(b, v, *patches.shape[1:])  # (B, 5, P, D)
        held = torch.cat([keep[i] for i in idx])  # (K, P, D)
        drift = (patches[mask] - held).pow(2).mean() / scale
        acc = float((logits.argmax(-1) == goal).float().mean())
        return ce + config.mse_weight * mse + config.keep_weight * drift, {"word_acc": acc}

    phase = fit_phase(
        llava,
        loss_of,
        len(pictures),
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        config=config,
        work_dir=work_dir,
    )
    losses, accs = phase.history["loss"], phase.history["word_acc"]
    record.update(
        seconds=phase.seconds,
        loss_first20=_mean(losses[:20]),
        loss_last20=_mean(losses[-20:]),
        word_accuracy_first20=_mean(accs[:20]),
        word_accuracy_last20=_mean(accs[-20:]),
    )
    log.info(
        "item-token warm start: loss %s -> %s, nearest-word accuracy %s",
        record["loss_first20"],
        record["loss_last20"],
        record["word_accuracy_last20"],
    )
    for p in params:
        p.requires_grad_(False)
    if held_out:
        record["held_out_after"] = nearest_word_accuracy(backbone, held_out)
        log.info("held-out pictures' nearest word: %s -> %s", record["held_out_before"],
                 record["held_out_after"])  # fmt: skip
    return record
