"""PIL drawings of the unseen catalogue's items.

Each picture is a small tabletop scene: a two-tone neutral backdrop (a wall above a table), a
soft blurred shadow, the item's silhouette filled with its colour and pattern and ringed by a
darker line of the same colour, then fixed neutral trim (handles, caps, rings) on top. The
colour is always the silhouette's main fill, so it can be read off the image; the pattern is
drawn over it in a contrasting ink (darker on light fills, lighter on dark ones).

Silhouettes are described in fractions of a frame that has the kind's aspect ratio, so one
routine serves every image size.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from PIL import Image, ImageChops, ImageDraw, ImageFilter

from lavic.data.unseen.vocabulary import RGB

# Image sides, in pixels: small images, a few anyres views at most.
MIN_SIDE = 160
MAX_SIDE = 400

# Trim colours (RGBA): none is close to a colour of the vocabulary.
STEEL = (158, 162, 170, 255)
DARK = (46, 48, 54, 255)
PAPER = (232, 234, 238, 255)
CUFF = (176, 178, 184, 255)

# (wall, table) pairs: cool or neutral greys, far from every colour of the vocabulary.
BACKDROPS: tuple[tuple[RGB, RGB], ...] = (
    ((214, 218, 224), (178, 176, 172)),
    ((206, 210, 214), (168, 170, 176)),
    ((220, 220, 216), (186, 182, 176)),
)


def image_size(rng: random.Random, aspect: float) -> tuple[int, int]:
    """A (width, height) between MIN_SIDE and MAX_SIDE, roughly of ``aspect`` (width/height)."""
    long_side = rng.randint(240, MAX_SIDE)
    stretch = rng.uniform(0.95, 1.15)  # a little slack around the item
    if aspect >= 1:
        width, height = long_side, round(long_side / aspect * stretch)
    else:
        width, height = round(long_side * aspect * stretch), long_side
    return _clamp(width, MIN_SIDE, MAX_SIDE), _clamp(height, MIN_SIDE, MAX_SIDE)


def _clamp(value: float, low: int, high: int) -> int:
    return int(max(low, min(high, round(value))))


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    """``a`` moved a share ``t`` of the way towards ``b``."""
    return tuple(_clamp(x + (y - x) * t, 0, 255) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def ink_for(fill: RGB) -> RGB:
    """The pattern's ink: darker than a light fill, lighter than a dark one."""
    r, g, b = fill
    light = 0.299 * r + 0.587 * g + 0.114 * b > 140
    return _mix(fill, (30, 30, 36), 0.55) if light else _mix(fill, (255, 255, 255), 0.6)


class _Frame:
    """The box the item is drawn in; shapes give positions as fractions of it."""

    def __init__(self, x0: float, y0: float, width: float, height: float):
        self.x0, self.y0, self.w, self.h = x0, y0, width, height

    def pt(self, fx: float, fy: float) -> tuple[float, float]:
        return (self.x0 + fx * self.w, self.y0 + fy * self.h)

    def box(self, fx0: float, fy0: float, fx1: float, fy1: float) -> list[float]:
        return [*self.pt(fx0, fy0), *self.pt(fx1, fy1)]

    def px(self, share: float) -> int:
        """A length (line width, radius): ``share`` of the frame's shorter side, at least 1."""
        return max(1, round(share * min(self.w, self.h)))


def _fit_frame(rng: random.Random, width: int, height: int, aspect: float) -> _Frame:
    room_w, room_h = width * 0.84, height * 0.8
    if room_w / room_h > aspect:
        fh = room_h
        fw = fh * aspect
    else:
        fw = room_w
        fh = fw / aspect
    x0 = (width - fw) / 2 + rng.uniform(-0.03, 0.03) * width
    y0 = height * 0.91 - fh  # the item stands on the table, near the bottom
    return _Frame(x0, y0, fw, fh)


# ============================================================================ silhouettes
# Each routine draws the coloured body on ``body`` (a mask: fill=255) and the neutral trim on
# ``trim`` (an RGBA layer composited on top).

Shape = Callable[[ImageDraw.ImageDraw, ImageDraw.ImageDraw, _Frame], None]


