"""The two styles of synthetic catalogue: their words, product kinds and text templates.

A *look* is a (colour, pattern) pair. Every text the catalogue writes follows one rule: the
look is in the image, the teacher's description and the seeker's conversation, and nowhere in
the title. Titles carry only the brand, kind, material and specs, which are drawn independently
of the look, so the title cannot tell which candidate the seeker asked for.

``default`` is the style used to build and tune the pipeline. ``heldout`` shares none of its
colour words, pattern words, product kinds, part names, brands or phrasing (and is drawn by
other routines, see :mod:`lavic.data.synthetic.render`): a check that nothing downstream is
tuned to our own drawings or sentences.

Words are chosen so that the conversation and a description share only the kind, colour and
pattern words; every other word of a description (``body``, ``shows``, ``backdrop``...) never
occurs in a conversation. That keeps the word-overlap oracle of
:func:`lavic.data.synthetic.word_overlap_oracle` honest.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from lavic.data.synthetic import shapes

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Colour:
    word: str
    rgb: RGB


@dataclass(frozen=True)
class Look:
    colour: Colour
    pattern: str

    @property
    def key(self) -> str:
        return f"{self.colour.word}/{self.pattern}"


@dataclass(frozen=True)
class Kind:
    """One product kind: its silhouette, its title parts and its description sentences.

    Attributes:
        name: What a seeker calls it ("mug"); also its description noun.
        aspect: Width / height of the drawn object.
        surface: The part that carries the look ("body", "shade").
        title_nouns, materials, specs, features: Title parts, drawn independently of the look.
        shape_sentences: Description sentences about the shape (never the look).
        vocab: The kind's own words (name, parts); the other style never uses any of them.
        draw: Silhouette, see :mod:`lavic.data.synthetic.shapes`.
        detail: Optional thin lines drawn on the finished image.
        trim_rgb: Colour of the fixed parts.
    """

    name: str
    aspect: float
    surface: str
    title_nouns: tuple[str, ...]
    materials: tuple[str, ...]
    specs: tuple[str, ...]
    features: tuple[str, ...]
    shape_sentences: tuple[str, ...]
    vocab: frozenset[str]
    draw: Callable[..., None]
    trim_rgb: RGB
    detail: Callable[..., None] | None = None


@dataclass(frozen=True)
class TextStyle:
    """Sentence templates of one style (``{kind}``, ``{ask}``, ``{title}``, ``{url}`` slots)."""

    # pattern -> phrasings of a request for "colour + pattern" (``{c}`` = colour word)
    asks: dict[str, tuple[str, ...]]
    requests: tuple[str, ...]  # a sentence around ``{ask}``
    submission_titles: tuple[str, ...]
    openers: tuple[str, ...]  # first sentence of the submission body
    filler_comments: tuple[str, ...]
    op_replies: tuple[str, ...]  # the seeker's reply to a filler, around ``{request}``
    context_mentions: tuple[str, ...]  # a sentence linking an earlier purchase, ``{url}``
    gt_templates: tuple[str, ...]
    # description: pattern -> templates with ``{a_kind}``, ``{surface}``, ``{c}``, ``{tone}``
    descriptions: dict[str, tuple[str, ...]]
    closers: tuple[str, ...]  # optional last description sentence (no look words)


@dataclass(frozen=True)
class Style:
    name: str
    colours: tuple[Colour, ...]
    patterns: tuple[str, ...]
    categories: dict[str, tuple[Kind, ...]]
    brands: tuple[str, ...]
    text: TextStyle
    # ink tone words: the pattern is drawn darker than a light body, lighter than a dark one
    tone_dark: str
    tone_light: str
    title_format: Callable[[random.Random, str, Kind], str]
    extra_words: frozenset[str] = field(default_factory=frozenset)

    @property
    def looks(self) -> tuple[Look, ...]:
        return tuple(Look(c, p) for c in self.colours for p in self.patterns)

    @property
    def kinds(self) -> tuple[Kind, ...]:
        return tuple(k for kinds in self.categories.values() for k in kinds)

    @property
    def look_words(self) -> frozenset[str]:
        """Colour and pattern words: they may never appear in a title."""
        return frozenset(c.word for c in self.colours) | frozenset(self.patterns) | self.extra_words

    @property
    def kind_vocab(self) -> frozenset[str]:
        return frozenset().union(*(k.vocab for k in self.kinds))


def article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def luminance(rgb: RGB) -> float:
    r, g, b = rgb
    return (0.299 * r + 0.587 * g + 0.114 * b) / 255.0


def tone_word(style: Style, colour: Colour) -> str:
    """The description word for the pattern's ink against this body colour."""
    return style.tone_dark if luminance(colour.rgb) > 0.45 else style.tone_light


