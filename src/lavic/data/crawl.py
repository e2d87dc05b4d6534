"""``lavic crawl``: download item images concurrently into a checked, reproducible snapshot.

The reference's ``crawl_images.py`` fetched one image at a time, never retried, could leave half a
file under a final name and kept no record. This crawler:

* fetches concurrently (asyncio + httpx) under a global and a per-host limit;
* retries timeouts, connection errors, cut-short bodies, 5xx and 429 with exponential backoff
  (honouring ``Retry-After``, which also pauses the whole host), never 404/410;
* resumes: a file already present and readable as an image is skipped without a request;
* writes atomically: bytes are verified as an image (PIL ``verify`` and ``load``), converted to
  RGB JPEG when needed, and only then written to a temporary name and renamed;
* is safe: http(s) only, public addresses only, checked on every redirect hop before connecting
  (:mod:`lavic.data.netguard`; ``--allow_private_hosts`` lifts it), a byte cap per image counted
  on the decoded body (gzip bombs), a pixel cap (decompression bombs), a small set of raster
  formats, and names from data joined with :func:`lavic.io.safe_join` (refused, reported,
  nothing written, when they would leave the folder);
* writes ``manifest.jsonl`` beside the images: one line per (url, file) with sha256, size,
  dimensions, status, reason/error and fetch time.

Example:
    >>> targets = read_image_targets("data/item2meta_valid.jsonl")
    >>> report = crawl_images(targets, "data/valid_images", CrawlOptions(concurrency=32))
    >>> report.counts()
    {'present': 0, 'saved': 510, 'failed': 2}
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import email.utils
import hashlib
import io
import json
import logging
import os
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lavic.errors import DataError, LavicError
from lavic.io import atomic_open, atomic_write_text, safe_join

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
# PIL's own default decompression-bomb threshold (Image.MAX_IMAGE_PIXELS), fixed here so a
# library that changes the global does not silently change what the crawler accepts.
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
# Raster formats a product image may come in. Restricting PIL's openers keeps exotic parsers
# (EPS runs Ghostscript, for instance) away from bytes fetched off the web.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
JPEG_QUALITY = 95
USER_AGENT = "lavic-crawler/0.1 (+https://github.com/jeon185/LaViC)"

# Statuses worth another attempt: overload, rate limit and transient server faults.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Failure reasons worth another attempt (network trouble, not a property of the content).
RETRYABLE_REASONS = frozenset({"timeout", "connection", "truncated", "protocol_error"})

# With no flags, `lavic crawl` does what the reference's script does.
DEFAULT_JOBS: tuple[tuple[Path, Path], ...] = (
    (Path("data/item2meta_train.json"), Path("data/train_images")),
    (Path("data/item2meta_valid.jsonl"), Path("data/valid_images")),
)


# --------------------------------------------------------------------------------------------
# Command-line options
# --------------------------------------------------------------------------------------------


@dataclass
class Args:
    """Options of ``lavic crawl``."""

    item_meta_path: Path | None = field(
        default=None,
        metadata={
            "help": "item metadata: a .json (item2meta_train.json: images[k].large -> "
            "<ASIN>_<k>.jpg) or .jsonl (item2meta_valid.jsonl: image -> image_name); "
            "default: both seed files under data/"
        },
    )
    images_dir: Path | None = field(
        default=None,
        metadata={
            "help": "folder to fill; default: train_images/ (for .json) or valid_images/ "
            "(for .jsonl) beside the metadata file"
        },
    )
    concurrency: int = field(default=32, metadata={"help": "requests in flight at once"})
    per_host: int = field(default=32, metadata={"help": "requests in flight at once per host"})
    timeout: float = field(
        default=30.0, metadata={"help": "seconds allowed for one attempt (whole response)"}
    )
    retries: int = field(
        default=4, metadata={"help": "extra attempts after a timeout, connection error, 5xx, 429"}
    )
    backoff_base: float = field(
        default=0.5, metadata={"help": "first retry waits about this many seconds, then doubles"}
    )
    max_backoff: float = field(
        default=60.0, metadata={"help": "longest wait before a retry, Retry-After included"}
    )
    max_bytes: int = field(default=DEFAULT_MAX_BYTES, metadata={"help": "byte cap per image"})
    max_pixels: int = field(
        default=DEFAULT_MAX_PIXELS,
        metadata={"help": "pixel cap per image (decompression-bomb limit)"},
    )
    strict: bool = field(default=False, metadata={"help": "exit 1 if any image failed"})
    allow_private_hosts: bool = field(
        default=False,
        metadata={
            "help": "also fetch from loopback, private and link-local addresses (your own "
            "intranet); by default such URLs, and redirects to them, are refused"
        },
    )

    def __post_init__(self) -> None:
        for name in ("concurrency", "per_host", "max_bytes", "max_pixels"):
            if getattr(self, name) < 1:
                raise LavicError(f"--{name} must be at least 1")
        if self.retries < 0:
            raise LavicError("--retries must be 0 or more")
        for name in ("timeout", "backoff_base", "max_backoff"):
            if getattr(self, name) < 0 or (name == "timeout" and self.timeout == 0):
                raise LavicError(f"--{name} must be positive")
        if self.images_dir is not None and self.item_meta_path is None:
            raise LavicError("--images_dir needs --item_meta_path")


@dataclass
class CrawlOptions:
    """How :func:`crawl_images` fetches (the library face of :class:`Args`).

    Attributes:
        concurrency: requests in flight at once.
        per_host: requests in flight at once to one host.
        timeout: seconds allowed for one attempt, connect to last byte.
        retries: extra attempts after a retryable failure.
        backoff_base: the first retry waits ``backoff_base * U(0.5, 1)`` seconds; each next
            one doubles it.
        max_backoff: cap on any wait before a retry (also caps ``Retry-After``).
        max_bytes: larger bodies are refused (``too_large``).
        max_pixels: images with more pixels are refused (``decompression_bomb``).
        progress: show a progress bar (None: only on a terminal).
        user_agent: the ``User-Agent`` header sent.
        allow_private_hosts: fetch from non-public addresses too (otherwise ``refused``).
    """

    concurrency: int = 32
    per_host: int = 32
    timeout: float = 30.0
    retries: int = 4
    backoff_base: float = 0.5
    max_backoff: float = 60.0
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool | None = None
    user_agent: str = USER_AGENT
    allow_private_hosts: bool = False

    @classmethod
    def from_args(cls, args: Args) -> CrawlOptions:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dataclasses.asdict(args).items() if k in names})


# --------------------------------------------------------------------------------------------
# Reading the metadata (only the image URLs and names)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageTarget:
    """One image to fetch: its URL and the file name it gets inside the images folder.

    ``where`` locates it in the metadata (``file:line`` or ``file: item ASIN``) for reports.
    """

    url: str
    name: str
    where: str = ""


def read_image_targets(path: str | os.PathLike[str]) -> list[ImageTarget]:
    """Read the image URLs and file names of a metadata file in the reference's formats.

    The file is read by :func:`lavic.data.loaders.load_item_meta` (strict), the one parser of
    the reference's formats, so the crawler accepts exactly what the other commands accept. A
    ``.json`` file is ``item2meta_train.json``: image ``k`` of item ``ASIN`` (``images[k].large``)
    becomes ``<ASIN>_<k>.jpg``, an entry without a URL skipped while ``k`` keeps its position.
    A ``.jsonl`` file is ``item2meta_valid.jsonl``: each line's ``image`` (URL; lines without one
    are skipped) goes to its ``image_name``. Names are *not* checked here: :func:`crawl_images`
    refuses unsafe ones and reports them.

    Raises:
        DataError: unreadable or malformed file (``file:line: problem``), or an extension other
            than ``.json`` / ``.jsonl``.
    """
    from lavic.data.loaders import load_item_meta

    path = Path(path)
    targets = []
    for item in load_item_meta(path).values():
        for name in item.image_names:
            url = item.image_urls.get(name)
            if url and url.strip():
                targets.append(ImageTarget(url.strip(), name, f"{path}: item {item.item_id!r}"))
    return targets


# --------------------------------------------------------------------------------------------
# Images: verification and normalisation to RGB JPEG
# --------------------------------------------------------------------------------------------


class FetchFailure(Exception):
    """A failed fetch: ``reason`` is a short code (``http_404``, ``timeout``, ``not_image``...)."""

    def __init__(self, reason: str, message: str, retry_after: float | None = None):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class DecodedImage:
    """An image ready to be written: JPEG bytes and their pixel size."""

    jpeg: bytes
    width: int
    height: int


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Verify that ``data`` is a whole image and return it as RGB JPEG bytes.

    The image is opened (header only), its pixel count checked against ``max_pixels`` before
    any pixel is decoded, then ``verify()``-ed and fully ``load()``-ed. An RGB JPEG is kept
    byte for byte (no generational loss; its sha256 matches the source); anything else
    (palette, alpha, grayscale, 16-bit, float, CMYK, PNG, WebP...) is converted by
    :func:`lavic.data.images.to_rgb` (the conversion every reader of images uses: 16-bit and
    float pixels scaled, not clipped; alpha composited on white), EXIF orientation applied,
    and re-encoded as JPEG.

    Raises:
        FetchFailure: ``decompression_bomb``, ``not_image``, or ``truncated`` (a cut-short
            file, worth refetching).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    from lavic.data.images import to_rgb

    def check_size(im: Image.Image) -> None:
        width, height = im.size
        if width * height > max_pixels:
            raise FetchFailure(
                "decompression_bomb", f"{width}x{height} pixels exceeds the cap of {max_pixels}"
            )

    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            check_size(im)
            im.verify()
        # verify() leaves the image unusable: open again to decode every pixel.
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            check_size(im)
            im.load()
            if im.format == "JPEG" and im.mode == "RGB":
                return DecodedImage(data, im.width, im.height)
            rgb = to_rgb(ImageOps.exif_transpose(im))
    except FetchFailure:
        raise
    except Image.DecompressionBombError as exc:
        raise FetchFailure("decompression_bomb", str(exc)) from None
    except UnidentifiedImageError:
        raise FetchFailure("not_image", f"not an image ({_sniff(data)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError) as exc:
        message = str(exc) or type(exc).__name__
        reason = "truncated" if "truncated" in message or isinstance(exc, EOFError) else "not_image"
        raise FetchFailure(reason, f"unreadable image: {message}") from None
    except Exception as exc:
        # PIL's parsers raise more than the types above on hostile bytes (struct.error,
        # TypeError, ZeroDivisionError...): one bad image, never the end of the crawl.
        kind = type(exc).__qualname__
        if type(exc).__module__ != "builtins":
            kind = f"{type(exc).__module__}.{kind}"
        raise FetchFailure("not_image", f"unreadable image: {kind}: {exc}") from None
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=JPEG_QUALITY)
    return DecodedImage(out.getvalue(), rgb.width, rgb.height)


def _sniff(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in data[:512].lower():
        return "looks like HTML"
    if not data:
        return "empty body"
    return f"{len(data)} bytes starting {data[:8]!r}"


# --------------------------------------------------------------------------------------------
# Retry policy helpers (shared with lavic.data.download)
# --------------------------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def backoff_delay(
    attempt: int,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Wait before retry number ``attempt + 1``: ``base * 2**attempt`` jittered to [50%, 100%],
    at least ``retry_after`` when the server gave one, never more than ``cap``."""
    jitter = (rng or random).uniform(0.5, 1.0)
    delay = base * (2**attempt) * jitter
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, cap)


