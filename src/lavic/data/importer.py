"""``lavic import-catalogue``: a product table and its pictures -> the reference's catalogue layout.

Reads a table (CSV, TSV, JSON lines or Parquet) whose columns are mapped by flags and writes,
inside ``--output_dir`` only::

    OUTPUT_DIR/
      item2meta_train.json    item id -> {title, images: [...]} (the reference's train metadata)
      train_images/<item>_<k>.jpg   image k of each item, RGB JPEG
      train_images/manifest.jsonl   the crawler's record of the images fetched from URLs
      import_report.json      what was read, written, skipped and why

An image cell holds a URL (``http(s)://``, fetched by the crawler, :mod:`lavic.data.crawl`) or
a path under ``--images_root`` (default: the table's folder); with ``--images_root`` given, a
path with a leading ``/`` (``/m/b/mb01-blue-0.jpg``, a shop's media path) is read under it too. Several images may share a cell
(a JSON/Parquet list, or a string split by ``--image_separator``); image ``k`` of an item
becomes ``<item>_<k>.jpg``, as the reference's crawler names them, and ``<item>_0.jpg`` is the one
that shows the item as a candidate.

The table is streamed in chunks of ``--chunk_size`` rows (pandas ``read_csv(chunksize=...)``,
pyarrow ``ParquetFile.iter_batches``, JSON lines one line at a time), the metadata is written as
it goes, and local images are converted by ``--workers`` processes, chunk by chunk, so memory
depends on the chunk size and the number of item ids, not on the table. CSV and TSV are read
in ``--encoding`` (UTF-8 by default, a byte order mark skipped); a table that is not names its
first undecodable line. Titles and descriptions lose their HTML: tags are removed and entities
decoded (``Tom &amp; Jerry`` -> ``Tom & Jerry``), counted in the report.

A bad row (no id, an id that cannot name a file, a repeated id, an image path outside
``--images_root``, a cell of the wrong type) stops the import with one line naming the file,
the row and the problem; with ``--lenient`` it is skipped and counted. An image that is missing
or unreadable is not a bad row: the item is kept (it is shown with the placeholder image, as
the other commands do), and the image is counted and named in the report; ``--strict`` makes
the command exit 1 then.

Example:
    lavic import-catalogue --table_path products.csv --output_dir catalogue \\
        --id_column sku --title_column name --image_column picture --images_root pictures
"""

from __future__ import annotations

import codecs
import contextlib
import html
import io
import json
import logging
import os
import re
import stat
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from lavic.config import usable_cores
from lavic.constants import ITEM_TOKENS
from lavic.errors import DataError, LavicError

log = logging.getLogger(__name__)

META_FILE = "item2meta_train.json"
IMAGES_DIR = "train_images"
REPORT_FILE = "import_report.json"
TITLE_FIELD = "title"
DESCRIPTIONS_FIELD = "image_descriptions_llava_cleaned"
# How a table's format is told from its name (``--format auto``).
SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# Messages kept in import_report.json per kind (the counts are always complete).
MAX_REPORTED = 50
URL_SCHEMES = ("http", "https")
# Worker processes for the local images: one per core this process may run on, at most 4
# (past that the disk, not the CPU, is the limit), started only for a chunk this large.
DEFAULT_WORKERS = min(4, usable_cores())
MIN_POOL_JOBS = 256


