"""Selection conversations in many phrasings, for the stand-in's instruction skill.

The synthetic catalogue speaks with one voice: eight colours, four patterns, one way of writing
the look in a title and one family of request templates. ``tiny``'s text-selection skill,
trained on that alone, matched those words and not the idea: 0.875 on our own phrasing, 0.14
on a generator it never saw (docs/synthetic.md). This module draws text-only conversations
from a much wider space, so the skill becomes "find the candidate whose text says the requested
colour and pattern", whatever the words:

* ~70 colour words in 12 families and 18 patterns, each with several spellings (``stripes`` /
  ``striped`` / ``stripy``, ``dots`` / ``dotted`` / ``spotted``, ``plain`` / ``solid``), the
  request's and the title's drawn independently; a request may name the colour by another word
  of its family (``red`` for a ``crimson`` title), never ambiguous within a list;
* a dozen ways of writing the look beside a title (on its own line, where LaViC puts the five
  item tokens; in brackets; after a dash; as ``Colour: ... | Pattern: ...``; before the title);
* request sentences, submission titles, openers and comments of their own;
* candidate lists of one kind with hard negatives: some share the answer's colour, some its
  pattern, so neither word alone picks the answer.

It imports nothing of either catalogue generator. The words of ``lavic synthesize-unseen`` (its
colours, patterns and kinds) are left out on purpose (tested), so that catalogue stays a
measurement of what travels.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from lavic.errors import LavicError

# Colour words by family. A list never holds two colours of one family, and a request may
# name the answer's colour by another word of its family ("red" for a "crimson" title): a
# shop's colour names are many, a buyer's few, and LaViC's item tokens read like the common
# word (the [CLS]-path warm start pulls them to it), so the skill must match by meaning.
COLOUR_FAMILIES: tuple[tuple[str, ...], ...] = (
    ("red", "crimson", "ruby", "cherry", "vermilion", "burgundy", "maroon", "wine"),
    ("orange", "amber", "apricot", "peach", "rust", "copper"),
    ("yellow", "mustard", "lemon", "lemon yellow", "gold", "honey", "ochre"),
    ("green", "olive", "lime", "mint", "forest green", "sage", "jade", "bottle green"),
    ("blue", "navy", "sky blue", "baby blue", "sapphire", "denim", "cerulean", "indigo",
     "periwinkle"),
    ("teal", "turquoise", "aqua", "cyan"),
    ("purple", "violet", "lavender", "lilac", "magenta", "fuchsia", "mauve"),
    ("rose", "blush", "dusty rose", "coral", "salmon"),
    ("brown", "tan", "khaki", "taupe", "bronze", "sand", "beige"),
    ("white", "ivory", "off-white"),
    ("grey", "charcoal", "graphite", "slate", "silver"),
    ("black",),
)  # fmt: skip
COLOURS: tuple[str, ...] = tuple(c for family in COLOUR_FAMILIES for c in family)
FAMILY_OF: dict[str, tuple[str, ...]] = {c: f for f in COLOUR_FAMILIES for c in f}
# How often a request names the answer's colour by another word of its family.
SIBLING_RATE = 0.3
# In generic conversations (broad_sample), how often the look sits on its own line.
GENERIC_LINE_RATE = 0.7


@dataclass(frozen=True)
class PatternWords:
    """One pattern's spellings: adjectives (``striped``), nouns (``stripes``) and the
    prepositional phrases a request uses (``with stripes``)."""

    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]
    withs: tuple[str, ...]


PATTERNS: tuple[PatternWords, ...] = (
    PatternWords(("plain", "solid", "solid-colour", "plain-coloured"), ("plain", "solid"),
                 ("with no pattern", "in a solid colour", "without any print")),
    PatternWords(("striped", "stripy", "stripe"), ("stripes", "stripe pattern"),
                 ("with stripes", "with a striped pattern", "in stripes")),
    PatternWords(("dotted", "spotted", "dotty"), ("dots", "spots"),
                 ("with dots", "with spots", "with a dotted print")),
    PatternWords(("checkered", "checked", "chequered"), ("checks", "checkerboard"),
                 ("with checks", "in a checkered print", "with a check pattern")),
    PatternWords(("zigzag", "chevron"), ("zigzags", "chevrons"),
                 ("with zigzags", "with a chevron print")),
    PatternWords(("floral", "flowery", "flowered"), ("flowers", "florals"),
                 ("with flowers", "with a floral print")),
    PatternWords(("starry", "star-print"), ("stars", "star print"),
                 ("with stars", "with little stars")),
    PatternWords(("argyle", "diamond"), ("diamonds", "argyle"),
                 ("with diamonds", "with an argyle pattern")),
    PatternWords(("camo", "camouflage"), ("camo", "camouflage"),
                 ("in camo", "with a camouflage print")),
    PatternWords(("paisley",), ("paisley", "paisley print"), ("with paisley", "in paisley")),
    PatternWords(("leopard-print", "leopard"), ("leopard print", "animal print"),
                 ("in leopard print", "with an animal print")),
    PatternWords(("herringbone",), ("herringbone",), ("in herringbone", "with a herringbone weave")),
    PatternWords(("marbled", "marble-effect"), ("marbling", "marble effect"),
                 ("with marbling", "with a marble effect")),
    PatternWords(("houndstooth",), ("houndstooth",), ("in houndstooth", "with houndstooth")),
    PatternWords(("heart-print", "hearts"), ("hearts", "heart print"),
                 ("with hearts", "with little hearts")),
    PatternWords(("tie-dye", "tie-dyed"), ("tie-dye",), ("in tie-dye", "with a tie-dye look")),
    PatternWords(("wavy", "wave-print"), ("waves", "wavy lines"),
                 ("with waves", "with wavy lines")),
    PatternWords(("honeycomb", "hexagonal"), ("hexagons", "honeycomb"),
                 ("with hexagons", "with a honeycomb print")),
)  # fmt: skip

KINDS: tuple[str, ...] = (
    "mug", "tote bag", "hoodie", "umbrella", "backpack", "lamp", "cushion", "vase", "scarf",
    "notebook", "water bottle", "phone case", "blanket", "rug", "teapot", "sneaker",
    "baseball cap", "lunch box", "wallet", "desk chair", "curtain", "bath towel", "apron",
    "beanie", "sock", "jacket", "planter", "clock", "bowl", "pencil case", "yoga mat",
    "duvet cover", "shower curtain", "travel mug", "laptop sleeve", "dog collar", "bike helmet",
    "raincoat", "sun hat", "table runner", "coaster", "jar", "cooler bag", "pillowcase",
)  # fmt: skip

_BRAND_SYLLABLES = ("ar", "bel", "cor", "dun", "el", "fen", "gar", "hal", "ist", "jo", "kel",
                    "lum", "mor", "nor", "ol", "pra", "quin", "ros", "sel", "tor", "ul", "vex",
                    "wyn", "zar")  # fmt: skip
_QUALIFIERS = ("Classic", "Everyday", "Premium", "Deluxe", "Compact", "Large", "Slim",
               "Lightweight", "Heavy-Duty", "Vintage", "Modern", "Soft", "Reusable", "Handmade",
               "Organic Cotton", "Stainless", "Waterproof", "Foldable", "Travel", "Kids'")  # fmt: skip
_TAILS = ("", "", " - 2 Pack", " for Home", " (Set of 2)", ", Gift Idea", " - New Model",
          " | Free Returns", ", Large", " 2024 Edition")  # fmt: skip


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _title_case(text: str) -> str:
    return " ".join(_cap(w) for w in text.split(" "))


# How the look is written next to a title (``{t}``): colour ``{c}``/``{C}``, pattern adjective
# ``{a}``/``{A}``, pattern noun ``{n}``. The first ones put it on its own line after the title,
# where LaViC puts an item's five tokens.
LOOK_SLOTS: tuple[str, ...] = (
    "{t}\n{c} {n}",
    "{t}\n{c}, {a}",
    "{t}\nColour: {c}; pattern: {n}",
    "{t}, {c} {n}",
    "{t} ({c}, {a})",
    "{t} - {C}/{A}",
    "{t} | {C} | {A}",
    "{t} | Colour: {C} | Pattern: {A}",
    "{C} {A} {t}",
    "{t} in {c} with {n}",
    "{t} [{c} / {a}]",
    "{t} - {a} design, {c}",
)

# Requests: ``{c}``/``{C}`` colour, ``{a}`` pattern adjective, ``{n}`` noun, ``{w}`` a
# with-phrase, ``{k}`` the kind.
REQUESTS: tuple[str, ...] = (
    "I want a {c} {k} {w}.",
    "Ideally {c} and {a}.",
    "Looking for something {a} in {c}.",
    "{C} {w}, if that exists.",
    "My only rule: {c}, {a}.",
    "Has to be {c}. I'd love it {w} too.",
    "Any suggestions for a {a} {c} one?",
    "I'd like {c} with {n}, nothing else really matters.",
    "Colour-wise {c}, pattern-wise {n}.",
    "Think {c} {n}.",
    "It should match my room: {c} and {a}.",
    "Preferably a {c} {k}, {a}.",
    "I keep coming back to {c} with {n}.",
    "Something {c}... and {a} would be perfect.",
    "Want it {a}. And {c}, definitely {c}.",
    "Searching for a {k} that is {c} {w}.",
)
_SUBMISSIONS = (
    "Need a new {k}", "{K} suggestions", "What {k} do you recommend?", "Best {k}?",
    "Shopping for a {k}", "Gift idea: {k}", "Recommend me a {k}", "{K} help",
)  # fmt: skip
_OPENERS = (
    "My old one is falling apart.", "It's a gift for a friend.", "First time buying one.",
    "Redecorating this month.", "Budget around $30.", "I lost mine on holiday.",
    "Want to treat myself.", "", "",
)  # fmt: skip
_COMMENTS = (
    "Good luck with the search!", "Check the reviews first.", "Mine came from a local shop.",
    "Sizes run small, just so you know.", "Watch out for fake listings.",
    "What's your budget?", "Any colour preference?", "Do you have a link to yours?",
)  # fmt: skip
_REPLIES = ("Thanks! {r}", "Sure. {r}", "Good question. {r}", "Yes. {r}", "Noted. {r}")

# (No tartan/plaid or "geometric": too close to checks and to diamonds/hexagons to tell apart
# by meaning, and a list must have exactly one right answer.)

# What `lavic synthesize-unseen` uses (tested against its vocabulary): never drawn here.
UNSEEN_WORDS = frozenset(
    {"scarlet", "tangerine", "emerald", "cobalt", "plum", "pink", "chocolate", "cream",
     "pinstripe", "gingham", "speckle", "polka", "kettle", "saucepan", "oven mitt", "tent",
     "kite", "lantern", "binder", "envelope", "stapler"}
)  # fmt: skip


# (context, candidates as (item_id, text after "ID: "), the answer's item_id): the fields of
# lavic.pretrain.instruct.SelectionSample
Conversation = tuple[str, tuple[tuple[str, str], ...], str]


def _item_id(rng: random.Random, used: set[str]) -> str:
    alphabet = string.ascii_uppercase + string.digits
    while True:
        item_id = "B0" + "".join(rng.choice(alphabet) for _ in range(8))
        if item_id not in used:
            used.add(item_id)
            return item_id


def _title(rng: random.Random, kind: str) -> str:
    brand = _cap("".join(rng.choice(_BRAND_SYLLABLES) for _ in range(rng.randint(2, 3))))
    return f"{brand} {rng.choice(_QUALIFIERS)} {_title_case(kind)}{rng.choice(_TAILS)}"


def _look(
    rng: random.Random, title: str, colour: str, pattern: PatternWords, generic: bool = False
) -> str:
    adjective, noun = rng.choice(pattern.adjectives), rng.choice(pattern.nouns)
    slot = rng.choice(LOOK_SLOTS)
    # (the spellings and slot above are drawn in generic conversations too: one random stream
    # for both kinds, the one the shipped adapter was trained on)
    if generic:  # the common words, mostly on their own line: how the item tokens read
        colour, adjective, noun = FAMILY_OF[colour][0], pattern.adjectives[0], pattern.nouns[0]
        slot = LOOK_SLOTS[0] if rng.random() < GENERIC_LINE_RATE else slot
    return slot.format(
        t=title, c=colour, C=_title_case(colour), a=adjective, A=_title_case(adjective), n=noun
    )


def _context(
    rng: random.Random, kind: str, colour: str, pattern: PatternWords, generic: bool = False
) -> str:
    family = FAMILY_OF[colour]
    if generic:  # any word of the family, the common one included
        colour = rng.choice(family)
    elif len(family) > 1 and rng.random() < SIBLING_RATE:
        colour = rng.choice([c for c in family if c != colour])
    request = rng.choice(REQUESTS).format(
        c=colour,
        C=_cap(colour),
        a=rng.choice(pattern.adjectives),
        n=rng.choice(pattern.nouns),
        w=rng.choice(pattern.withs),
        k=kind,
    )
    title = rng.choice(_SUBMISSIONS).format(k=kind, K=_cap(kind))
    opener = rng.choice(_OPENERS)
    if rng.random() < 0.6:  # the look in the submission ...
        body = " ".join(x for x in (opener, request) if x)
        comments = rng.sample(_COMMENTS, rng.randint(0, 2))
    else:  # ... or in the seeker's reply to a comment
        body = opener
        comments = [rng.choice(_COMMENTS), rng.choice(_REPLIES).format(r=request)]
    title += "" if title.endswith("?") else "."
    text = f"<submission>{title} {body}".rstrip() + "</submission>\n"
    return text + "".join(f"<comment>{c}</comment>\n" for c in comments)


def broad_sample(rng: random.Random, num_candidates: int, generic: bool = False) -> Conversation:
    """One conversation: a kind, a wanted look, and ``num_candidates`` items of that kind with
    distinct looks, drawn from a grid of colours x patterns that holds the answer's (so some
    candidates share its colour and some its pattern).

    ``generic``: each candidate's look is written in common words (its colour family's first
    word and the pattern's plain noun: ``red stripes``), as LaViC's item tokens read once the
    [CLS]-path warm start has pulled them there, while the request names the colour by any word
    of its family (``crimson``, ``wine``) and the pattern by any spelling. The skill this
    trains is the bridge a real VLM's language model has from its own pretraining: a shop's or
    a buyer's colour word to what the picture shows.
    """
    if num_candidates < 2:
        raise LavicError(f"num_candidates {num_candidates}: need >= 2")
    kind = rng.choice(KINDS)
    n_patterns = rng.randint(2, min(4, num_candidates))
    n_colours = -(-num_candidates // n_patterns) + rng.randint(0, 2)
    colours = [rng.choice(f) for f in rng.sample(COLOUR_FAMILIES, n_colours)]
    patterns = rng.sample(PATTERNS, n_patterns)
    cells = [(c, p) for c in colours for p in patterns]
    answer = cells[0]
    looks = [answer, *rng.sample(cells[1:], num_candidates - 1)]
    rng.shuffle(looks)
    used: set[str] = set()
    candidates = []
    target = ""
    for colour, pattern in looks:
        item_id = _item_id(rng, used)
        candidates.append((item_id, _look(rng, _title(rng, kind), colour, pattern, generic)))
        if (colour, pattern) == answer:
            target = item_id
    return _context(rng, kind, *answer, generic=generic), tuple(candidates), target


def broad_samples(
    seed: int, count: int, num_candidates: int, generic: bool = False
) -> list[Conversation]:
    """``count`` conversations, a pure function of the arguments."""
    stream = f"phrasing/{seed}/{num_candidates}" + ("/generic" if generic else "")
    rng = random.Random(stream)
    return [broad_sample(rng, num_candidates, generic) for _ in range(count)]


__all__ = [
    "COLOURS",
    "COLOUR_FAMILIES",
    "KINDS",
    "LOOK_SLOTS",
    "PATTERNS",
    "Conversation",
    "broad_samples",
]