# ============================================================================= default style

_DEFAULT_COLOURS = (
    Colour("red", (206, 34, 38)),
    Colour("blue", (38, 82, 200)),
    Colour("green", (40, 148, 62)),
    Colour("yellow", (240, 206, 42)),
    Colour("black", (26, 26, 28)),
    Colour("white", (246, 246, 244)),
    Colour("purple", (124, 52, 160)),
    Colour("orange", (240, 132, 30)),
)

_DEFAULT_KINDS: dict[str, tuple[Kind, ...]] = {
    "synthetic_home": (
        Kind(
            name="mug",
            aspect=1.25,
            surface="body",
            title_nouns=("Coffee Mug", "Tea Mug", "Travel Mug"),
            materials=("Ceramic", "Stoneware", "Porcelain"),
            specs=("12 oz", "14 oz", "16 oz"),
            features=("Dishwasher Safe", "Microwave Safe", "Lead Free"),
            shape_sentences=(
                "It has a curved handle on one side and a wide round rim.",
                "The mug has a sturdy handle and straight sides.",
            ),
            vocab=frozenset({"mug", "mugs", "handle", "rim"}),
            draw=shapes.draw_mug,
            trim_rgb=(70, 62, 58),
        ),
        Kind(
            name="lamp",
            aspect=0.72,
            surface="shade",
            title_nouns=("Table Lamp", "Bedside Lamp", "Desk Lamp"),
            materials=("Linen Shade", "Fabric Shade", "Drum Shade"),
            specs=("18 inch", "22 inch", "15 inch"),
            features=("E26 Bulb Base", "Pull Chain Switch", "UL Listed"),
            shape_sentences=(
                "It has a flared shade on a slim metal stem with a round base.",
                "The lamp stands on a thin stem above a disc-shaped base.",
            ),
            vocab=frozenset({"lamp", "lamps", "shade", "stem"}),
            draw=shapes.draw_lamp,
            trim_rgb=(176, 176, 182),
        ),
        Kind(
            name="vase",
            aspect=0.60,
            surface="body",
            title_nouns=("Flower Vase", "Bud Vase", "Decorative Vase"),
            materials=("Glazed Ceramic", "Kiln-Fired", "Stoneware"),
            specs=("8 inch", "10 inch", "12 inch"),
            features=("Watertight", "Table Centerpiece", "Handmade"),
            shape_sentences=(
                "It has a narrow neck that opens into a rounded belly.",
                "The vase has a slender neck and a bulbous bottom.",
            ),
            vocab=frozenset({"vase", "vases", "neck", "belly"}),
            draw=shapes.draw_vase,
            trim_rgb=(60, 56, 54),
        ),
        Kind(
            name="cushion",
            aspect=1.0,
            surface="slipcover",
            title_nouns=("Throw Pillow Cover", "Decorative Cushion", "Accent Pillow"),
            materials=("Cotton", "Linen Blend", "Velvet"),
            specs=("18x18 inch", "20x20 inch", "16x16 inch"),
            features=("Hidden Zipper", "Insert Included", "Machine Washable"),
            shape_sentences=(
                "It is a square cushion with puffed edges and small corner tassels.",
                "The cushion looks soft and plump, with a tassel at each corner.",
            ),
            vocab=frozenset({"cushion", "cushions", "pillow", "tassel", "tassels"}),
            draw=shapes.draw_cushion,
            trim_rgb=(222, 212, 186),
        ),
    ),
    "synthetic_fashion": (
        Kind(
            name="hoodie",
            aspect=1.0,
            surface="fabric",
            title_nouns=("Pullover Hoodie", "Hooded Sweatshirt", "Fleece Hoodie"),
            materials=("Cotton Blend", "Organic Cotton", "Heavyweight"),
            specs=("Sizes S-XXL", "Unisex Fit", "Regular Fit"),
            features=("Kangaroo Pocket", "Pre-Shrunk", "Soft Brushed Inside"),
            shape_sentences=(
                "It has a hood with drawstrings, long sleeves and a ribbed hem.",
                "The hoodie is laid flat with its sleeves spread out.",
            ),
            vocab=frozenset(
                {"hoodie", "hoodies", "hood", "hooded", "drawstrings", "sleeves", "hem"}
            ),
            draw=shapes.draw_hoodie,
            trim_rgb=(58, 58, 62),
            detail=shapes.detail_hoodie,
        ),
        Kind(
            name="tote bag",
            aspect=0.88,
            surface="canvas",
            title_nouns=("Tote Bag", "Shopping Tote", "Canvas Tote"),
            materials=("Heavy Canvas", "Cotton", "Recycled"),
            specs=("15 x 16 inch", "Large", "Medium"),
            features=("Inner Pocket", "Reinforced Seams", "Foldable"),
            shape_sentences=(
                "It has two tall carry straps and a wide rectangular shape.",
                "The bag is shown upright with its straps raised.",
            ),
            vocab=frozenset({"tote", "totes", "bag", "bags", "straps", "strap"}),
            draw=shapes.draw_tote,
            trim_rgb=(186, 148, 100),
        ),
        Kind(
            name="cap",
            aspect=1.45,
            surface="crown",
            title_nouns=("Baseball Cap", "Dad Hat", "Sports Cap"),
            materials=("Cotton Twill", "Washed Cotton", "Polyester"),
            specs=("Adjustable Strap", "One Size"),
            features=("Low Profile", "Curved Brim", "Breathable"),
            shape_sentences=(
                "It has a rounded crown, a stiff curved brim and a small button on top.",
                "The cap is shown in profile with the brim pointing sideways.",
            ),
            vocab=frozenset({"cap", "caps", "crown", "brim", "button"}),
            draw=shapes.draw_cap,
            trim_rgb=(66, 66, 70),
        ),
        Kind(
            name="sneaker",
            aspect=2.0,
            surface="upper",
            title_nouns=("Low Top Sneaker", "Casual Sneaker", "Canvas Shoe"),
            materials=("Canvas", "Knit", "Vegan Leather"),
            specs=("Sizes 5-12", "Unisex", "Lace-Up"),
            features=("Cushioned Insole", "Non-Slip Outsole", "Lightweight"),
            shape_sentences=(
                "It has a low-top profile, a thick rubber sole and criss-cross laces.",
                "The sneaker is shown from the side, with laces across the top.",
            ),
            vocab=frozenset({"sneaker", "sneakers", "shoe", "sole", "laces", "upper"}),
            draw=shapes.draw_sneaker,
            trim_rgb=(214, 210, 202),
            detail=shapes.detail_sneaker,
        ),
    ),
    "synthetic_beauty": (
        Kind(
            name="bottle",
            aspect=0.40,
            surface="body",
            title_nouns=("Lotion Bottle", "Pump Bottle", "Refillable Bottle"),
            materials=("PET Plastic", "Frosted Plastic", "BPA-Free"),
            specs=("8 oz", "12 oz", "16 oz"),
            features=("Leak-Proof Pump", "Travel Friendly", "Set of 2"),
            shape_sentences=(
                "It has a tall slim body topped with a silver pump dispenser.",
                "The bottle has rounded shoulders and a pump on top.",
            ),
            vocab=frozenset({"bottle", "bottles", "pump", "dispenser"}),
            draw=shapes.draw_bottle,
            trim_rgb=(190, 190, 196),
        ),
        Kind(
            name="jar",
            aspect=1.2,
            surface="body",
            title_nouns=("Cosmetic Jar", "Cream Jar", "Sample Jar"),
            materials=("Glass", "Acrylic", "Polypropylene"),
            specs=("2 oz", "4 oz", "1.7 oz"),
            features=("Screw Lid", "Inner Liner", "Refillable"),
            shape_sentences=(
                "It is a squat wide jar with a grey screw-on lid.",
                "The jar has a low, rounded shape and a lid on top.",
            ),
            vocab=frozenset({"jar", "jars", "lid"}),
            draw=shapes.draw_jar,
            trim_rgb=(84, 84, 90),
        ),
        Kind(
            name="lipstick",
            aspect=0.34,
            surface="case",
            title_nouns=("Matte Lipstick", "Satin Lipstick", "Long-Wear Lipstick"),
            materials=("Vitamin E", "Shea Butter", "Paraben-Free"),
            specs=("0.12 oz", "3.5 g"),
            features=("Smudge Proof", "Moisturizing", "Cruelty Free"),
            shape_sentences=(
                "It has a slim tube case with a gold band and a slanted bullet tip.",
                "The lipstick is shown open, with the bullet rising above the case.",
            ),
            vocab=frozenset({"lipstick", "lipsticks", "bullet", "tube"}),
            draw=shapes.draw_lipstick,
            trim_rgb=(200, 168, 92),
        ),
        Kind(
            name="hairbrush",
            aspect=0.42,
            surface="back",
            title_nouns=("Paddle Brush", "Detangling Brush", "Hair Brush"),
            materials=("Boar Bristle", "Nylon Bristle", "Wooden"),
            specs=("Large", "Travel Size"),
            features=("Anti-Static", "Gentle on Scalp", "Ball-Tipped Pins"),
            shape_sentences=(
                "It has an oval paddle head and a long tapered handle.",
                "The hairbrush is shown from the back, with its paddle head at the top.",
            ),
            vocab=frozenset({"hairbrush", "brush", "paddle", "bristle", "bristles"}),
            draw=shapes.draw_hairbrush,
            trim_rgb=(150, 150, 156),
        ),
    ),
}

