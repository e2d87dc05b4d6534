"""``lavic download-data``: fetch the published Reddit-Amazon files, laid out as the reference.

The files come from the LaViC repository's ``data/`` folder (``--base_url``, by default
:data:`DEFAULT_BASE_URL`, any server with the same layout will do) and end up under ``--dest``::

    data/
      all_beauty/{train,valid,test}.jsonl
      amazon_fashion/{train,valid,test}.jsonl
      amazon_home/{train,valid,test}.jsonl
      item2meta_train.json        (unzipped from item2meta_train.json.zip)
      item2meta_valid.jsonl
      SHA256SUMS                  (written here: `sha256sum -c` it from inside data/)

Each file is verified before it takes its final name: every ``.jsonl`` line parses as a JSON
object, the zip passes its CRC check and ``item2meta_train.json`` parses as a JSON object, and
when a ``--checksums`` file (``sha256sum`` format, paths relative to ``--dest``) lists a file,
its sha256 must match. Downloads go to ``.<name>.part`` and are resumed with an HTTP ``Range``
request after a cut; a file already present and valid is not fetched again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from lavic.data.crawl import (
    FetchFailure,
    backoff_delay,
    http_failure,
    is_retryable,
    parse_retry_after,
)
from lavic.errors import DataError, LavicError
from lavic.io import atomic_write_text, safe_join

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://raw.githubusercontent.com/jeon185/LaViC/main/data"
CATEGORIES = ("all_beauty", "amazon_fashion", "amazon_home")
SPLITS = ("train", "valid", "test")
TRAIN_META = "item2meta_train.json"
TRAIN_META_ZIP = "item2meta_train.json.zip"
VALID_META = "item2meta_valid.jsonl"
CHECKSUMS_NAME = "SHA256SUMS"
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_CHUNK = 1 << 20


def published_files() -> list[str]:
    """The remote paths (relative to the base URL) that make up the published data."""
    files = [f"{c}/{s}.jsonl" for c in CATEGORIES for s in SPLITS]
    return [*files, TRAIN_META_ZIP, VALID_META]


@dataclass
class Args:
    """Options of ``lavic download-data``."""

    dest: Path = field(default=Path("data"), metadata={"help": "folder to lay the files out in"})
    base_url: str = field(
        default=DEFAULT_BASE_URL,
        metadata={"help": "URL of the published data/ folder (any server with the same layout)"},
    )
    timeout: float = field(
        default=60.0, metadata={"help": "seconds to wait for a connection or for the next bytes"}
    )
    retries: int = field(
        default=4, metadata={"help": "extra attempts after a timeout, connection error, 5xx, 429"}
    )
    backoff_base: float = field(
        default=1.0, metadata={"help": "first retry waits about this many seconds, then doubles"}
    )
    max_backoff: float = field(default=60.0, metadata={"help": "longest wait before a retry"})
    checksums: Path | None = field(
        default=None,
        metadata={"help": "sha256sum-format file of expected hashes (paths relative to --dest)"},
    )
    keep_zip: bool = field(
        default=False, metadata={"help": f"keep {TRAIN_META_ZIP} after unzipping it"}
    )
    allow_private_hosts: bool = field(
        default=False,
        metadata={
            "help": "allow a --base_url (or a redirect) on a loopback, private or link-local "
            "address (a mirror on your own network); refused by default"
        },
    )

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise LavicError("--retries must be 0 or more")
        if self.timeout <= 0:
            raise LavicError("--timeout must be positive")
        if not self.base_url.startswith(("http://", "https://")):
            raise LavicError(f"--base_url must be an http(s) URL, not {self.base_url!r}")


@dataclass
class FileResult:
    """What became of one published file: ``present``, ``downloaded`` or ``failed``."""

    path: str
    status: str
    sha256: str | None = None
    bytes: int | None = None
    error: str | None = None


# ------------------------------------------------------------------------------ checks


def read_checksums(path: str | os.PathLike[str]) -> dict[str, str]:
    """Parse a ``sha256sum`` file: ``<64 hex>  <path>`` per line (``*path`` and ``./`` allowed).

    Raises:
        DataError: a line that is not a sha256 and a path.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror}") from None
    sums = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().lstrip("*")
        if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest) or not name:
            raise DataError(path, "expected '<sha256>  <path>'", line=lineno)
        sums[str(PurePosixPath(name))] = digest.lower()
    return sums


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _check_not_lfs_pointer(path: Path, display: str) -> None:
    with open(path, "rb") as handle:
        head = handle.read(len(_LFS_POINTER))
    if head == _LFS_POINTER:
        raise DataError(
            display,
            "got a Git LFS pointer instead of the file; point --base_url at "
            "https://media.githubusercontent.com/media/<owner>/<repo>/<branch>/data",
        )


