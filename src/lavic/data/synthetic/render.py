"""Procedural product images: a kind's silhouette filled with the item's colour and pattern.

Two drawing routines, one per style, share nothing but the silhouette interface:

* ``default``: a flat neutral backdrop, axis-aligned patterns (stripes, dot grids, checks) and a
  dark outline around the object;
* ``heldout``: a two-tone gradient backdrop, a soft drop shadow and no outline, with patterns
  drawn from other primitives (zig-zag polylines, star polygons, diamond lattices, a sheen).

Image sizes come from aspect-ratio classes chosen so that the LLaVA-NeXT anyres processor
(LLaVA-v1.6 pinpoints, 336-pixel views) gives the item 3, 4 or 5 views: small or 2:1 images
fit the 336x672 grid (1 base + 2 crops), 3:1 images the 336x1008 grid (1 + 3), large square-ish
images the 672x672 grid (1 + 4).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageDraw, ImageFilter

from lavic.data.synthetic.shapes import Box
from lavic.data.synthetic.styles import RGB, Kind, Look, Style, luminance

# Masks are drawn at this multiple of the image size, then reduced: smooth silhouette edges.
_SUPERSAMPLE = 2


@dataclass(frozen=True)
class SizeClass:
    """Images of one aspect ratio (width / height) whose longer side lies in [lo, hi]."""

    name: str
    aspect: float
    long_lo: int
    long_hi: int
    weight: float


# The view count each class gets (LLaVA-v1.6 pinpoints) is noted beside it; the tests check it
# with transformers' own processor.
SIZE_CLASSES: tuple[SizeClass, ...] = (
    SizeClass("square_small", 1.0, 200, 330, 2.0),  # 3 views
    SizeClass("wide", 2.0, 360, 640, 1.0),  # 3 views
    SizeClass("tall", 0.5, 360, 640, 1.0),  # 3 views
    SizeClass("panorama", 3.0, 700, 768, 1.0),  # 4 views (long side > 672 needed)
    SizeClass("tower", 1 / 3, 700, 768, 1.0),  # 4 views
    SizeClass("square_large", 1.0, 480, 640, 1.5),  # 5 views (side > 475 needed)
    SizeClass("landscape", 4 / 3, 560, 640, 1.0),  # 5 views
    SizeClass("portrait", 3 / 4, 560, 640, 1.0),  # 5 views
)


def usable_size_classes(min_side: int, max_side: int) -> list[SizeClass]:
    """The size classes that fit ``min_side <= shorter side`` and ``longer side <= max_side``."""
    out = []
    for c in SIZE_CLASSES:
        stretch = max(c.aspect, 1 / c.aspect)
        lo = max(c.long_lo, math.ceil(min_side * stretch))
        hi = min(c.long_hi, max_side)
        if lo <= hi:
            out.append(SizeClass(c.name, c.aspect, lo, hi, c.weight))
    return out


def draw_size(rng: random.Random, classes: list[SizeClass]) -> tuple[int, int]:
    """A (width, height) from a random class."""
    c = rng.choices(classes, weights=[c.weight for c in classes])[0]
    long_side = rng.randint(c.long_lo, c.long_hi)
    if c.aspect >= 1:
        return long_side, max(1, round(long_side / c.aspect))
    return max(1, round(long_side * c.aspect)), long_side


def _jitter(rgb: RGB, rng: random.Random, amount: int) -> RGB:
    return tuple(min(255, max(0, v + rng.randint(-amount, amount))) for v in rgb)  # type: ignore[return-value]


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def ink_colour(body: RGB, base: RGB, style: Style) -> RGB:
    """The pattern's colour: darker than a light body, lighter than a dark one.

    ``base`` (the colour word's nominal RGB) decides which, so the description's tone word
    (:func:`lavic.data.synthetic.styles.tone_word`) always matches the drawing.
    """
    dark_factor, light_factor = (0.50, 0.62) if style.name == "default" else (0.42, 0.55)
    if luminance(base) > 0.45:
        return _mix(body, (0, 0, 0), dark_factor)
    return _mix(body, (255, 255, 255), light_factor)


def _object_box(
    rng: random.Random, width: int, height: int, aspect: float, margin: tuple[float, float]
) -> Box:
    """The largest box of ``aspect`` that fits with a random margin, shrunk a little and moved."""
    m = rng.uniform(*margin) * min(width, height)
    avail_w, avail_h = width - 2 * m, height - 2 * m
    h = min(avail_h, avail_w / aspect) * rng.uniform(0.82, 1.0)
    w = h * aspect
    x0 = rng.uniform(m, width - m - w)
    y0 = rng.uniform(m, height - m - h)
    return Box(x0, y0, x0 + w, y0 + h)


def _masks(kind: Kind, box: Box, size: tuple[int, int]) -> tuple[Image.Image, Image.Image]:
    big = (size[0] * _SUPERSAMPLE, size[1] * _SUPERSAMPLE)
    body, trim = Image.new("L", big, 0), Image.new("L", big, 0)
    kind.draw(ImageDraw.Draw(body), ImageDraw.Draw(trim), box.scaled(_SUPERSAMPLE))
    return body.resize(size, Image.Resampling.BOX), trim.resize(size, Image.Resampling.BOX)


def _paste_within(img: Image.Image, source: Image.Image | RGB, mask: Image.Image, box: Box) -> None:
    """``img.paste(source, mask=mask)`` restricted to the object's box (all masks lie inside it)."""
    region = (
        max(0, math.floor(box.x0) - 2),
        max(0, math.floor(box.y0) - 2),
        min(img.width, math.ceil(box.x1) + 2),
        min(img.height, math.ceil(box.y1) + 2),
    )
    patch = source.crop(region) if isinstance(source, Image.Image) else source
    img.paste(patch, region, mask.crop(region))


# ----------------------------------------------------------------------------- default routine


def _texture_default(
    rng: random.Random, size: tuple[int, int], box: Box, pattern: str, body: RGB, ink: RGB
) -> Image.Image:
    tex = Image.new("RGB", size, body)
    draw = ImageDraw.Draw(tex)
    if pattern == "plain":
        return tex
    if pattern == "stripes":
        period = box.h / rng.uniform(7.0, 10.0)
        y = box.y0 - rng.uniform(0, period)
        while y < box.y1:
            draw.rectangle([0, y, size[0], y + 0.45 * period], fill=ink)
            y += period
    elif pattern == "dots":
        period = min(box.w, box.h) / rng.uniform(4.5, 7.0)
        r = period * rng.uniform(0.22, 0.30)
        row = 0
        y = box.y0 + rng.uniform(0, period / 2)
        while y < box.y1 + r:
            x = box.x0 + (period / 2 if row % 2 else 0) + rng.uniform(0, period / 4)
            while x < box.x1 + r:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=ink)
                x += period
            y += period * 0.87
            row += 1
    elif pattern == "checkered":
        cell = min(box.w, box.h) / rng.uniform(4.5, 7.0)
        for j in range(math.ceil(box.h / cell) + 1):
            for i in range(math.ceil(box.w / cell) + 1):
                if (i + j) % 2 == 0:
                    x, y = box.x0 + i * cell, box.y0 + j * cell
                    draw.rectangle([x, y, x + cell, y + cell], fill=ink)
    else:
        raise ValueError(f"unknown default pattern {pattern!r}")
    return tex