@dataclass
class Args:
    """Options of ``lavic import-catalogue``."""

    table_path: Path = field(
        metadata={"help": "product table: .csv, .tsv, .jsonl/.ndjson or .parquet (see --format)"}
    )
    output_dir: Path = field(
        metadata={"help": f"catalogue folder to write: {META_FILE}, {IMAGES_DIR}/, {REPORT_FILE}"}
    )
    id_column: str = field(default="item_id", metadata={"help": "column of the item ids"})
    title_column: str = field(
        default="title", metadata={"help": "column of the titles (empty cells: no title)"}
    )
    image_column: str = field(
        default="image",
        metadata={"help": "column of the images: an http(s) URL or a path under --images_root"},
    )
    description_column: str | None = field(
        default=None,
        metadata={
            "help": "optional column of teacher descriptions of each item's first image "
            "(otherwise `lavic describe` writes them)"
        },
    )
    images_root: Path | None = field(
        default=None,
        metadata={
            "help": "folder that local image paths are relative to (and must stay inside); a "
            "path with a leading '/' (/m/b/x.jpg, as shop platforms write media paths) is read "
            "from this folder too. None: the table's folder, where a leading '/' is an absolute "
            "path (refused unless inside it)"
        },
    )
    image_separator: str | None = field(
        default=None,
        metadata={"help": "split an image cell on this string into several images, e.g. '|'"},
    )
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = field(
        default="auto", metadata={"help": "table format; auto: from the file name's suffix"}
    )
    encoding: str = field(
        default="utf-8",
        metadata={
            "help": "text encoding of a CSV/TSV table, e.g. latin-1 or cp1252 (a UTF-8 byte "
            "order mark is skipped); JSON lines are always UTF-8"
        },
    )
    chunk_size: int = field(
        default=10_000, metadata={"help": "rows read and processed at a time (bounds memory)"}
    )
    workers: int = field(
        default=DEFAULT_WORKERS,
        metadata={
            "help": "processes checking and converting local images (one per usable core, at "
            f"most 4), started only for a chunk with {MIN_POOL_JOBS}+ local images"
        },
    )
    link_images: bool = field(
        default=False,
        metadata={
            "help": "hard-link local RGB JPEGs into train_images/ instead of copying them (fast, "
            "no extra disk; the catalogue then shares those files with --images_root)"
        },
    )
    full_check: bool = field(
        default=False,
        metadata={
            "help": "decode every local JPEG in full to verify it (slower); by default an RGB "
            "JPEG is checked by its header and end marker and copied byte for byte"
        },
    )
    lenient: bool = field(
        default=False, metadata={"help": "skip (and count) bad rows instead of stopping"}
    )
    strict: bool = field(
        default=False, metadata={"help": "exit 1 if any image could not be imported"}
    )
    concurrency: int = field(default=32, metadata={"help": "image URLs fetched at once"})
    timeout: float = field(default=30.0, metadata={"help": "seconds allowed per URL attempt"})
    retries: int = field(
        default=4, metadata={"help": "extra attempts per URL after a timeout, 5xx"}
    )
    allow_private_hosts: bool = field(
        default=False,
        metadata={
            "help": "also fetch image URLs on loopback, private and link-local addresses (your "
            "own intranet); by default they, and redirects to them, are refused"
        },
    )

    def __post_init__(self) -> None:
        for name in ("table_path", "output_dir"):
            setattr(self, name, Path(getattr(self, name)))
        if self.images_root is not None:
            self.images_root = Path(self.images_root)
        for name in ("chunk_size", "workers", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.retries < 0 or self.timeout <= 0:
            raise ValueError("--retries must be >= 0 and --timeout > 0")
        if self.image_separator == "":
            raise ValueError("--image_separator must not be empty")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"--encoding {self.encoding!r}: unknown encoding") from None
        columns = [self.id_column, self.title_column, self.image_column]
        if self.description_column is not None:
            columns.append(self.description_column)
        if len(set(columns)) != len(columns):
            raise ValueError(f"the column flags must name different columns, got {columns}")


# ------------------------------------------------------------------------------ reading tables


@dataclass
class Row:
    """One table row, reduced to the mapped columns; ``number`` counts data rows from 1."""

    number: int
    item_id: Any
    title: Any
    image: Any
    description: Any = None


def table_format(path: Path, fmt: str = "auto") -> str:
    """``csv`` / ``tsv`` / ``jsonl`` / ``parquet`` for ``path`` (from its suffix when ``auto``)."""
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        raise LavicError(
            f"{path}: cannot tell the table format from {suffix or 'no suffix'!r}; "
            f"name it {', '.join(sorted(SUFFIX_FORMATS))} or pass --format"
        )
    return SUFFIX_FORMATS[suffix]


def _columns(args: Args) -> list[str]:
    cols = [args.id_column, args.title_column, args.image_column]
    return cols + ([args.description_column] if args.description_column else [])


def _check_columns(path: Path, present: list[str], args: Args) -> None:
    flags = {
        args.id_column: "--id_column",
        args.title_column: "--title_column",
        args.image_column: "--image_column",
    }
    if args.description_column:
        flags[args.description_column] = "--description_column"
    missing = [c for c in _columns(args) if c not in present]
    if missing:
        shown = ", ".join(repr(c) for c in present[:20]) + (" ..." if len(present) > 20 else "")
        raise DataError(
            path,
            f"no column {missing[0]!r} ({flags[missing[0]]}); the table has: {shown or 'none'}",
        )