def verify_jsonl(path: str | os.PathLike[str], display: str | None = None) -> int:
    """Check that every non-blank line of ``path`` is a JSON object; return the line count.

    Raises:
        DataError: ``display:line: problem`` for the first bad line.
    """
    path = Path(path)
    display = display or str(path)
    _check_not_lfs_pointer(path, display)
    rows = 0
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except UnicodeDecodeError as exc:
                raise DataError(display, f"not UTF-8 text ({exc.reason})", line=lineno) from None
            except json.JSONDecodeError as exc:
                raise DataError(display, f"invalid JSON: {exc.msg}", line=lineno) from None
            if not isinstance(row, dict):
                raise DataError(display, "expected a JSON object on each line", line=lineno)
            rows += 1
    if rows == 0:
        raise DataError(display, "no records")
    return rows


def verify_json_object(path: str | os.PathLike[str], display: str | None = None) -> int:
    """Check that ``path`` is one JSON object (``item2meta_train.json``); return its size.

    Raises:
        DataError: not JSON, or not an object.
    """
    path = Path(path)
    display = display or str(path)
    _check_not_lfs_pointer(path, display)
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
    except UnicodeDecodeError as exc:
        raise DataError(display, f"not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise DataError(display, f"invalid JSON: {exc.msg}", line=exc.lineno) from None
    if not isinstance(data, dict):
        raise DataError(display, "expected a JSON object mapping ASIN -> metadata")
    return len(data)


def _verify(path: Path, name: str, display: str) -> None:
    if name.endswith(".jsonl"):
        verify_jsonl(path, display)
    else:
        verify_json_object(path, display)


def _check_sum(path: Path, display: str, expected: str | None) -> tuple[str, int]:
    digest, size = _sha256_file(path)
    if expected is not None and digest != expected:
        raise DataError(display, f"sha256 {digest} does not match the expected {expected}")
    return digest, size


# ------------------------------------------------------------------------------ fetching


class _Downloader:
    def __init__(self, args: Args):
        import httpx

        from lavic.data import netguard

        self.args = args
        self.base_url = args.base_url.rstrip("/")
        self.requests = 0
        # Every request, redirect hops included, is checked for a non-public address.
        self.client = netguard.client(
            args.allow_private_hosts,
            follow_redirects=True,
            max_redirects=5,
            timeout=httpx.Timeout(args.timeout),
            # Identity encoding: the bytes on disk are the file's bytes, so Range offsets into a
            # partial download mean the same thing on the server.
            headers={"Accept-Encoding": "identity", "User-Agent": "lavic-download-data/0.1"},
            trust_env=True,
        )

    def close(self) -> None:
        self.client.close()

    def fetch(self, remote: str, part: Path) -> None:
        """Download ``remote`` into ``part``, resuming what is already there with ``Range``.

        Raises:
            LavicError: the server refused (404...) or retries ran out.
        """
        import httpx
        from tqdm.auto import tqdm

        from lavic.data.netguard import HostRefused

        url = f"{self.base_url}/{remote}"
        attempt = 0
        while True:
            offset = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            try:
                self.requests += 1
                with self.client.stream("GET", url, headers=headers) as response:
                    code = response.status_code
                    if code == 416 and offset:
                        # What we have is not a prefix the server recognises: start over.
                        part.unlink()
                        raise FetchFailure("connection", "range not satisfiable; restarting")
                    if code not in (200, 206):
                        raise FetchFailure(
                            f"http_{code}",
                            f"HTTP {code} {response.reason_phrase}",
                            parse_retry_after(response.headers.get("retry-after")),
                        )
                    mode = "wb"
                    if code == 206:
                        start = _content_range_start(response.headers.get("content-range"))
                        if start != offset:
                            part.unlink(missing_ok=True)
                            raise FetchFailure("protocol_error", "unexpected Content-Range")
                        mode = "ab"
                    else:
                        offset = 0  # the server ignored Range: the body is the whole file
                    length = response.headers.get("content-length")
                    total = offset + int(length) if length and length.isdigit() else None
                    with (
                        open(part, mode) as handle,
                        tqdm(
                            total=total,
                            initial=offset,
                            unit="B",
                            unit_scale=True,
                            desc=remote,
                            disable=None,
                            leave=False,
                        ) as bar,
                    ):
                        try:
                            for chunk in response.iter_bytes():
                                handle.write(chunk)
                                bar.update(len(chunk))
                        finally:
                            # Whatever arrived stays in the .part file for the next Range.
                            handle.flush()
                            os.fsync(handle.fileno())
                return
            except FetchFailure as failure:
                error = failure
            except HostRefused:
                raise  # a LavicError naming the URL refused; never retried
            except httpx.HTTPError as exc:
                error = http_failure(exc)
            if not is_retryable(error) or attempt >= self.args.retries:
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                raise LavicError(f"{url}: {error.message}{tries}")
            delay = backoff_delay(
                attempt, self.args.backoff_base, self.args.max_backoff, error.retry_after
            )
            logger.info("%s: %s; retrying in %.1fs", url, error.message, delay)
            time.sleep(delay)
            attempt += 1


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-999/1000" -> 100
    if not value or not value.startswith("bytes "):
        return None
    first = value[len("bytes ") :].split("-", 1)[0]
    return int(first) if first.isdigit() else None


def _extract_train_meta(zip_path: Path, out_tmp: Path, display: str) -> None:
    """Check the zip's CRCs and extract its ``item2meta_train.json`` into ``out_tmp``."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            try:
                bad = archive.testzip()
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise DataError(display, f"corrupt zip: {exc}") from None
            if bad is not None:
                raise DataError(display, f"corrupt zip: member {bad!r} fails its CRC check")
            members = [
                info
                for info in archive.infolist()
                if PurePosixPath(info.filename).name == TRAIN_META
                and not info.filename.startswith("__MACOSX")
                and not info.is_dir()
            ]
            if not members:
                raise DataError(display, f"zip holds no {TRAIN_META}")
            with archive.open(members[0]) as src, open(out_tmp, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
    except zipfile.BadZipFile as exc:
        raise DataError(display, f"not a valid zip archive ({exc})") from None


def _present(path: Path, name: str, display: str, expected: str | None) -> FileResult | None:
    """A ``present`` result when ``path`` exists and passes its checks, else None."""
    if not path.exists():
        return None
    try:
        _verify(path, name, display)
        digest, size = _check_sum(path, display, expected)
    except DataError as exc:
        logger.warning("%s; fetching it again", exc)
        return None
    return FileResult(name, "present", digest, size)


def _get_one(dl: _Downloader, dest: Path, remote: str, sums: dict[str, str]) -> FileResult:
    """Make sure one published file is in place; raise LavicError if it cannot be."""
    parts = remote.split("/")
    folder = dest
    for piece in parts[:-1]:
        folder = safe_join(folder, piece)
    folder.mkdir(parents=True, exist_ok=True)
    base = parts[-1]

    if remote == TRAIN_META_ZIP:
        final_name = TRAIN_META
        final = safe_join(dest, TRAIN_META)
        found = _present(final, TRAIN_META, str(final), sums.get(TRAIN_META))
        if found is not None:
            return found
        zip_path = safe_join(dest, TRAIN_META_ZIP)
        part = safe_join(dest, f".{TRAIN_META_ZIP}.part")
        zip_ok = False
        if zip_path.exists():  # kept from an earlier run (--keep_zip)
            try:
                _check_sum(zip_path, str(zip_path), sums.get(TRAIN_META_ZIP))
                zip_ok = zipfile.is_zipfile(zip_path)
            except DataError:
                zip_ok = False
        if not zip_ok:
            dl.fetch(remote, part)
            try:
                _check_not_lfs_pointer(part, dl.base_url + "/" + remote)
                _check_sum(part, dl.base_url + "/" + remote, sums.get(TRAIN_META_ZIP))
                if not zipfile.is_zipfile(part):
                    raise DataError(dl.base_url + "/" + remote, "not a zip archive")
            except DataError:
                part.unlink(missing_ok=True)  # a wrong file: the next run starts afresh
                raise
            os.replace(part, zip_path)
        tmp = safe_join(dest, f".{TRAIN_META}.part")
        try:
            _extract_train_meta(zip_path, tmp, str(zip_path))
            display = f"{zip_path}:{TRAIN_META}"
            verify_json_object(tmp, display)
            digest, size = _check_sum(tmp, display, sums.get(TRAIN_META))
        except BaseException:
            tmp.unlink(missing_ok=True)
            if not dl.args.keep_zip:
                zip_path.unlink(missing_ok=True)
            raise
        os.replace(tmp, final)
        if not dl.args.keep_zip:
            zip_path.unlink(missing_ok=True)
        return FileResult(final_name, "downloaded", digest, size)

    final = safe_join(folder, base)
    found = _present(final, remote, str(final), sums.get(remote))
    if found is not None:
        return found
    part = safe_join(folder, f".{base}.part")
    dl.fetch(remote, part)
    url = f"{dl.base_url}/{remote}"
    try:
        _verify(part, base, url)
        digest, size = _check_sum(part, url, sums.get(remote))
    except DataError:
        part.unlink(missing_ok=True)
        raise
    # The .part file is complete and verified: the rename is the atomic publish.
    os.replace(part, final)
    return FileResult(remote, "downloaded", digest, size)


def _check_base_url(base_url: str) -> None:
    """Refuse a ``--base_url`` on a non-public address once, before any file is tried.

    (Each request, redirects included, is checked again by the client: this only turns eleven
    identical failures into one clear error.) A name that does not resolve is left to the
    fetches, which retry and report it per file.

    Raises:
        HostRefused: the base URL's host is not public.
    """
    import httpx

    from lavic.data.netguard import check_url

    with contextlib.suppress(httpx.ConnectError):
        check_url(base_url)


def download_data(args: Args) -> list[FileResult]:
    """Fetch, verify and lay out every published file under ``args.dest``.

    Every file is attempted even after another fails; ``SHA256SUMS`` is (re)written for the
    files in place.

    Returns:
        One result per file (``item2meta_train.json.zip`` reported as ``item2meta_train.json``).
    """
    dest = Path(args.dest)
    sums = read_checksums(args.checksums) if args.checksums is not None else {}
    if not args.allow_private_hosts:
        _check_base_url(args.base_url)
    dest.mkdir(parents=True, exist_ok=True)
    dl = _Downloader(args)
    results: list[FileResult] = []
    try:
        for remote in published_files():
            try:
                results.append(_get_one(dl, dest, remote, sums))
            except LavicError as exc:
                name = TRAIN_META if remote == TRAIN_META_ZIP else remote
                results.append(FileResult(name, "failed", error=str(exc)))
                logger.error("%s", exc)
    finally:
        dl.close()
    good = [r for r in results if r.status != "failed"]
    if good:
        atomic_write_text(
            safe_join(dest, CHECKSUMS_NAME), "".join(f"{r.sha256}  {r.path}\n" for r in good)
        )
    return results


def run(args: Args) -> int:
    """Download the published data; print one line per file; LavicError if any failed."""
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("httpx").setLevel(logging.WARNING)
    results = download_data(args)
    for r in results:
        size = f"{r.bytes:>12,d} B" if r.bytes is not None else " " * 14
        print(f"{r.status:<10} {size}  {r.path}" + (f"  ({r.error})" if r.error else ""))
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise LavicError(
            f"{len(failed)} of {len(results)} files failed ({', '.join(r.path for r in failed)}); "
            "rerun to resume"
        )
    logger.info("data in %s; next: `lavic crawl` to fetch the images", args.dest)
    return 0