def http_failure(exc: Exception) -> FetchFailure:
    """Classify an httpx exception as a :class:`FetchFailure` with a short reason."""
    import httpx

    message = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return FetchFailure("timeout", message)
    if isinstance(exc, httpx.TooManyRedirects):
        return FetchFailure("redirects", message)
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return FetchFailure("bad_url", message)
    if isinstance(exc, httpx.RemoteProtocolError):
        # h11's words for a body cut short before its Content-Length.
        reason = "truncated" if "complete message body" in message else "protocol_error"
        return FetchFailure(reason, message)
    if isinstance(exc, httpx.TransportError):
        return FetchFailure("connection", message)
    return FetchFailure("http_error", message)


def is_retryable(failure: FetchFailure) -> bool:
    """Timeouts, connection trouble, cut-short bodies, 5xx overloads and 429 are retried."""
    if failure.reason.startswith("http_") and failure.reason[5:].isdigit():
        return int(failure.reason[5:]) in RETRYABLE_STATUS
    return failure.reason in RETRYABLE_REASONS


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------
# The manifest and the report
# --------------------------------------------------------------------------------------------


@dataclass
class ManifestRecord:
    """One line of ``manifest.jsonl``: what became of one (url, file) pair.

    ``status`` is ``saved`` (fetched now), ``present`` (already there, no request) or
    ``failed``; ``reason`` is a short code for a failure and ``error`` its message.
    ``sha256``/``bytes``/``width``/``height`` describe the file on disk; ``fetched_at`` is when
    it was fetched (carried over from the previous manifest for a ``present`` file with the same
    sha256, else null).
    """

    url: str
    file: str
    status: str
    sha256: str | None = None
    bytes: int | None = None
    width: int | None = None
    height: int | None = None
    reason: str | None = None
    error: str | None = None
    fetched_at: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False)