def _optional(module: str) -> Any:
    """Import pandas / pyarrow, or say which extra installs it (one line, no traceback)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise LavicError(
            f"reading this table needs {module.split('.')[0]}: pip install 'lavic[catalogue]'"
        ) from None


def _pandas_encoding(encoding: str) -> str:
    # UTF-8 is read as utf-8-sig: a byte order mark (Excel writes one) is skipped, not glued
    # to the first column's name.
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def first_undecodable_line(path: Path, encoding: str) -> tuple[int, int, str] | None:
    """Where ``path`` first fails to decode as ``encoding``: ``(line, byte column, reason)``.

    Read line by line through an incremental decoder (so a character split over two reads is
    not an error), in bounded memory; None if the whole file decodes.
    """
    decoder = codecs.getincrementaldecoder(_pandas_encoding(encoding))()
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                decoder.decode(raw)
            except UnicodeDecodeError as exc:
                return lineno, exc.start + 1, exc.reason
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            return lineno, exc.start + 1, exc.reason
    return None


def _encoding_error(path: Path, encoding: str) -> DataError:
    """The one-line error for a table that is not ``encoding`` text, naming the first bad line."""
    where = first_undecodable_line(path, encoding)
    line, detail = (None, "") if where is None else (where[0], f" (byte {where[1]}: {where[2]})")
    if codecs.lookup(encoding).name == "utf-8":
        name = "UTF-8"
        hint = "if it was saved as Latin-1 or Windows-1252, pass --encoding latin-1 or cp1252"
    else:
        name = encoding
        hint = "pass the encoding it was saved in with --encoding"
    return DataError(path, f"not valid {name} text{detail}; {hint}", line)


def _iter_csv(path: Path, args: Args, sep: str, skipped: list[str]) -> Iterator[list[Row]]:
    pd = _optional("pandas")

    encoding = _pandas_encoding(args.encoding)

    def read(**kwargs):
        return pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            keep_default_na=False,  # "NA" or "null" in a title is text, an empty cell is ""
            encoding=encoding,
            **kwargs,
        )

    try:
        header = list(read(nrows=0).columns)
    except UnicodeDecodeError:
        raise _encoding_error(path, args.encoding) from None
    except pd.errors.EmptyDataError:
        raise DataError(path, "empty file (expected a header row)") from None
    _check_columns(path, header, args)
    return _csv_chunks(path, args, read, skipped)


def _csv_chunks(path: Path, args: Args, read, skipped: list[str]) -> Iterator[list[Row]]:
    import warnings

    import pandas as pd

    wanted = _columns(args)
    number = 0
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            # All columns are read (no `usecols`): with usecols, pandas silently drops the
            # extra fields of a row that has too many, instead of calling it a bad line.
            reader = read(
                chunksize=args.chunk_size,
                on_bad_lines="warn" if args.lenient else "error",
            )
            with reader:
                for chunk in reader:
                    for message in caught:
                        # pandas' words: "Skipping line 7: expected 3 fields, saw 4"
                        text = str(message.message).strip()
                        for part in filter(None, (p.strip() for p in text.split("\n"))):
                            skipped.append(f"{path}: {part}")
                    caught.clear()
                    columns = [chunk[c].tolist() for c in wanted]
                    rows = []
                    for values in zip(*columns, strict=True):
                        number += 1
                        rows.append(Row(number, *values))
                    yield rows
    except UnicodeDecodeError:
        raise _encoding_error(path, args.encoding) from None
    except pd.errors.ParserError as exc:
        # "Error tokenizing data. C error: Expected 3 fields in line 5, saw 4"
        detail = str(exc).strip().splitlines()[-1].replace("Error tokenizing data. C error: ", "")
        raise DataError(path, f"malformed CSV: {detail} (--lenient skips such lines)") from None


def _iter_jsonl(path: Path, args: Args, skipped: list[str]) -> Iterator[list[Row]]:
    from lavic.data.loaders import _iter_jsonl_objects
    from lavic.data.records import LoadReport

    # The loaders' own line reader: UTF-8 and BOM, duplicate keys, surrogates, a truncated last
    # line, each reported as `file:line: problem` (skipped and counted when lenient).
    report = LoadReport(str(path))
    wanted = _columns(args)
    seen: set[str] = set()
    rows: list[Row] = []
    for lineno, obj in _iter_jsonl_objects(path, lenient=args.lenient, report=report):
        if not seen and args.id_column not in obj:
            # The first record settles a misspelt --id_column (JSON lines have no header).
            keys = ", ".join(repr(k) for k in list(obj)[:20])
            raise DataError(
                path,
                f"no key {args.id_column!r} (--id_column) in the first record (line {lineno}); "
                f"it has: {keys or 'none'}",
            )
        seen.update(obj)
        rows.append(Row(lineno, *(obj.get(c) for c in wanted)))
        skipped.extend(report.skipped)
        report.skipped.clear()
        if len(rows) >= args.chunk_size:
            yield rows
            rows = []
    skipped.extend(report.skipped)
    if rows:
        yield rows
    for column in wanted:
        if seen and column not in seen:
            log.warning("%s: no record has the key %r; is the column flag right?", path, column)


def _iter_parquet(path: Path, args: Args) -> Iterator[list[Row]]:
    pa = _optional("pyarrow")
    pq = _optional("pyarrow.parquet")

    try:
        parquet = pq.ParquetFile(path)
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except (pa.ArrowException, OSError) as exc:
        raise DataError(path, f"not a readable Parquet file ({exc})") from None
    _check_columns(path, list(parquet.schema_arrow.names), args)
    wanted = _columns(args)
    number = 0
    with contextlib.closing(parquet):
        for batch in parquet.iter_batches(batch_size=args.chunk_size, columns=wanted):
            columns = [batch.column(c).to_pylist() for c in wanted]
            rows = []
            for values in zip(*columns, strict=True):
                number += 1
                rows.append(Row(number, *values))
            yield rows


def iter_rows(path: Path, args: Args, skipped: list[str]) -> Iterator[list[Row]]:
    """The table's rows in chunks of at most ``args.chunk_size``.

    Lines the reader itself cannot parse are appended to ``skipped`` when lenient (otherwise
    they raise :class:`DataError`).
    """
    if not path.is_file():
        raise DataError(path, "no such file" if not path.exists() else "not a file")
    fmt = table_format(path, args.format)
    if fmt in ("jsonl", "parquet") and codecs.lookup(args.encoding).name != "utf-8":
        raise LavicError(f"--encoding {args.encoding}: only CSV and TSV tables take an encoding")
    if fmt == "csv":
        return _iter_csv(path, args, ",", skipped)
    if fmt == "tsv":
        return _iter_csv(path, args, "\t", skipped)
    if fmt == "jsonl":
        return _iter_jsonl(path, args, skipped)
    return _iter_parquet(path, args)


# ------------------------------------------------------------------------------ checking rows


class BadRow(Exception):
    """A row that cannot be imported; the message says why."""


@dataclass(frozen=True)
class LocalImage:
    source: Path  # resolved, inside images_root
    value: str  # as written in the table (kept in the metadata)
    relative: str  # the path from images_root (value without a web path's leading '/')


@dataclass(frozen=True)
class RemoteImage:
    url: str


@dataclass(frozen=True)
class Item:
    """A checked row: what goes into the metadata and which images to fetch or copy."""

    item_id: str
    title: str | None
    images: tuple[LocalImage | RemoteImage, ...]
    description: str | None


def _text(value: Any, column: str, *, allow_numbers: bool) -> str | None:
    """A cell as text: None for an empty cell (``""``, null, NaN); numbers only if allowed."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN, pandas' empty cell
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if allow_numbers and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    kind = type(value).__name__
    raise BadRow(f"column {column!r} must hold text, got {kind} {_short(value)}")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _no_item_tokens(text: str | None, column: str) -> None:
    if text and "<ItemImageEmb" in text:
        for token in ITEM_TOKENS:
            if token in text:
                raise BadRow(f"column {column!r} holds the reserved item token {token!r}")


