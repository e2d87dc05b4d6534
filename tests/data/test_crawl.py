"""The crawler against a scripted HTTP server on 127.0.0.1 (no other network)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from lavic.cli import main as cli_main
from lavic.data.crawl import (
    MANIFEST_NAME,
    CrawlOptions,
    FetchFailure,
    ImageTarget,
    backoff_delay,
    crawl_images,
    decode_image,
    iter_manifest_problems,
    parse_retry_after,
    read_image_targets,
)
from lavic.errors import DataError, LavicError

from .conftest import PROXY_VARS
from .http_server import (
    cut,
    image_bytes,
    ok,
    redirect,
    sequence,
    status,
    trickle,
)

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "reddit_amazon"
REPO = Path(__file__).resolve().parents[2]


# The local server is on 127.0.0.1: these tests opt in to private hosts (the guard's own
# tests, in test_netguard.py, leave it off).
FAST = CrawlOptions(
    concurrency=8,
    timeout=1.0,
    retries=2,
    backoff_base=0.01,
    max_backoff=5.0,
    progress=False,
    allow_private_hosts=True,
)


def manifest(images_dir: Path) -> dict[str, dict]:
    lines = (images_dir / MANIFEST_NAME).read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    return {row["file"]: row for row in rows}


def final_files(folder: Path) -> set[str]:
    return {
        p.name for p in folder.iterdir() if not p.name.startswith(".") and p.name != MANIFEST_NAME
    }


def png_header_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (never decoded in full)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ----------------------------------------------------------------------------- metadata


def test_train_json_targets_follow_reference_naming(tmp_path):
    meta = {
        "B000000001": {
            "title": "a",
            "images": [{"large": "http://h/1.jpg"}, {"large": "http://h/2.jpg"}],
        },
        "0060188782": {
            "images": [{"thumb": "x"}, {"large": "http://h/3.jpg"}]
        },  # k keeps its position
        "B000000003": {"title": "no images"},
        "B000000004": {"images": []},
    }
    path = tmp_path / "item2meta_train.json"
    path.write_text(json.dumps(meta))
    targets = read_image_targets(path)
    assert [(t.url, t.name) for t in targets] == [
        ("http://h/1.jpg", "B000000001_0.jpg"),
        ("http://h/2.jpg", "B000000001_1.jpg"),
        ("http://h/3.jpg", "0060188782_1.jpg"),
    ]


def test_valid_jsonl_targets(tmp_path):
    path = tmp_path / "item2meta_valid.jsonl"
    path.write_text(
        json.dumps({"title": "a", "image": "http://h/a.jpg", "image_name": "A_0.jpg"})
        + "\n\n"
        + json.dumps({"title": "no image", "image": None, "image_name": "B_0.jpg"})
        + "\n"
        + json.dumps({"image": "http://h/c.jpg", "image_name": "C_4.jpg"})
        + "\n"
    )
    targets = read_image_targets(path)
    assert [(t.url, t.name, t.where) for t in targets] == [
        ("http://h/a.jpg", "A_0.jpg", f"{path}: item 'A'"),
        ("http://h/c.jpg", "C_4.jpg", f"{path}: item 'C'"),
    ]


def test_targets_come_from_the_one_metadata_loader(tmp_path):
    """The crawler reads metadata with lavic.data.loaders, so it accepts what the other
    commands accept (any image name in a .jsonl) and refuses what they refuse."""
    path = tmp_path / "item2meta_valid.jsonl"
    rows = [
        {"title": "Red mug", "image": "http://h/mug.png", "image_name": "mug-red.png"},
        {"title": "t", "image": "http://h/x.jpg", "image_name": "X_0.jpg"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [(t.url, t.name) for t in read_image_targets(path)] == [
        ("http://h/mug.png", "mug-red.png"),
        ("http://h/x.jpg", "X_0.jpg"),
    ]
    # A title the loaders refuse (the reserved item-token text) is refused here too.
    path.write_text(json.dumps({"title": "<ItemImageEmb1>", "image_name": "X_0.jpg"}) + "\n")
    with pytest.raises(DataError, match="reserved item token"):
        read_image_targets(path)


@pytest.mark.parametrize(
    ("suffix", "text", "expected"),
    [
        (
            ".jsonl",
            '{"image": "http://h/a", "image_name": "a.jpg"}\n{"image": \n',
            ":2: malformed JSON: Expecting value",
        ),
        (
            ".jsonl",
            '["not", "an object"]\n',
            ":1: expected a JSON object on each line, got an array",
        ),
        (".jsonl", '{"image": "http://h/a"}\n', ":1: missing key 'image_name'"),
        (
            ".jsonl",
            '{"image": 7, "image_name": "a.jpg"}\n',
            ":1: key 'image' must be a string or null, got a number",
        ),
        (".json", '{"A": {"images": [{"large": "u"}]}, ', ":1: truncated file"),
        (".json", "[1, 2]", ":1: top-level value must be a JSON object"),
        (
            ".json",
            '{"A": {"images": "http://h/a"}}',
            ":1: item 'A': key 'images' must be a list, got a string",
        ),
        (
            ".json",
            '{"A": {"images": [{"large": 3}]}}',
            ":1: item 'A': key 'images[0].large' must be a string or null",
        ),
    ],
)
def test_malformed_metadata_is_one_line_data_error(tmp_path, suffix, text, expected):
    path = tmp_path / f"meta{suffix}"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        read_image_targets(path)
    message = str(info.value)
    assert message.startswith(f"{path}{expected}") and "\n" not in message


def test_malformed_metadata_through_the_cli_exits_2(tmp_path, capsys):
    path = tmp_path / "meta.jsonl"
    path.write_text("{oops\n")
    assert (
        cli_main(["crawl", "--item_meta_path", str(path), "--images_dir", str(tmp_path / "i")]) == 2
    )
    err = capsys.readouterr().err
    assert f"{path}:1: malformed JSON" in err and "Traceback" not in err


def test_unknown_extension_is_refused(tmp_path):
    (tmp_path / "meta.csv").write_text("x")
    with pytest.raises(LavicError, match=r"must be a \.json \(dict\) or \.jsonl"):
        read_image_targets(tmp_path / "meta.csv")


@pytest.mark.skipif(not SHARED.exists(), reason="needs ../shared/data")
def test_real_valid_metadata_parses():
    targets = read_image_targets(SHARED / "item2meta_valid.jsonl")
    assert len(targets) == 512
    assert len({t.name for t in targets}) == 512
    assert all(t.url.startswith("https://") and t.name.endswith(".jpg") for t in targets)


# ----------------------------------------------------------------------------- images


def test_rgb_jpeg_is_kept_byte_for_byte():
    data = image_bytes("JPEG", size=(20, 10))
    decoded = decode_image(data)
    assert decoded.jpeg == data and (decoded.width, decoded.height) == (20, 10)


@pytest.mark.parametrize("mode", ["P", "RGBA", "L"])
def test_other_modes_become_rgb_jpeg(mode):
    im = Image.new("RGBA", (8, 6), (255, 0, 0, 0))  # fully transparent red
    im.putpixel((0, 0), (0, 0, 255, 255))  # one opaque blue pixel
    if mode == "P":
        im = im.convert("RGBA").quantize(colors=4)
        im.info["transparency"] = im.getpixel((1, 1))
    elif mode == "L":
        im = im.convert("L")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    decoded = decode_image(buf.getvalue())
    out = Image.open(io.BytesIO(decoded.jpeg))
    assert out.format == "JPEG" and out.mode == "RGB" and out.size == (8, 6)
    if mode in ("RGBA", "P"):
        # Transparent pixels are composited on white, not black.
        r, g, b = out.getpixel((5, 4))
        assert min(r, g, b) > 200


def _png_16bit_rgb(width: int, height: int, rgb16: tuple[int, int, int]) -> bytes:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one), every pixel ``rgb16``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    row = b"\x00" + struct.pack(">HHH", *rgb16) * width
    idat = zlib.compress(row * height)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _grey16(fmt: str, value: int, size=(12, 8)) -> bytes:
    import numpy as np

    array = np.full((size[1], size[0]), value, dtype=np.uint16)
    image = Image.fromarray(array)  # uint16 -> mode I;16
    assert image.mode == "I;16"
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def test_crawled_16bit_images_are_scaled_not_washed_out(server, tmp_path):
    """16-bit pixels go through images.to_rgb: a quarter-grey stays a quarter-grey (PIL's own
    I;16 -> RGB conversion clips at 255 and turned it white)."""
    server.add("/grey16.png", ok(_grey16("PNG", 0x4000), "image/png"))
    server.add("/grey16.tif", ok(_grey16("TIFF", 0xC000), "image/tiff"))
    server.add("/rgb16.png", ok(_png_16bit_rgb(10, 6, (0xFFFF, 0x8000, 0x0000)), "image/png"))
    # The 16-bit grey PNG really decodes as a 16-bit mode (the case that was clipped).
    assert Image.open(io.BytesIO(_grey16("PNG", 0x4000))).mode in ("I;16", "I")
    targets = [
        ImageTarget(server.url("/grey16.png"), "G_0.jpg"),
        ImageTarget(server.url("/grey16.tif"), "T_0.jpg"),
        ImageTarget(server.url("/rgb16.png"), "C_0.jpg"),
    ]
    report = crawl_images(targets, tmp_path / "images", FAST)
    assert report.counts() == {"present": 0, "saved": 3, "failed": 0}

    def pixel(name):
        with Image.open(tmp_path / "images" / name) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            return im.getpixel((5, 3))

    for name, expected in (("G_0.jpg", 64), ("T_0.jpg", 191)):
        r, g, b = pixel(name)
        assert max(abs(r - expected), abs(g - expected), abs(b - expected)) <= 3, (name, r, g, b)
    r, g, b = pixel("C_0.jpg")
    assert r >= 250 and abs(g - 128) <= 4 and b <= 5


def test_decode_rejects_html_truncated_and_bombs():
    with pytest.raises(FetchFailure) as info:
        decode_image(b"<!DOCTYPE html><html><body>Robot check</body></html>")
    assert info.value.reason == "not_image" and "HTML" in info.value.message
    whole = image_bytes("JPEG", size=(64, 64))
    with pytest.raises(FetchFailure) as info:
        decode_image(whole[: len(whole) // 2])
    assert info.value.reason == "truncated"
    # Header claims 100000 x 100000 px: refused before any pixel is decoded.
    with pytest.raises(FetchFailure) as info:
        decode_image(png_header_bomb(100_000, 100_000))
    assert info.value.reason == "decompression_bomb"
    with pytest.raises(FetchFailure) as info:
        decode_image(image_bytes("PNG", size=(50, 50)), max_pixels=2_000)
    assert info.value.reason == "decompression_bomb"


def test_retry_after_and_backoff():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = 1_700_000_000.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now=now) == pytest.approx(20.0)
    delays = [backoff_delay(a, base=1.0, cap=100.0) for a in range(4)]
    for a, d in enumerate(delays):
        assert 0.5 * 2**a <= d <= 2**a
    assert backoff_delay(0, base=0.01, cap=100.0, retry_after=7.0) == 7.0
    assert backoff_delay(10, base=1.0, cap=5.0) == 5.0


# ----------------------------------------------------------------------------- crawling


def test_crawl_against_the_real_web_failure_modes(server, tmp_path):
    good = {f"/good{i}.jpg": image_bytes(seed=i) for i in range(3)}
    for path, body in good.items():
        server.add(path, ok(body))
    palette_png = image_bytes("PNG", mode="P", seed=7)
    server.add("/palette.png", ok(palette_png, "image/png"))
    server.add("/flaky.jpg", sequence(status(500), ok(image_bytes(seed=8))))
    server.add("/down.jpg", status(503))
    server.add("/gone.jpg", status(410))
    server.add(
        "/limited.jpg", sequence(status(429, headers={"Retry-After": "1"}), ok(image_bytes(seed=9)))
    )
    server.add("/slow.jpg", ok(image_bytes(seed=10), delay=2.5))
    server.add(
        "/cut-once.jpg",
        sequence(cut(image_bytes(size=(64, 64)), 200), ok(image_bytes(size=(64, 64)))),
    )
    server.add("/cut-always.jpg", cut(image_bytes(size=(64, 64)), 200))
    server.add(
        "/page.jpg",
        ok(
            b"<html><body>Sorry, we just need to make sure you're not a robot</body></html>",
            "text/html",
        ),
    )
    server.add("/moved.jpg", redirect("/good0.jpg"))
    server.add("/to-ftp.jpg", redirect("ftp://example.invalid/x.jpg"))
    server.add("/bomb.png", ok(png_header_bomb(100_000, 100_000), "image/png"))
    server.add("/huge.jpg", ok(image_bytes(size=(600, 600)) + b"\0" * 300_000))
    targets = [
        ImageTarget(server.url("/good0.jpg"), "G0_0.jpg"),
        ImageTarget(server.url("/good1.jpg"), "G1_0.jpg"),
        ImageTarget(server.url("/good1.jpg"), "G1_1.jpg"),  # same URL: one request, two files
        ImageTarget(server.url("/good2.jpg"), "G2_0.jpg"),
        ImageTarget(server.url("/palette.png"), "P_0.jpg"),
        ImageTarget(server.url("/missing.jpg"), "M_0.jpg"),
        ImageTarget(server.url("/gone.jpg"), "GONE_0.jpg"),
        ImageTarget(server.url("/flaky.jpg"), "F_0.jpg"),
        ImageTarget(server.url("/down.jpg"), "D_0.jpg"),
        ImageTarget(server.url("/limited.jpg"), "L_0.jpg"),
        ImageTarget(server.url("/slow.jpg"), "S_0.jpg"),
        ImageTarget(server.url("/cut-once.jpg"), "C1_0.jpg"),
        ImageTarget(server.url("/cut-always.jpg"), "C2_0.jpg"),
        ImageTarget(server.url("/page.jpg"), "H_0.jpg"),
        ImageTarget(server.url("/moved.jpg"), "R_0.jpg"),
        ImageTarget(server.url("/to-ftp.jpg"), "RF_0.jpg"),
        ImageTarget(server.url("/bomb.png"), "B_0.jpg"),
        ImageTarget(server.url("/huge.jpg"), "BIG_0.jpg"),
        ImageTarget("file:///etc/passwd", "FILE_0.jpg"),
        ImageTarget(server.url("/good2.jpg"), "../../x_0.jpg"),  # an ASIN like ../../x
        ImageTarget(server.url("/good2.jpg"), "sub/evil.jpg"),  # an image_name with a separator
        ImageTarget(server.url("/good2.jpg"), ".hidden.jpg"),
        ImageTarget(server.url("/good2.jpg"), MANIFEST_NAME),
    ]
    images = tmp_path / "nest" / "images"
    options = CrawlOptions(**{**FAST.__dict__, "max_bytes": 200_000})
    started = time.monotonic()
    report = crawl_images(targets, images, options)
    elapsed = time.monotonic() - started

    expected = {
        "G0_0.jpg": ("saved", None),
        "G1_0.jpg": ("saved", None),
        "G1_1.jpg": ("saved", None),
        "G2_0.jpg": ("saved", None),
        "P_0.jpg": ("saved", None),
        "M_0.jpg": ("failed", "http_404"),
        "GONE_0.jpg": ("failed", "http_410"),
        "F_0.jpg": ("saved", None),
        "D_0.jpg": ("failed", "http_503"),
        "L_0.jpg": ("saved", None),
        "S_0.jpg": ("failed", "timeout"),
        "C1_0.jpg": ("saved", None),
        "C2_0.jpg": ("failed", "truncated"),
        "H_0.jpg": ("failed", "not_image"),
        "R_0.jpg": ("saved", None),
        "RF_0.jpg": ("failed", "bad_url"),
        "B_0.jpg": ("failed", "decompression_bomb"),
        "BIG_0.jpg": ("failed", "too_large"),
        "FILE_0.jpg": ("failed", "bad_url"),
        "../../x_0.jpg": ("failed", "unsafe_name"),
        "sub/evil.jpg": ("failed", "unsafe_name"),
        ".hidden.jpg": ("failed", "unsafe_name"),
        MANIFEST_NAME: ("failed", "unsafe_name"),
    }
    assert {r.file: (r.status, r.reason) for r in report.records} == expected
    assert [r.file for r in report.records] == [t.name for t in targets]  # input order

    # Requests: retried exactly what is worth retrying, nothing else.
    retries = options.retries
    assert server.count("/good1.jpg") == 1
    assert server.count("/good2.jpg") == 1  # the unsafe names never caused a request
    assert server.count("/missing.jpg") == 1 and server.count("/gone.jpg") == 1
    assert server.count("/page.jpg") == 1 and server.count("/bomb.png") == 1
    assert server.count("/flaky.jpg") == 2 and server.count("/cut-once.jpg") == 2
    assert server.count("/down.jpg") == retries + 1
    assert server.count("/slow.jpg") == retries + 1
    assert server.count("/cut-always.jpg") == retries + 1
    t429, t200 = server.times["/limited.jpg"]
    assert t200 - t429 >= 0.95  # Retry-After: 1 honoured (backoff alone would be ~0.01 s)
    assert elapsed < 15

    # On disk: exactly the saved files, each an RGB JPEG matching its manifest line.
    rows = manifest(images)
    assert list(rows) == [t.name for t in targets]
    saved = {name for name, (st, _) in expected.items() if st == "saved"}
    assert final_files(images) == saved
    assert not [p for p in images.iterdir() if p.name.endswith(".tmp")]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file() and p.parent != images) == []
    for name in saved:
        data = (images / name).read_bytes()
        row = rows[name]
        assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["bytes"] == len(data)
        with Image.open(images / name) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (row["width"], row["height"]))
        assert row["fetched_at"].endswith("Z") and row["error"] is None
    assert (images / "G0_0.jpg").read_bytes() == good["/good0.jpg"]  # RGB JPEG kept as is
    assert (images / "R_0.jpg").read_bytes() == good["/good0.jpg"]  # redirect followed
    assert (images / "G1_0.jpg").read_bytes() == (images / "G1_1.jpg").read_bytes()
    assert rows["H_0.jpg"]["error"] and rows["H_0.jpg"]["sha256"] is None
    assert report.counts() == {
        "present": 0,
        "saved": len(saved),
        "failed": len(expected) - len(saved),
    }
    assert report.failures_by_reason()["unsafe_name"] == 4
    assert "already there: 0" in report.summary()
    assert list(iter_manifest_problems(images)) == []

    # A second run: what was saved is present without a request; failures are tried again.
    server.reset_counts()
    again = crawl_images(targets[:5], images, FAST)
    assert again.counts() == {"present": 5, "saved": 0, "failed": 0}
    assert server.total() == 0
    assert manifest(images)["G0_0.jpg"]["fetched_at"] == rows["G0_0.jpg"]["fetched_at"]


def test_resume_replaces_a_partial_file_left_by_another_tool(server, tmp_path):
    body = image_bytes(size=(64, 64), seed=3)
    server.add("/a.jpg", ok(body))
    server.add("/b.jpg", ok(image_bytes(seed=4)))
    images = tmp_path / "images"
    images.mkdir()
    # half an image, as the reference's crawler could leave it
    (images / "A_0.jpg").write_bytes(body[: len(body) // 2])
    (images / "B_0.jpg").write_bytes(image_bytes(seed=5))  # a whole image from elsewhere: kept
    (images / ".A_0.jpg.abc123.tmp").write_bytes(b"junk")  # left by a killed run
    report = crawl_images(
        [
            ImageTarget(server.url("/a.jpg"), "A_0.jpg"),
            ImageTarget(server.url("/b.jpg"), "B_0.jpg"),
        ],
        images,
        FAST,
    )
    assert [(r.file, r.status) for r in report.records] == [
        ("A_0.jpg", "saved"),
        ("B_0.jpg", "present"),
    ]
    assert (images / "A_0.jpg").read_bytes() == body
    assert server.count("/a.jpg") == 1 and server.count("/b.jpg") == 0
    assert not (images / ".A_0.jpg.abc123.tmp").exists()
    assert manifest(images)["B_0.jpg"]["fetched_at"] is None  # not fetched by us
    (images / "A_0.jpg").write_bytes(image_bytes(seed=6))
    assert [line.split(":")[0] for line in iter_manifest_problems(images)] == [
        str(images / "A_0.jpg")
    ]


def test_per_host_limit_bounds_requests_in_flight(server, tmp_path):
    for i in range(12):
        server.add(f"/{i}.jpg", ok(image_bytes(seed=i), delay=0.15))
    targets = [ImageTarget(server.url(f"/{i}.jpg"), f"I{i}_0.jpg") for i in range(12)]
    opts = {**FAST.__dict__, "timeout": 5.0}
    crawl_images(
        targets[:6], tmp_path / "a", CrawlOptions(**{**opts, "concurrency": 8, "per_host": 2})
    )
    assert server.max_in_flight == 2
    server.reset_counts()
    crawl_images(
        targets[6:], tmp_path / "b", CrawlOptions(**{**opts, "concurrency": 8, "per_host": 8})
    )
    assert server.max_in_flight >= 4  # really concurrent when allowed


# ----------------------------------------------------------------------------- the command


def _write_valid_meta(path: Path, rows: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps({"title": n, "image": u, "image_name": n}) + "\n" for u, n in rows)
    )


def test_cli_exit_codes(server, tmp_path):
    server.add("/ok.jpg", ok(image_bytes()))
    meta = tmp_path / "meta.jsonl"
    _write_valid_meta(
        meta, [(server.url("/ok.jpg"), "A_0.jpg"), (server.url("/nope.jpg"), "B_0.jpg")]
    )
    flags = ["--retries", "0", "--backoff_base", "0.01", "--timeout", "2", "--allow_private_hosts"]
    base = ["crawl", "--item_meta_path", str(meta), *flags]
    assert cli_main([*base, "--images_dir", str(tmp_path / "i1")]) == 0
    assert cli_main([*base, "--images_dir", str(tmp_path / "i2"), "--strict"]) == 1
    # Rerun with --strict: A is present, B fails again -> still 1.
    assert cli_main([*base, "--images_dir", str(tmp_path / "i2"), "--strict"]) == 1
    _write_valid_meta(meta, [(server.url("/nope.jpg"), "B_0.jpg")])
    assert cli_main([*base, "--images_dir", str(tmp_path / "i3")]) == 1  # nothing fetched


def test_cli_defaults_are_the_reference_layout(server, tmp_path, monkeypatch, capsys):
    server.add("/v.jpg", ok(image_bytes(seed=1)))
    server.add("/t.jpg", ok(image_bytes(seed=2)))
    _write_valid_meta(
        tmp_path / "data" / "item2meta_valid.jsonl", [(server.url("/v.jpg"), "V_0.jpg")]
    )
    (tmp_path / "data" / "item2meta_train.json").write_text(
        json.dumps({"T": {"images": [{"large": server.url("/t.jpg")}]}})
    )
    monkeypatch.chdir(tmp_path)
    assert cli_main(["crawl", "--timeout", "2", "--allow_private_hosts"]) == 0
    assert final_files(tmp_path / "data" / "train_images") == {"T_0.jpg"}
    assert final_files(tmp_path / "data" / "valid_images") == {"V_0.jpg"}
    out = capsys.readouterr().out
    assert "saved:         1" in out and "already there: 0" in out
    # --item_meta_path alone picks the reference's folder beside it.
    argv = ["crawl", "--item_meta_path", "data/item2meta_valid.jsonl", "--allow_private_hosts"]
    assert cli_main(argv) == 0
    assert "already there: 1" in capsys.readouterr().out


def test_kill_and_resume_leaves_no_partial_file(server, tmp_path):
    n = 40
    bodies = {f"/img{i}.jpg": image_bytes(size=(96, 96), seed=i) for i in range(n)}
    for path, body in bodies.items():
        server.add(path, trickle(body, chunks=4, interval=0.06))  # ~0.25 s per image
    meta = tmp_path / "meta.jsonl"
    _write_valid_meta(meta, [(server.url(p), f"K{i}_0.jpg") for i, p in enumerate(bodies)])
    images = tmp_path / "images"
    cmd = [
        sys.executable, "-m", "lavic.cli", "crawl", "--item_meta_path", str(meta),
        "--images_dir", str(images), "--concurrency", "4", "--timeout", "10",
        "--retries", "1", "--backoff_base", "0.05", "--allow_private_hosts",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while server.total_finished() < 8 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]

    saved_before = final_files(images)
    assert 0 < len(saved_before) < n, "the kill must land mid-crawl for this test to mean anything"
    for name in saved_before:  # nothing under a final name is a partial or non-image file
        i = int(name[1:].split("_")[0])
        assert (images / name).read_bytes() == bodies[f"/img{i}.jpg"]
    assert not (images / MANIFEST_NAME).exists()

    server.reset_counts()
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    for i, path in enumerate(bodies):
        name = f"K{i}_0.jpg"
        assert server.count(path) == (0 if name in saved_before else 1), name
        assert (images / name).read_bytes() == bodies[path]
    rows = manifest(images)
    assert {name: row["status"] for name, row in rows.items()} == {
        f"K{i}_0.jpg": "present" if f"K{i}_0.jpg" in saved_before else "saved" for i in range(n)
    }
    assert not [p for p in images.iterdir() if p.name.startswith(".")]
