"""The item visual-token store: safetensors shards plus an ``index.json``, keyed by item id,
image content hash and adapter fingerprint.

On disk (``CACHE_DIR``)::

    index.json              {"version", "fingerprint", "dim", "dtype",
                             "items": {item_id: {"shard", "key", "image_sha256", "image"}},
                             "shards": {shard_name: sha256 of the shard file}}
    tokens-00001.safetensors  item key -> (5, D) tensor
    tokens-00002.safetensors  ...

An entry is used only if the index's fingerprint is the caller's (the vision side of the model
that made it: base model + stage-1 adapter), its shard's bytes still hash to the recorded
sha256 (a truncated or corrupted shard is never read, its items are re-encoded), and -- checked
by :meth:`ItemTokenCache.ensure` -- the item's image file still hashes to ``image_sha256``
(``"missing"`` / ``"unsafe"`` when there was no file and the white placeholder was encoded).

Every write is a new shard followed by a new index, each written atomically (temporary name,
then rename), under an exclusive lock on ``CACHE_DIR/.lock``: a reader sees the old cache or
the new one, never a partial one. Shards no entry refers to any more are deleted afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from tqdm.auto import tqdm

from lavic.artifacts import ADAPTER_WEIGHTS, artifact_lineage, read_artifact_info
from lavic.constants import NUM_ITEM_TOKENS
from lavic.data.images import (
    UNSAFE,
    ImageStats,
    file_sha256,
    item_image_name,
    placeholder_image,
    read_image,
)
from lavic.errors import LavicError
from lavic.io import atomic_open, atomic_write_json, safe_join
from lavic.model.item_tokens import encoder_dtype, make_item_encoder

try:  # POSIX advisory locks; without them (Windows) concurrent writers are not supported
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
LOCK_FILE = ".lock"
INDEX_VERSION = 1
SHARD_RE = re.compile(r"^tokens-(\d{5,})\.safetensors$")
# A shard is closed (written and indexed) once it holds this many bytes of tokens, so a long
# encode commits its progress as it goes (7B: 5 x 4096 x 2 bytes = 40 KiB per item).
DEFAULT_SHARD_MAX_BYTES = 256 * 1024 * 1024

# The image_sha256 of an item encoded from the placeholder because it had no file.
MISSING_IMAGE_HASH = "missing"
UNSAFE_IMAGE_HASH = "unsafe"  # the item id cannot name a file inside the image folder
UNREADABLE_IMAGE_HASH = "unreadable"  # the file exists but cannot be read (permissions)

# images -> (N, 5, D) tokens: lavic.model.item_tokens.make_item_encoder
Encoder = Callable[[list[Image.Image]], torch.Tensor]


def _shard_name(number: int) -> str:
    return f"tokens-{number:05d}.safetensors"


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def image_content_hash(path: Path | None) -> str:
    """The cache key of an item's image: sha256 of the file, or why there is no file."""
    if path is None:
        return UNSAFE_IMAGE_HASH
    if not path.is_file():
        return MISSING_IMAGE_HASH
    try:
        return file_sha256(path)
    except OSError:
        return UNREADABLE_IMAGE_HASH


@dataclass
class EnsureReport:
    """What :meth:`ItemTokenCache.ensure` did.

    Attributes:
        requested: Distinct items asked for.
        reused: Items whose cached tokens were current (nothing recomputed).
        encoded: Items encoded by this call (new, stale or lost to a corrupt shard).
        stale: Of ``encoded``, items that had an entry made from another image, another
            adapter fingerprint or another dtype.
        corrupt: Of ``encoded``, items whose entry pointed into a missing, truncated or
            corrupted shard (detected by its sha256).
        placeholders: Requested items whose tokens come from the placeholder image (no file,
            unreadable, unsafe name), whether encoded now or earlier.
        shards_written: Names of the shards this call wrote.
        seconds: Wall time of the call.
        image_stats: Outcome counts of every requested item's image (reused items counted
            from the outcome recorded when they were encoded).
    """

    requested: int = 0
    reused: int = 0
    encoded: int = 0
    stale: int = 0
    corrupt: int = 0
    placeholders: int = 0
    shards_written: list[str] = field(default_factory=list)
    seconds: float = 0.0
    image_stats: ImageStats = field(default_factory=ImageStats)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["image_stats"] = self.image_stats.as_dict()
        return out