def _check_item_id(item_id: str) -> None:
    # The id names files (`<id>_<k>.jpg`) and travels in prompts: a plain, visible name.
    if item_id != item_id.strip():
        raise BadRow(f"item id {item_id!r} has leading or trailing whitespace")
    if any(c in item_id for c in "/\\\x00") or item_id in {".", ".."} or item_id.startswith("."):
        raise BadRow(f"item id {item_id!r} cannot name an image file (<id>_<k>.jpg)")
    if any(ord(c) < 32 for c in item_id):
        raise BadRow(f"item id {item_id!r} holds a control character")
    try:
        os.fsencode(item_id)
    except UnicodeEncodeError:
        raise BadRow(f"item id {item_id!r} is not valid Unicode") from None
    _no_item_tokens(item_id, "id")


# An HTML tag: `<b>`, `</b>`, `<br/>`, `<span class="x">`; a `<` not followed by a letter
# (`size < 10`, `<3`) is text.
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")


@dataclass(frozen=True)
class PlainText:
    text: str
    tags: bool  # markup was removed
    entities: bool  # entities were decoded


def strip_html(text: str) -> PlainText:
    """Shop exports keep the HTML of their product names: remove tags, decode entities.

    Tags go first, so an escaped tag (``&lt;b&gt;``) stays visible as the text ``<b>``. A tag
    becomes a space (``Mug<br>Red`` is two words) and runs of spaces it leaves are squeezed.

    Example:
        >>> strip_html("<b>Cobalt</b> CoolTech&trade; Short").text
        'Cobalt CoolTech™ Short'
    """
    untagged = _TAG.sub(" ", text)
    tags = untagged != text
    if tags:
        untagged = " ".join(untagged.split())
    decoded = html.unescape(untagged)
    return PlainText(decoded, tags, decoded != untagged)


def _image_values(value: Any, column: str, separator: str | None) -> list[str]:
    if value is None or (isinstance(value, float) and value != value):
        return []
    if isinstance(value, str):
        parts = value.split(separator) if separator else [value]
    elif isinstance(value, list | tuple):
        parts = []
        for i, part in enumerate(value):
            if part is None:
                continue
            if not isinstance(part, str):
                raise BadRow(
                    f"column {column!r}[{i}] must be a URL or path, got {type(part).__name__}"
                )
            parts.append(part)
    else:
        raise BadRow(f"column {column!r} must hold a URL or a path, got {type(value).__name__}")
    return [p.strip() for p in parts if p.strip()]


