"""Product pictures in many renderings, for the [CLS]-path warm start of ``tiny``'s vision side.

The warm start (``lavic.pretrain.vision.warm_start_item_tokens``) teaches LaViC's five item
tokens to read like the look written in words. Trained on the synthetic catalogue alone it
learned that catalogue's drawings: ``tiny`` picks by the item tokens 0.41 of the time on the
demo's catalogue and 0.08 (chance) on ``lavic synthesize-unseen``'s (docs/tiny.md). This module
draws pictures from a far wider space, so the [CLS] path learns colour and pattern rather than
one renderer's strokes:

* a colour is drawn anywhere in its family's region of hue, saturation and value (twelve
  families, named by the family's common word: the tokens are pulled to ``red``, not to
  ``crimson``), the fill shaded and jittered;
* eight patterns (plain, stripes, dots, checks, zigzag, waves, stars, diamonds), each drawn in
  several ways (stripes at four angles and many widths; dots on a grid, staggered or
  scattered; checks as a board, a grid of lines or crossing translucent bands), in a shade of
  the fill or in a neutral ink;
* nine silhouettes with neutral trim, at any size, place and aspect ratio, on plain, graded,
  two-tone or grainy backdrops, sometimes blurred.

It imports neither catalogue generator and draws nothing of theirs, so ``lavic
synthesize-unseen`` stays a measurement of what travels.
"""

from __future__ import annotations

import colorsys
import io
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFilter

RGB = tuple[int, int, int]

# Each colour family: its common word (the item tokens' target) and its region in HSV
# (hue in degrees, may wrap past 360; saturation and value in [0, 1]).
COLOUR_REGIONS: tuple[tuple[str, tuple[float, float], tuple[float, float], tuple[float, float]], ...] = (
    ("red", (348, 372), (0.65, 1.0), (0.55, 0.95)),
    ("orange", (18, 36), (0.7, 1.0), (0.8, 1.0)),
    ("yellow", (44, 60), (0.6, 1.0), (0.8, 1.0)),
    ("green", (85, 160), (0.5, 1.0), (0.35, 0.85)),
    ("teal", (168, 192), (0.6, 1.0), (0.45, 0.85)),
    ("blue", (205, 240), (0.55, 1.0), (0.4, 0.95)),
    ("purple", (265, 305), (0.45, 0.9), (0.3, 0.8)),
    ("rose", (320, 345), (0.3, 0.65), (0.85, 1.0)),
    ("brown", (18, 38), (0.5, 0.85), (0.22, 0.5)),
    ("white", (0, 360), (0.0, 0.15), (0.9, 1.0)),
    ("grey", (0, 360), (0.0, 0.08), (0.35, 0.7)),
    ("black", (0, 360), (0.0, 1.0), (0.03, 0.16)),  # so dark that the hue does not show
)  # fmt: skip
COLOUR_WORDS: tuple[str, ...] = tuple(r[0] for r in COLOUR_REGIONS)

NEUTRAL_TRIM: tuple[RGB, ...] = ((150, 154, 160), (60, 62, 68), (210, 212, 216), (120, 110, 98))


@dataclass(frozen=True)
class LookPicture:
    """A picture and the words of its look: a colour family's word and a pattern's."""

    image: Image.Image
    colour: str
    pattern: str


def colour_in_family(rng: random.Random, word: str) -> RGB:
    """A random colour of the family named ``word``."""
    _, (h0, h1), (s0, s1), (v0, v1) = next(r for r in COLOUR_REGIONS if r[0] == word)
    h = (rng.uniform(h0, h1) % 360) / 360
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(s0, s1), rng.uniform(v0, v1))
    return round(r * 255), round(g * 255), round(b * 255)


def family_of(rgb: RGB) -> str | None:
    """The family whose region holds ``rgb`` (None between regions): the inverse of
    :func:`colour_in_family`, for tests and measurements. The regions are widened by a little
    more than an 8-bit rounding (2 degrees of hue, 0.025 of saturation and value)."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    hue, tol = h * 360, 0.025
    for word, (h0, h1), (s0, s1), (v0, v1) in COLOUR_REGIONS:
        in_hue = any(h0 - 2 <= x <= h1 + 2 for x in (hue, hue + 360))
        if in_hue and s0 - tol <= s <= s1 + tol and v0 - tol <= v <= v1 + tol:
            return word
    return None


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _ink(rng: random.Random, fill: RGB) -> RGB:
    """A pattern's ink: a clearly lighter or darker shade of the fill, or a neutral."""
    if rng.random() < 0.25:
        return rng.choice(((250, 250, 250), (20, 20, 22)))
    light = sum(fill) / 3 > 128
    return _mix(fill, (0, 0, 0) if light else (255, 255, 255), rng.uniform(0.45, 0.7))