@contextlib.contextmanager
def _locked(cache_dir: Path, exclusive: bool) -> Iterator[None]:
    """An advisory lock on ``cache_dir/.lock`` (shared for reads, exclusive for writes)."""
    if fcntl is None:
        yield
        return
    try:
        if exclusive:
            cache_dir.mkdir(parents=True, exist_ok=True)
        handle = open(cache_dir / LOCK_FILE, "a+b")  # noqa: SIM115 (held across the block)
    except OSError:
        if exclusive:
            raise LavicError(f"{cache_dir}: cannot create the token cache here") from None
        yield  # a read-only cache folder: readers need no lock against absent writers
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


class ItemTokenCache:
    """Item id -> its five visual tokens ``(5, D)``, read from (and added to) ``cache_dir``.

    Open with :meth:`open`; bring up to date for a set of items with :meth:`ensure` (which
    hashes their image files and encodes what is missing or stale); read with :meth:`get`.
    All current tokens are held in memory (CPU).
    """

    def __init__(self, cache_dir: Path, fingerprint: str):
        self.cache_dir = Path(cache_dir)
        self.fingerprint = fingerprint
        self.dim: int | None = None
        self.dtype: str | None = None
        self._entries: dict[str, dict[str, Any]] = {}  # current entries of the index
        self._shards: dict[str, str] = {}  # shard name -> sha256, for shards still referenced
        self._tensors: dict[str, torch.Tensor] = {}  # item id -> (5, D)
        self._stale: set[str] = set()  # ids dropped at load: another fingerprint / dtype
        self._corrupt: set[str] = set()  # ids dropped at load: their shard is bad
        self._index_signature: tuple[int, int, int] | None = None  # index.json as loaded
        self.last_report: EnsureReport | None = None  # set by build_item_token_cache

    # ---------------------------------------------------------------------------- reading

    @classmethod
    def open(cls, cache_dir: str | os.PathLike[str], *, fingerprint: str) -> ItemTokenCache:
        """Open (or start) the cache in ``cache_dir`` for the model with ``fingerprint``.

        Entries made under another fingerprint are stale and ignored (re-encoded by
        :meth:`ensure`); shards whose bytes no longer match their recorded sha256 are never
        read. Neither is an error: both are logged and rebuilt.

        Args:
            cache_dir: The cache folder (need not exist yet).
            fingerprint: :func:`adapter_fingerprint` of the model whose vision side makes the
                tokens.
        """
        cache = cls(Path(cache_dir), fingerprint)
        with _locked(cache.cache_dir, exclusive=False):
            cache._load()
        return cache

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = (self.cache_dir / INDEX_FILE).stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _load(self) -> None:
        self._entries, self._shards, self._tensors = {}, {}, {}
        self._stale, self._corrupt = set(), set()
        self.dim = self.dtype = None
        self._index_signature = self._signature()
        index_path = self.cache_dir / INDEX_FILE
        if self._index_signature is None:
            return
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            items, shards = index["items"], index["shards"]
            if not isinstance(items, dict) or not isinstance(shards, dict):
                raise TypeError("items and shards must be objects")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "%s: unreadable token-cache index (%s); the cache is rebuilt", index_path, exc
            )
            return
        if index.get("fingerprint") != self.fingerprint:
            log.info(
                "%s: made for another model (fingerprint %.12s, now %.12s): %d entries are stale",
                self.cache_dir,
                index.get("fingerprint"),
                self.fingerprint,
                len(items),
            )
            self._stale = set(items)
            return
        self.dim, self.dtype = index.get("dim"), index.get("dtype")
        loaded: dict[str, dict[str, torch.Tensor]] = {}
        for name, sha in shards.items():
            tensors = self._read_shard(name, sha)
            if tensors is not None:
                loaded[name] = tensors
                self._shards[name] = sha
        for item_id, entry in items.items():
            tensor = None
            if isinstance(entry, dict) and entry.get("shard") in loaded:
                tensor = loaded[entry["shard"]].get(entry.get("key"))
            if tensor is None or tuple(tensor.shape) != (NUM_ITEM_TOKENS, self.dim):
                self._corrupt.add(item_id)
                continue
            self._entries[item_id] = entry
            self._tensors[item_id] = tensor

    def _read_shard(self, name: str, sha: str) -> dict[str, torch.Tensor] | None:
        """A shard's tensors if its bytes hash to ``sha``, else None (logged)."""
        if not isinstance(name, str) or not SHARD_RE.match(name):
            log.warning("%s: index names a shard %r that is not a shard name", self.cache_dir, name)
            return None
        path = self.cache_dir / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.warning("%s: shard unreadable (%s); its items are re-encoded", path, exc.strerror)
            return None
        if _sha256_bytes(data) != sha:
            log.warning(
                "%s: shard corrupted or truncated (sha256 mismatch); its items are re-encoded", path
            )
            return None
        try:
            return load_safetensors_bytes(data)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            log.warning("%s: shard not loadable (%s); its items are re-encoded", path, exc)
            return None

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._tensors

    def __len__(self) -> int:
        return len(self._tensors)

    @property
    def item_ids(self) -> list[str]:
        """The ids with current tokens."""
        return list(self._tensors)

    def image_outcome(self, item_id: str) -> str:
        """How the item's image was read when its tokens were made (``loaded``, ``missing``, ...)."""
        return self._entries[item_id]["image"]

    def get(self, item_ids: Sequence[str]) -> torch.Tensor:
        """The tokens of ``item_ids``, stacked in the order given: ``(M, 5, D)`` on the CPU.

        Raises:
            KeyError: naming the ids the cache does not hold (call :meth:`ensure` first).
        """
        missing = [i for i in dict.fromkeys(item_ids) if i not in self._tensors]
        if missing:
            shown = ", ".join(missing[:10]) + (
                f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""
            )
            raise KeyError(f"item tokens not in the cache {self.cache_dir}: {shown}")
        if not item_ids:
            dtype = getattr(torch, self.dtype) if self.dtype else torch.float32
            return torch.empty((0, NUM_ITEM_TOKENS, self.dim or 0), dtype=dtype)
        return torch.stack([self._tensors[i] for i in item_ids])

    # ---------------------------------------------------------------------------- writing

    def ensure(
        self,
        items: Sequence[tuple[str, Path | None]],
        encoder: Encoder,
        *,
        batch_size: int = 16,
        progress: bool = True,
        dtype: torch.dtype | None = None,
        shard_max_bytes: int = DEFAULT_SHARD_MAX_BYTES,
    ) -> EnsureReport:
        """Make the cache hold current tokens for ``items``; encode only what is missing or stale.

        An item is re-encoded when it has no entry, when its image file's sha256 differs from
        the one recorded, when its entry was made under another fingerprint or dtype, or when
        its shard is corrupt. New tokens go into new shards; the index is rewritten after each
        shard, so an interrupted call keeps what it finished.

        Args:
            items: ``(item_id, image_path)`` pairs; ``image_path`` None when the id cannot name
                a file (encoded from the placeholder, counted ``unsafe``). A path that does
                not exist or does not decode is encoded from the placeholder too.
            encoder: list of N RGB images -> ``(N, 5, D)`` tokens (run under ``no_grad`` by the
                caller's encoder; see :func:`build_item_token_cache`).
            batch_size: Images per encoder call.
            progress: Show a progress bar.
            dtype: The dtype the encoder produces, if known: entries of another dtype are stale.
                (If None, a mismatch found at the first encoded batch re-encodes every entry.)
            shard_max_bytes: Close a shard (write it and the index) past this many bytes.

        Returns:
            What was reused and encoded.
        """
        if batch_size < 1:
            raise LavicError(f"batch_size must be >= 1, got {batch_size}")
        start = time.perf_counter()
        report = EnsureReport()
        wanted: dict[str, Path | None] = {}
        for item_id, path in items:
            wanted.setdefault(item_id, None if path is None else Path(path))
        report.requested = len(wanted)
        with _locked(self.cache_dir, exclusive=True):
            if self._signature() != self._index_signature:
                self._load()  # another process wrote the cache since it was opened
            if dtype is not None and self.dtype not in (None, _dtype_name(dtype)):
                self._drop_all_entries()
            hashes = {
                item_id: image_content_hash(path)
                for item_id, path in tqdm(
                    wanted.items(),
                    desc="hashing item images",
                    disable=not progress or len(wanted) < 1000,
                    leave=False,
                )
            }
            todo = [i for i in wanted if not self._is_current(i, hashes[i])]
            report.stale = sum(1 for i in todo if i in self._stale or i in self._entries)
            report.corrupt = sum(1 for i in todo if i in self._corrupt)
            self._encode(
                todo,
                wanted,
                hashes,
                encoder,
                report,
                batch_size=batch_size,
                progress=progress,
                shard_max_bytes=shard_max_bytes,
            )
        report.reused = report.requested - report.encoded
        for item_id in wanted:
            outcome = self._entries[item_id]["image"]
            report.image_stats.add(outcome)
        report.placeholders = report.image_stats.placeholders
        report.seconds = time.perf_counter() - start
        log.info(
            "item-token cache %s: %d items, %d reused, %d encoded (%d stale, %d from a corrupt "
            "shard), %d with a placeholder image, %.1f s",
            self.cache_dir,
            report.requested,
            report.reused,
            report.encoded,
            report.stale,
            report.corrupt,
            report.placeholders,
            report.seconds,
        )
        return report

    def _is_current(self, item_id: str, image_hash: str) -> bool:
        entry = self._entries.get(item_id)
        return entry is not None and entry.get("image_sha256") == image_hash

    def _drop_all_entries(self) -> None:
        self._stale.update(self._entries)
        self._entries, self._tensors, self._shards = {}, {}, {}
        self.dim = self.dtype = None

    def _encode(
        self,
        todo: list[str],
        wanted: dict[str, Path | None],
        hashes: dict[str, str],
        encoder: Encoder,
        report: EnsureReport,
        *,
        batch_size: int,
        progress: bool,
        shard_max_bytes: int,
    ) -> None:
        buffer: dict[str, torch.Tensor] = {}
        meta: dict[str, dict[str, str]] = {}
        queue = list(todo)
        bar = tqdm(
            total=len(queue),
            desc="encoding item tokens",
            unit="item",
            disable=not progress or not queue,
        )
        try:
            while queue:
                batch, queue = queue[:batch_size], queue[batch_size:]
                images, outcomes = [], []
                for item_id in batch:
                    image, outcome = self._read_item_image(wanted[item_id])
                    images.append(image)
                    outcomes.append(outcome)
                tokens = encoder(images).detach().to("cpu")  # (N, 5, D)
                if tokens.ndim != 3 or tokens.shape[:2] != (len(batch), NUM_ITEM_TOKENS):
                    raise LavicError(
                        f"the item encoder returned shape {tuple(tokens.shape)}, "
                        f"expected ({len(batch)}, {NUM_ITEM_TOKENS}, D)"
                    )
                if self.dim is not None and (tokens.shape[-1], _dtype_name(tokens.dtype)) != (
                    self.dim,
                    self.dtype,
                ):
                    # The cache holds tokens of another width or precision: none can be mixed
                    # with these, so every requested item is encoded afresh.
                    log.info(
                        "%s: cached tokens are (%s, %s), the encoder gives (%s, %s): "
                        "re-encoding all",
                        self.cache_dir,
                        self.dim,
                        self.dtype,
                        tokens.shape[-1],
                        _dtype_name(tokens.dtype),
                    )
                    self._drop_all_entries()
                    redo = [
                        i for i in wanted if i not in buffer and i not in batch and i not in queue
                    ]
                    report.stale += len(redo)
                    queue += redo
                    bar.total += len(redo)
                self.dim, self.dtype = int(tokens.shape[-1]), _dtype_name(tokens.dtype)
                for item_id, outcome, row in zip(batch, outcomes, tokens, strict=True):
                    buffer[item_id] = row.clone().contiguous()  # own storage: safetensors needs it
                    meta[item_id] = {"image_sha256": hashes[item_id], "image": outcome}
                report.encoded += len(batch)
                bar.update(len(batch))
                if sum(t.numel() * t.element_size() for t in buffer.values()) >= shard_max_bytes:
                    self._commit(buffer, meta, report)
                    buffer, meta = {}, {}
            if buffer:
                self._commit(buffer, meta, report)
        finally:
            bar.close()

    @staticmethod
    def _read_item_image(path: Path | None) -> tuple[Image.Image, str]:
        if path is None:
            return placeholder_image(), UNSAFE
        image, outcome = read_image(path.parent, path.name)
        return (image if image is not None else placeholder_image()), outcome

    def _next_shard_name(self) -> str:
        numbers = [
            int(m.group(1))
            for p in self.cache_dir.glob("tokens-*.safetensors")
            if (m := SHARD_RE.match(p.name))
        ]
        numbers += [int(SHARD_RE.match(n).group(1)) for n in self._shards]
        return _shard_name(max(numbers, default=0) + 1)

    def _commit(
        self, buffer: dict[str, torch.Tensor], meta: dict[str, dict[str, str]], report: EnsureReport
    ) -> None:
        """Write one shard, then the index that refers to it, then delete unreferenced shards."""
        name = self._next_shard_name()
        data = save_safetensors_bytes(buffer, metadata={"fingerprint": self.fingerprint})
        with atomic_open(self.cache_dir / name, "wb") as handle:
            handle.write(data)
        self._shards[name] = _sha256_bytes(data)
        for item_id, tensor in buffer.items():
            self._entries[item_id] = {"shard": name, "key": item_id, **meta[item_id]}
            self._tensors[item_id] = tensor
            self._stale.discard(item_id)
            self._corrupt.discard(item_id)
        live = {e["shard"] for e in self._entries.values()}
        self._shards = {n: s for n, s in self._shards.items() if n in live}
        atomic_write_json(
            self.cache_dir / INDEX_FILE,
            {
                "version": INDEX_VERSION,
                "fingerprint": self.fingerprint,
                "dim": self.dim,
                "dtype": self.dtype,
                "items": self._entries,
                "shards": self._shards,
            },
        )
        self._index_signature = self._signature()
        report.shards_written.append(name)
        for path in self.cache_dir.glob("tokens-*.safetensors"):
            if SHARD_RE.match(path.name) and path.name not in self._shards:
                with contextlib.suppress(OSError):
                    path.unlink()


