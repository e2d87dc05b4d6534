"""ItemTokenCache: staleness (image, fingerprint, dtype), corrupt shards, atomicity, increments."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lavic.cache.store import (
    INDEX_FILE,
    MISSING_IMAGE_HASH,
    ItemTokenCache,
    adapter_fingerprint,
    item_image_paths,
)
from lavic.data.images import file_sha256

D = 8


class CountingEncoder:
    """A deterministic stand-in for the vision tower: tokens are a function of the pixels.

    Token (v, d) of an image = mean of its channel ``d % 3`` scaled by ``(v + 1) * (d + 1)``,
    so two different solid colours give different tokens and the oracle is computable.
    """

    def __init__(self, dtype: torch.dtype = torch.float32, fail_after: int | None = None):
        self.dtype = dtype
        self.images_seen = 0
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("encoder crashed")
        self.images_seen += len(images)
        return torch.stack([expected_tokens(im) for im in images]).to(self.dtype)


def expected_tokens(image: Image.Image) -> torch.Tensor:
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).reshape(-1, 3))  # (HW, 3)
    means = pixels.mean(dim=0) / 255.0  # (3,)
    v = torch.arange(1, 6, dtype=torch.float32)[:, None]
    d = torch.arange(1, D + 1, dtype=torch.float32)[None, :]
    return means[(d.long() - 1) % 3] * v * d  # (5, D)


COLOURS = {"A1": (255, 0, 0), "B2": (0, 255, 0), "C3": (0, 0, 255), "D4": (9, 99, 199)}


def write_image(image_dir: Path, item_id: str, colour) -> Path:
    path = image_dir / f"{item_id}_0.jpg"
    Image.new("RGB", (12, 10), colour).save(path, format="PNG")  # lossless bytes, .jpg name
    return path


@pytest.fixture()
def catalogue(tmp_path: Path) -> Path:
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for item_id, colour in COLOURS.items():
        write_image(image_dir, item_id, colour)
    return image_dir


def solid(colour) -> Image.Image:
    return Image.new("RGB", (12, 10), colour)


def test_encode_then_reuse(tmp_path: Path, catalogue: Path):
    cache_dir = tmp_path / "cache"
    enc = CountingEncoder()
    cache = ItemTokenCache.open(cache_dir, fingerprint="fp1")
    report = cache.ensure(
        item_image_paths(list(COLOURS), catalogue), enc, batch_size=3, progress=False
    )
    assert (report.requested, report.encoded, report.reused) == (4, 4, 0)
    assert enc.images_seen == 4 and enc.calls == 2
    tokens = cache.get(["C3", "A1"])
    assert tokens.shape == (2, 5, D)
    torch.testing.assert_close(tokens[0], expected_tokens(solid(COLOURS["C3"])))
    torch.testing.assert_close(tokens[1], expected_tokens(solid(COLOURS["A1"])))

    # A fresh process: nothing is re-encoded, the same tokens come back from disk.
    enc2 = CountingEncoder()
    reopened = ItemTokenCache.open(cache_dir, fingerprint="fp1")
    assert "A1" in reopened and "ZZ" not in reopened and len(reopened) == 4
    report2 = reopened.ensure(item_image_paths(list(COLOURS), catalogue), enc2, progress=False)
    assert (report2.encoded, report2.reused) == (0, 4) and enc2.calls == 0
    assert torch.equal(reopened.get(["C3", "A1"]), tokens)

    index = json.loads((cache_dir / INDEX_FILE).read_text())
    assert index["fingerprint"] == "fp1" and index["dim"] == D and index["dtype"] == "float32"
    assert index["items"]["A1"]["image_sha256"] == file_sha256(catalogue / "A1_0.jpg")
    for name, sha in index["shards"].items():
        assert file_sha256(cache_dir / name) == sha


def test_incremental_encodes_only_new_items(tmp_path: Path, catalogue: Path):
    cache_dir = tmp_path / "cache"
    ItemTokenCache.open(cache_dir, fingerprint="fp").ensure(
        item_image_paths(["A1", "B2"], catalogue), CountingEncoder(), progress=False
    )
    enc = CountingEncoder()
    cache = ItemTokenCache.open(cache_dir, fingerprint="fp")
    report = cache.ensure(
        item_image_paths(["A1", "B2", "C3", "D4", "C3"], catalogue), enc, progress=False
    )
    assert (report.requested, report.encoded, report.reused, report.stale) == (4, 2, 2, 0)
    assert enc.images_seen == 2
    assert len(json.loads((cache_dir / INDEX_FILE).read_text())["shards"]) == 2
    torch.testing.assert_close(cache.get(["D4"])[0], expected_tokens(solid(COLOURS["D4"])))


def test_changed_image_is_stale(tmp_path: Path, catalogue: Path):
    cache_dir = tmp_path / "cache"
    ItemTokenCache.open(cache_dir, fingerprint="fp").ensure(
        item_image_paths(list(COLOURS), catalogue), CountingEncoder(), progress=False
    )
    write_image(catalogue, "B2", (10, 20, 30))  # same name, same size, new content
    enc = CountingEncoder()
    cache = ItemTokenCache.open(cache_dir, fingerprint="fp")
    report = cache.ensure(item_image_paths(list(COLOURS), catalogue), enc, progress=False)
    assert (report.encoded, report.stale, report.reused) == (1, 1, 3) and enc.images_seen == 1
    torch.testing.assert_close(cache.get(["B2"])[0], expected_tokens(solid((10, 20, 30))))
    again = ItemTokenCache.open(cache_dir, fingerprint="fp")
    torch.testing.assert_close(again.get(["B2"])[0], expected_tokens(solid((10, 20, 30))))


def test_changed_fingerprint_is_stale_and_old_shards_go(tmp_path: Path, catalogue: Path):
    cache_dir = tmp_path / "cache"
    ItemTokenCache.open(cache_dir, fingerprint="old").ensure(
        item_image_paths(list(COLOURS), catalogue), CountingEncoder(), progress=False
    )
    old_shards = set(json.loads((cache_dir / INDEX_FILE).read_text())["shards"])
    cache = ItemTokenCache.open(cache_dir, fingerprint="new")
    assert len(cache) == 0 and "A1" not in cache
    with pytest.raises(KeyError, match="A1"):
        cache.get(["A1"])
    enc = CountingEncoder()
    report = cache.ensure(item_image_paths(list(COLOURS), catalogue), enc, progress=False)
    assert (report.encoded, report.stale) == (4, 4) and enc.images_seen == 4
    index = json.loads((cache_dir / INDEX_FILE).read_text())
    assert index["fingerprint"] == "new"
    assert not old_shards & set(index["shards"])
    assert not any((cache_dir / s).exists() for s in old_shards)


def test_dtype_change_re_encodes(tmp_path: Path, catalogue: Path):
    cache_dir = tmp_path / "cache"
    ItemTokenCache.open(cache_dir, fingerprint="fp").ensure(
        item_image_paths(list(COLOURS), catalogue), CountingEncoder(), progress=False
    )
    # dtype known up front
    enc = CountingEncoder(torch.bfloat16)
    cache = ItemTokenCache.open(cache_dir, fingerprint="fp")
    report = cache.ensure(
        item_image_paths(["A1", "B2"], catalogue), enc, progress=False, dtype=torch.bfloat16
    )
    assert report.encoded == 2 and cache.get(["A1"]).dtype == torch.bfloat16
    # dtype discovered at the first batch: everything requested is re-encoded, nothing mixed
    enc = CountingEncoder(torch.float32)
    report = cache.ensure(
        item_image_paths(list(COLOURS), catalogue), enc, batch_size=1, progress=False
    )
    assert report.encoded == 4 and enc.images_seen == 4
    assert cache.get(list(COLOURS)).dtype == torch.float32
    assert (
        ItemTokenCache.open(cache_dir, fingerprint="fp").get(list(COLOURS)).dtype == torch.float32
    )


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupt_shard_detected_and_rebuilt(tmp_path: Path, catalogue: Path, damage: str):
    cache_dir = tmp_path / "cache"
    ItemTokenCache.open(cache_dir, fingerprint="fp").ensure(
        item_image_paths(["A1", "B2"], catalogue), CountingEncoder(), progress=False
    )
    ItemTokenCache.open(cache_dir, fingerprint="fp").ensure(
        item_image_paths(["C3"], catalogue), CountingEncoder(), progress=False
    )
    index = json.loads((cache_dir / INDEX_FILE).read_text())
    bad = index["items"]["A1"]["shard"]
    path = cache_dir / bad
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-3] ^= 0xFF  # a byte inside the tensor data: still parses, wrong values
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        path.unlink()
    cache = ItemTokenCache.open(cache_dir, fingerprint="fp")
    assert "A1" not in cache and "B2" not in cache and "C3" in cache  # never used
    enc = CountingEncoder()
    report = cache.ensure(item_image_paths(["A1", "B2", "C3"], catalogue), enc, progress=False)
    assert (report.encoded, report.corrupt, report.reused) == (2, 2, 1) and enc.images_seen == 2
    torch.testing.assert_close(cache.get(["A1"])[0], expected_tokens(solid(COLOURS["A1"])))
    index = json.loads((cache_dir / INDEX_FILE).read_text())
    assert bad not in index["shards"] and not path.exists()
    for name, sha in index["shards"].items():
        assert file_sha256(cache_dir / name) == sha


def test_unreadable_index_is_rebuilt(tmp_path: Path, catalogue: Path):
    cache_dir = tmp_path / "cache"
    ItemTokenCache.open(cache_dir, fingerprint="fp").ensure(
        item_image_paths(["A1"], catalogue), CountingEncoder(), progress=False
    )
    (cache_dir / INDEX_FILE).write_text('{"items": {"A1": ')
    cache = ItemTokenCache.open(cache_dir, fingerprint="fp")
    assert len(cache) == 0
    report = cache.ensure(item_image_paths(["A1"], catalogue), CountingEncoder(), progress=False)
    assert report.encoded == 1 and json.loads((cache_dir / INDEX_FILE).read_text())["items"]


def test_interrupted_ensure_leaves_a_consistent_cache(tmp_path: Path, catalogue: Path):
    cache_dir = tmp_path / "cache"
    ItemTokenCache.open(cache_dir, fingerprint="fp").ensure(
        item_image_paths(["A1"], catalogue), CountingEncoder(), progress=False
    )
    before = (cache_dir / INDEX_FILE).read_text()
    cache = ItemTokenCache.open(cache_dir, fingerprint="fp")
    # One item per batch, a shard closed after every item (1 byte limit), crash at the 3rd call.
    with pytest.raises(RuntimeError, match="crashed"):
        cache.ensure(
            item_image_paths(list(COLOURS), catalogue),
            CountingEncoder(fail_after=2),
            batch_size=1,
            progress=False,
            shard_max_bytes=1,
        )
    after = json.loads((cache_dir / INDEX_FILE).read_text())  # valid JSON, never partial
    assert after != json.loads(before)
    assert set(after["items"]) == {"A1", "B2", "C3"}  # the two finished shards were committed
    for name, sha in after["shards"].items():
        assert file_sha256(cache_dir / name) == sha
    assert not list(cache_dir.glob(".*.tmp"))
    reopened = ItemTokenCache.open(cache_dir, fingerprint="fp")
    torch.testing.assert_close(reopened.get(["C3"])[0], expected_tokens(solid(COLOURS["C3"])))


def test_failed_index_write_keeps_the_old_index(tmp_path: Path, catalogue: Path, monkeypatch):
    cache_dir = tmp_path / "cache"
    ItemTokenCache.open(cache_dir, fingerprint="fp").ensure(
        item_image_paths(["A1"], catalogue), CountingEncoder(), progress=False
    )
    before = (cache_dir / INDEX_FILE).read_bytes()
    import lavic.io

    real_replace = lavic.io.os.replace

    def failing_replace(src, dst):
        if Path(dst).name == INDEX_FILE:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(lavic.io.os, "replace", failing_replace)
    with pytest.raises(OSError):
        ItemTokenCache.open(cache_dir, fingerprint="fp").ensure(
            item_image_paths(["B2"], catalogue), CountingEncoder(), progress=False
        )
    monkeypatch.undo()
    assert (cache_dir / INDEX_FILE).read_bytes() == before
    assert not list(cache_dir.glob(".*.tmp"))
    cache = ItemTokenCache.open(cache_dir, fingerprint="fp")
    assert "A1" in cache and "B2" not in cache
    report = cache.ensure(
        item_image_paths(["A1", "B2"], catalogue), CountingEncoder(), progress=False
    )
    assert report.encoded == 1  # the orphan shard of the failed call is not trusted
    assert len(list(cache_dir.glob("tokens-*.safetensors"))) == len(
        json.loads((cache_dir / INDEX_FILE).read_text())["shards"]
    )


def test_missing_and_unsafe_images_use_the_placeholder(tmp_path: Path, catalogue: Path):
    cache_dir = tmp_path / "cache"
    items = item_image_paths(["A1", "NOIMG", "../evil"], catalogue)
    assert items[2] == ("../evil", None)
    cache = ItemTokenCache.open(cache_dir, fingerprint="fp")
    report = cache.ensure(items, CountingEncoder(), progress=False)
    assert report.placeholders == 2
    assert report.image_stats.as_dict() == {
        "loaded": 1,
        "missing": 1,
        "unreadable": 0,
        "unsafe": 1,
        "oversized": 0,
    }
    placeholder = expected_tokens(Image.new("RGB", (336, 336), (255, 255, 255)))
    torch.testing.assert_close(cache.get(["NOIMG"])[0], placeholder)
    index = json.loads((cache_dir / INDEX_FILE).read_text())
    assert index["items"]["NOIMG"]["image_sha256"] == MISSING_IMAGE_HASH
    # Reused entries still report their placeholder; the image arriving makes it stale.
    report = ItemTokenCache.open(cache_dir, fingerprint="fp").ensure(
        items, CountingEncoder(), progress=False
    )
    assert (report.encoded, report.placeholders) == (0, 2)
    write_image(catalogue, "NOIMG", (1, 2, 3))
    cache = ItemTokenCache.open(cache_dir, fingerprint="fp")
    report = cache.ensure(items, CountingEncoder(), progress=False)
    assert (report.encoded, report.stale, report.placeholders) == (1, 1, 1)
    torch.testing.assert_close(cache.get(["NOIMG"])[0], expected_tokens(solid((1, 2, 3))))


def test_get_names_missing_ids_and_keeps_order(tmp_path: Path, catalogue: Path):
    cache = ItemTokenCache.open(tmp_path / "c", fingerprint="fp")
    cache.ensure(item_image_paths(["A1", "B2"], catalogue), CountingEncoder(), progress=False)
    with pytest.raises(KeyError, match="X9.*Y8|Y8.*X9"):
        cache.get(["A1", "X9", "Y8"])
    both = cache.get(["B2", "A1", "B2"])
    assert both.shape == (3, 5, D) and torch.equal(both[0], both[2])
    assert cache.get([]).shape == (0, 5, D)


def _write_adapter_artifact(path: Path, kind: str, payload: bytes, parent: str | None):
    """An artefact whose adapter weights are ``payload`` (the fingerprint hashes bytes only)."""
    from lavic.artifacts import artifact_info

    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(payload)
    info = artifact_info(kind=kind, base_model="tiny-random", parent=parent)
    (path / "lavic.json").write_text(json.dumps(info))


def test_adapter_fingerprint(tmp_path: Path):
    assert adapter_fingerprint("tiny-random") == adapter_fingerprint("tiny-random")
    assert adapter_fingerprint("tiny-random") != adapter_fingerprint("tiny")
    distill = tmp_path / "distill"
    _write_adapter_artifact(distill, "distill", b"weights-1", None)
    tune = tmp_path / "tune"
    _write_adapter_artifact(tune, "tune", b"lm-weights", "../distill")
    fp = adapter_fingerprint(distill)
    assert fp != adapter_fingerprint("tiny-random")
    # A tune artefact adapts only the language model: its items' tokens are its parent's.
    assert adapter_fingerprint(tune) == fp
    (distill / "adapter_model.safetensors").write_bytes(b"weights-2")
    assert adapter_fingerprint(distill) != fp
    assert adapter_fingerprint(tune) == adapter_fingerprint(distill)