_DEFAULT_TEXT = TextStyle(
    asks={
        "plain": ("plain {c}", "a plain {c} one", "just plain {c}"),
        "stripes": ("{c} with stripes", "a {c} one with stripes", "{c} with stripes all over"),
        "dots": ("{c} with polka dots", "a {c} one with dots", "{c} with little dots"),
        "checkered": ("{c} and checkered", "a checkered {c} one", "checkered {c}"),
    },
    requests=(
        "I really want something {ask}.",
        "Ideally {ask}, that's the whole point.",
        "It has to be {ask} to match the rest of my stuff.",
        "My partner insists on {ask}.",
        "The one thing I care about: it needs to be {ask}.",
        "Looking specifically for {ask}.",
    ),
    submission_titles=(
        "[Request] Looking for a {kind}",
        "Help me find a {kind}",
        "{Kind} recommendations?",
        "Anyone know where to buy a nice {kind}?",
    ),
    openers=(
        "My old one broke last week.",
        "Moving into a new place and want to treat myself.",
        "Budget is around $30.",
        "Been searching for ages and I'm stuck.",
    ),
    filler_comments=(
        "What's your budget?",
        "Do you need it soon or can you wait for a sale?",
        "Have you tried local shops first?",
        "Following, I need one too.",
        "Any size preference?",
    ),
    op_replies=(
        "Budget is flexible, I mostly care about the look. {request}",
        "Not in a hurry. Again, {request}",
        "Size doesn't matter much. {request}",
    ),
    context_mentions=(
        "I already have [this one]({url}) from the same shop and it's great.",
        "Last time I bought [this]({url}) and was happy with it.",
    ),
    gt_templates=(
        "Check out the {title}: {url}",
        "I have [this one]({url}) and love it. {title}.",
        "{title} - exactly what you describe. {url}",
        "Got mine last year, the {title}. {url}",
    ),
    descriptions={
        "plain": (
            "The image shows {a_kind} with a plain {c} {surface} and no print.",
            "This is {a_kind} whose {surface} is plain {c}, without any print.",
        ),
        "stripes": (
            "The image shows {a_kind} with a {c} {surface} covered in {tone} horizontal stripes.",
            "This is {a_kind} whose {surface} is {c} with {tone} horizontal stripes.",
        ),
        "dots": (
            "The image shows {a_kind} with a {c} {surface} covered in {tone} polka dots.",
            "This is {a_kind} whose {surface} is {c} with {tone} polka dots.",
        ),
        "checkered": (
            "The image shows {a_kind} with a {c} {surface} in a {tone} checkered print.",
            "This is {a_kind} whose {surface} is {c} with a {tone} checkered print.",
        ),
    },
    closers=(
        "It is photographed on a neutral backdrop.",
        "The product is centred against a soft grey backdrop.",
        "The item appears unused.",
    ),
)