# ============================================================================ patterns
# Each takes the whole canvas (already filled with the item's colour) and returns it with the
# pattern drawn on; the silhouette's mask cuts it out afterwards. ``p`` is the pattern's period
# in pixels.


def _stripes(canvas: Image.Image, rng: random.Random, ink: RGB, p: int) -> Image.Image:
    d, (w, h) = ImageDraw.Draw(canvas), canvas.size
    width = max(2, round(p * rng.uniform(0.2, 0.5)))
    angle = rng.choice((0, 90, 45, -45))
    span = w + h
    for k in range(-span // p - 1, span // p + 2):
        o = k * p + rng.randrange(2)
        if angle == 0:  # vertical
            d.rectangle([o, 0, o + width - 1, h], fill=ink)
        elif angle == 90:  # horizontal
            d.rectangle([0, o, w, o + width - 1], fill=ink)
        else:  # diagonal, one way or the other
            d.line([(o, 0), (o + (h if angle == 45 else -h), h)], fill=ink, width=width)
    return canvas


def _dots(canvas: Image.Image, rng: random.Random, ink: RGB, p: int) -> Image.Image:
    d, (w, h) = ImageDraw.Draw(canvas), canvas.size
    layout = rng.choice(("grid", "staggered", "scattered"))
    if layout == "scattered":
        r = max(1.5, p * rng.uniform(0.12, 0.3))
        for _ in range(int(w * h / (p * p) * rng.uniform(0.8, 2.0))):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            d.ellipse([x - r, y - r, x + r, y + r], fill=ink)
        return canvas
    r = max(2, p * rng.uniform(0.22, 0.4))
    for row, y in enumerate(range(-p, h + p, p)):
        shift = p // 2 if layout == "staggered" and row % 2 else 0
        for x in range(-p + shift, w + p, p):
            d.ellipse([x - r, y - r, x + r, y + r], fill=ink)
    return canvas


def _checks(canvas: Image.Image, rng: random.Random, ink: RGB, p: int) -> Image.Image:
    w, h = canvas.size
    way = rng.choice(("board", "lines", "bands"))
    if way == "board":
        d = ImageDraw.Draw(canvas)
        for i, y in enumerate(range(0, h, p)):
            for j, x in enumerate(range(0, w, p)):
                if (i + j) % 2:
                    d.rectangle([x, y, x + p - 1, y + p - 1], fill=ink)
        return canvas
    if way == "lines":
        d = ImageDraw.Draw(canvas)
        width = max(2, p // 5)
        for x in range(0, w, p):
            d.rectangle([x, 0, x + width - 1, h], fill=ink)
        for y in range(0, h, p):
            d.rectangle([0, y, w, y + width - 1], fill=ink)
        return canvas
    band = max(2, p // 2)  # translucent bands both ways: darker where they cross
    out = canvas.convert("RGBA")
    for horizontal in (True, False):
        layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
        d = ImageDraw.Draw(layer)
        for o in range(0, h if horizontal else w, p):
            box = [0, o, w, o + band - 1] if horizontal else [o, 0, o + band - 1, h]
            d.rectangle(box, fill=(*ink, rng.randint(100, 150)))
        out = Image.alpha_composite(out, layer)
    return out.convert("RGB")


def _zigzag(canvas: Image.Image, rng: random.Random, ink: RGB, p: int) -> Image.Image:
    d, (w, h) = ImageDraw.Draw(canvas), canvas.size
    width = max(2, p // 4)
    for y in range(-p, h + p, p):
        pts = [
            (x, y + (p // 2 if i % 2 else 0)) for i, x in enumerate(range(-p, w + p, p // 2 or 1))
        ]
        d.line(pts, fill=ink, width=width)
    return canvas


def _waves(canvas: Image.Image, rng: random.Random, ink: RGB, p: int) -> Image.Image:
    d, (w, h) = ImageDraw.Draw(canvas), canvas.size
    width = max(2, p // 4)
    amp, wavelength = p * rng.uniform(0.2, 0.35), p * rng.uniform(1.5, 3.0)
    for y in range(-p, h + p, p):
        pts = [(x, y + amp * math.sin(2 * math.pi * x / wavelength)) for x in range(0, w + 4, 3)]
        d.line(pts, fill=ink, width=width)
    return canvas


def _stars(canvas: Image.Image, rng: random.Random, ink: RGB, p: int) -> Image.Image:
    d, (w, h) = ImageDraw.Draw(canvas), canvas.size
    r = p * rng.uniform(0.3, 0.45)
    for row, y in enumerate(range(-p, h + p, p)):
        for x in range(-p + (p // 2 if row % 2 else 0), w + p, p):
            pts = [
                (x + (r if k % 2 == 0 else r * 0.42) * math.sin(k * math.pi / 5),
                 y - (r if k % 2 == 0 else r * 0.42) * math.cos(k * math.pi / 5))
                for k in range(10)
            ]  # fmt: skip
            d.polygon(pts, fill=ink)
    return canvas


def _diamonds(canvas: Image.Image, rng: random.Random, ink: RGB, p: int) -> Image.Image:
    d, (w, h) = ImageDraw.Draw(canvas), canvas.size
    r = p * rng.uniform(0.35, 0.5)
    for row, y in enumerate(range(-p, h + p, p)):
        for x in range(-p + (p // 2 if row % 2 else 0), w + p, p):
            d.polygon([(x, y - r), (x + r * 0.7, y), (x, y + r), (x - r * 0.7, y)], fill=ink)
    return canvas


PATTERN_DRAWERS: dict[str, Callable[[Image.Image, random.Random, RGB, int], Image.Image]] = {
    "plain": lambda canvas, rng, ink, p: canvas,
    "stripes": _stripes,
    "dots": _dots,
    "checkered": _checks,
    "zigzag": _zigzag,
    "waves": _waves,
    "stars": _stars,
    "diamonds": _diamonds,
}
PATTERN_WORDS: tuple[str, ...] = tuple(PATTERN_DRAWERS)  # the item tokens' pattern targets


# ============================================================================ silhouettes
# Each draws the item's body on ``mask`` (255 = the coloured surface) and its neutral trim on
# ``trim``, inside the box (x0, y0, x1, y1).


def _silhouette(mask, trim, rng: random.Random, box, trim_colour: RGB) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    m, t = ImageDraw.Draw(mask), ImageDraw.Draw(trim)
    shape = rng.choice(
        ("ellipse", "box", "rounded", "beaker", "polygon", "bag", "bottle", "shirt", "blob")
    )
    if shape == "ellipse":
        m.ellipse(box, fill=255)
    elif shape == "box":
        m.rectangle(box, fill=255)
    elif shape == "rounded":
        m.rounded_rectangle(box, radius=round(min(w, h) * rng.uniform(0.1, 0.35)), fill=255)
    elif shape == "beaker":  # a tapered body: cup, shade, pot
        inset = w * rng.uniform(0.08, 0.25)
        top_wide = rng.random() < 0.5
        a, b = (0, inset) if top_wide else (inset, 0)
        m.polygon([(x0 + a, y0), (x1 - a, y0), (x1 - b, y1), (x0 + b, y1)], fill=255)
        t.rectangle([x0 + b, y1 - h * 0.06, x1 - b, y1], fill=trim_colour)
    elif shape == "polygon":
        n = rng.randint(5, 8)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        pts = [
            (cx + w / 2 * rng.uniform(0.75, 1) * math.cos(2 * math.pi * k / n),
             cy + h / 2 * rng.uniform(0.75, 1) * math.sin(2 * math.pi * k / n))
            for k in range(n)
        ]  # fmt: skip
        m.polygon(pts, fill=255)
    elif shape == "bag":  # a body with a neutral handle above it
        top = y0 + h * 0.3
        m.rounded_rectangle([x0, top, x1, y1], radius=round(w * 0.06), fill=255)
        t.arc([x0 + w * 0.25, y0, x1 - w * 0.25, top + h * 0.2], 180, 360, fill=trim_colour,
              width=max(2, round(w * 0.05)))  # fmt: skip
    elif shape == "bottle":  # a body with a neck and a neutral cap
        neck = w * rng.uniform(0.25, 0.4)
        cx = (x0 + x1) / 2
        m.rounded_rectangle([x0, y0 + h * 0.3, x1, y1], radius=round(w * 0.15), fill=255)
        m.rectangle([cx - neck / 2, y0 + h * 0.12, cx + neck / 2, y0 + h * 0.32], fill=255)
        t.rectangle([cx - neck / 2, y0, cx + neck / 2, y0 + h * 0.12], fill=trim_colour)
    elif shape == "shirt":
        sx = w * 0.28
        m.polygon(
            [(x0 + sx, y0), (x1 - sx, y0), (x1, y0 + h * 0.25), (x1 - w * 0.12, y0 + h * 0.35),
             (x1 - w * 0.18, y1), (x0 + w * 0.18, y1), (x0 + w * 0.12, y0 + h * 0.35),
             (x0, y0 + h * 0.25)],
            fill=255,
        )  # fmt: skip
    else:  # blob: two or three overlapping ellipses
        for _ in range(rng.randint(2, 3)):
            cx, cy = (
                rng.uniform(x0 + w * 0.3, x1 - w * 0.3),
                rng.uniform(y0 + h * 0.3, y1 - h * 0.3),
            )
            rx, ry = w * rng.uniform(0.2, 0.3), h * rng.uniform(0.2, 0.3)
            m.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)


# ============================================================================ the picture


def _backdrop(rng: random.Random, size) -> Image.Image:
    w, h = size
    base = _mix((rng.randint(200, 255),) * 3, colour_in_family(rng, rng.choice(COLOUR_WORDS)), 0.08)
    way = rng.choice(("plain", "graded", "two-tone", "grainy"))
    image = Image.new("RGB", size, base)
    d = ImageDraw.Draw(image)
    if way == "graded":
        end = _mix(base, (rng.randint(90, 180),) * 3, rng.uniform(0.3, 0.7))
        for y in range(h):
            d.line([(0, y), (w, y)], fill=_mix(base, end, y / max(1, h - 1)))
    elif way == "two-tone":
        d.rectangle(
            [0, round(h * rng.uniform(0.55, 0.8)), w, h], fill=_mix(base, (90, 80, 70), 0.4)
        )
    elif way == "grainy":
        for _ in range(w * h // 30):
            x, y = rng.randrange(w), rng.randrange(h)
            d.point((x, y), fill=_mix(base, (0, 0, 0), rng.uniform(0.05, 0.2)))
    return image


def draw_picture(rng: random.Random, colour: str, pattern: str) -> Image.Image:
    """One picture of an item in a colour of family ``colour`` with ``pattern``."""
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    long_side = rng.randint(140, 360)
    size = (
        (long_side, round(long_side / aspect))
        if aspect >= 1
        else (round(long_side * aspect), long_side)
    )
    w, h = size
    image = _backdrop(rng, size)

    share = rng.uniform(0.45, 0.9)  # of each side, jittered per side
    bw, bh = w * share * rng.uniform(0.8, 1.1), h * share * rng.uniform(0.8, 1.1)
    bw, bh = min(bw, w * 0.95), min(bh, h * 0.95)
    x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    box = (x0, y0, x0 + bw, y0 + bh)
    mask = Image.new("L", size, 0)
    trim = Image.new("RGBA", size, (0, 0, 0, 0))
    _silhouette(mask, trim, rng, box, rng.choice(NEUTRAL_TRIM))

    fill = colour_in_family(rng, colour)
    period = max(6, round(min(bw, bh) / rng.uniform(4.5, 10)))
    surface = PATTERN_DRAWERS[pattern](Image.new("RGB", size, fill), rng, _ink(rng, fill), period)
    if rng.random() < 0.5:  # shading: light from one side
        shade = Image.linear_gradient("L")
        if rng.random() < 0.5:
            shade = shade.transpose(Image.Transpose.ROTATE_90)
        shade = shade.resize(size)
        dark = Image.new("RGB", size, _mix(fill, (0, 0, 0), 0.25))
        surface = Image.composite(dark, surface, shade.point(lambda v: v * 0.5))
    image.paste(surface, mask=mask)
    if rng.random() < 0.5:  # an outline in a darker shade
        image.paste(_mix(fill, (0, 0, 0), 0.5), mask=mask.filter(ImageFilter.FIND_EDGES))
    image = Image.alpha_composite(image.convert("RGBA"), trim).convert("RGB")
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
    if rng.random() < 0.5:  # a JPEG round trip, as a shop's photos have
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=rng.randint(60, 92))
        image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return image


def draw_pictures(count: int, seed: int) -> list[LookPicture]:
    """``count`` pictures, colours and patterns balanced, a function of ``seed`` alone."""
    rng = random.Random(f"lavic-pictures/{seed}")
    out = []
    for k in range(count):
        colour = COLOUR_WORDS[k % len(COLOUR_WORDS)]
        pattern = PATTERN_WORDS[(k // len(COLOUR_WORDS)) % len(PATTERN_WORDS)]
        out.append(LookPicture(draw_picture(rng, colour, pattern), colour, pattern))
    rng.shuffle(out)
    return out