def _kettle(body: ImageDraw.ImageDraw, trim: ImageDraw.ImageDraw, f: _Frame) -> None:
    body.polygon([f.pt(0.3, 0.34), f.pt(0.7, 0.34), f.pt(0.88, 0.9), f.pt(0.12, 0.9)], fill=255)
    body.ellipse(f.box(0.12, 0.8, 0.88, 0.98), fill=255)  # rounded base
    body.ellipse(f.box(0.28, 0.28, 0.72, 0.4), fill=255)  # shoulder
    body.polygon([f.pt(0.22, 0.62), f.pt(0.02, 0.32), f.pt(0.08, 0.28), f.pt(0.3, 0.5)], fill=255)
    trim.arc(f.box(0.3, 0.04, 0.7, 0.52), 180, 360, fill=DARK, width=f.px(0.05))
    trim.ellipse(f.box(0.45, 0.24, 0.55, 0.32), fill=DARK)


def _saucepan(body: ImageDraw.ImageDraw, trim: ImageDraw.ImageDraw, f: _Frame) -> None:
    body.rectangle(f.box(0.04, 0.32, 0.56, 0.86), fill=255)
    body.ellipse(f.box(0.04, 0.76, 0.56, 0.96), fill=255)
    trim.ellipse(f.box(0.03, 0.26, 0.57, 0.38), outline=STEEL, width=f.px(0.05))  # rim
    trim.polygon(
        [f.pt(0.56, 0.42), f.pt(0.98, 0.35), f.pt(0.98, 0.45), f.pt(0.56, 0.54)], fill=DARK
    )
    trim.ellipse(f.box(0.93, 0.37, 0.96, 0.42), fill=STEEL)  # the hanging hole


def _mitt(body: ImageDraw.ImageDraw, trim: ImageDraw.ImageDraw, f: _Frame) -> None:
    body.rounded_rectangle(f.box(0.28, 0.06, 0.86, 0.82), radius=f.px(0.25), fill=255)
    body.ellipse(f.box(0.06, 0.3, 0.44, 0.62), fill=255)  # thumb
    trim.rounded_rectangle(f.box(0.24, 0.78, 0.9, 0.97), radius=f.px(0.04), fill=CUFF)
    trim.arc(f.box(0.5, 0.0, 0.64, 0.14), 180, 360, fill=DARK, width=f.px(0.025))  # loop


def _tent(body: ImageDraw.ImageDraw, trim: ImageDraw.ImageDraw, f: _Frame) -> None:
    body.polygon([f.pt(0.06, 0.92), f.pt(0.5, 0.1), f.pt(0.94, 0.92)], fill=255)
    trim.polygon([f.pt(0.38, 0.92), f.pt(0.5, 0.5), f.pt(0.62, 0.92)], fill=DARK)  # doorway
    trim.line([f.pt(0.5, 0.1), f.pt(0.5, 0.02)], fill=DARK, width=f.px(0.025))  # pole tip
    for near, far in (((0.26, 0.56), (0.0, 0.96)), ((0.74, 0.56), (1.0, 0.96))):
        trim.line([f.pt(*near), f.pt(*far)], fill=STEEL, width=f.px(0.012))  # guy lines


def _kite(body: ImageDraw.ImageDraw, trim: ImageDraw.ImageDraw, f: _Frame) -> None:
    body.polygon([f.pt(0.5, 0.02), f.pt(0.94, 0.36), f.pt(0.5, 0.8), f.pt(0.06, 0.36)], fill=255)
    spar = f.px(0.018)
    trim.line([f.pt(0.5, 0.02), f.pt(0.5, 0.8)], fill=DARK, width=spar)
    trim.line([f.pt(0.06, 0.36), f.pt(0.94, 0.36)], fill=DARK, width=spar)
    tail = [f.pt(0.5 + 0.04 * ((-1) ** i), 0.8 + 0.04 * i) for i in range(6)]
    trim.line(tail, fill=DARK, width=f.px(0.012))
    for i in (2, 4):  # bows on the tail
        x, y = tail[i]
        d = f.px(0.04)
        trim.polygon([(x - d, y - d / 2), (x, y), (x - d, y + d / 2)], fill=STEEL)
        trim.polygon([(x + d, y - d / 2), (x, y), (x + d, y + d / 2)], fill=STEEL)


