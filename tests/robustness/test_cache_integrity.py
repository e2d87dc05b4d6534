"""The item-token cache under damage: every corrupted, truncated, missing or swapped shard and
every broken index is detected (by the shard's sha256, the index's shape) and rebuilt through
``lavic encode``; damaged bytes are never used. The oracle: the tokens after the rebuild equal
those of the undamaged cache, and a swapped shard's (different) values never come back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lavic.cache.store import INDEX_FILE, ItemTokenCache, adapter_fingerprint

from .helpers import run_cli

SHARD_ITEMS = 4  # 12 items -> 3 shards, so damage to one shard spares the others
ITEM_BYTES = 5 * 32 * 4  # tiny-random: five 32-dim float32 tokens


@pytest.fixture(scope="module")
def pristine(stage1, catalogue, tmp_path_factory):
    """A cache of the catalogue's 12 items in 3 shards, and its tokens (the oracle)."""
    kwdefaults = ItemTokenCache.ensure.__kwdefaults__
    saved = kwdefaults["shard_max_bytes"]
    kwdefaults["shard_max_bytes"] = SHARD_ITEMS * ITEM_BYTES
    try:
        cache_dir = tmp_path_factory.mktemp("pristine") / "cache"
        from lavic.cli import main

        assert main(_argv(stage1, catalogue, cache_dir)) == 0
    finally:
        kwdefaults["shard_max_bytes"] = saved
    index = json.loads((cache_dir / INDEX_FILE).read_text())
    assert len(index["shards"]) == 3
    cache = ItemTokenCache.open(cache_dir, fingerprint=adapter_fingerprint(stage1))
    ids = sorted(index["items"])
    return cache_dir, ids, cache.get(ids)


def _argv(stage1, catalogue, cache_dir: Path) -> list[str]:
    return [
        "encode", "--model_dir", str(stage1), "--cache_dir", str(cache_dir), "--image_dir",
        str(catalogue["image_dir"]), "--item_meta_path", str(catalogue["item_meta_path"]),
        "--batch_size", "5",
    ]  # fmt: skip


def _shard_of(index: dict, shard_number: int) -> tuple[str, list[str]]:
    name = sorted(index["shards"])[shard_number]
    return name, sorted(i for i, e in index["items"].items() if e["shard"] == name)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # inside the last tensor's data: the header still parses
    path.write_bytes(bytes(data))


def _swap_values(path: Path) -> None:
    tensors = load_file(str(path))
    save_file({k: v + 1.0 for k, v in tensors.items()}, str(path))  # valid file, other values


# name -> (damage(cache_dir, index) -> items expected re-encoded (None: all), report field)
def _shard_damage(how):
    def damage(cache_dir: Path, index: dict) -> list[str]:
        name, items = _shard_of(index, 1)
        how(cache_dir / name)
        return items

    return damage


def _index_damage(edit):
    def damage(cache_dir: Path, index: dict) -> list[str] | None:
        edit(cache_dir / INDEX_FILE, index)
        return None

    return damage


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _outside_shard(path: Path, index: dict) -> None:
    """The index names a shard outside the folder whose hash matches: it must not be read."""
    import hashlib

    outside = path.parent.parent / "outside.safetensors"
    name, items = _shard_of(index, 0)
    tensors = load_file(str(path.parent / name))
    save_file({k: torch.zeros_like(v) for k, v in tensors.items()}, str(outside))
    sha = hashlib.sha256(outside.read_bytes()).hexdigest()
    index["shards"] = {"../outside.safetensors": sha, **index["shards"]}
    for item in items:
        index["items"][item]["shard"] = "../outside.safetensors"
    _write(path, json.dumps(index))


def _missing_key(path: Path, index: dict) -> None:
    first = sorted(index["items"])[0]
    index["items"][first]["key"] = "no-such-key"
    _write(path, json.dumps(index))


def _wrong_dim(path: Path, index: dict) -> None:
    index["dim"] = 99
    _write(path, json.dumps(index))


def _other_fingerprint(path: Path, index: dict) -> None:
    index["fingerprint"] = "0" * 64
    _write(path, json.dumps(index))


def _items_a_list(path: Path, index: dict) -> None:
    index["items"] = list(index["items"])
    _write(path, json.dumps(index))