class RowChecker:
    """Turns rows into :class:`Item` s, remembering ids to refuse repeats.

    Args:
        args: the command's options (column names, separator).
        images_root: resolved folder local paths must stay inside.

    Attributes:
        cleaned: how many title and description cells had HTML entities decoded
            (``entities``) or tags removed (``markup``).
    """

    def __init__(self, args: Args, images_root: Path):
        self.args = args
        self.root = images_root
        self.root_text = str(images_root)
        self.root_prefix = os.path.join(self.root_text, "")
        self.real_folders: dict[str, str] = {}
        self.first_row: dict[str, int] = {}
        # Only an explicit --images_root is a media root; the table's folder is not.
        self.web_paths = args.images_root is not None
        self.cleaned = {"entities": 0, "markup": 0}

    def _image(self, value: str) -> LocalImage | RemoteImage:
        if "://" in value:
            scheme = urlsplit(value).scheme.lower()
            if scheme not in URL_SCHEMES:
                raise BadRow(f"image {value!r}: only http(s) URLs are fetched, not {scheme!r}")
            return RemoteImage(value)
        if "\x00" in value:
            raise BadRow(f"image path {_short(value)} holds a NUL byte")
        relative = value
        if self.web_paths and value.startswith("/"):
            # Shop platforms write media paths from their media root: `/m/b/mb01-blue-0.jpg`
            # is a web path under --images_root, not a file at the top of this machine's disk.
            relative = value.lstrip("/")
        # A path (`..`, absolute) or a link leading out of the root is refused, so the import
        # never reads outside --images_root. realpath costs a stat per path component, so it
        # runs once per folder (cached) and, for the file itself, only when it is a link.
        folder, base = os.path.split(os.path.normpath(os.path.join(self.root_text, relative)))
        real_folder = self.real_folders.get(folder)
        if real_folder is None:
            real_folder = os.path.realpath(folder)
            if len(self.real_folders) < 100_000:
                self.real_folders[folder] = real_folder
        source = os.path.join(real_folder, base)
        with contextlib.suppress(OSError):  # a missing file is reported when it is read
            if stat.S_ISLNK(os.lstat(source).st_mode):
                source = os.path.realpath(source)
        if not self._inside(source):
            raise BadRow(f"image path {value!r} is outside --images_root {self.root_text}")
        return LocalImage(Path(source), value, relative)

    def _clean(self, text: str | None) -> str | None:
        """``text`` without HTML markup and with its entities decoded; counts each change."""
        if text is None or ("<" not in text and "&" not in text):
            return text
        plain = strip_html(text)
        if plain.tags:
            self.cleaned["markup"] += 1
        if plain.entities:
            self.cleaned["entities"] += 1
        return plain.text if plain.text.strip() else None

    def _inside(self, path: str) -> bool:
        return path.startswith(self.root_prefix) and path != self.root_text

    def check(self, row: Row) -> Item:
        args = self.args
        item_id = _text(row.item_id, args.id_column, allow_numbers=True)
        if item_id is None:
            raise BadRow(f"empty item id (column {args.id_column!r})")
        _check_item_id(item_id)
        first = self.first_row.get(item_id)
        if first is not None:
            raise BadRow(f"duplicate item id {item_id!r} (first on row {first})")
        title = self._clean(_text(row.title, args.title_column, allow_numbers=True))
        _no_item_tokens(title, args.title_column)
        description = None
        if args.description_column:
            description = self._clean(
                _text(row.description, args.description_column, allow_numbers=False)
            )
            _no_item_tokens(description, args.description_column)
        images = tuple(
            self._image(v)
            for v in _image_values(row.image, args.image_column, args.image_separator)
        )
        self.first_row[item_id] = row.number
        return Item(item_id, title.strip() if title else None, images, description)


# ------------------------------------------------------------------------------ images


@dataclass
class ImageResult:
    name: str
    status: str  # "copied", "failed"
    reason: str | None = None
    message: str | None = None


def quick_rgb_jpeg(data: bytes, max_pixels: int) -> Any:
    """A :class:`~lavic.data.crawl.DecodedImage` for an RGB JPEG checked without decoding it.

    The header is parsed by PIL (format, mode, size under ``max_pixels``) and the data must end
    with the end-of-image marker, so a cut-short file is caught; the entropy-coded pixels are
    not decoded (that costs 0.5-2 ms an image here, most of an import's time). Returns None for
    anything else (another format or mode, bytes after the marker), which then takes the full
    path. Raises ``FetchFailure("decompression_bomb")`` above the pixel cap.
    """
    from PIL import Image

    from lavic.data.crawl import DecodedImage, FetchFailure

    if not data.startswith(b"\xff\xd8") or not data.endswith(b"\xff\xd9"):
        return None
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as im:
            if im.mode != "RGB":
                return None
            width, height = im.size
    except Exception:  # PIL raises many kinds on a bad header: let the full path say which
        return None
    if width * height > max_pixels:
        raise FetchFailure(
            "decompression_bomb", f"{width}x{height} pixels exceeds the cap of {max_pixels}"
        )
    return DecodedImage(data, width, height)