# -------------------------------------------------------------------------------- helpers


def adapter_fingerprint(model_dir: str | os.PathLike[str]) -> str:
    """What an item's visual tokens depend on, as a hex sha256.

    For a LaViC artefact: its root base model's name and the sha256 of every adapter in its
    lineage that can change the vision side (all but stage-2 ``tune`` adapters, which adapt
    only the language model), so a tune artefact shares its stage-1 parent's cache. For a plain
    model name or checkpoint directory: the name as given (a checkpoint changed in place under
    the same name is not detected; give its cache a new folder).
    """
    digest = hashlib.sha256()
    if read_artifact_info(model_dir) is None:
        digest.update(f"base:{model_dir}\n".encode())
        return digest.hexdigest()
    lineage = artifact_lineage(model_dir)
    digest.update(f"base:{lineage[-1][1]['base_model']}\n".encode())
    for directory, info in reversed(lineage):
        if info.get("kind") == "tune":
            continue
        adapter = directory / ADAPTER_WEIGHTS
        if not adapter.is_file():
            raise LavicError(f"{directory}: no {ADAPTER_WEIGHTS}")
        digest.update(f"{info.get('kind')}:{file_sha256(adapter)}\n".encode())
    return digest.hexdigest()


def item_image_paths(
    item_ids: Sequence[str], image_dir: str | os.PathLike[str]
) -> list[tuple[str, Path | None]]:
    """``(item_id, IMAGE_DIR/<item>_0.jpg)`` per distinct id; None where the id is unsafe."""
    out: list[tuple[str, Path | None]] = []
    for item_id in dict.fromkeys(item_ids):
        try:
            path: Path | None = safe_join(image_dir, item_image_name(item_id, 0))
        except LavicError:
            log.warning("item id %r cannot name an image file: placeholder image used", item_id)
            path = None
        out.append((item_id, path))
    return out


