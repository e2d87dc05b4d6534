"""``lavic describe``: write teacher descriptions of a catalogue's images with the base model.

This is the step the dataset's authors ran with LLaVA-v1.6 to make
``image_descriptions_llava_cleaned``: the base model reads the distillation prompt with the
full image tokens (``<image>``) and describes each item image greedily. The output has the
input's format with the description fields filled:

* ``.json`` (item id -> metadata) -> ``.json`` with ``image_descriptions_llava_cleaned``
  (image name -> text) holding exactly the descriptions written by this command;
* ``.jsonl`` (one image per line) -> ``.jsonl`` with ``image_description_llava_cleaned``
  set on each line (null for an image not described: missing, unreadable, not yet done or
  beyond ``--limit_items``).

Every other field is copied unchanged; descriptions already in the input are replaced. The output is rewritten atomically every
``--save_every`` images; a rerun skips the images already described in it (``--overwrite``
starts afresh). Images that cannot be read are skipped and counted, never described as the
white placeholder.

Example:
    lavic describe --model_name tiny --item_meta_path data/item2meta_valid.jsonl \\
        --image_dir data/valid_images --output_path data/item2meta_valid.described.jsonl
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lavic.constants import DEFAULT_MODEL_NAME, MISSING_TITLE
from lavic.errors import DataError, LavicError

log = logging.getLogger(__name__)

TRAIN_FIELD = "image_descriptions_llava_cleaned"  # .json: image name -> description
VALID_FIELD = "image_description_llava_cleaned"  # .jsonl: one description per line


@dataclass
class Args:
    """Options of ``lavic describe``."""

    item_meta_path: Path = field(
        metadata={"help": "item metadata to describe: item2meta_*.json or item2meta_*.jsonl"}
    )
    image_dir: Path = field(metadata={"help": "folder of the item images"})
    output_path: Path = field(
        metadata={"help": "where to write the described metadata (same format as the input)"}
    )
    model_name: str = field(
        default=DEFAULT_MODEL_NAME,
        metadata={"help": "base LLaVA-NeXT model: Hub id, local checkpoint, `tiny`, `tiny-random`"},
    )
    batch_size: int = field(default=4, metadata={"help": "images per generation batch"})
    max_new_tokens: int = field(default=256, metadata={"help": "longest description, in tokens"})
    overwrite: bool = field(
        default=False,
        metadata={"help": "start afresh even if output_path holds descriptions from a run"},
    )
    save_every: int = field(
        default=64, metadata={"help": "rewrite output_path (atomically) every N images"}
    )
    limit_items: int | None = field(
        default=None, metadata={"help": "describe only the first N items (quick runs)"}
    )
    device: str = field(
        default="auto", metadata={"help": "torch device: auto (cuda if available), cpu, cuda:0"}
    )
    lenient: bool = field(
        default=False, metadata={"help": "skip (and count) bad metadata records instead of failing"}
    )

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_new_tokens", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.limit_items is not None and self.limit_items < 1:
            raise ValueError("--limit_items must be at least 1")
        for name in ("item_meta_path", "image_dir", "output_path"):
            setattr(self, name, Path(getattr(self, name)))
        if self.item_meta_path.suffix.lower() != self.output_path.suffix.lower():
            raise ValueError(
                f"--output_path must have the input's format ({self.item_meta_path.suffix}), "
                f"got {self.output_path.name}"
            )


# ---------------------------------------------------------------------------------- formats


def _read_raw(path: Path) -> Any:
    """The raw JSON of a metadata file (already validated by the loader): a dict for
    ``.json``, a list of (line object or None for a blank line) for ``.jsonl``."""
    if path.suffix.lower() == ".json":
        return json.loads(path.read_text(encoding="utf-8-sig"))
    lines: list[dict[str, Any] | None] = []
    for raw in path.read_text(encoding="utf-8-sig").splitlines():
        try:
            lines.append(json.loads(raw) if raw.strip() else None)
        except json.JSONDecodeError:
            lines.append(None)  # a line the lenient loader skipped: dropped from the output
    return lines


def render_output(raw: Any, suffix: str, descriptions: dict[str, str]) -> str:
    """The input's text with every description field replaced by ``descriptions``.

    The output holds exactly the descriptions this command wrote (an image not described,
    e.g. unreadable or beyond ``--limit_items``, has none), so a later run can tell what is
    done. Records that are not objects (skipped by a lenient load) are copied unchanged
    (``.json``) or dropped (``.jsonl`` lines that are not JSON).

    Args:
        raw: from :func:`_read_raw`.
        suffix: ``.json`` or ``.jsonl``.
        descriptions: image name -> generated description.
    """
    if suffix == ".json":
        out = {}
        for item_id, value in raw.items():
            if isinstance(value, dict):
                images = value.get("images")
                names = (
                    [f"{item_id}_{k}.jpg" for k in range(len(images))]
                    if isinstance(images, list)
                    else []
                )
                old = value.get(TRAIN_FIELD)
                names += [n for n in (old if isinstance(old, dict) else {}) if n not in names]
                value = {
                    **value,
                    TRAIN_FIELD: {n: descriptions[n] for n in names if n in descriptions},
                }
            out[item_id] = value
        return json.dumps(out) + "\n"
    lines = []
    for obj in raw:
        if obj is None:
            continue
        name = obj.get("image_name")
        obj = {**obj, VALID_FIELD: descriptions.get(name) if isinstance(name, str) else None}
        lines.append(json.dumps(obj) + "\n")
    return "".join(lines)


def _previous_descriptions(path: Path, wanted: set[str]) -> dict[str, str]:
    """Descriptions already written to ``path`` by an earlier (interrupted) run."""
    from lavic.data.loaders import load_item_meta

    try:
        meta = load_item_meta(path, lenient=True)
    except DataError as exc:
        raise LavicError(
            f"{exc} (the existing output cannot be resumed; pass --overwrite to start afresh)"
        ) from None
    done: dict[str, str] = {}
    for item in meta.values():
        for name, text in item.descriptions.items():
            if name in wanted and text.strip():
                done[name] = text
    return done


# ---------------------------------------------------------------------------------- model


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise LavicError(f"--device {name!r}: {exc}") from None


def generate_descriptions(backbone, images, titles, *, max_new_tokens: int, device) -> list[str]:
    """Greedy descriptions of ``images`` (one per title) by the base model, full image tokens.

    Rows are left-padded so every row's generation starts right after its own prompt.
    """
    import torch

    from lavic.prompts import IMAGE_TOKEN, teacher_prompt

    processor, tokenizer = backbone.processor, backbone.tokenizer
    image_token = getattr(processor, "image_token", IMAGE_TOKEN)
    prompts = [teacher_prompt(t, image_token) for t in titles]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        inputs = processor(images=list(images), text=prompts, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = side
    inputs = {k: v.to(device) for k, v in inputs.items()}
    model = backbone.model
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(next(model.parameters()).dtype)
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    new_tokens = out[:, inputs["input_ids"].shape[1] :]  # (B, new)
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [" ".join(t.split()) for t in texts]


def _describe_all(todo, args, backbone, device, stats, descriptions, save) -> None:
    """Describe the ``todo`` images in batches, saving every ``--save_every`` images."""
    from tqdm import tqdm

    from lavic.data.images import LOADED, read_image

    since_save = 0
    with tqdm(total=len(todo), desc="describe", unit="img") as bar:
        for start in range(0, len(todo), args.batch_size):
            chunk = todo[start : start + args.batch_size]
            images, titles, names = [], [], []
            for _, title, name in chunk:
                image, outcome = read_image(args.image_dir, name)
                stats.add(outcome)
                if outcome == LOADED:
                    images.append(image)
                    titles.append(title if title is not None else MISSING_TITLE)
                    names.append(name)
            if images:
                texts = generate_descriptions(
                    backbone, images, titles, max_new_tokens=args.max_new_tokens, device=device
                )
                descriptions.update(zip(names, texts, strict=True))
            bar.update(len(chunk))
            since_save += len(chunk)
            if since_save >= args.save_every:
                save()
                since_save = 0


# ---------------------------------------------------------------------------------- run


def run(args: Args) -> int:
    """Describe every readable image of the catalogue; print a JSON summary."""
    import torch

    from lavic.data.images import ImageStats
    from lavic.data.loaders import load_item_meta
    from lavic.data.records import LoadReport
    from lavic.io import atomic_write_text
    from lavic.model.backbone import check_catalogue, load_backbone

    if not args.image_dir.is_dir():
        raise LavicError(f"{args.image_dir}: no such image folder")
    if args.output_path.resolve() == args.item_meta_path.resolve():
        raise LavicError(f"{args.output_path}: the output must not overwrite the input")
    suffix = args.item_meta_path.suffix.lower()
    report = LoadReport(str(args.item_meta_path))
    meta = load_item_meta(args.item_meta_path, lenient=args.lenient, report=report)
    if args.limit_items is not None:
        meta = dict(list(meta.items())[: args.limit_items])
    check_catalogue(args.model_name, meta, args.item_meta_path)
    todo = [(item.item_id, item.title, name) for item in meta.values() for name in item.image_names]
    wanted = {name for _, _, name in todo}

    descriptions: dict[str, str] = {}
    if args.output_path.exists() and not args.overwrite:
        descriptions = _previous_descriptions(args.output_path, wanted)
        if descriptions:
            log.info(
                "%s: %d images already described; continuing", args.output_path, len(descriptions)
            )
    todo = [t for t in todo if t[2] not in descriptions]

    raw = _read_raw(args.item_meta_path)

    def save() -> None:
        atomic_write_text(args.output_path, render_output(raw, suffix, descriptions))

    device = _device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    backbone = load_backbone(args.model_name, dtype=dtype)
    backbone.model.to(device).eval()

    stats = ImageStats()
    try:
        _describe_all(todo, args, backbone, device, stats, descriptions, save)
    except BaseException:
        save()  # keep what was done (Ctrl-C, an out-of-memory error): a rerun continues
        raise
    save()
    summary = {
        "output_path": str(args.output_path),
        "images": len(wanted),
        "described": sum(1 for n in wanted if n in descriptions),
        "described_now": stats.loaded,
        "image_stats": stats.as_dict(),
        "skipped_records": report.num_skipped,
    }
    if stats.placeholders:
        log.warning(
            "%d images could not be read and were not described: %s",
            stats.placeholders,
            stats.as_dict(),
        )
    print(json.dumps(summary, indent=2))
    return 0