DAMAGE = {
    "shard byte flipped": (_shard_damage(_flip_byte), "corrupt"),
    "shard truncated": (
        _shard_damage(lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
        "corrupt",
    ),
    "shard zero bytes": (_shard_damage(lambda p: p.write_bytes(b"")), "corrupt"),
    "shard deleted": (_shard_damage(lambda p: p.unlink()), "corrupt"),
    "shard swapped for a valid file with other values": (_shard_damage(_swap_values), "corrupt"),
    "index not JSON": (_index_damage(lambda p, i: _write(p, "{garbage")), None),
    "index truncated": (_index_damage(lambda p, i: _write(p, p.read_text()[:50])), None),
    "index items a list": (_index_damage(_items_a_list), None),
    "index names a shard outside the folder": (_index_damage(_outside_shard), None),
    "index entry names a missing key": (_index_damage(_missing_key), None),
    "index dim differs from the shards": (_index_damage(_wrong_dim), None),
    "index of another model (fingerprint)": (_index_damage(_other_fingerprint), None),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_cache_is_detected_and_rebuilt(
    name, pristine, stage1, catalogue, tmp_path, capsys, tally
):
    source, ids, oracle = pristine
    cache_dir = tmp_path / "cache"
    shutil.copytree(source, cache_dir)
    index = json.loads((cache_dir / INDEX_FILE).read_text())
    damage, _ = DAMAGE[name]
    with tally.case("fault", "item-token cache (encode)", name):
        redo = damage(cache_dir, index)
        fingerprint = adapter_fingerprint(stage1)
        opened = ItemTokenCache.open(cache_dir, fingerprint=fingerprint)
        if redo is not None:
            # Detected on open: the damaged shard's items are not served, the others are.
            assert sorted(set(ids) - set(opened.item_ids)) == redo
            torch.testing.assert_close(
                opened.get(sorted(opened.item_ids)),
                oracle[[ids.index(i) for i in sorted(opened.item_ids)]],
                rtol=0,
                atol=0,
            )
        else:
            served = opened.item_ids
            # Whatever an index claims, nothing it serves differs from the true tokens.
            if served:
                torch.testing.assert_close(
                    opened.get(served), oracle[[ids.index(i) for i in served]], rtol=0, atol=0
                )
            redo = sorted(set(ids) - set(served))
        result = run_cli(capsys, *_argv(stage1, catalogue, cache_dir))
        assert result.rc == 0, result.err
        report = json.loads(result.out)
        assert report["encoded"] == len(redo), report
        assert report["reused"] == len(ids) - len(redo)
        if DAMAGE[name][1] == "corrupt":
            assert report["corrupt"] == len(redo) > 0
        rebuilt = ItemTokenCache.open(cache_dir, fingerprint=fingerprint)
        torch.testing.assert_close(rebuilt.get(ids), oracle, rtol=0, atol=1e-6)
        assert not (tmp_path / "outside.safetensors").exists() or name.startswith("index names")
        # Nothing under a final name in the folder is a damaged or unreferenced shard.
        live = json.loads((cache_dir / INDEX_FILE).read_text())["shards"]
        shards = {p.name for p in cache_dir.glob("tokens-*.safetensors")}
        assert shards == set(live)
        for shard in shards:
            load_file(str(cache_dir / shard))


def test_stray_temporary_files_are_never_read(pristine, stage1, catalogue, tmp_path, capsys, tally):
    """A killed writer can leave ``.tokens-*.tmp`` / ``.index.json.*.tmp``; they are not the
    cache: a fresh open serves exactly the indexed tokens and a rerun encodes nothing."""
    source, ids, oracle = pristine
    cache_dir = tmp_path / "cache"
    shutil.copytree(source, cache_dir)
    (cache_dir / ".tokens-00009.safetensors.x1.tmp").write_bytes(b"half a shard")
    (cache_dir / ".index.json.x2.tmp").write_text('{"items": {')
    with tally.case("fault", "item-token cache (encode)", "temporary files left by a kill"):
        result = run_cli(capsys, *_argv(stage1, catalogue, cache_dir))
        assert result.rc == 0, result.err
        report = json.loads(result.out)
        assert (report["encoded"], report["reused"]) == (0, len(ids))
        cache = ItemTokenCache.open(cache_dir, fingerprint=adapter_fingerprint(stage1))
        torch.testing.assert_close(cache.get(ids), oracle, rtol=0, atol=0)
