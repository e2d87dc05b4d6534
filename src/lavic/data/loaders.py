"""Loaders for exactly the reference's data formats, with one-line ``file:line: problem`` errors.

Formats (see ``docs/data.md``):

* conversations, ``DATA_DIR/<category>/{train,valid,test}.jsonl``: one JSON object per line with
  ``context`` (str), ``context_items`` (list[str]), ``gt`` (str), ``gt_items`` (list[str]) and
  one or more candidate lists under ``candidates_*`` keys;
* ``item2meta_train.json``: one JSON object, item id -> ``{title, images: [{large, ...}],
  image_descriptions_llava_cleaned: {image_name: text}, ...}``;
* ``item2meta_valid.jsonl``: one image per line: ``title``, ``image_name`` (any file name; the
  reference's are ``<item>_<k>.jpg``, which gives the item id), ``image`` (URL),
  ``image_description_llava_cleaned``, and optionally ``item_id``.

Strict mode (the default) raises :class:`lavic.errors.DataError` on the first bad record.
Lenient mode skips bad records, counts them and keeps their messages in a
:class:`~lavic.data.records.LoadReport`; problems that leave the rest of a file unreadable (a
``.json`` document that is not valid JSON, a top-level value of the wrong kind) stay fatal.
Blank lines are not records and are skipped silently. Text is kept verbatim (the published
files contain mojibake such as ``\\u00e2\\u0080\\u0099``; it is preserved, not "repaired").
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from json.decoder import scanstring
from pathlib import Path
from typing import Any

from lavic.constants import ITEM_TOKENS, MISSING_TITLE, SYNTHETIC_IMAGE_URL
from lavic.data.records import (
    CANDIDATES_PREFIX,
    Conversation,
    DescribedImage,
    ItemMeta,
    LoadReport,
)
from lavic.errors import DataError, LavicError

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "valid", "test")

# `B08LYS9WYD_4.jpg` -> item `B08LYS9WYD`, index 4 (the reference's crawler names files this way).
IMAGE_NAME_RE = re.compile(r"^(?P<item>.+)_(?P<index>\d+)\.jpg$", re.IGNORECASE)

_WHITESPACE = re.compile(r"[ \t\n\r]*")
# A JSON escape of a UTF-16 surrogate: valid JSON syntax, but alone (unpaired) it is no
# character at all; Python keeps it in the str, and the tokenizer or a UTF-8 write fails later.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


class _BadRecord(Exception):
    """A problem with one record; the caller adds the file and line."""


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    return type(value).__name__


def _open_bytes_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; errors mapped to DataError
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except IsADirectoryError:
        raise DataError(path, "is a directory, expected a file") from None
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror}") from None
    with handle:
        yield from enumerate(handle, start=1)


def _decode_line(raw: bytes, lineno: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadRecord(
            f"not valid UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
        ) from None
    if lineno == 1 and text.startswith("\ufeff"):
        text = text[1:]  # a UTF-8 byte-order mark, as some editors write
    return text


def _iter_jsonl_objects(
    path: Path, *, lenient: bool, report: LoadReport
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line, object)`` for every non-blank line; bad lines raise or are skipped."""
    for lineno, raw in _open_bytes_lines(path):
        try:
            text = _decode_line(raw, lineno)
            if not text.strip():
                continue
            try:
                obj = json.loads(text, object_pairs_hook=_object_without_duplicate_keys)
            except RecursionError:
                raise _BadRecord("JSON nested too deeply") from None
            except json.JSONDecodeError as exc:
                if not raw.endswith(b"\n"):
                    # The last line of a file cut off mid-write has no newline.
                    raise _BadRecord(
                        f"truncated last line (no newline at end, and {exc.msg.lower()} "
                        f"at column {exc.colno})"
                    ) from None
                raise _BadRecord(f"malformed JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise _BadRecord(f"expected a JSON object on each line, got {_json_kind(obj)}")
            if _SURROGATE_ESCAPE.search(text):
                _check_unicode(obj)
        except _BadRecord as exc:
            _reject(path, lineno, str(exc), lenient=lenient, report=report)
            continue
        yield lineno, obj


def _object_without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps only the last of repeated keys: a silent drop of the others.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _BadRecord(f"duplicate key {key!r} (JSON would keep only the last)")
            seen.add(key)
    return obj


def _check_unicode(value: Any) -> None:
    """Refuse an unpaired surrogate anywhere in the parsed JSON ``value`` (keys included).

    Called only when the text holds a surrogate escape (rare), so ordinary records are not
    walked.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise _BadRecord(
                    f"unpaired surrogate \\u{ord(item[exc.start]):04x} in a string "
                    "(not valid Unicode)"
                ) from None
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _reject(path: Path, lineno: int | None, problem: str, *, lenient: bool, report: LoadReport):
    error = DataError(path, problem, lineno)
    if not lenient:
        raise error
    report.skipped.append(str(error))


def _summarise_skips(report: LoadReport, before: int) -> None:
    skipped = report.skipped[before:]
    if skipped:
        logger.warning(
            "%s: skipped %d bad record(s) (lenient mode); first: %s",
            report.path,
            len(skipped),
            skipped[0],
        )


# ----------------------------------------------------------------------------- field checks


def _require(obj: dict[str, Any], key: str) -> Any:
    if key not in obj:
        raise _BadRecord(f"missing key {key!r}")
    return obj[key]


def _as_str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise _BadRecord(f"key {key!r} must be a string, got {_json_kind(value)}")
    return value


def _no_item_tokens(text: str | None, key: str) -> str | None:
    # The five placeholders are special tokens: in a prompt's text they would take a visual
    # token each, and the item-token count would no longer match the items shown.
    if text and "<ItemImageEmb" in text:
        for token in ITEM_TOKENS:
            if token in text:
                raise _BadRecord(f"key {key!r} holds the reserved item token {token!r}")
    return text


def _as_optional_str(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _BadRecord(f"key {key!r} must be a string or null, got {_json_kind(value)}")
    return value


def _as_id_list(
    value: Any, key: str, *, non_empty: bool = False, unique: bool = False
) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _BadRecord(f"key {key!r} must be a list of item ids, got {_json_kind(value)}")
    first: dict[str, int] = {}
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _BadRecord(f"key {key!r}[{i}] must be a string item id, got {_json_kind(item)}")
        if not item.strip():
            raise _BadRecord(f"key {key!r}[{i}] is an empty item id")
        if unique and item in first:
            raise _BadRecord(
                f"key {key!r}[{i}] repeats item id {item!r} (first at [{first[item]}])"
            )
        first.setdefault(item, i)
    if non_empty and not value:
        raise _BadRecord(f"key {key!r} is an empty list")
    return tuple(value)


# ----------------------------------------------------------------------------- conversations


def _conversation(obj: dict[str, Any], source: str, lineno: int) -> Conversation:
    context = _no_item_tokens(_as_str(_require(obj, "context"), "context"), "context")
    context_items = _as_id_list(_require(obj, "context_items"), "context_items")
    gt = _as_str(_require(obj, "gt"), "gt")
    gt_items = _as_id_list(_require(obj, "gt_items"), "gt_items", non_empty=True)
    candidates = {
        # A candidate shown twice is a data error (the published lists never repeat one).
        key: _as_id_list(value, key, non_empty=True, unique=True)
        for key, value in obj.items()
        if key.startswith(CANDIDATES_PREFIX)
    }
    if not candidates:
        raise _BadRecord(f"no candidate list (no {CANDIDATES_PREFIX + '*'!r} key)")
    return Conversation(
        context=context,
        context_items=context_items,
        gt=gt,
        gt_items=gt_items,
        candidates=candidates,
        source=source,
        line=lineno,
        raw=obj,
    )


def load_conversations(
    path: str | os.PathLike[str],
    *,
    lenient: bool = False,
    report: LoadReport | None = None,
    candidate_key: str | None = None,
) -> list[Conversation]:
    """Load and validate one conversations file (``<split>.jsonl``).

    Every record must have ``context`` (str), ``context_items`` (list of ids), ``gt`` (str),
    ``gt_items`` (a non-empty list of ids) and at least one non-empty ``candidates_*`` list,
    and every record must have the same ``candidates_*`` keys as the first one.

    Args:
        path: The ``.jsonl`` file.
        lenient: Skip bad records (counted in ``report``) instead of raising.
        report: Filled with the number loaded and the skip messages.
        candidate_key: If given (e.g. ``"candidates_st"``), every record must have it.

    Returns:
        The conversations in file order.

    Raises:
        DataError: ``file:line: problem`` for the first bad record (strict mode), or if the
            file cannot be read.
    """
    path = Path(path)
    report = report if report is not None else LoadReport(str(path))
    report.path = str(path)
    before = len(report.skipped)
    conversations: list[Conversation] = []
    first_keys: tuple[int, list[str]] | None = None
    for lineno, obj in _iter_jsonl_objects(path, lenient=lenient, report=report):
        try:
            conversation = _conversation(obj, str(path), lineno)
            keys = sorted(conversation.candidates)
            if first_keys is None:
                first_keys = (lineno, keys)
            elif keys != first_keys[1]:
                raise _BadRecord(
                    f"candidate keys {keys} differ from line {first_keys[0]}'s {first_keys[1]}"
                )
            if candidate_key is not None and candidate_key not in conversation.candidates:
                raise _BadRecord(f"missing key {candidate_key!r} (has {keys})")
        except _BadRecord as exc:
            _reject(path, lineno, str(exc), lenient=lenient, report=report)
            continue
        conversations.append(conversation)
    report.loaded += len(conversations)
    _summarise_skips(report, before)
    logger.debug("%s: loaded %d conversations", path, len(conversations))
    return conversations


def split_path(data_dir: str | os.PathLike[str], category: str, split: str) -> Path:
    """``DATA_DIR/<category>/<split>.jsonl``.

    ``category`` and ``split`` must be plain names (no separator, not ``.``/``..``). Links are
    not resolved: a category folder may be a symlink to where the data really lives.
    """
    for what, name in (("category", category), ("split", split)):
        if not name or name in {".", ".."} or "/" in name or "\\" in name or "\x00" in name:
            raise LavicError(f"unsafe {what} name {name!r}: must be a plain folder/file name")
    return Path(data_dir) / category / f"{split}.jsonl"


def find_splits(data_dir: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Categories under ``data_dir`` (sorted) -> the splits present, in train/valid/test order."""
    root = Path(data_dir)
    if not root.is_dir():
        raise LavicError(f"{root}: data directory not found")
    found: dict[str, list[str]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        splits = [s for s in SPLITS if (sub / f"{s}.jsonl").is_file()]
        if splits:
            found[sub.name] = splits
    return found


def load_split(
    data_dir: str | os.PathLike[str],
    category: str,
    split: str,
    *,
    lenient: bool = False,
    report: LoadReport | None = None,
    candidate_key: str | None = None,
) -> list[Conversation]:
    """Load ``DATA_DIR/<category>/<split>.jsonl`` (see :func:`load_conversations`).

    Raises:
        LavicError: if the file does not exist (naming what does), or on bad data.
    """
    path = split_path(data_dir, category, split)
    if not path.is_file():
        try:
            found = find_splits(data_dir)
        except LavicError:
            found = {}
        where = (
            f"splits of {category!r}: {found[category]}"
            if category in found
            else f"categories with data under {data_dir}: {sorted(found) or 'none'}"
        )
        raise LavicError(f"{path}: no such split file ({where})")
    return load_conversations(path, lenient=lenient, report=report, candidate_key=candidate_key)


def candidate_keys(conversations: Iterable[Conversation]) -> list[str]:
    """The ``candidates_*`` keys present in any of ``conversations``, sorted."""
    keys: set[str] = set()
    for conversation in conversations:
        keys.update(conversation.candidates)
    return sorted(keys)


# ----------------------------------------------------------------------------- item metadata


def _image_sort_key(name: str) -> tuple[int, str]:
    match = IMAGE_NAME_RE.match(name)
    return (int(match["index"]), name) if match else (1 << 62, name)


def _title(value: Any) -> str | None:
    title = _no_item_tokens(_as_optional_str(value, "title"), "title")
    # An empty title is as good as none: the prompt would show "ID: " with nothing after it.
    return title if title and title.strip() else None


def _train_item(item_id: str, value: Any) -> ItemMeta:
    if not item_id.strip():
        raise _BadRecord("empty item id")
    if not isinstance(value, dict):
        raise _BadRecord(f"item {item_id!r}: expected an object, got {_json_kind(value)}")
    try:
        title = _title(value.get("title"))
        images = value.get("images")
        if images is None:
            images = []
        if not isinstance(images, list):
            raise _BadRecord(f"key 'images' must be a list, got {_json_kind(images)}")
        # The reference's crawler saves images[k]["large"] as `<item>_<k>.jpg`, k counting every
        # entry (also those without a URL), so the names follow the list positions.
        names = [f"{item_id}_{k}.jpg" for k in range(len(images))]
        urls: dict[str, str] = {}
        for k, image in enumerate(images):
            if not isinstance(image, dict):
                raise _BadRecord(f"key 'images'[{k}] must be an object, got {_json_kind(image)}")
            url = _as_optional_str(image.get("large"), f"images[{k}].large")
            if url:
                urls[names[k]] = url
        descriptions_value = value.get("image_descriptions_llava_cleaned")
        if descriptions_value is None:
            descriptions_value = {}
        if not isinstance(descriptions_value, dict):
            raise _BadRecord(
                "key 'image_descriptions_llava_cleaned' must be an object (image name -> text), "
                f"got {_json_kind(descriptions_value)}"
            )
        descriptions: dict[str, str] = {}
        for name, text in descriptions_value.items():
            key = f"image_descriptions_llava_cleaned[{name!r}]"
            descriptions[name] = _no_item_tokens(_as_str(text, key), key)
    except _BadRecord as exc:
        raise _BadRecord(f"item {item_id!r}: {exc}") from None
    extra = sorted(set(descriptions) - set(names), key=_image_sort_key)
    return ItemMeta(
        item_id=item_id,
        title=title,
        image_names=tuple(names + extra),
        image_urls=urls,
        descriptions=descriptions,
    )


def _json_decode_error(path: Path, text: str, exc: json.JSONDecodeError) -> DataError:
    # The end of the data came first (an unterminated string runs to the end of the text).
    if not text[exc.pos :].strip() or exc.msg.startswith("Unterminated string"):
        return DataError(path, f"truncated file (unexpected end of data: {exc.msg})", exc.lineno)
    return DataError(path, f"malformed JSON: {exc.msg} (column {exc.colno})", exc.lineno)


def _iter_top_level_object(path: Path, text: str) -> Iterator[tuple[str, Any, int]]:
    """Yield ``(key, value, line)`` for each member of the JSON object ``text``.

    A hand-driven walk over the top level (each value is parsed by the C scanner) so every item
    gets its line number, and duplicate keys (which ``json.load`` silently drops) are seen.
    """
    decoder = json.JSONDecoder()
    n = len(text)
    idx = _WHITESPACE.match(text, 0).end()
    line, counted_to = 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, counted_to
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        return line

    if idx == n:
        raise DataError(path, "empty file (expected a JSON object of item id -> metadata)")
    if text[idx] != "{":
        try:
            value = json.loads(text)
        except RecursionError:
            raise DataError(path, "JSON nested too deeply", line_at(idx)) from None
        except json.JSONDecodeError as exc:
            raise _json_decode_error(path, text, exc) from None
        raise DataError(
            path,
            f"top-level value must be a JSON object of item id -> metadata, got {_json_kind(value)}",
            line_at(idx),
        )
    try:
        idx = _WHITESPACE.match(text, idx + 1).end()
        if idx < n and text[idx] == "}":
            idx += 1
        else:
            while True:
                if idx >= n:
                    raise json.JSONDecodeError("Expecting property name", text, idx)
                if text[idx] != '"':
                    raise json.JSONDecodeError(
                        "Expecting property name enclosed in double quotes", text, idx
                    )
                key_line = line_at(idx)
                key, idx = scanstring(text, idx + 1)
                idx = _WHITESPACE.match(text, idx).end()
                if idx >= n or text[idx] != ":":
                    raise json.JSONDecodeError("Expecting ':' delimiter", text, idx)
                idx = _WHITESPACE.match(text, idx + 1).end()
                try:
                    value, idx = decoder.raw_decode(text, idx)
                except RecursionError:
                    # Where the value ends is unknown: nothing after it can be read.
                    raise DataError(
                        path, f"item {key!r}: JSON nested too deeply", key_line
                    ) from None
                yield key, value, key_line
                idx = _WHITESPACE.match(text, idx).end()
                if idx < n and text[idx] == ",":
                    idx = _WHITESPACE.match(text, idx + 1).end()
                    continue
                if idx < n and text[idx] == "}":
                    idx += 1
                    break
                raise json.JSONDecodeError("Expecting ',' delimiter", text, idx)
    except json.JSONDecodeError as exc:
        raise _json_decode_error(path, text, exc) from None
    idx = _WHITESPACE.match(text, idx).end()
    if idx != n:
        raise DataError(path, "extra data after the top-level JSON object", line_at(idx))


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except IsADirectoryError:
        raise DataError(path, "is a directory, expected a file") from None
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        raise DataError(
            path,
            f"not valid UTF-8 text (byte 0x{data[exc.start]:02x} at column "
            f"{exc.start - line_start + 1})",
            data.count(b"\n", 0, exc.start) + 1,
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def _load_train_meta(path: Path, *, lenient: bool, report: LoadReport) -> dict[str, ItemMeta]:
    items: dict[str, ItemMeta] = {}
    first_line: dict[str, int] = {}
    text = _read_text(path)
    check_unicode = _SURROGATE_ESCAPE.search(text) is not None
    for item_id, value, lineno in _iter_top_level_object(path, text):
        try:
            if check_unicode:
                _check_unicode([item_id, value])
            if item_id in first_line:
                raise _BadRecord(
                    f"duplicate item id {item_id!r} (first on line {first_line[item_id]})"
                )
            first_line[item_id] = lineno
            items[item_id] = _train_item(item_id, value)
        except _BadRecord as exc:
            _reject(path, lineno, str(exc), lenient=lenient, report=report)
    return items


def _is_plain_file_name(name: str) -> bool:
    """A name that stays inside whatever folder it is joined onto (no separator, no ``..``)."""
    return name not in {".", ".."} and not any(c in name for c in "/\\\x00")


def _valid_item_id(image_name: str, item_id: Any = None) -> str:
    """The item an ``item2meta_valid.jsonl`` line belongs to.

    An ``item_id`` key on the line (optional; the reference's files have none) wins. Otherwise
    a name of the reference's form ``<item>_<k>.jpg`` gives ``<item>``; any other name
    (``mug-red.png``) is an item of its own, identified by the name itself. A name that is a path (``../x.jpg``,
    ``a/b.jpg``) is refused by the loader before this; readers still join names onto their
    folder with :func:`lavic.io.safe_join` (a link out of the folder is refused there).

    Raises:
        _BadRecord: ``item_id`` given but not a non-empty string.
    """
    if item_id is not None:
        if not isinstance(item_id, str) or not item_id.strip():
            raise _BadRecord(f"key 'item_id' must be a non-empty string, got {_json_kind(item_id)}")
        return item_id
    match = IMAGE_NAME_RE.match(image_name)
    return match["item"] if match is not None else image_name


def _load_valid_meta(path: Path, *, lenient: bool, report: LoadReport) -> dict[str, ItemMeta]:
    # Each line is one image; an item's lines are merged in image-index order.
    titles: dict[str, str | None] = {}
    names: dict[str, list[str]] = {}
    urls: dict[str, dict[str, str]] = {}
    descriptions: dict[str, dict[str, str]] = {}
    seen: dict[str, int] = {}
    for lineno, obj in _iter_jsonl_objects(path, lenient=lenient, report=report):
        try:
            image_name = _as_str(_require(obj, "image_name"), "image_name")
            if not image_name.strip():
                raise _BadRecord("key 'image_name' is an empty string")
            if not _is_plain_file_name(image_name):
                raise _BadRecord(
                    f"key 'image_name' {image_name!r} is not a plain file name: it names a path "
                    "(a separator or '..'), which would leave the image folder"
                )
            item_id = _valid_item_id(image_name, obj.get("item_id"))
            if image_name in seen:
                raise _BadRecord(
                    f"duplicate image_name {image_name!r} (first on line {seen[image_name]})"
                )
            title = _title(obj.get("title"))
            url = _as_optional_str(obj.get("image"), "image")
            description = _no_item_tokens(
                _as_optional_str(
                    obj.get("image_description_llava_cleaned"), "image_description_llava_cleaned"
                ),
                "image_description_llava_cleaned",
            )
        except _BadRecord as exc:
            _reject(path, lineno, str(exc), lenient=lenient, report=report)
            continue
        seen[image_name] = lineno
        if titles.get(item_id) is None:
            titles[item_id] = title
        names.setdefault(item_id, []).append(image_name)
        if url:
            urls.setdefault(item_id, {})[image_name] = url
        if description is not None:
            descriptions.setdefault(item_id, {})[image_name] = description
    return {
        item_id: ItemMeta(
            item_id=item_id,
            title=titles[item_id],
            image_names=tuple(sorted(item_names, key=_image_sort_key)),
            image_urls=urls.get(item_id, {}),
            descriptions=descriptions.get(item_id, {}),
        )
        for item_id, item_names in names.items()
    }


def load_item_meta(
    path: str | os.PathLike[str], *, lenient: bool = False, report: LoadReport | None = None
) -> dict[str, ItemMeta]:
    """Load item metadata: ``.json`` (the train dict) or ``.jsonl`` (one image per line).

    Args:
        path: ``item2meta_train.json``-style or ``item2meta_valid.jsonl``-style file.
        lenient: Skip bad items / lines (counted in ``report``) instead of raising. A ``.json``
            file that is not valid JSON as a whole, or whose top level is not an object, is
            fatal even then.
        report: Filled with the number of items loaded and the skip messages.

    Returns:
        item id -> :class:`ItemMeta`, in file order.

    Raises:
        DataError: ``file:line: problem`` on bad input (see above for lenient mode).
    """
    path = Path(path)
    report = report if report is not None else LoadReport(str(path))
    report.path = str(path)
    before = len(report.skipped)
    suffix = path.suffix.lower()
    if suffix == ".json":
        items = _load_train_meta(path, lenient=lenient, report=report)
    elif suffix == ".jsonl":
        items = _load_valid_meta(path, lenient=lenient, report=report)
    else:
        raise DataError(path, "item metadata must be a .json (dict) or .jsonl (lines) file")
    report.loaded += len(items)
    _summarise_skips(report, before)
    logger.debug("%s: loaded metadata of %d items", path, len(items))
    return items


def described_images(meta: dict[str, ItemMeta]) -> list[DescribedImage]:
    """Every (item, image, description) with a non-empty description: the stage-1 samples.

    Items come in ``meta`` order, images in each item's ``image_names`` order (then any
    described image not in that list). A missing title becomes ``MISSING_TITLE``.
    """
    samples: list[DescribedImage] = []
    for item in meta.values():
        ordered = list(item.image_names) + [
            n for n in item.descriptions if n not in item.image_names
        ]
        for name in ordered:
            description = item.descriptions.get(name)
            if description and description.strip():
                samples.append(
                    DescribedImage(
                        item_id=item.item_id,
                        title=item.title if item.title is not None else MISSING_TITLE,
                        image_name=name,
                        description=description,
                    )
                )
    return samples


def item_title(meta: dict[str, ItemMeta], item_id: str) -> str:
    """The item's title, or ``MISSING_TITLE`` (the reference's fallback) when it has none."""
    item = meta.get(item_id)
    return item.title if item is not None and item.title is not None else MISSING_TITLE


def items_without_title(meta: dict[str, ItemMeta], item_ids: Sequence[str]) -> list[str]:
    """The ids among ``item_ids`` with no metadata or no title, in first-seen order."""
    out: list[str] = []
    seen: set[str] = set()
    for item_id in item_ids:
        if item_id in seen:
            continue
        seen.add(item_id)
        item = meta.get(item_id)
        if item is None or item.title is None:
            out.append(item_id)
    return out


def is_synthetic_catalogue(meta: dict[str, ItemMeta]) -> bool:
    """Whether ``meta`` is a catalogue ``lavic synthesize`` wrote (drawn shapes, not photos).

    Its images all carry a URL on :data:`~lavic.constants.SYNTHETIC_IMAGE_URL`'s reserved
    host; an imported catalogue's images have a shop's URL or none (local files). Copies made
    by ``describe`` keep the URLs, so a described synthetic catalogue is still recognised.
    """
    urls = [url for item in meta.values() for url in item.image_urls.values()]
    return bool(urls) and all(url.startswith(SYNTHETIC_IMAGE_URL) for url in urls)