def _create_exclusive(tmp: Path) -> int:
    """Create ``tmp`` for writing; never open what is already there, nor follow a link.

    A file of that name can only be a killed run's leftover (the name holds our process id,
    reused by the system): it is removed and the file created anew, once.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.open(tmp, flags, 0o644)
    except FileExistsError:
        os.unlink(tmp)  # unlinks a link itself, not what it points to
        return os.open(tmp, flags, 0o644)


def _write_renamed(path: Path, data: bytes) -> None:
    """Write ``data`` to a hidden temporary beside ``path``, then rename it onto ``path``.

    A reader never sees half a file. Unlike :func:`lavic.io.atomic_open` it does not fsync each
    file: that costs ~4 ms a file on this machine's disk (6 minutes for 100k images), and an
    import interrupted by a crash is simply run again.
    """
    # One writer per name (ids are unique), so the process id makes the temporary's name unique.
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    fd = _create_exclusive(tmp)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _link_renamed(source: Path, path: Path) -> bool:
    """Hard-link ``source`` to a temporary beside ``path`` and rename it onto ``path``.

    Returns False (nothing done) where links are not possible (another filesystem, no
    permission), so the caller writes a copy instead.
    """
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(source, tmp)
    except OSError:
        return False
    try:
        os.replace(tmp, path)
    finally:
        # rename(2) does nothing when both names already link the same file (a re-import):
        # the temporary is then still there.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return True


def import_local_image(
    source: Path,
    dest: Path,
    max_bytes: int,
    max_pixels: int,
    *,
    full_check: bool = False,
    link: bool = False,
) -> ImageResult:
    """Verify ``source`` as an image and write it to ``dest`` as RGB JPEG (renamed into place).

    The crawler's :func:`~lavic.data.crawl.decode_image` does the work, so a local file and a
    fetched one are treated alike: an RGB JPEG is kept byte for byte, anything else (16-bit,
    palette, alpha, CMYK, PNG, WebP...) converted by :func:`lavic.data.images.to_rgb`. Unless
    ``full_check``, an RGB JPEG passes with :func:`quick_rgb_jpeg` (header + end marker). With
    ``link``, a file kept byte for byte is hard-linked instead of copied where possible.
    """
    from lavic.data.crawl import FetchFailure, decode_image

    try:
        size = source.stat().st_size
        if size > max_bytes:
            return ImageResult(dest.name, "failed", "too_large", f"{size} bytes > {max_bytes}")
        data = source.read_bytes()
    except FileNotFoundError:
        return ImageResult(dest.name, "failed", "missing", f"no such file {source}")
    except IsADirectoryError:
        return ImageResult(dest.name, "failed", "not_image", f"{source} is a directory")
    except OSError as exc:
        return ImageResult(dest.name, "failed", "unreadable", f"{source}: {exc.strerror}")
    try:
        image = None if full_check else quick_rgb_jpeg(data, max_pixels)
        if image is None:
            image = decode_image(data, max_pixels)
    except FetchFailure as failure:
        return ImageResult(dest.name, "failed", failure.reason, f"{source}: {failure.message}")
    try:
        if not (link and image.jpeg is data and _link_renamed(source, dest)):
            _write_renamed(dest, image.jpeg)
    except OSError as exc:
        return ImageResult(dest.name, "failed", "write_error", f"{dest}: {exc}")
    return ImageResult(dest.name, "copied")


# ------------------------------------------------------------------------------ the report


@dataclass
class ImportReport:
    """Counts of one import (``import_report.json``); messages capped at ``MAX_REPORTED``."""

    table_path: str
    output_dir: str
    rows: int = 0
    items: int = 0
    bad_rows: int = 0
    items_without_image: int = 0
    cleaned_text: dict[str, int] = field(default_factory=lambda: {"entities": 0, "markup": 0})
    images: dict[str, int] = field(
        default_factory=lambda: {"wanted": 0, "copied": 0, "crawled": 0, "failed": 0}
    )
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    bad_row_messages: list[str] = field(default_factory=list)
    image_failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add_bad_row(self, message: str) -> None:
        self.bad_rows += 1
        if len(self.bad_row_messages) < MAX_REPORTED:
            self.bad_row_messages.append(message)

    def add_image_failure(self, reason: str, message: str) -> None:
        self.images["failed"] += 1
        self.failures_by_reason[reason] = self.failures_by_reason.get(reason, 0) + 1
        if len(self.image_failures) < MAX_REPORTED:
            self.image_failures.append(message)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        out = asdict(self)
        out["failures_by_reason"] = dict(
            sorted(self.failures_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
        )
        out["seconds"] = round(self.seconds, 2)
        return out

    def summary(self) -> str:
        i = self.images
        lines = [
            f"{self.table_path} -> {self.output_dir} in {self.seconds:.1f}s",
            f"  rows read:      {self.rows}",
            f"  items written:  {self.items} ({META_FILE})",
            f"  bad rows:       {self.bad_rows}"
            + (" skipped (--lenient)" if self.bad_rows else ""),
            f"  HTML in text:   {self.cleaned_text['entities']} cell(s) with entities decoded, "
            f"{self.cleaned_text['markup']} with tags removed",
            f"  images wanted:  {i['wanted']}",
            f"    copied:       {i['copied']} (local files)",
            f"    crawled:      {i['crawled']} (URLs)",
            f"    failed:       {i['failed']}",
        ]
        lines += [
            f"      {reason}: {n}" for reason, n in self.as_dict()["failures_by_reason"].items()
        ]
        lines.append(
            f"  items without any image: {self.items_without_image}"
            + (" (shown with the placeholder)" if self.items_without_image else "")
        )
        return "\n".join(lines)


# ------------------------------------------------------------------------------ the import


class _MetaWriter:
    """Writes ``item2meta_train.json`` one item at a time into a temporary file (atomic)."""

    def __init__(self, handle):
        self.handle = handle
        self.count = 0
        handle.write("{")

    def add(self, item_id: str, entry: dict[str, Any]) -> None:
        sep = "," if self.count else ""
        key = json.dumps(item_id, ensure_ascii=False)
        self.handle.write(f"{sep}\n  {key}: {json.dumps(entry, ensure_ascii=False)}")
        self.count += 1

    def close(self) -> None:
        self.handle.write("\n}\n" if self.count else "}\n")


def _entry(item: Item, names: list[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    if item.title is not None:
        entry[TITLE_FIELD] = item.title
    images = []
    for image in item.images:
        if isinstance(image, RemoteImage):
            images.append({"large": image.url})
        else:
            images.append({"path": image.value})
    entry["images"] = images
    if item.description is not None and names:
        entry[DESCRIPTIONS_FIELD] = {names[0]: item.description}
    return entry


class _LazyPool:
    """Worker processes for the images, started only once a chunk has enough of them.

    Processes, not threads: checking and copying a JPEG is mostly Python code (header parse,
    file calls), which threads would run one at a time under the GIL. "spawn" starts them clean
    (the parent has a progress-bar thread; fork would copy its locks). Starting them costs
    about a second, so a small table's images are done in this process.
    """

    MIN_JOBS = MIN_POOL_JOBS

    def __init__(self, workers: int):
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown()
        return False

    def map(self, fn, *iterables, chunksize=1):
        jobs = list(zip(*iterables, strict=True))
        if self.pool is None and (self.workers == 1 or len(jobs) < self.MIN_JOBS):
            return [fn(*job) for job in jobs]
        if self.pool is None:
            import multiprocessing

            context = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(self.workers, mp_context=context)
        return self.pool.map(fn, *zip(*jobs, strict=True), chunksize=chunksize)


def _remove_temporaries(images_dir: Path) -> int:
    # Hidden `.<name>.<random>.tmp` files are only ever our (or the crawler's) half-written
    # images: a killed run's leftovers, incomplete by construction.
    removed = 0
    for entry in os.scandir(images_dir):
        if (
            entry.name.startswith(".")
            and entry.name.endswith(".tmp")
            and (entry.is_file(follow_symlinks=False) or entry.is_symlink())
        ):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed


def import_catalogue(args: Args) -> ImportReport:
    """Read ``args.table_path`` and write the catalogue into ``args.output_dir``.

    Returns:
        The report (also written to ``OUTPUT_DIR/import_report.json``).

    Raises:
        DataError: a bad row or an unreadable table (not lenient), naming the file and row.
        LavicError: bad options (no such column, unknown format, missing images root).
    """
    from tqdm.auto import tqdm

    from lavic.data.crawl import (
        DEFAULT_MAX_BYTES,
        DEFAULT_MAX_PIXELS,
        MANIFEST_NAME,
        CrawlOptions,
        ImageTarget,
        crawl_images,
    )
    from lavic.data.images import item_image_name
    from lavic.io import atomic_open, atomic_write_json, remove_partial_writes

    started = time.perf_counter()
    table = args.table_path
    images_root = Path(
        os.path.realpath(args.images_root if args.images_root is not None else table.parent)
    )
    if not images_root.is_dir():
        raise LavicError(f"--images_root {args.images_root}: no such folder")
    out_dir = args.output_dir
    images_dir = out_dir / IMAGES_DIR
    report = ImportReport(str(table), str(out_dir))
    reader_skips: list[str] = []
    chunks = iter_rows(table, args, reader_skips)  # opens nothing yet for CSV/JSONL
    images_dir.mkdir(parents=True, exist_ok=True)
    stale = _remove_temporaries(images_dir)
    for name in (META_FILE, REPORT_FILE):
        stale += remove_partial_writes(out_dir / name)
    if stale:
        log.info("%s: removed %d temporary file(s) of an interrupted run", out_dir, stale)
    checker = RowChecker(args, images_root)
    shown_root = str(args.images_root if args.images_root is not None else table.parent)
    convert = partial(
        import_local_image,
        max_bytes=DEFAULT_MAX_BYTES,
        max_pixels=DEFAULT_MAX_PIXELS,
        full_check=args.full_check,
        link=args.link_images,
    )
    remote: list[ImageTarget] = []
    remote_owner: dict[str, tuple[str, int]] = {}  # image name -> (item id, its image count)
    failed_of_item: dict[str, int] = {}  # item id -> images not imported, for items with any
    failure_log = 0

    def note_failure(reason: str, message: str, item_id: str, images: int) -> None:
        nonlocal failure_log
        report.add_image_failure(reason, message)
        if failure_log < 5:
            log.warning("image not imported: %s", message)
        failure_log += 1
        failed_of_item[item_id] = failed_of_item.get(item_id, 0) + 1
        if failed_of_item[item_id] == images:  # none of its images made it
            report.items_without_image += 1

    bar = tqdm(desc="import", unit="row", dynamic_ncols=True, disable=None)
    with (
        atomic_open(out_dir / META_FILE, "w", encoding="utf-8") as handle,
        _LazyPool(args.workers) as pool,
        bar,
    ):
        writer = _MetaWriter(handle)
        for rows in chunks:
            jobs = []
            for row in rows:
                report.rows += 1
                try:
                    item = checker.check(row)
                except BadRow as exc:
                    message = f"{table}: row {row.number}: {exc}"
                    if not args.lenient:
                        raise DataError(table, f"row {row.number}: {exc}") from None
                    report.add_bad_row(message)
                    continue
                names = [item_image_name(item.item_id, k) for k in range(len(item.images))]
                writer.add(item.item_id, _entry(item, names))
                report.items += 1
                if not item.images:
                    report.items_without_image += 1
                owner = (item.item_id, len(item.images))
                for image, name in zip(item.images, names, strict=True):
                    report.images["wanted"] += 1
                    where = f"{table}: row {row.number}"
                    if isinstance(image, RemoteImage):
                        remote.append(ImageTarget(image.url, name, where))
                        remote_owner[name] = owner
                    else:
                        # The id was checked to be a plain, visible file name: no `..`, no
                        # separator, so the join stays inside (and a rename replaces a link
                        # found there, never writing through it).
                        shown = os.path.join(shown_root, image.relative)
                        jobs.append((where, image.source, images_dir / name, shown, owner))
            for message in reader_skips:
                report.add_bad_row(message)
            reader_skips.clear()
            results = pool.map(
                convert,
                [job[1] for job in jobs],
                [job[2] for job in jobs],
                chunksize=max(1, min(256, len(jobs) // (4 * args.workers) or 1)),
            )
            for (where, source, _dest, shown, owner), result in zip(jobs, results, strict=True):
                if result.status == "copied":
                    report.images["copied"] += 1
                else:
                    # Name the file as the user wrote it (root as given + the cell).
                    message = (result.message or "").replace(str(source), shown)
                    note_failure(result.reason or "failed", f"{where}: {message}", *owner)
            bar.update(len(rows))
        for message in reader_skips:
            report.add_bad_row(message)
        writer.close()
    report.cleaned_text = dict(checker.cleaned)

    if remote:
        if not log.isEnabledFor(logging.DEBUG):
            logging.getLogger("httpx").setLevel(logging.WARNING)
        options = CrawlOptions(
            concurrency=args.concurrency,
            timeout=args.timeout,
            retries=args.retries,
            allow_private_hosts=args.allow_private_hosts,
        )
        crawl = crawl_images(remote, images_dir, options)
        where = {t.name: t.where for t in remote}
        for record in crawl.records:
            if record.status in ("saved", "present"):
                report.images["crawled"] += 1
            else:
                note_failure(
                    record.reason or "failed",
                    f"{where.get(record.file, record.file)}: {record.url}: {record.error}",
                    *remote_owner.get(record.file, (record.file, 1)),
                )
        log.info("%s: crawl record in %s", images_dir, images_dir / MANIFEST_NAME)
    if failure_log > 5:
        log.warning("... and %d more images not imported; see %s", failure_log - 5, REPORT_FILE)
    if report.bad_rows:
        log.warning(
            "skipped %d bad row(s) (--lenient); first: %s",
            report.bad_rows,
            report.bad_row_messages[0],
        )
    report.seconds = time.perf_counter() - started
    atomic_write_json(out_dir / REPORT_FILE, report.as_dict())
    return report


def run(args: Args) -> int:
    """Import the table; print a summary. Exit 1 with ``--strict`` if an image failed, or when
    no item could be imported."""
    report = import_catalogue(args)
    print(report.summary(), flush=True)
    if report.items == 0:
        log.error("%s: no item imported", args.table_path)
        return 1
    if args.strict and report.images["failed"]:
        log.error("%d image(s) could not be imported (--strict)", report.images["failed"])
        return 1
    return 0


__all__ = [
    "Args",
    "ImportReport",
    "import_catalogue",
    "import_local_image",
    "iter_rows",
    "run",
    "table_format",
]