def _default_title(rng: random.Random, brand: str, kind: Kind) -> str:
    # "Acme Ceramic Coffee Mug, 12 oz, Dishwasher Safe"
    return (
        f"{brand} {rng.choice(kind.materials)} {rng.choice(kind.title_nouns)}, "
        f"{rng.choice(kind.specs)}, {rng.choice(kind.features)}"
    )


DEFAULT = Style(
    name="default",
    colours=_DEFAULT_COLOURS,
    patterns=("plain", "stripes", "dots", "checkered"),
    categories=_DEFAULT_KINDS,
    brands=(
        "Acme",
        "Northway",
        "Lumora",
        "Kestrel",
        "Brightfield",
        "Oakline",
        "Corvina",
        "Halden",
        "Tidewell",
        "Verano",
        "Marlow & Finch",
        "Sundry Co.",
    ),
    text=_DEFAULT_TEXT,
    tone_dark="dark",
    tone_light="pale",
    title_format=_default_title,
    extra_words=frozenset({"striped", "stripe", "dot", "dotted", "polka", "checked", "checks"}),
)


# ============================================================================= held-out style

_HELDOUT_COLOURS = (
    Colour("crimson", (164, 18, 52)),
    Colour("navy", (24, 36, 108)),
    Colour("teal", (0, 128, 128)),
    Colour("mustard", (214, 170, 38)),
    Colour("charcoal", (58, 60, 64)),
    Colour("ivory", (250, 244, 222)),
    Colour("lavender", (184, 160, 226)),
    Colour("coral", (250, 124, 98)),
)