@dataclass
class CrawlReport:
    """The outcome of :func:`crawl_images`: one record per target, in input order."""

    images_dir: Path
    records: list[ManifestRecord]
    seconds: float = 0.0
    requests: int = 0

    def counts(self) -> dict[str, int]:
        """``{"present": n, "saved": n, "failed": n}``."""
        c = collections.Counter(r.status for r in self.records)
        return {k: c.get(k, 0) for k in ("present", "saved", "failed")}

    def failures_by_reason(self) -> dict[str, int]:
        c = collections.Counter(r.reason for r in self.records if r.status == "failed")
        return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))

    def summary(self) -> str:
        """Human summary: already there, saved, failed by reason."""
        c = self.counts()
        lines = [
            f"{self.images_dir}: {len(self.records)} images in {self.seconds:.1f}s "
            f"({self.requests} requests)",
            f"  already there: {c['present']}",
            f"  saved:         {c['saved']}",
            f"  failed:        {c['failed']}",
        ]
        lines += [f"    {reason}: {n}" for reason, n in self.failures_by_reason().items()]
        return "\n".join(lines)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, ManifestRecord]:
    """Records of an earlier manifest keyed by file name; unreadable lines are ignored."""
    records: dict[str, ManifestRecord] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return records
    names = {f.name for f in dataclasses.fields(ManifestRecord)}
    for line in text.splitlines():
        try:
            row = json.loads(line)
            record = ManifestRecord(**{k: v for k, v in row.items() if k in names})
        except (json.JSONDecodeError, TypeError, AttributeError):
            continue
        records[record.file] = record
    return records


