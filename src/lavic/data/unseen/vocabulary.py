"""The words of the unseen catalogue: product kinds, colours, patterns, brands and phrasing.

None of these words is a kind, colour or pattern word of ``lavic synthesize`` (either style):
the point of this catalogue is to measure what travels beyond that generator's vocabulary.
Trim (handles, caps, rings) is described by material ("steel", "metal"), never by a colour, so
the only colour word in an item's text is its look's.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Colour:
    word: str
    rgb: RGB


@dataclass(frozen=True)
class Pattern:
    """A pattern and the ways the text may name it.

    Attributes:
        word: The adjective ("pinstriped"), used in titles (``--title_look``) and requests.
        stem: A string every phrasing of the pattern contains, and no other pattern's: how a
            reader (the oracle, the tests) finds the pattern in a text.
        with_phrases: Requests' prepositional forms ("with pinstripes").
        descriptions: Describers' phrases; ``{ink}`` is the contrasting shade.
    """

    word: str
    stem: str
    with_phrases: tuple[str, ...]
    descriptions: tuple[str, ...]


@dataclass(frozen=True)
class Look:
    colour: Colour
    pattern: Pattern

    @property
    def key(self) -> str:
        return f"{self.colour.word}/{self.pattern.word}"


@dataclass(frozen=True)
class Kind:
    """A product kind: its name, how it is drawn and how its text talks about it.

    Attributes:
        name: The kind as the text names it ("oven mitt").
        shape: The drawing routine's key (lavic.data.unseen.drawing).
        aspect: Width / height of its drawing.
        surface: What the colour covers ("canvas" of a tent), for descriptions.
        qualifiers: Title words before the kind ("Whistling" Kettle).
        shape_sentences: One of them closes each description; no colour words.
    """

    name: str
    shape: str
    aspect: float
    surface: str
    qualifiers: tuple[str, ...]
    shape_sentences: tuple[str, ...]


COLOURS: tuple[Colour, ...] = (
    Colour("scarlet", (204, 30, 40)),
    Colour("tangerine", (244, 128, 24)),
    Colour("emerald", (18, 128, 78)),
    Colour("cobalt", (24, 70, 180)),
    Colour("plum", (112, 38, 104)),
    Colour("pink", (236, 120, 170)),
    Colour("chocolate", (96, 56, 30)),
    Colour("cream", (243, 230, 188)),
)

PATTERNS: tuple[Pattern, ...] = (
    Pattern(
        word="pinstriped",
        stem="pinstripe",
        with_phrases=("with pinstripes", "with thin pinstripes"),
        descriptions=(
            "covered in thin {ink} pinstripes",
            "marked with fine vertical pinstripes in a {ink} shade",
        ),
    ),
    Pattern(
        word="gingham",
        stem="gingham",
        with_phrases=("in gingham", "with a gingham check"),
        descriptions=(
            "printed with a {ink} gingham check",
            "patterned in gingham squares of a {ink} shade",
        ),
    ),
    Pattern(
        word="speckled",
        stem="speckle",
        with_phrases=("with speckles", "with little speckles"),
        descriptions=(
            "speckled all over with tiny {ink} flecks",
            "finely speckled, with small {ink} specks scattered across it",
        ),
    ),
    Pattern(
        word="polka-dot",
        stem="polka",
        with_phrases=("with polka dots", "with big polka dots"),
        descriptions=(
            "dotted with round {ink} polka dots",
            "printed with evenly spaced polka dots in a {ink} shade",
        ),
    ),
)

LOOKS: tuple[Look, ...] = tuple(Look(c, p) for c in COLOURS for p in PATTERNS)

# The ink is lighter than a dark fill and darker than a light one; the words stay neutral.
INK_WORD = "contrasting"

CATEGORIES: dict[str, tuple[Kind, ...]] = {
    "unseen_kitchen": (
        Kind(
            name="kettle",
            shape="kettle",
            aspect=1.0,
            surface="body",
            qualifiers=("Whistling", "Stovetop", "Electric"),
            shape_sentences=(
                "A curved spout points to the left and a steel handle arches over the lid.",
                "It has a wide base, a small lid knob and a spout on one side.",
            ),
        ),
        Kind(
            name="saucepan",
            shape="saucepan",
            aspect=1.8,
            surface="outside",
            qualifiers=("Nonstick", "Induction", "Enamel"),
            shape_sentences=(
                "A long metal handle sticks out to the right of the pan.",
                "The pan is seen from the side, with a straight wall and a long handle.",
            ),
        ),
        Kind(
            name="oven mitt",
            shape="mitt",
            aspect=0.8,
            surface="fabric",
            qualifiers=("Quilted", "Heat-Resistant", "Padded"),
            shape_sentences=(
                "The thumb pokes out on the left and a padded cuff runs along the bottom.",
                "It is a padded mitten shape with a separate thumb and a hanging loop.",
            ),
        ),
    ),
    "unseen_outdoor": (
        Kind(
            name="tent",
            shape="tent",
            aspect=1.4,
            surface="canvas",
            qualifiers=("Two-Person", "Backpacking", "Pop-Up"),
            shape_sentences=(
                "It is an A-frame tent with an open door flap in the middle.",
                "Guy lines run from its sides to the ground and the doorway is open.",
            ),
        ),
        Kind(
            name="kite",
            shape="kite",
            aspect=0.75,
            surface="sail",
            qualifiers=("Diamond", "Beach", "Single-Line"),
            shape_sentences=(
                "Two thin spars cross behind the sail and a tail with bows hangs below.",
                "The diamond-shaped sail has a cross of spars and a ribbon tail.",
            ),
        ),
        Kind(
            name="lantern",
            shape="lantern",
            aspect=0.65,
            surface="shade",
            qualifiers=("Camping", "Rechargeable", "Hanging"),
            shape_sentences=(
                "A metal cap and a ring handle sit on top, with a heavy base below.",
                "It stands upright on a flat base and has a carrying ring on its cap.",
            ),
        ),
    ),
    "unseen_stationery": (
        Kind(
            name="binder",
            shape="binder",
            aspect=0.8,
            surface="cover",
            qualifiers=("Ring", "Presentation", "Lever-Arch"),
            shape_sentences=(
                "The spine on the left holds a small label window and three rings show inside.",
                "It is an upright folder with a darker spine and metal rings.",
            ),
        ),
        Kind(
            name="envelope",
            shape="envelope",
            aspect=1.6,
            surface="paper",
            qualifiers=("Padded", "Gift", "Document"),
            shape_sentences=(
                "Its flap is folded down into a point and a stamp sits in the corner.",
                "It lies flat, with fold lines meeting in the middle and a stamp at the top right.",
            ),
        ),
        Kind(
            name="stapler",
            shape="stapler",
            aspect=2.0,
            surface="casing",
            qualifiers=("Desktop", "Heavy-Duty", "Full-Strip"),
            shape_sentences=(
                "It is seen from the side, with the top arm resting on a long base.",
                "A metal hinge joins the arm to the base at the back, on a rubber foot.",
            ),
        ),
    ),
}

# Brand names with no colour, pattern or kind word in them.
BRANDS: tuple[str, ...] = (
    "Marlow & Pike",
    "Tovra",
    "Hollin",
    "Quenby",
    "Ardent Works",
    "Bexley Co.",
    "Fjordal",
    "Wrenfield",
    "Nimbra",
    "Castellan",
    "Pellory",
    "Odessa Lane",
)
# Product-line nouns at the end of a title ("Tovra Whistling Kettle - Everyday Edition").
PRODUCT_LINES: tuple[str, ...] = (
    "Everyday Edition",
    "Signature Series",
    "Essentials",
    "Heritage Line",
    "Studio Model",
    "Compact Plus",
    "Pro 2",
    "Classic Range",
)

# ---------------------------------------------------------------------- descriptions
# {a_kind}: "a kettle"; {surface}: the kind's surface; {colour}, {a_colour}: the colour word
# (with its article); {pattern}: one of the pattern's description phrases.
DESCRIPTION_TEMPLATES: tuple[str, ...] = (
    "The image shows {a_kind} whose {surface} is {colour}, {pattern}.",
    "In this picture {a_kind} stands against a plain wall. Its {surface} is {colour} and "
    "{pattern}.",
    "This photo features {a_kind} in {colour}, {pattern}.",
    "Pictured is {a_colour} {kind} on a tabletop; the {surface} is {pattern}.",
)
DESCRIPTION_CLOSERS: tuple[str, ...] = (
    "The background is a neutral wall above a table.",
    "The lighting is soft and even.",
    "A faint shadow falls under it.",
)

# ---------------------------------------------------------------------- conversations
# {colour}/{Colour}: the colour word (capitalised); {adj}: the pattern adjective; {with}: one of
# the pattern's with_phrases; {kind}; {a_kind}.
REQUEST_TEMPLATES: tuple[str, ...] = (
    "Any {colour} one {with}?",
    "I'm after something in {colour}, {adj} if possible.",
    "{Colour} {with} please.",
    "Hoping to find a {adj} {colour} {kind}.",
    "The one thing I care about: it has to be {colour} and {adj}.",
    "Must be {colour}. Bonus points if it comes {with}.",
    "Preferably {colour} {with}, to match the rest of my stuff.",
)
SUBMISSION_TITLES: tuple[str, ...] = (
    "[Request] {Kind} recommendations?",
    "Help me pick {a_kind}",
    "Which {kind} should I get?",
    "{Kind} hunt",
    "Looking for {a_kind} under $40",
)
OPENERS: tuple[str, ...] = (
    "Moving into a new flat and the old one finally gave up.",
    "Buying a present for my sister's birthday next month.",
    "Mine broke last week and I miss it already.",
    "I keep seeing these everywhere and want one of my own.",
    "Trying to replace a cheap one that did not last.",
)
CONTEXT_MENTIONS: tuple[str, ...] = (
    "For reference, I already have {url} and was happy with it.",
    "Last time I bought {url}, which worked out well.",
)
FILLER_COMMENTS: tuple[str, ...] = (
    "Following, I need one of these too.",
    "Read the reviews before you buy, quality varies a lot.",
    "Whatever you get, check the return policy.",
    "I had good luck with store brands for this.",
    "Price matters more than you think here.",
)
OP_REPLIES: tuple[str, ...] = (
    "Thanks for the tip! {request}",
    "Good point. Also: {request}",
    "Will do. To be clear: {request}",
)
GT_TEMPLATES: tuple[str, ...] = (
    "Have a look at {title}: {url}",
    "I bought {title} last spring, still going strong. {url}",
    "{title} would fit the bill. {url}",
)


def with_article(word: str) -> str:
    """``word`` with "a" or "an" in front, by its first letter."""
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word