_DEFAULT_BACKDROPS: tuple[RGB, ...] = (
    (238, 238, 234),
    (229, 232, 236),
    (240, 236, 228),
    (224, 224, 224),
)
_DEFAULT_DARK_BACKDROPS: tuple[RGB, ...] = ((176, 180, 186), (168, 168, 164), (186, 180, 172))


def _render_default(
    rng: random.Random, style: Style, kind: Kind, look: Look, size: tuple[int, int]
) -> Image.Image:
    base = look.colour.rgb
    light_body = luminance(base) > 0.75  # white / yellow need a darker backdrop to stand out
    backdrop = rng.choice(_DEFAULT_DARK_BACKDROPS if light_body else _DEFAULT_BACKDROPS)
    img = Image.new("RGB", size, _jitter(backdrop, rng, 4))
    box = _object_box(rng, *size, kind.aspect, margin=(0.07, 0.14))
    body_mask, trim_mask = _masks(kind, box, size)
    body_rgb = _jitter(base, rng, 10)
    texture = _texture_default(
        rng, size, box, look.pattern, body_rgb, ink_colour(body_rgb, base, style)
    )
    _paste_within(img, texture, body_mask, box)
    _paste_within(img, kind.trim_rgb, trim_mask, box)
    if kind.detail is not None:
        kind.detail(ImageDraw.Draw(img), box, (40, 40, 44))
    # A dark outline around the whole object: the edge of the binarised union mask (the
    # edge filter marks pixels on both sides of the boundary, so the line is ~2 px wide).
    union = ImageChops.lighter(body_mask, trim_mask).point(lambda v: 255 if v >= 128 else 0)
    edge = union.filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v else 0)
    img.paste((34, 34, 38), (0, 0, *size), edge)
    return img


# ----------------------------------------------------------------------------- held-out routine