def build_item_token_cache(
    backbone,
    item_ids: Sequence[str],
    image_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    *,
    fingerprint: str,
    batch_size: int = 16,
    stats: ImageStats | None = None,
    progress: bool = True,
) -> ItemTokenCache:
    """Open ``cache_dir`` and make it hold current tokens for ``item_ids`` (``<id>_0.jpg``).

    Used by ``tune``, ``evaluate`` and ``serve``: the vision tower runs here, once per new or
    changed image, and never inside a tuning or inference step.

    Args:
        backbone: The model whose vision tower + projector make the tokens.
        item_ids: Items to hold (duplicates ignored).
        image_dir: Folder of ``<item>_<k>.jpg`` images; missing or broken images give the
            placeholder, counted.
        cache_dir: The cache folder.
        fingerprint: :func:`adapter_fingerprint` of the model directory ``backbone`` came from.
        batch_size: Images per vision-tower call.
        stats: Incremented with the image outcome of every requested item.
        progress: Show progress bars.
    """
    cache = ItemTokenCache.open(cache_dir, fingerprint=fingerprint)
    report = cache.ensure(
        item_image_paths(item_ids, image_dir),
        make_item_encoder(backbone),
        batch_size=batch_size,
        progress=progress,
        dtype=encoder_dtype(backbone),
    )
    if stats is not None:
        stats.update(report.image_stats)
    cache.last_report = report
    return cache


__all__ = [
    "EnsureReport",
    "INDEX_FILE",
    "ItemTokenCache",
    "MISSING_IMAGE_HASH",
    "adapter_fingerprint",
    "build_item_token_cache",
    "image_content_hash",
    "item_image_paths",
]