_HELDOUT_KINDS: dict[str, tuple[Kind, ...]] = {
    "heldout_garden": (
        Kind(
            name="watering can",
            aspect=1.5,
            surface="reservoir",
            title_nouns=("Watering Can", "Indoor Watering Can", "Garden Watering Can"),
            materials=("Galvanized Steel", "Powder-Coated", "Enamelled Tin"),
            specs=("1 Gallon", "2 Liter", "5 Liter"),
            features=("Detachable Sprinkler", "Extended Reach", "Rustproof"),
            shape_sentences=(
                "It has a long spout ending in a sprinkler nozzle and an arched grip on top.",
                "The can has a boxy reservoir, a tall grip and a slender spout.",
            ),
            vocab=frozenset({"watering", "spout", "sprinkler", "reservoir", "grip"}),
            draw=shapes.draw_watering_can,
            trim_rgb=(190, 160, 80),
        ),
        Kind(
            name="planter",
            aspect=1.0,
            surface="pot",
            title_nouns=("Succulent Pot", "Indoor Planter", "Herb Planter"),
            materials=("Terracotta", "Fiberstone", "Unglazed Clay"),
            specs=("15 cm", "20 cm", "25 cm"),
            features=("Drainage Hole", "With Saucer", "Frost Resistant"),
            shape_sentences=(
                "It is a tapering pot with a thick lip, filled with soil and set on a saucer.",
                "The planter narrows toward the bottom and rests on a saucer.",
            ),
            vocab=frozenset({"planter", "planters", "pot", "pots", "saucer", "soil"}),
            draw=shapes.draw_planter,
            trim_rgb=(96, 70, 50),
        ),
        Kind(
            name="birdhouse",
            aspect=0.8,
            surface="front",
            title_nouns=("Birdhouse", "Hanging Birdhouse", "Nesting Box"),
            materials=("Cedar", "Pine", "Weatherproof"),
            specs=("18 cm", "23 cm"),
            features=("Easy Clean-Out", "Ventilated", "Ready to Hang"),
            shape_sentences=(
                "It has a gabled roof, a round entrance hole and a little perch.",
                "The birdhouse has a peaked roof over a boxy front with an entrance hole.",
            ),
            vocab=frozenset({"birdhouse", "birdhouses", "roof", "perch", "entrance", "nesting"}),
            draw=shapes.draw_birdhouse,
            trim_rgb=(92, 68, 48),
        ),
        Kind(
            name="parasol",
            aspect=1.0,
            surface="canopy",
            title_nouns=("Patio Parasol", "Garden Parasol", "Market Parasol"),
            materials=("Olefin Cloth", "Aluminum Pole", "Solution-Dyed"),
            specs=("7.5 ft", "9 ft"),
            features=("Crank Lift", "UV Resistant", "Push Tilt"),
            shape_sentences=(
                "It has a wide canopy with a scalloped edge on a tall timber pole.",
                "The parasol is open, its scalloped canopy spread above the pole.",
            ),
            vocab=frozenset({"parasol", "parasols", "canopy", "pole", "scalloped", "finial"}),
            draw=shapes.draw_parasol,
            trim_rgb=(150, 118, 80),
        ),
    ),
    "heldout_travel": (
        Kind(
            name="suitcase",
            aspect=0.72,
            surface="shell",
            title_nouns=("Carry-On Suitcase", "Hardside Suitcase", "Spinner Suitcase"),
            materials=("Polycarbonate", "ABS", "Aluminum Frame"),
            specs=("55 cm", "66 cm", "75 cm"),
            features=("TSA Lock", "Expandable", "Spinner Wheels"),
            shape_sentences=(
                "It is a hard-shell suitcase with a telescopic grip and two wheels.",
                "The suitcase stands upright on its wheels with the grip retracted.",
            ),
            vocab=frozenset({"suitcase", "suitcases", "shell", "telescopic", "wheels"}),
            draw=shapes.draw_suitcase,
            trim_rgb=(70, 72, 78),
        ),
        Kind(
            name="rucksack",
            aspect=0.8,
            surface="panel",
            title_nouns=("Hiking Rucksack", "Daypack Rucksack", "Commuter Rucksack"),
            materials=("Ripstop Cordura", "Waxed Duck Cloth", "Tarpaulin"),
            specs=("20 L", "25 L", "30 L"),
            features=("Laptop Compartment", "Water Resistant", "Chest Clip"),
            shape_sentences=(
                "It has a front pouch, two buckles and a carry loop on top.",
                "The rucksack is seen from the front, with its pouch and buckles visible.",
            ),
            vocab=frozenset({"rucksack", "rucksacks", "pouch", "buckles", "loop"}),
            draw=shapes.draw_rucksack,
            trim_rgb=(188, 188, 192),
            detail=shapes.detail_rucksack,
        ),
        Kind(
            name="beanie",
            aspect=1.1,
            surface="wool",
            title_nouns=("Chunky Beanie", "Winter Beanie", "Cuffed Beanie"),
            materials=("Merino Wool", "Alpaca Yarn", "Cashmere Mix"),
            specs=("Universal Sizing", "Stretchy"),
            features=("Sherpa Lined", "Double Layer", "Pom-Pom"),
            shape_sentences=(
                "It is a knitted beanie with a folded cuff and a pom-pom on top.",
                "The beanie has a deep cuff and a fluffy pom-pom.",
            ),
            vocab=frozenset({"beanie", "beanies", "cuff", "cuffed", "pom"}),
            draw=shapes.draw_beanie,
            trim_rgb=(232, 226, 210),
            detail=shapes.detail_beanie,
        ),
        Kind(
            name="scarf",
            aspect=0.48,
            surface="weave",
            title_nouns=("Winter Scarf", "Woven Scarf", "Oversized Scarf"),
            materials=("Lambswool", "Chunky Yarn", "Viscose"),
            specs=("180 x 30 cm", "200 x 35 cm"),
            features=("Fringed Ends", "For Everyone", "Gift Box"),
            shape_sentences=(
                "It is a long scarf looped once, with fringe on both ends.",
                "The scarf hangs in a loop, its two ends finished with fringe.",
            ),
            vocab=frozenset({"scarf", "scarves", "fringe", "fringed"}),
            draw=shapes.draw_scarf,
            trim_rgb=(120, 120, 120),
            detail=shapes.detail_scarf,
        ),
    ),
    "heldout_desk": (
        Kind(
            name="notebook",
            aspect=0.75,
            surface="cover",
            title_nouns=("Spiral Notebook", "Project Journal", "Lined Notebook"),
            materials=("Hardcover", "Archival Paper", "Kraft"),
            specs=("A5", "B5", "160 Pages"),
            features=("Elastic Closure", "Perforated Pages", "Pen Loop"),
            shape_sentences=(
                "It has a spiral binding on the left and an elastic closure.",
                "The notebook is pictured closed, with spiral rings along its spine.",
            ),
            vocab=frozenset({"notebook", "notebooks", "spiral", "binding", "elastic", "spine"}),
            draw=shapes.draw_notebook,
            trim_rgb=(196, 196, 200),
            detail=shapes.detail_notebook,
        ),
        Kind(
            name="clock",
            aspect=1.0,
            surface="face",
            title_nouns=("Wall Clock", "Silent Wall Clock", "Kitchen Clock"),
            materials=("Quartz", "Steel Frame", "Crystal Lens"),
            specs=("25 cm", "30 cm", "35 cm"),
            features=("Sweep Movement", "Battery Operated", "Easy to Read"),
            shape_sentences=(
                "It is a circular wall clock with a thin bezel, hour ticks and two hands.",
                "The clock face shows twelve hour marks and a pair of hands.",
            ),
            vocab=frozenset({"clock", "clocks", "bezel", "dial", "hands", "ticks"}),
            draw=shapes.draw_clock,
            trim_rgb=(52, 52, 56),
            detail=shapes.detail_clock,
        ),
        Kind(
            name="pencil holder",
            aspect=0.7,
            surface="exterior",
            title_nouns=("Pencil Holder", "Pen Cup", "Stationery Cup"),
            materials=("Bamboo Fiber", "Enamel", "Resin"),
            specs=("10 cm", "Pair"),
            features=("Grippy Bottom", "Stationery Organizer", "Weighted"),
            shape_sentences=(
                "It is a tall cylinder holding three pencils.",
                "The holder is open at the top, with pencils standing inside.",
            ),
            vocab=frozenset({"pencil", "pencils", "holder", "cylinder"}),
            draw=shapes.draw_pencil_holder,
            trim_rgb=(224, 184, 124),
        ),
        Kind(
            name="headset",
            aspect=1.0,
            surface="finish",
            title_nouns=("Wireless Headset", "Over-Ear Headset", "Studio Headset"),
            materials=("Zero Latency", "Wired", "Collapsible"),
            specs=("40 Hour Battery", "3.5 mm Jack"),
            features=("Noise Cancelling", "Built-In Mic", "Memory Foam"),
            shape_sentences=(
                "It is an over-ear headset with a padded headband and large ear cups.",
                "The headset has an arched headband joining two ear cups.",
            ),
            vocab=frozenset({"headset", "headsets", "headband", "ear", "cups"}),
            draw=shapes.draw_headset,
            trim_rgb=(48, 48, 52),
        ),
    ),
}