def _star(cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        a = turn + k * math.pi / 5
        rr = r if k % 2 == 0 else r * 0.45
        pts.append((cx + rr * math.sin(a), cy - rr * math.cos(a)))
    return pts


def _texture_heldout(
    rng: random.Random, size: tuple[int, int], box: Box, pattern: str, body: RGB, ink: RGB
) -> Image.Image:
    tex = Image.new("RGB", size, body)
    draw = ImageDraw.Draw(tex)
    if pattern == "solid":
        # A faint diagonal sheen so a solid surface is not a flat fill.
        sheen = tex.copy()
        d = ImageDraw.Draw(sheen)
        t = rng.uniform(0.2, 0.5)
        x = box.x0 + t * box.w
        band = 0.18 * box.w
        d.polygon(
            [
                (x, box.y0),
                (x + band, box.y0),
                (x + band - 0.5 * box.h, box.y1),
                (x - 0.5 * box.h, box.y1),
            ],
            fill=_mix(body, (255, 255, 255), 0.35),
        )
        return Image.blend(tex, sheen, 0.45)
    if pattern == "zigzag":
        period = box.h / rng.uniform(5.5, 8.0)
        amp, step = 0.32 * period, 0.55 * period
        width = max(2, round(0.24 * period))
        y = box.y0 + rng.uniform(0, period)
        while y < box.y1 + period:
            pts, x, up = [], box.x0 - step, True
            while x < box.x1 + step:
                pts.append((x, y - amp if up else y + amp))
                x += step
                up = not up
            draw.line(pts, fill=ink, width=width, joint="curve")
            y += period
    elif pattern == "stars":
        cell = min(box.w, box.h) / rng.uniform(3.5, 5.0)
        r = 0.34 * cell
        for j in range(math.ceil(box.h / cell) + 1):
            for i in range(math.ceil(box.w / cell) + 1):
                cx = box.x0 + (i + 0.5) * cell + rng.uniform(-0.15, 0.15) * cell
                cy = box.y0 + (j + 0.5) * cell + rng.uniform(-0.15, 0.15) * cell
                draw.polygon(_star(cx, cy, r, rng.uniform(0, math.pi)), fill=ink)
    elif pattern == "diamonds":
        w = min(box.w, box.h) / rng.uniform(3.0, 4.5)
        h = 1.4 * w
        for j in range(math.ceil(box.h / (h / 2)) + 2):
            offset = 0 if j % 2 == 0 else w / 2
            for i in range(math.ceil(box.w / w) + 2):
                cx, cy = box.x0 + i * w + offset, box.y0 + j * h / 2
                draw.polygon(
                    [
                        (cx, cy - h * 0.3),
                        (cx + w * 0.3, cy),
                        (cx, cy + h * 0.3),
                        (cx - w * 0.3, cy),
                    ],
                    fill=ink,
                )
    else:
        raise ValueError(f"unknown held-out pattern {pattern!r}")
    return tex


_HELDOUT_TINTS: tuple[RGB, ...] = (
    (246, 240, 232),
    (232, 240, 246),
    (240, 246, 236),
    (246, 236, 242),
    (214, 220, 230),
    (226, 216, 206),
)


def _render_heldout(
    rng: random.Random, style: Style, kind: Kind, look: Look, size: tuple[int, int]
) -> Image.Image:
    base = look.colour.rgb
    top, bottom = rng.sample(_HELDOUT_TINTS, 2)
    if luminance(base) > 0.75:  # ivory: darken the backdrop
        top, bottom = _mix(top, (90, 90, 100), 0.35), _mix(bottom, (90, 90, 100), 0.45)
    gradient = Image.linear_gradient("L").resize(size)
    img = Image.composite(Image.new("RGB", size, bottom), Image.new("RGB", size, top), gradient)
    box = _object_box(rng, *size, kind.aspect, margin=(0.10, 0.18))
    body_mask, trim_mask = _masks(kind, box, size)
    # Drop shadow: the object's mask, blurred, shifted down-right, at 40% strength.
    union = ImageChops.lighter(body_mask, trim_mask)
    dx, dy = round(0.03 * min(size)), round(0.045 * min(size))
    shadow = ImageChops.offset(union, dx, dy).filter(ImageFilter.GaussianBlur(0.02 * min(size) + 1))
    img.paste((40, 40, 50), (0, 0, *size), shadow.point(lambda v: int(v * 0.4)))
    body_rgb = _jitter(base, rng, 8)
    texture = _texture_heldout(
        rng, size, box, look.pattern, body_rgb, ink_colour(body_rgb, base, style)
    )
    _paste_within(img, texture, body_mask, box)
    _paste_within(img, kind.trim_rgb, trim_mask, box)
    if kind.detail is not None:
        kind.detail(ImageDraw.Draw(img), box, (28, 28, 30))
    return img


def render_item_image(
    rng: random.Random, style: Style, kind: Kind, look: Look, size: tuple[int, int]
) -> Image.Image:
    """Draw one product image of ``kind`` with ``look`` at ``size`` (width, height)."""
    if style.name == "default":
        return _render_default(rng, style, kind, look, size)
    return _render_heldout(rng, style, kind, look, size)