# --------------------------------------------------------------------------------------------
# The crawler
# --------------------------------------------------------------------------------------------


def _join_name(images_dir: Path, name: str) -> tuple[Path | None, str | None]:
    """``(path, None)`` when ``name`` may be written inside ``images_dir``, else ``(None, why)``."""
    try:
        path = safe_join(images_dir, name)
    except LavicError as exc:
        return None, str(exc)
    if name.startswith("."):
        # Hidden names are reserved for temporary files (and could hide an image).
        return None, f"unsafe file name {name!r}: hidden names are reserved for temporary files"
    if name == MANIFEST_NAME:
        return None, f"unsafe file name {name!r}: reserved for the manifest"
    return path, None


def _check_url(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"invalid URL {url!r}: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"only http and https URLs are fetched, not {parts.scheme or 'no scheme'!r}"
    if not parts.hostname:
        return f"invalid URL {url!r}: no host"
    return None


def _inspect_existing(
    path: Path, previous: ManifestRecord | None, max_pixels: int
) -> ManifestRecord | None:
    """A ``present`` record if ``path`` is a readable image, else None (to be refetched).

    A file whose sha256 matches the previous manifest's saved/present record is trusted
    without decoding; any other file (e.g. left by the reference's crawler) is fully decoded.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("%s: cannot read existing file (%s); refetching", path, exc.strerror)
        return None
    digest = hashlib.sha256(data).hexdigest()
    if (
        previous is not None
        and previous.sha256 == digest
        and previous.status in ("saved", "present")
        and previous.width is not None
    ):
        width, height, fetched_at = previous.width, previous.height, previous.fetched_at
    else:
        try:
            from PIL import Image

            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
                if im.width * im.height > max_pixels:
                    raise FetchFailure("decompression_bomb", "too many pixels")
                im.verify()
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
                im.load()
                width, height = im.size
        except Exception as exc:  # any failure to read it means: fetch it again
            logger.info("%s: existing file is not a whole image (%s); refetching", path, exc)
            return None
        fetched_at = None
    return ManifestRecord(
        url="",
        file=path.name,
        status="present",
        sha256=digest,
        bytes=len(data),
        width=width,
        height=height,
        fetched_at=fetched_at,
    )


def _write_image(path: Path, jpeg: bytes) -> None:
    # atomic_open writes `.<name>.<random>.tmp` beside `path` and renames it on success.
    with atomic_open(path, "wb") as handle:
        handle.write(jpeg)


def _remove_stale_temporaries(images_dir: Path, names: set[str]) -> int:
    """Delete temporary files an interrupted run left for these names (``.<name>.<rand>.tmp``)."""
    removed = 0
    try:
        entries = list(os.scandir(images_dir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        n = entry.name
        if not (n.startswith(".") and n.endswith(".tmp")) or not entry.is_file():
            continue
        stem = n[1 : -len(".tmp")].rpartition(".")[0]
        if stem in names:
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed


class _Crawler:
    """One crawl: a queue of URL groups drained by ``concurrency`` workers."""

    def __init__(self, paths: dict[str, Path], options: CrawlOptions):
        # name -> its path, joined once with safe_join (resolving costs a stat per component).
        self.paths = paths
        self.opt = options
        self.host_slots: dict[str, asyncio.Semaphore] = {}
        # Monotonic time before which no request goes to a host (set by Retry-After).
        self.host_not_before: dict[str, float] = {}
        self.requests = 0

    def _slot(self, host: str) -> asyncio.Semaphore:
        if host not in self.host_slots:
            self.host_slots[host] = asyncio.Semaphore(min(self.opt.per_host, self.opt.concurrency))
        return self.host_slots[host]

    async def _get(self, client: Any, url: str) -> bytes:
        """One attempt: the whole body of a 200 response, within the byte cap.

        The cap counts decoded bytes, decoded a bounded piece at a time
        (:class:`~lavic.data.netguard.CappedDecoder`): a small gzip body cannot grow past it.
        """
        import httpx

        from lavic.data.netguard import (
            BodyTooLarge,
            CappedDecoder,
            HostRefused,
            UnsupportedEncoding,
        )

        try:
            async with asyncio.timeout(self.opt.timeout):
                async with client.stream("GET", url) as response:
                    if response.status_code != 200:
                        retry_after = parse_retry_after(response.headers.get("retry-after"))
                        phrase = response.reason_phrase or "error"
                        raise FetchFailure(
                            f"http_{response.status_code}",
                            f"HTTP {response.status_code} {phrase}",
                            retry_after,
                        )
                    length = response.headers.get("content-length")
                    if length and length.isdigit() and int(length) > self.opt.max_bytes:
                        raise FetchFailure(
                            "too_large", f"Content-Length {length} exceeds {self.opt.max_bytes}"
                        )
                    decoder = CappedDecoder(
                        response.headers.get("content-encoding"), self.opt.max_bytes
                    )
                    body = bytearray()
                    async for chunk in response.aiter_raw():
                        for piece in decoder.feed(chunk):
                            body += piece
                    body += decoder.flush()
                    return bytes(body)
        except FetchFailure:
            raise
        except HostRefused as exc:
            # Before connecting, on the first request or a redirect hop: never retried.
            raise FetchFailure("refused", str(exc)) from None
        except BodyTooLarge:
            raise FetchFailure("too_large", f"body exceeds {self.opt.max_bytes} bytes") from None
        except UnsupportedEncoding as exc:
            raise FetchFailure("bad_encoding", str(exc)) from None
        except TimeoutError:
            raise FetchFailure(
                "timeout", f"no complete response within {self.opt.timeout}s"
            ) from None
        except httpx.HTTPError as exc:
            raise http_failure(exc) from None

    async def fetch(self, client: Any, url: str) -> DecodedImage:
        """Fetch and decode ``url``, retrying what is worth retrying."""
        host = urlsplit(url).hostname or ""
        attempt = 0
        while True:
            wait = self.host_not_before.get(host, 0.0) - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                async with self._slot(host):
                    self.requests += 1
                    body = await self._get(client, url)
                return await asyncio.to_thread(decode_image, body, self.opt.max_pixels)
            except FetchFailure as failure:
                if not is_retryable(failure) or attempt >= self.opt.retries:
                    if attempt:
                        failure.message += f" (after {attempt + 1} attempts)"
                    raise
                delay = backoff_delay(
                    attempt, self.opt.backoff_base, self.opt.max_backoff, failure.retry_after
                )
                if failure.retry_after is not None:
                    # The server asked for a pause: every request to this host waits it out.
                    until = time.monotonic() + delay
                    self.host_not_before[host] = max(self.host_not_before.get(host, 0.0), until)
                logger.debug("%s: %s; retry %d in %.2fs", url, failure, attempt + 1, delay)
                await asyncio.sleep(delay)
                attempt += 1

    async def process(
        self, client: Any, url: str, names: list[str], previous: dict[str, ManifestRecord]
    ) -> list[ManifestRecord]:
        """All files wanted from one URL: skip those present, fetch once for the rest."""
        out: dict[str, ManifestRecord] = {}
        missing = []
        for name in names:
            path = self.paths[name]
            record = await asyncio.to_thread(
                _inspect_existing, path, previous.get(name), self.opt.max_pixels
            )
            if record is None:
                missing.append(name)
            else:
                record.url = url
                out[name] = record
        if missing:
            problem = _check_url(url)
            try:
                if problem is not None:
                    raise FetchFailure("bad_url", problem)
                image = await self.fetch(client, url)
                fetched_at = utc_now()
                digest = hashlib.sha256(image.jpeg).hexdigest()
                for name in missing:
                    await asyncio.to_thread(_write_image, self.paths[name], image.jpeg)
                    out[name] = ManifestRecord(
                        url=url,
                        file=name,
                        status="saved",
                        sha256=digest,
                        bytes=len(image.jpeg),
                        width=image.width,
                        height=image.height,
                        fetched_at=fetched_at,
                    )
            except FetchFailure as failure:
                for name in missing:
                    out.setdefault(
                        name,
                        ManifestRecord(
                            url=url,
                            file=name,
                            status="failed",
                            reason=failure.reason,
                            error=failure.message,
                        ),
                    )
            except OSError as exc:
                for name in missing:
                    out.setdefault(
                        name,
                        ManifestRecord(url, name, "failed", reason="write_error", error=str(exc)),
                    )
        return [out[name] for name in names]

    async def run(
        self, groups: list[tuple[str, list[str]]], previous: dict[str, ManifestRecord], bar: Any
    ) -> list[list[ManifestRecord]]:
        import httpx

        from lavic.data import netguard

        results: list[list[ManifestRecord]] = [[] for _ in groups]
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(groups)):
            queue.put_nowait(i)
        # Loading the CA bundle costs tens of ms: one SSL context shared by every client.
        ssl_context = httpx.create_ssl_context()

        async def worker() -> None:
            # One small client per worker rather than one pool of `concurrency` connections:
            # httpcore scans its whole pool on every request, which made a shared 32-connection
            # pool ~3x slower here; a worker has one request in flight at a time anyway.
            # The client checks every request, redirect hops included (lavic.data.netguard).
            async with netguard.async_client(
                self.opt.allow_private_hosts,
                follow_redirects=True,
                max_redirects=5,
                limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
                verify=ssl_context,
                # The attempt deadline (asyncio.timeout) bounds the whole response; httpx's
                # own timeouts bound each phase.
                timeout=httpx.Timeout(self.opt.timeout),
                headers={
                    "User-Agent": self.opt.user_agent,
                    "Accept": "image/*,*/*;q=0.5",
                    # Only what CappedDecoder decodes under the cap.
                    "Accept-Encoding": netguard.CappedDecoder.ACCEPT_ENCODING,
                },
            ) as client:
                while True:
                    try:
                        i = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    url, names = groups[i]
                    results[i] = await self.process(client, url, names, previous)
                    bar.update(len(names))

        n_workers = max(1, min(self.opt.concurrency, len(groups)))
        await asyncio.gather(*(worker() for _ in range(n_workers)))
        return results


def crawl_images(
    targets: Sequence[ImageTarget],
    images_dir: str | os.PathLike[str],
    options: CrawlOptions | None = None,
) -> CrawlReport:
    """Fetch every target into ``images_dir`` and write ``images_dir/manifest.jsonl``.

    Each distinct URL is requested at most once per run (several names may share one URL);
    files already present and readable are skipped without a request. Unsafe names and
    non-http(s) URLs are reported as failures (``unsafe_name``, ``bad_url``) and nothing is
    written for them. Failures never raise: they are in the report and the manifest.

    Args:
        targets: what to fetch, e.g. from :func:`read_image_targets`.
        images_dir: the folder to fill (created if needed).
        options: concurrency, retries, caps (defaults: :class:`CrawlOptions`).

    Returns:
        The report, one record per target in input order (duplicates of an earlier
        (url, name) pair dropped; a name given two URLs keeps the first).
    """
    from tqdm.auto import tqdm

    options = options or CrawlOptions()
    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    # Dedupe, refuse unsafe names, group the rest by URL (fetched once, written to each name).
    order: list[str] = []
    refused: dict[str, ManifestRecord] = {}
    groups: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    paths: dict[str, Path] = {}
    for target in targets:
        if target.name in seen:
            if seen[target.name] != target.url:
                logger.warning(
                    "%s: %s is also given URL %s; keeping the first, %s",
                    target.where or target.name,
                    target.name,
                    target.url,
                    seen[target.name],
                )
            continue
        seen[target.name] = target.url
        order.append(target.name)
        path, problem = _join_name(images_dir, target.name)
        if problem is not None:
            where = f"{target.where}: " if target.where else ""
            logger.warning("%s%s; not fetched", where, problem)
            refused[target.name] = ManifestRecord(
                target.url, target.name, "failed", reason="unsafe_name", error=problem
            )
            continue
        paths[target.name] = path
        groups.setdefault(target.url, []).append(target.name)

    manifest_path = images_dir / MANIFEST_NAME
    previous = read_manifest(manifest_path)
    stale = _remove_stale_temporaries(images_dir, set(order) | {MANIFEST_NAME})
    if stale:
        logger.info(
            "%s: removed %d temporary file(s) left by an interrupted run", images_dir, stale
        )

    crawler = _Crawler(paths, options)
    group_list = list(groups.items())
    with tqdm(
        total=len(order),
        initial=len(refused),
        unit="img",
        desc=f"crawl {images_dir.name}",
        disable=(not options.progress) if options.progress is not None else None,
        dynamic_ncols=True,
    ) as bar:
        results = asyncio.run(crawler.run(group_list, previous, bar))

    by_name = dict(refused)
    for (_url, names), records in zip(group_list, results, strict=True):
        by_name.update(zip(names, records, strict=True))
    records = [by_name[name] for name in order]
    atomic_write_text(manifest_path, "".join(r.to_json() + "\n" for r in records))
    return CrawlReport(images_dir, records, time.perf_counter() - started, crawler.requests)


def _jobs(args: Args) -> list[tuple[Path, Path]]:
    if args.item_meta_path is None:
        jobs = [(meta, out) for meta, out in DEFAULT_JOBS if meta.exists()]
        for meta, _ in DEFAULT_JOBS:
            if not meta.exists():
                logger.warning("%s not found; skipped (run `lavic download-data` first?)", meta)
        if not jobs:
            raise LavicError(
                "no item metadata found at data/item2meta_train.json or "
                "data/item2meta_valid.jsonl; pass --item_meta_path (or run `lavic download-data`)"
            )
        return jobs
    meta = args.item_meta_path
    if args.images_dir is not None:
        return [(meta, args.images_dir)]
    default_dir = "train_images" if meta.suffix == ".json" else "valid_images"
    return [(meta, meta.parent / default_dir)]


def run(args: Args) -> int:
    """Crawl the images of one metadata file (or both of the reference's); print a summary.

    Returns 0, or 1 when ``--strict`` and an image failed, or when nothing at all could be
    fetched (every image failed).
    """
    options = CrawlOptions.from_args(args)
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # httpx logs every request at INFO: 10^5 lines would bury the summary.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    exit_code = 0
    for meta, images_dir in _jobs(args):
        targets = read_image_targets(meta)
        if not targets:
            raise DataError(meta, "no image URLs in this file")
        logger.info("%s: %d images -> %s", meta, len(targets), images_dir)
        report = crawl_images(targets, images_dir, options)
        print(report.summary(), flush=True)
        counts = report.counts()
        failed = [r for r in report.records if r.status == "failed"]
        for record in failed[:5]:
            logger.warning("failed %s (%s): %s", record.file, record.url, record.error)
        if len(failed) > 5:
            logger.warning(
                "... and %d more failures; see %s", len(failed) - 5, images_dir / MANIFEST_NAME
            )
        if counts["present"] + counts["saved"] == 0:
            logger.error("%s: nothing could be fetched", images_dir)
            exit_code = 1
        elif args.strict and counts["failed"]:
            logger.error("%s: %d image(s) failed (--strict)", images_dir, counts["failed"])
            exit_code = 1
    return exit_code


def iter_manifest_problems(images_dir: str | os.PathLike[str]) -> Iterable[str]:
    """Check a crawl snapshot: every saved/present file exists with its recorded sha256.

    Yields one line per problem (missing file, changed content); nothing when it is intact.
    """
    images_dir = Path(images_dir)
    for record in read_manifest(images_dir / MANIFEST_NAME).values():
        if record.status not in ("saved", "present"):
            continue
        path = images_dir / record.file
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            yield f"{path}: missing"
            continue
        if digest != record.sha256:
            yield f"{path}: sha256 {digest} differs from the manifest's {record.sha256}"
