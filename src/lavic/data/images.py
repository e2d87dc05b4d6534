"""Item images: ``IMAGE_DIR/<item>_<k>.jpg``, decoded to RGB, never a crash and never silent.

Any problem (missing file, a name that would leave the image folder, undecodable or
decompression-bomb-sized data) gives the reference's white 336x336 placeholder and is counted in an
:class:`ImageStats`, so a run can report how many items were shown without their picture.
Decodable oddities are normalised: CMYK, 16-bit, palette and greyscale images become RGB,
transparency is composited onto white (the placeholder's colour, and what product shots assume),
and animated images give their first frame. EXIF orientation is *not* applied, as in the reference,
so the images match the ones the teacher described.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lavic.constants import PLACEHOLDER_IMAGE_SIZE
from lavic.errors import LavicError
from lavic.io import safe_join

logger = logging.getLogger(__name__)

# Refuse images above this many pixels before decoding them (a 1,000-byte PNG can claim
# 10^10 pixels). Product photos are at most a few megapixels; 64 Mpx leaves ample room.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024

WHITE = (255, 255, 255)

# Outcomes of reading one image; the ImageStats fields of the same names count them.
LOADED, MISSING, UNREADABLE, UNSAFE, OVERSIZED = (
    "loaded",
    "missing",
    "unreadable",
    "unsafe",
    "oversized",
)


@dataclass
class ImageStats:
    """Counts of image reads by outcome.

    Attributes:
        loaded: Decoded and returned.
        missing: No such file (placeholder returned).
        unreadable: Not decodable: corrupt, zero-byte, truncated, unknown format (placeholder).
        unsafe: The name would resolve outside the image folder (placeholder; never opened).
        oversized: More pixels than the cap, refused before decoding (placeholder).
    """

    loaded: int = 0
    missing: int = 0
    unreadable: int = 0
    unsafe: int = 0
    oversized: int = 0

    @property
    def placeholders(self) -> int:
        """Images replaced by the placeholder, for any reason."""
        return self.missing + self.unreadable + self.unsafe + self.oversized

    @property
    def total(self) -> int:
        return self.loaded + self.placeholders

    def add(self, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)

    def update(self, other: ImageStats) -> None:
        """Add ``other``'s counts to these (e.g. from data-loader workers)."""
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def item_image_name(item_id: str, k: int = 0) -> str:
    """The reference's file name of an item's ``k``-th image; ``_0`` shows it as a candidate."""
    return f"{item_id}_{k}.jpg"


def placeholder_image() -> Image.Image:
    """The reference's stand-in for a missing image: a white 336x336 RGB square."""
    return Image.new("RGB", PLACEHOLDER_IMAGE_SIZE, WHITE)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    # PIL's own I;16/I -> L conversion clips at 255 (all but the darkest pixels turn white);
    # scale instead. "I" is what older Pillow gives for 16-bit PNGs; values above 65535 would
    # come from true 32-bit data, scaled by their maximum.
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if values.max(initial=0) <= 65535 else float(values.max())
    grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _float_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0  # [0, 1] floats or [0, 255]
    grey = np.clip(np.nan_to_num(values * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image (current frame) to 8-bit RGB, compositing alpha onto white."""
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode.startswith("I;16") or mode == "I":
        return _sixteen_bit_to_rgb(image)
    if mode == "F":
        return _float_to_rgb(image)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and image.has_transparency_data
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _read(path: Path, max_pixels: int) -> tuple[Image.Image | None, str, str]:
    """Decode ``path``: (image or None, outcome, reason)."""
    try:
        with warnings.catch_warnings():
            # PIL warns (and above 2x its limit raises) on huge images; our cap is lower.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    return None, OVERSIZED, f"{width}x{height} exceeds {max_pixels} pixels"
                image.seek(0)  # animated: the first frame
                image.load()
                return to_rgb(image), LOADED, ""
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return None, OVERSIZED, str(exc)
    except FileNotFoundError:
        return None, MISSING, "no such file"
    except MemoryError:
        raise
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, EOFError, ...
        return None, UNREADABLE, f"{type(exc).__name__}: {exc}"


def read_image(
    image_dir: str | os.PathLike[str], image_name: str, *, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[Image.Image | None, str]:
    """Read one image and say what happened; no placeholder, nothing counted.

    Returns:
        ``(image, outcome)``: the RGB image (None unless ``outcome == "loaded"``) and one of
        ``loaded``, ``missing``, ``unreadable``, ``unsafe``, ``oversized``.
    """
    try:
        path = safe_join(image_dir, image_name)
    except LavicError as exc:
        logger.debug("image %r: unsafe name: %s", image_name, exc)
        return None, UNSAFE
    if not path.is_file():
        logger.debug("image %s: missing", path)
        return None, MISSING
    image, outcome, reason = _read(path, max_pixels)
    if image is None:
        logger.debug("image %s: %s (%s)", path, outcome, reason)
    return image, outcome


def load_image(
    image_dir: str | os.PathLike[str],
    image_name: str,
    *,
    stats: ImageStats | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Image.Image:
    """Load ``image_dir/image_name`` as RGB, or the placeholder on any problem (counted).

    Args:
        image_dir: The folder of item images.
        image_name: A file name from the data (e.g. ``B08LYS9WYD_0.jpg``); a name that would
            resolve outside ``image_dir`` is never opened.
        stats: Incremented with the outcome.
        max_pixels: Images with more pixels are refused before decoding.

    Returns:
        An RGB image, detached from the file.
    """
    image, outcome = read_image(image_dir, image_name, max_pixels=max_pixels)
    if stats is not None:
        stats.add(outcome)
    return image if image is not None else placeholder_image()