_HELDOUT_TEXT = TextStyle(
    asks={
        "solid": ("solid {c}", "in solid {c}", "a solid {c} one"),
        "zigzag": ("{c} with a zigzag pattern", "a {c} zigzag design", "{c} zigzag"),
        "stars": ("{c} with stars on it", "{c} strewn with stars", "a {c} one with stars"),
        "diamonds": ("{c} with diamonds", "{c} with diamonds on it", "{c} and diamonds"),
    },
    requests=(
        "The only requirement: {ask}.",
        "Must be {ask}, nothing else works with the decor.",
        "Hoping for {ask} if such an item exists.",
        "Currently hunting for {ask}.",
        "Anything {ask} would be perfect.",
    ),
    submission_titles=(
        "Which {kind} to order?",
        "Suggestions welcome: {kind}",
        "{Kind} hunt",
        "Torn on choosing a {kind}",
    ),
    openers=(
        "Ours vanished during a move.",
        "Renovating the flat this spring.",
        "Price range is negotiable.",
        "Asked colleagues and nobody knew.",
    ),
    filler_comments=(
        "How pricey can it be?",
        "Is this for you or someone else?",
        "The clearance section is worth a visit, that's how I scored ours.",
        "Commenting to see answers.",
    ),
    op_replies=(
        "Price is secondary honestly. {request}",
        "It's for me. {request}",
        "Will do. Still, {request}",
    ),
    context_mentions=(
        "My previous purchase was {url} and it held up well.",
        "Previously ordered {url}, no complaints.",
    ),
    gt_templates=(
        "Grabbed the {title} a while ago, still pleased with it: {url}",
        "Take a peek: {title} ({url})",
        "{url} - the {title}. Fits your description.",
    ),
    descriptions={
        "solid": (
            "This photo features {a_kind} finished in solid {c}.",
            "Pictured is {a_kind}; its {surface} is solid {c} throughout.",
        ),
        "zigzag": (
            "This photo features {a_kind} finished in {c} with a {tone} zigzag motif.",
            "Pictured is {a_kind}; its {surface} is {c}, crossed by {tone} zigzag lines.",
        ),
        "stars": (
            "This photo features {a_kind} finished in {c} and scattered with {tone} stars.",
            "Pictured is {a_kind}; its {surface} is {c} with {tone} stars.",
        ),
        "diamonds": (
            "This photo features {a_kind} finished in {c} with rows of {tone} diamonds.",
            "Pictured is {a_kind}; its {surface} is {c} with a lattice of {tone} diamonds.",
        ),
    },
    closers=(
        "A gentle gradient fills the background.",
        "Lighting is soft, casting a faint shadow.",
    ),
)


def _heldout_title(rng: random.Random, brand: str, kind: Kind) -> str:
    # "Trellis & Vine Watering Can (2 Liter) - Long Reach, Galvanized Steel"
    return (
        f"{brand} {rng.choice(kind.title_nouns)} ({rng.choice(kind.specs)}) - "
        f"{rng.choice(kind.features)}, {rng.choice(kind.materials)}"
    )


HELDOUT = Style(
    name="heldout",
    colours=_HELDOUT_COLOURS,
    patterns=("solid", "zigzag", "stars", "diamonds"),
    categories=_HELDOUT_KINDS,
    brands=(
        "Trellis & Vine",
        "Quillon",
        "Fenwright",
        "Osprey Lane",
        "Haverly",
        "Juniper Row",
        "Castellan",
        "Wrenfold",
        "Pemberly",
        "Tamsin Goods",
    ),
    text=_HELDOUT_TEXT,
    tone_dark="deeper",
    tone_light="lighter",
    title_format=_heldout_title,
    extra_words=frozenset({"zigzags", "star", "starry", "diamond", "argyle"}),
)

STYLES: dict[str, Style] = {DEFAULT.name: DEFAULT, HELDOUT.name: HELDOUT}