def _lantern(body: ImageDraw.ImageDraw, trim: ImageDraw.ImageDraw, f: _Frame) -> None:
    body.rounded_rectangle(f.box(0.18, 0.24, 0.82, 0.85), radius=f.px(0.1), fill=255)
    trim.polygon(
        [f.pt(0.26, 0.14), f.pt(0.74, 0.14), f.pt(0.88, 0.26), f.pt(0.12, 0.26)], fill=DARK
    )
    trim.arc(f.box(0.36, 0.0, 0.64, 0.24), 180, 360, fill=STEEL, width=f.px(0.04))  # ring
    trim.rectangle(f.box(0.12, 0.84, 0.88, 0.97), fill=DARK)  # base


def _binder(body: ImageDraw.ImageDraw, trim: ImageDraw.ImageDraw, f: _Frame) -> None:
    body.rectangle(f.box(0.08, 0.04, 0.92, 0.96), fill=255)
    trim.rectangle(f.box(0.08, 0.04, 0.2, 0.96), fill=(0, 0, 0, 70))  # spine: a darker shade
    trim.rectangle(f.box(0.11, 0.58, 0.17, 0.82), fill=PAPER, outline=DARK)  # label window
    for fy in (0.25, 0.5, 0.75):
        x, y = f.pt(0.3, fy)
        r = f.px(0.035)
        trim.ellipse([x - r, y - r, x + r, y + r], outline=STEEL, width=max(2, f.px(0.015)))


def _envelope(body: ImageDraw.ImageDraw, trim: ImageDraw.ImageDraw, f: _Frame) -> None:
    body.rectangle(f.box(0.03, 0.08, 0.97, 0.92), fill=255)
    trim.line([f.pt(0.03, 0.08), f.pt(0.5, 0.56), f.pt(0.97, 0.08)], fill=DARK, width=f.px(0.025))
    fold = (0, 0, 0, 90)
    trim.line([f.pt(0.03, 0.92), f.pt(0.42, 0.52)], fill=fold, width=f.px(0.015))
    trim.line([f.pt(0.97, 0.92), f.pt(0.58, 0.52)], fill=fold, width=f.px(0.015))
    trim.rectangle(f.box(0.82, 0.13, 0.93, 0.33), fill=PAPER, outline=DARK)  # stamp


def _stapler(body: ImageDraw.ImageDraw, trim: ImageDraw.ImageDraw, f: _Frame) -> None:
    body.rounded_rectangle(f.box(0.04, 0.26, 0.9, 0.52), radius=f.px(0.1), fill=255)  # arm
    body.rounded_rectangle(f.box(0.02, 0.6, 0.98, 0.82), radius=f.px(0.06), fill=255)  # base
    trim.rectangle(f.box(0.8, 0.5, 0.92, 0.62), fill=DARK)  # neck at the back
    x, y = f.pt(0.86, 0.52)
    r = f.px(0.09)
    trim.ellipse([x - r, y - r, x + r, y + r], fill=STEEL)  # hinge
    trim.rectangle(f.box(0.02, 0.82, 0.98, 0.9), fill=DARK)  # rubber foot


SHAPES: dict[str, Shape] = {
    "kettle": _kettle,
    "saucepan": _saucepan,
    "mitt": _mitt,
    "tent": _tent,
    "kite": _kite,
    "lantern": _lantern,
    "binder": _binder,
    "envelope": _envelope,
    "stapler": _stapler,
}


# ============================================================================ patterns
# Each takes the fill canvas (the whole image, filled with the item's colour) and returns it
# with the pattern drawn on; the silhouette mask cuts it out afterwards.


