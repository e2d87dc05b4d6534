"""Product silhouettes for the synthetic catalogue, one drawing function per product kind.

Each function draws into two 8-bit masks inside the object's bounding box ``b``:

* ``body``: the part that carries the item's look (its colour and pattern);
* ``trim``: fixed-colour parts that are the same on every item of the kind (a lamp's stem, a
  jar's lid), so they say nothing about the look.

Coordinates are given in units of the box (``b.p(0.5, 0.5)`` is its centre), so a kind keeps its
proportions at any image size. An optional ``detail`` function draws thin lines (laces, clock
hands) straight onto the finished RGB image.

The default style's kinds and the held-out style's kinds are drawn by separate functions that
share no parts, so a model tuned on one style's drawings can be checked on the other's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import ImageDraw


@dataclass(frozen=True)
class Box:
    """An object's bounding box in pixels; maps unit coordinates (u, v) in [0, 1] into it."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def w(self) -> float:
        return self.x1 - self.x0

    @property
    def h(self) -> float:
        return self.y1 - self.y0

    def p(self, u: float, v: float) -> tuple[float, float]:
        return (self.x0 + u * self.w, self.y0 + v * self.h)

    def r(self, u0: float, v0: float, u1: float, v1: float) -> list[float]:
        """A rectangle / ellipse bounding box ``[x0, y0, x1, y1]``."""
        return [*self.p(u0, v0), *self.p(u1, v1)]

    def poly(self, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [self.p(u, v) for u, v in points]

    def s(self, fraction: float) -> int:
        """A length (line width, corner radius) as a fraction of the box's shorter side."""
        return max(1, round(fraction * min(self.w, self.h)))

    def scaled(self, factor: float) -> Box:
        return Box(self.x0 * factor, self.y0 * factor, self.x1 * factor, self.y1 * factor)


Draw = ImageDraw.ImageDraw
ON = 255  # mask value of a drawn part
OFF = 0  # mask value of a hole cut back out


# ----------------------------------------------------------------------------- default style


def draw_mug(body: Draw, trim: Draw, b: Box) -> None:
    # Handle first, then its hole, then the cup over both so the hole never bites the cup.
    body.ellipse(b.r(0.55, 0.28, 1.0, 0.80), fill=ON)
    body.ellipse(b.r(0.68, 0.41, 0.90, 0.67), fill=OFF)
    body.rounded_rectangle(b.r(0.0, 0.10, 0.74, 1.0), radius=b.s(0.08), fill=ON)
    trim.ellipse(b.r(0.0, 0.05, 0.74, 0.17), fill=ON)  # the dark inside seen over the rim


def draw_lamp(body: Draw, trim: Draw, b: Box) -> None:
    body.polygon(b.poly([(0.22, 0.0), (0.78, 0.0), (1.0, 0.56), (0.0, 0.56)]), fill=ON)
    trim.rectangle(b.r(0.46, 0.56, 0.54, 0.92), fill=ON)
    trim.ellipse(b.r(0.18, 0.88, 0.82, 1.0), fill=ON)


def draw_vase(body: Draw, trim: Draw, b: Box) -> None:
    body.ellipse(b.r(0.0, 0.32, 1.0, 1.0), fill=ON)
    body.rectangle(b.r(0.30, 0.06, 0.70, 0.50), fill=ON)
    body.ellipse(b.r(0.20, 0.0, 0.80, 0.11), fill=ON)
    trim.ellipse(b.r(0.33, 0.02, 0.67, 0.08), fill=ON)  # the opening


def draw_cushion(body: Draw, trim: Draw, b: Box) -> None:
    # A square whose sides sag inwards, like a stuffed cover, with a tassel at each corner.
    body.polygon(
        b.poly(
            [
                (0.06, 0.06),
                (0.50, 0.11),
                (0.94, 0.06),
                (0.89, 0.50),
                (0.94, 0.94),
                (0.50, 0.89),
                (0.06, 0.94),
                (0.11, 0.50),
            ]
        ),
        fill=ON,
    )
    for u, v in ((0.0, 0.0), (0.9, 0.0), (0.0, 0.9), (0.9, 0.9)):
        trim.ellipse(b.r(u, v, u + 0.10, v + 0.10), fill=ON)


def draw_hoodie(body: Draw, trim: Draw, b: Box) -> None:
    body.polygon(
        b.poly(
            [
                (0.30, 0.14),
                (0.70, 0.14),
                (0.95, 0.35),
                (1.0, 0.86),
                (0.85, 0.88),
                (0.80, 0.46),
                (0.78, 1.0),
                (0.22, 1.0),
                (0.20, 0.46),
                (0.15, 0.88),
                (0.0, 0.86),
                (0.05, 0.35),
            ]
        ),
        fill=ON,
    )
    body.ellipse(b.r(0.29, 0.0, 0.71, 0.30), fill=ON)  # the hood
    trim.ellipse(b.r(0.38, 0.05, 0.62, 0.25), fill=ON)  # hood opening
    trim.rectangle(b.r(0.22, 0.94, 0.78, 1.0), fill=ON)  # ribbed hem


def detail_hoodie(img: Draw, b: Box, colour: tuple[int, int, int]) -> None:
    for u0, u1 in ((0.45, 0.44), (0.55, 0.56)):  # drawstrings
        img.line([b.p(u0, 0.25), b.p(u1, 0.45)], fill=colour, width=b.s(0.018))


def draw_tote(body: Draw, trim: Draw, b: Box) -> None:
    body.rectangle(b.r(0.0, 0.32, 1.0, 1.0), fill=ON)
    for u in (0.12, 0.52):  # two carry straps
        trim.arc(b.r(u, 0.0, u + 0.36, 0.64), 180, 360, fill=ON, width=b.s(0.05))


def draw_cap(body: Draw, trim: Draw, b: Box) -> None:
    body.chord(b.r(0.0, 0.12, 0.74, 1.32), 180, 360, fill=ON)  # crown: top half of an ellipse
    body.ellipse(b.r(0.40, 0.60, 1.0, 0.84), fill=ON)  # brim
    trim.ellipse(b.r(0.33, 0.05, 0.41, 0.15), fill=ON)  # button on top
    trim.rectangle(b.r(0.02, 0.68, 0.72, 0.74), fill=ON)  # sweatband seam


def draw_sneaker(body: Draw, trim: Draw, b: Box) -> None:
    body.polygon(
        b.poly(
            [
                (0.02, 0.80),
                (0.02, 0.20),
                (0.26, 0.06),
                (0.40, 0.06),
                (0.56, 0.36),
                (0.86, 0.46),
                (0.99, 0.62),
                (0.99, 0.80),
            ]
        ),
        fill=ON,
    )
    trim.rounded_rectangle(b.r(0.0, 0.76, 1.0, 0.96), radius=b.s(0.06), fill=ON)  # sole


def detail_sneaker(img: Draw, b: Box, colour: tuple[int, int, int]) -> None:
    for i in range(4):  # criss-cross laces
        u = 0.38 + 0.06 * i
        img.line(
            [b.p(u, 0.24 + 0.05 * i), b.p(u + 0.07, 0.34 + 0.04 * i)], fill=colour, width=b.s(0.03)
        )


def draw_bottle(body: Draw, trim: Draw, b: Box) -> None:
    body.rounded_rectangle(b.r(0.0, 0.32, 1.0, 1.0), radius=b.s(0.18), fill=ON)
    trim.rectangle(b.r(0.34, 0.20, 0.66, 0.34), fill=ON)  # neck
    trim.rectangle(b.r(0.18, 0.08, 0.82, 0.20), fill=ON)  # pump head
    trim.rectangle(b.r(0.44, 0.0, 0.56, 0.10), fill=ON)
    trim.rectangle(b.r(0.82, 0.10, 1.0, 0.15), fill=ON)  # nozzle


def draw_jar(body: Draw, trim: Draw, b: Box) -> None:
    body.rounded_rectangle(b.r(0.05, 0.30, 0.95, 1.0), radius=b.s(0.12), fill=ON)
    trim.rounded_rectangle(b.r(0.0, 0.04, 1.0, 0.34), radius=b.s(0.05), fill=ON)  # lid


def draw_lipstick(body: Draw, trim: Draw, b: Box) -> None:
    body.rounded_rectangle(b.r(0.04, 0.52, 0.96, 1.0), radius=b.s(0.08), fill=ON)  # case
    body.polygon(b.poly([(0.20, 0.48), (0.20, 0.14), (0.80, 0.0), (0.80, 0.48)]), fill=ON)  # bullet
    trim.rectangle(b.r(0.0, 0.44, 1.0, 0.55), fill=ON)  # band


def draw_hairbrush(body: Draw, trim: Draw, b: Box) -> None:
    body.ellipse(b.r(0.0, 0.0, 1.0, 0.52), fill=ON)  # paddle head
    body.rounded_rectangle(b.r(0.34, 0.44, 0.66, 1.0), radius=b.s(0.12), fill=ON)
    trim.ellipse(b.r(0.40, 0.47, 0.60, 0.53), fill=ON)  # ferrule where head meets handle


# ----------------------------------------------------------------------------- held-out style


def draw_watering_can(body: Draw, trim: Draw, b: Box) -> None:
    body.rounded_rectangle(b.r(0.22, 0.34, 0.74, 1.0), radius=b.s(0.10), fill=ON)  # reservoir
    body.polygon(b.poly([(0.70, 0.80), (0.70, 0.62), (0.95, 0.14), (1.0, 0.20)]), fill=ON)  # spout
    body.arc(b.r(0.30, 0.06, 0.66, 0.62), 180, 360, fill=ON, width=b.s(0.07))  # top grip
    body.arc(b.r(0.04, 0.36, 0.40, 0.86), 90, 270, fill=ON, width=b.s(0.07))  # rear grip
    trim.ellipse(b.r(0.90, 0.04, 1.0, 0.22), fill=ON)  # sprinkler head


def draw_planter(body: Draw, trim: Draw, b: Box) -> None:
    body.polygon(b.poly([(0.06, 0.16), (0.94, 0.16), (0.80, 0.94), (0.20, 0.94)]), fill=ON)
    body.rectangle(b.r(0.0, 0.08, 1.0, 0.24), fill=ON)  # thick rim
    trim.ellipse(b.r(0.05, 0.04, 0.95, 0.14), fill=ON)  # soil
    trim.rectangle(b.r(0.14, 0.93, 0.86, 1.0), fill=ON)  # saucer


def draw_birdhouse(body: Draw, trim: Draw, b: Box) -> None:
    body.rectangle(b.r(0.10, 0.34, 0.90, 1.0), fill=ON)
    trim.polygon(b.poly([(0.50, 0.0), (1.0, 0.40), (0.0, 0.40)]), fill=ON)  # gabled roof
    trim.ellipse(b.r(0.38, 0.50, 0.62, 0.70), fill=ON)  # entrance
    trim.rectangle(b.r(0.46, 0.76, 0.54, 0.82), fill=ON)  # perch


def draw_parasol(body: Draw, trim: Draw, b: Box) -> None:
    body.chord(b.r(0.0, 0.02, 1.0, 0.90), 180, 360, fill=ON)  # canopy
    for i in range(6):  # scalloped edge
        u = i / 6
        body.ellipse(b.r(u, 0.38, u + 1 / 6, 0.52), fill=ON)
    trim.rectangle(b.r(0.48, 0.46, 0.52, 1.0), fill=ON)  # pole
    trim.ellipse(b.r(0.46, 0.0, 0.54, 0.06), fill=ON)  # finial


def draw_suitcase(body: Draw, trim: Draw, b: Box) -> None:
    body.rounded_rectangle(b.r(0.0, 0.15, 1.0, 0.93), radius=b.s(0.10), fill=ON)
    trim.rectangle(b.r(0.30, 0.0, 0.35, 0.16), fill=ON)  # telescopic grip rails
    trim.rectangle(b.r(0.65, 0.0, 0.70, 0.16), fill=ON)
    trim.rectangle(b.r(0.30, 0.0, 0.70, 0.04), fill=ON)
    trim.ellipse(b.r(0.05, 0.89, 0.18, 1.0), fill=ON)  # wheels
    trim.ellipse(b.r(0.82, 0.89, 0.95, 1.0), fill=ON)


def draw_rucksack(body: Draw, trim: Draw, b: Box) -> None:
    body.rounded_rectangle(b.r(0.04, 0.10, 0.96, 1.0), radius=b.s(0.32), fill=ON)
    trim.arc(b.r(0.38, 0.0, 0.62, 0.22), 180, 360, fill=ON, width=b.s(0.04))  # carry loop
    trim.rectangle(b.r(0.28, 0.46, 0.38, 0.53), fill=ON)  # buckles
    trim.rectangle(b.r(0.62, 0.46, 0.72, 0.53), fill=ON)


def detail_rucksack(img: Draw, b: Box, colour: tuple[int, int, int]) -> None:
    img.rounded_rectangle(
        b.r(0.20, 0.58, 0.80, 0.92), radius=b.s(0.06), outline=colour, width=b.s(0.02)
    )
    img.arc(b.r(0.04, -0.10, 0.96, 0.50), 20, 160, fill=colour, width=b.s(0.02))  # flap seam


def draw_beanie(body: Draw, trim: Draw, b: Box) -> None:
    body.chord(b.r(0.05, 0.12, 0.95, 1.40), 180, 360, fill=ON)  # dome
    body.rounded_rectangle(b.r(0.0, 0.64, 1.0, 0.96), radius=b.s(0.06), fill=ON)  # folded cuff
    trim.ellipse(b.r(0.37, 0.0, 0.63, 0.22), fill=ON)  # pom-pom


def detail_beanie(img: Draw, b: Box, colour: tuple[int, int, int]) -> None:
    img.line([b.p(0.0, 0.64), b.p(1.0, 0.64)], fill=colour, width=b.s(0.015))


def draw_scarf(body: Draw, trim: Draw, b: Box) -> None:
    body.ellipse(b.r(0.08, 0.0, 0.92, 0.30), fill=ON)  # the loop
    body.ellipse(b.r(0.30, 0.07, 0.70, 0.22), fill=OFF)
    body.rectangle(b.r(0.14, 0.18, 0.44, 0.90), fill=ON)  # the two ends
    body.rectangle(b.r(0.56, 0.18, 0.86, 0.80), fill=ON)


def detail_scarf(img: Draw, b: Box, colour: tuple[int, int, int]) -> None:
    for u0, u1, v in ((0.14, 0.44, 0.90), (0.56, 0.86, 0.80)):  # fringe
        for i in range(7):
            u = u0 + (u1 - u0) * (i + 0.5) / 7
            img.line([b.p(u, v), b.p(u, v + 0.07)], fill=colour, width=b.s(0.02))


def draw_notebook(body: Draw, trim: Draw, b: Box) -> None:
    body.rectangle(b.r(0.08, 0.0, 1.0, 1.0), fill=ON)
    for i in range(10):  # spiral binding
        v = 0.04 + 0.095 * i
        trim.ellipse(b.r(0.0, v, 0.15, v + 0.045), fill=ON)


def detail_notebook(img: Draw, b: Box, colour: tuple[int, int, int]) -> None:
    img.line([b.p(0.86, 0.0), b.p(0.86, 1.0)], fill=colour, width=b.s(0.03))  # elastic closure


def draw_clock(body: Draw, trim: Draw, b: Box) -> None:
    body.ellipse(b.r(0.0, 0.0, 1.0, 1.0), fill=ON)
    trim.ellipse(b.r(0.0, 0.0, 1.0, 1.0), outline=ON, width=b.s(0.05))  # bezel


def detail_clock(img: Draw, b: Box, colour: tuple[int, int, int]) -> None:
    cx, cy = b.p(0.5, 0.5)
    for k in range(12):  # hour ticks
        a = 2 * math.pi * k / 12
        r0, r1 = 0.36 * b.w, 0.43 * b.w
        img.line(
            [
                (cx + r0 * math.sin(a), cy - r0 * math.cos(a)),
                (cx + r1 * math.sin(a), cy - r1 * math.cos(a)),
            ],
            fill=colour,
            width=b.s(0.025),
        )
    img.line([(cx, cy), b.p(0.5, 0.2)], fill=colour, width=b.s(0.03))  # hands
    img.line([(cx, cy), b.p(0.72, 0.58)], fill=colour, width=b.s(0.04))
    img.ellipse(b.r(0.47, 0.47, 0.53, 0.53), fill=colour)


def draw_pencil_holder(body: Draw, trim: Draw, b: Box) -> None:
    body.rounded_rectangle(b.r(0.05, 0.30, 0.95, 1.0), radius=b.s(0.06), fill=ON)
    for u, v in ((0.15, 0.0), (0.42, 0.06), (0.67, 0.02)):  # pencils
        trim.rectangle(b.r(u, v, u + 0.12, 0.32), fill=ON)
    trim.ellipse(b.r(0.05, 0.26, 0.95, 0.36), fill=ON)  # the opening


def draw_headset(body: Draw, trim: Draw, b: Box) -> None:
    body.arc(b.r(0.10, 0.0, 0.90, 0.92), 180, 360, fill=ON, width=b.s(0.10))  # headband
    body.ellipse(b.r(0.0, 0.44, 0.32, 0.96), fill=ON)  # ear cups
    body.ellipse(b.r(0.68, 0.44, 1.0, 0.96), fill=ON)
    trim.ellipse(b.r(0.22, 0.50, 0.34, 0.90), fill=ON)  # ear pads
    trim.ellipse(b.r(0.66, 0.50, 0.78, 0.90), fill=ON)
