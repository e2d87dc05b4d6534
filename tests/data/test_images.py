"""Item images: every oddity becomes RGB or a counted placeholder; names never leave the folder."""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lavic.constants import PLACEHOLDER_IMAGE_SIZE
from lavic.data.images import (
    MAX_IMAGE_PIXELS,
    ImageStats,
    file_sha256,
    item_image_name,
    load_image,
    placeholder_image,
    read_image,
)

WHITE = (255, 255, 255)


def _png_bytes(
    width: int, height: int, bit_depth: int = 8, color_type: int = 2, idat: bytes = b""
) -> bytes:
    """A PNG whose header claims any size (the data need not match: it is never decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(idat))
        + chunk(b"IEND", b"")
    )


def _is_placeholder(image: Image.Image) -> bool:
    return (
        image.mode == "RGB"
        and image.size == PLACEHOLDER_IMAGE_SIZE
        and image.getextrema() == ((255, 255),) * 3
    )


def _load(tmp_path, name: str) -> tuple[Image.Image, ImageStats]:
    stats = ImageStats()
    return load_image(tmp_path, name, stats=stats), stats


def _only(stats: ImageStats, outcome: str) -> bool:
    return stats.as_dict() == {**ImageStats().as_dict(), outcome: 1}


def test_names_and_placeholder():
    assert item_image_name("B08LYS9WYD") == "B08LYS9WYD_0.jpg"
    assert item_image_name("0060188782", 3) == "0060188782_3.jpg"
    assert _is_placeholder(placeholder_image())
    assert PLACEHOLDER_IMAGE_SIZE == (336, 336)


def test_plain_jpeg_loads_and_is_detached_from_the_file(tmp_path):
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "A_0.jpg", quality=95)
    image, stats = _load(tmp_path, "A_0.jpg")
    os.remove(tmp_path / "A_0.jpg")  # the returned image must not need the file any more
    assert image.mode == "RGB" and image.size == (40, 30)
    assert np.abs(np.asarray(image, dtype=int) - [200, 10, 10]).max() <= 3
    assert _only(stats, "loaded")


def test_missing_image_is_a_counted_placeholder(tmp_path, caplog):
    (tmp_path / "dir_0.jpg").mkdir()  # a folder is not an image
    stats = ImageStats()
    with caplog.at_level(logging.DEBUG, logger="lavic.data.images"):
        for name in ("A_0.jpg", "dir_0.jpg"):
            assert _is_placeholder(load_image(tmp_path, name, stats=stats))
    assert stats.as_dict() == {
        "loaded": 0,
        "missing": 2,
        "unreadable": 0,
        "unsafe": 0,
        "oversized": 0,
    }
    assert stats.placeholders == stats.total == 2
    assert "A_0.jpg: missing" in caplog.text
    assert _is_placeholder(load_image(tmp_path / "no_such_dir", "A_0.jpg"))  # stats optional


@pytest.mark.parametrize(
    "name",
    [
        "../secret_0.jpg",
        "sub/../../secret_0.jpg",
        "/etc/passwd",
        "..",
        "",
        "a\\b.jpg",
        "link_0.jpg",
        item_image_name("../secret"),
    ],
)
def test_names_leaving_the_folder_are_unsafe_and_never_read(tmp_path, name):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "secret_0.jpg")
    os.symlink(tmp_path / "secret_0.jpg", images / "link_0.jpg")
    image, outcome = read_image(images, name)
    assert (image, outcome) == (None, "unsafe")
    stats = ImageStats()
    assert _is_placeholder(load_image(images, name, stats=stats))
    assert _only(stats, "unsafe")


def test_symlink_inside_the_folder_is_followed(tmp_path):
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "real.png")
    os.symlink(tmp_path / "real.png", tmp_path / "A_0.jpg")
    image, stats = _load(tmp_path, "A_0.jpg")
    assert image.getpixel((0, 0)) == (0, 0, 255) and _only(stats, "loaded")


def _noisy_jpeg(path, size=(64, 64)):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path, quality=90)


@pytest.mark.parametrize(
    "kind",
    ["zero_byte", "random_bytes", "truncated_jpeg", "truncated_png", "text_file", "bad_png_crc"],
)
def test_unreadable_images_are_counted(tmp_path, kind):
    path = tmp_path / "A_0.jpg"
    if kind == "zero_byte":
        path.write_bytes(b"")
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    elif kind == "truncated_jpeg":
        _noisy_jpeg(tmp_path / "full.jpg")
        data = (tmp_path / "full.jpg").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_png":
        Image.fromarray(
            np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        ).save(tmp_path / "full.png")
        data = (tmp_path / "full.png").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text_file":
        path.write_text("<html>404 Not Found</html>")
    elif kind == "bad_png_crc":
        data = bytearray(_png_bytes(4, 4, idat=b"\x00" + b"\x00" * 12))
        data[29] ^= 0xFF  # flip a byte of IHDR's CRC
        path.write_bytes(bytes(data))
    image, stats = _load(tmp_path, "A_0.jpg")
    assert _is_placeholder(image)
    assert _only(stats, "unreadable")


@pytest.mark.parametrize("size", [(9000, 9000), (100_000, 100_000)])
def test_decompression_bomb_is_refused_before_decoding(tmp_path, size):
    # a few hundred bytes claiming 81 Mpx (over our cap, under PIL's own warning) or 10^10 px
    (tmp_path / "A_0.jpg").write_bytes(_png_bytes(*size))
    assert size[0] * size[1] > MAX_IMAGE_PIXELS
    image, stats = _load(tmp_path, "A_0.jpg")
    assert _is_placeholder(image) and _only(stats, "oversized")


def test_pixel_cap_is_configurable(tmp_path):
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "A_0.png")
    stats = ImageStats()
    assert _is_placeholder(load_image(tmp_path, "A_0.png", stats=stats, max_pixels=255))
    assert load_image(tmp_path, "A_0.png", stats=stats, max_pixels=256).size == (16, 16)
    assert (stats.oversized, stats.loaded) == (1, 1)


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path.name


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    name = _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "A_0.jpg", quality=95)
    assert Image.open(tmp_path / name).mode == "CMYK"
    image, stats = _load(tmp_path, name)
    assert image.mode == "RGB" and _only(stats, "loaded")
    assert np.abs(np.asarray(image, dtype=int) - [255, 0, 0]).max() <= 4


def test_sixteen_bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 64, 32896, 65535]], dtype=np.uint16)
    name = _save(Image.fromarray(values), tmp_path / "A_0.png")
    assert Image.open(tmp_path / name).mode.startswith("I")
    image, stats = _load(tmp_path, name)
    assert image.mode == "RGB" and _only(stats, "loaded")
    assert np.asarray(image)[0, :, 0].tolist() == [
        0,
        64,
        128,
        255,
    ]  # PIL's convert gives 0,255,255,255


def test_sixteen_bit_rgb_png_becomes_rgb(tmp_path):
    # raw 16-bit RGB rows: filter byte 0, then (R, G, B) big-endian per pixel
    row = b"\x00" + struct.pack(">6H", 65535, 0, 0, 0, 32896, 0)
    (tmp_path / "A_0.png").write_bytes(_png_bytes(2, 2, bit_depth=16, color_type=2, idat=row * 2))
    image, stats = _load(tmp_path, "A_0.png")
    assert _only(stats, "loaded")
    assert (
        image.mode == "RGB"
        and image.getpixel((0, 0)) == (255, 0, 0)
        and image.getpixel((1, 1)) == (0, 128, 0)
    )


def test_palette_greyscale_and_bilevel_images(tmp_path):
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    names = {
        _save(palette, tmp_path / "P_0.png"): (0, 0, 255),
        _save(Image.new("L", (4, 4), 100), tmp_path / "L_0.jpg", quality=100): (100, 100, 100),
        _save(Image.new("1", (4, 4), 1), tmp_path / "B_0.png"): (255, 255, 255),
    }
    stats = ImageStats()
    for name, colour in names.items():
        image = load_image(tmp_path, name, stats=stats)
        assert image.mode == "RGB" and image.getpixel((1, 1)) == colour, name
    assert stats.loaded == 3 and stats.placeholders == 0


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black: shown white, not black
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    la = Image.new("LA", (1, 1), (0, 0))
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    names = [
        _save(rgba, tmp_path / "RGBA_0.png"),
        _save(la, tmp_path / "LA_0.png"),
        _save(palette, tmp_path / "P_0.png", transparency=0),
        _save(palette, tmp_path / "G_0.gif", transparency=0),
    ]
    loaded = {name: load_image(tmp_path, name) for name in names}
    assert loaded["RGBA_0.png"].getpixel((0, 0)) == WHITE
    assert all(abs(v - 127) <= 1 for v in loaded["RGBA_0.png"].getpixel((1, 0)))
    assert loaded["LA_0.png"].getpixel((0, 0)) == WHITE
    for name in ("P_0.png", "G_0.gif"):
        assert loaded[name].getpixel((0, 0)) == WHITE and loaded[name].getpixel((1, 0)) == (
            255,
            0,
            0,
        ), name
    assert all(image.mode == "RGB" for image in loaded.values())


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_image_gives_its_first_frame(tmp_path, fmt):
    frames = [
        Image.new("RGB", (8, 8), colour) for colour in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]
    ]
    path = tmp_path / "A_0.jpg"  # the extension lies, as crawled files often do
    frames[0].save(
        path,
        format=fmt,
        save_all=True,
        append_images=frames[1:],
        duration=50,
        loop=0,
        lossless=True,
    )
    assert getattr(Image.open(path), "n_frames", 1) == 3
    image, stats = _load(tmp_path, "A_0.jpg")
    assert image.mode == "RGB" and _only(stats, "loaded")
    assert np.abs(np.asarray(image, dtype=int) - [255, 0, 0]).max() <= 2


def test_float_tiff_becomes_rgb(tmp_path):
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    name = _save(Image.fromarray(values, mode="F"), tmp_path / "A_0.tif")
    image, stats = _load(tmp_path, name)
    assert _only(stats, "loaded") and np.asarray(image)[0, :, 0].tolist() == [0, 127, 255]


def test_stats_update_and_file_sha256(tmp_path):
    a = ImageStats(loaded=2, missing=1)
    a.update(ImageStats(unsafe=3, loaded=1))
    assert a.as_dict() == {"loaded": 3, "missing": 1, "unreadable": 0, "unsafe": 3, "oversized": 0}
    data = os.urandom(3 << 20)  # spans several read chunks
    (tmp_path / "f.bin").write_bytes(data)
    assert file_sha256(tmp_path / "f.bin") == hashlib.sha256(data).hexdigest()