def _pinstripes(canvas: Image.Image, rng: random.Random, ink: RGB, period: int) -> Image.Image:
    draw = ImageDraw.Draw(canvas)
    width = max(2, period // 6)  # 1-pixel lines would blur away in the JPEG
    for x in range(rng.randrange(period) - period, canvas.width, period):
        draw.line([(x, 0), (x, canvas.height)], fill=ink, width=width)
    return canvas


def _gingham(canvas: Image.Image, rng: random.Random, ink: RGB, period: int) -> Image.Image:
    # Translucent bands one way, then the other: where they cross the ink is twice as strong,
    # which is what makes gingham read as gingham and not as a grid of lines. Bands a third of
    # the period wide leave the plain fill the largest share (4/9) of the surface.
    band = max(2, period // 3)
    out = canvas.convert("RGBA")
    for horizontal in (True, False):
        layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        span = canvas.height if horizontal else canvas.width
        for start in range(rng.randrange(period) - period, span, period):
            if horizontal:
                draw.rectangle([0, start, canvas.width, start + band - 1], fill=(*ink, 120))
            else:
                draw.rectangle([start, 0, start + band - 1, canvas.height], fill=(*ink, 120))
        out = Image.alpha_composite(out, layer)
    return out.convert("RGB")


def _speckles(canvas: Image.Image, rng: random.Random, ink: RGB, period: int) -> Image.Image:
    draw = ImageDraw.Draw(canvas)
    for _ in range(canvas.width * canvas.height // 45):
        x, y = rng.uniform(0, canvas.width), rng.uniform(0, canvas.height)
        r = rng.choice((1.0, 1.5, 2.0))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=ink)
    return canvas


def _polka_dots(canvas: Image.Image, rng: random.Random, ink: RGB, period: int) -> Image.Image:
    draw = ImageDraw.Draw(canvas)
    step = round(period * 1.5)
    r = max(2, round(period * 0.38))
    dx, dy = rng.randrange(step), rng.randrange(step)
    for row, y in enumerate(range(dy - step, canvas.height + step, step)):
        shift = step // 2 if row % 2 else 0  # rows offset by half a step
        for x in range(dx - step + shift, canvas.width + step, step):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=ink)
    return canvas


PATTERN_DRAWERS: dict[str, Callable[[Image.Image, random.Random, RGB, int], Image.Image]] = {
    "pinstriped": _pinstripes,
    "gingham": _gingham,
    "speckled": _speckles,
    "polka-dot": _polka_dots,
}


# ============================================================================ the scene


def _backdrop(rng: random.Random, width: int, height: int) -> Image.Image:
    wall, table = rng.choice(BACKDROPS)
    image = Image.new("RGB", (width, height), wall)
    draw = ImageDraw.Draw(image)
    edge = round(height * rng.uniform(0.62, 0.74))
    draw.rectangle([0, edge, width, height], fill=table)
    draw.line([(0, edge), (width, edge)], fill=_mix(table, (0, 0, 0), 0.2), width=2)
    return image


def draw_item(
    rng: random.Random,
    shape: str,
    aspect: float,
    colour: RGB,
    pattern: str,
    size: tuple[int, int],
) -> Image.Image:
    """One item's picture.

    Args:
        rng: The image's own random stream (jitter, pattern offsets, backdrop).
        shape: A key of :data:`SHAPES`.
        aspect: The silhouette's width / height.
        colour: The look's colour; the fill is jittered a little around it.
        pattern: A key of :data:`PATTERN_DRAWERS`.
        size: (width, height) in pixels.
    """
    width, height = size
    image = _backdrop(rng, width, height)
    frame = _fit_frame(rng, width, height, aspect)

    mask = Image.new("L", size, 0)
    trim_layer = Image.new("RGBA", size, (0, 0, 0, 0))
    SHAPES[shape](ImageDraw.Draw(mask), ImageDraw.Draw(trim_layer), frame)

    # A soft shadow on the table, under the item's foot.
    shadow = Image.new("L", size, 0)
    ImageDraw.Draw(shadow).ellipse(frame.box(0.05, 0.9, 0.95, 1.06), fill=110)
    shadow = shadow.filter(ImageFilter.GaussianBlur(max(2, frame.px(0.04))))
    image.paste((60, 60, 66), mask=shadow)

    fill = tuple(_clamp(c + rng.randint(-8, 8), 0, 255) for c in colour)
    period = max(7, round(min(frame.w, frame.h) / rng.uniform(7.0, 10.0)))
    canvas = PATTERN_DRAWERS[pattern](Image.new("RGB", size, fill), rng, ink_for(fill), period)
    image.paste(canvas, mask=mask)

    # Outline: the ring of pixels just outside the silhouette, in a darker shade of the fill.
    ring = ImageChops.subtract(mask.filter(ImageFilter.MaxFilter(3)), mask)
    image.paste(_mix(fill, (0, 0, 0), 0.55), mask=ring)  # type: ignore[arg-type]

    return Image.alpha_composite(image.convert("RGBA"), trim_layer).convert("RGB")
