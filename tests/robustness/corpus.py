"""The bad-input corpus: one malformed record (or file) per case, with what the error must say.

Each conversation / metadata case is a file whose record at ``line`` is bad and whose other
records are good, so a strict load stops there with ``file:line: problem`` and a lenient load
keeps every good record and skips (and counts) the bad one.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

# Ids of tests/tune/fixtures.py's catalogue, so good records point at real items and images.
GOOD_IDS = [f"B0000000{c}{d}" for c in "AB" for d in "12345"] + ["0060188782"]
MOJIBAKE = "It\u00e2\u0080\u0099s great \u00e2\u0080\u0094 isn\u00e2\u0080\u0099t it"


def conversation(k: int = 0, **overrides) -> dict:
    """A valid conversation record (``None``-valued overrides drop the key)."""
    cands = [GOOD_IDS[(k + j) % len(GOOD_IDS)] for j in range(4)]
    record = {
        "context": f"<submission>Looking for a red mug number {k}.</submission>\n"
        "<comment>Try the striped one.</comment>\n",
        "context_items": [],
        "gt": "This one.",
        "gt_items": [cands[1]],
        "candidates_st": cands,
        "candidates_gpt_large": list(reversed(cands)),
    }
    for key, value in overrides.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def line(record: dict | str | bytes) -> bytes:
    if isinstance(record, bytes):
        return record
    if isinstance(record, str):
        return record.encode("utf-8")
    return json.dumps(record).encode("utf-8")


@dataclass(frozen=True)
class Case:
    """A file whose record at ``line`` is bad; the one-line error must contain ``says``."""

    name: str
    data: bytes
    line: int | None
    says: str
    skippable: bool = True  # in lenient mode: skipped and counted (else still fatal)


def _jsonl(bad: bytes, *, tail: bool = True) -> bytes:
    good = [line(conversation(0)), line(conversation(1))]
    rows = [good[0], bad] + ([good[1]] if tail else [])
    return b"".join(r + b"\n" for r in rows)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# --------------------------------------------------------------------------- conversations

CONVERSATION_CASES: list[Case] = [
    Case(
        "truncated last line",
        line(conversation(0)) + b"\n" + line(conversation(1)) + b"\n" + line(conversation(5))[:40],
        3,
        "truncated last line",
    ),
    Case(
        "undecodable bytes",
        _jsonl(line(conversation(2)).replace(b"red mug", b"caf\xe9 mug")),
        2,
        "not valid UTF-8 text (byte 0xe9",
    ),
    Case("not an object", _jsonl(b"[1, 2, 3]"), 2, "expected a JSON object on each line"),
    Case("malformed JSON", _jsonl(b'{"context": , "gt": 1}'), 2, "malformed JSON"),
    Case(
        "missing key context",
        _jsonl(line(conversation(2, context=None))),
        2,
        "missing key 'context'",
    ),
    Case(
        "missing key gt_items",
        _jsonl(line(conversation(2, gt_items=None))),
        2,
        "missing key 'gt_items'",
    ),
    Case(
        "context is a number",
        _jsonl(line(conversation(2, context=42))),
        2,
        "key 'context' must be a string, got a number",
    ),
    Case(
        "gt_items is a string",
        _jsonl(line(conversation(2, gt_items="B0000000A1"))),
        2,
        "key 'gt_items' must be a list of item ids, got a string",
    ),
    Case(
        "candidate id is a number",
        _jsonl(line(conversation(2, candidates_st=["B0000000A1", 7]))),
        2,
        "key 'candidates_st'[1] must be a string item id, got a number",
    ),
    Case(
        "candidate id is null",
        _jsonl(line(conversation(2, candidates_st=["B0000000A1", None]))),
        2,
        "key 'candidates_st'[1] must be a string item id, got null",
    ),
    Case(
        "empty candidate list",
        _jsonl(line(conversation(2, candidates_st=[]))),
        2,
        "key 'candidates_st' is an empty list",
    ),
    Case(
        "empty gt_items",
        _jsonl(line(conversation(2, gt_items=[]))),
        2,
        "key 'gt_items' is an empty list",
    ),
    Case(
        "empty item id",
        _jsonl(line(conversation(2, candidates_st=["B0000000A1", " "]))),
        2,
        "key 'candidates_st'[1] is an empty item id",
    ),
    Case(
        "no candidate list",
        _jsonl(line(conversation(2, candidates_st=None, candidates_gpt_large=None))),
        2,
        "no candidate list",
    ),
    Case(
        "other candidate keys than line 1",
        _jsonl(line(conversation(2, candidates_gpt_large=None))),
        2,
        "differ from line 1",
    ),
    Case(
        "candidate list repeats an id",
        _jsonl(line(conversation(2, candidates_st=["B0000000A1", "B0000000A2", "B0000000A1"]))),
        2,
        "key 'candidates_st'[2] repeats item id 'B0000000A1'",
    ),
    Case(
        "candidate list given twice (duplicate key)",
        _jsonl(
            line(conversation(2))[:-1]
            + b', "candidates_st": ["B0000000A1", "B0000000A2", "B0000000A3", "B0000000A4"]}'
        ),
        2,
        "duplicate key 'candidates_st'",
    ),
    Case(
        "unpaired surrogate escape",
        _jsonl(line(conversation(2)).replace(b"red mug", b"red \\ud83d mug")),
        2,
        "unpaired surrogate",
    ),
    Case(
        "item-token placeholder in the text",
        _jsonl(line(conversation(2, context="<submission>see <ItemImageEmb1></submission>"))),
        2,
        "reserved item token '<ItemImageEmb1>'",
    ),
    Case(
        "JSON nested 100,000 deep",
        _jsonl(('{"context": ' + _nested(100_000) + "}").encode()),
        2,
        "nested too deeply",
    ),
    Case(
        "NaN where a list belongs",
        _jsonl(line(conversation(2)).replace(b'"gt_items": ["B0000000A4"]', b'"gt_items": NaN')),
        2,
        "key 'gt_items' must be a list of item ids, got a number",
    ),
]

# Text that is odd but valid: loaded verbatim, never "repaired" and never an error.
ODD_BUT_VALID_TEXT = {
    "mojibake": MOJIBAKE,
    "emoji and astral plane": "Need a mug \U0001f375 for \U0001d54f-mas \U0001f384",
    "right-to-left and combining marks": "\u05e9\u05dc\u05d5\u05dd e\u0301\u0301 \u202eabc\u202c",
    "zero-width and BOM in the middle": "mug\u200b\u200d\ufeffcup",
    "NUL and control characters": "mug\u0000cup\u0007\u001b[31m",
    "tags that look like markup": "<submission><script>alert(1)</script></comment><image>",
    "lone combining mark and noncharacters": "\u0301\ufffe\uffff\U0010ffff",
}

# --------------------------------------------------------------------------- item2meta_train.json


def _train_meta(items: dict) -> bytes:
    return json.dumps(items, indent=1).encode("utf-8")


def good_train_meta() -> dict:
    return {
        item: {
            "title": f"red mug {i}",
            "images": [{"large": f"https://example.invalid/{item}.jpg"}],
            "image_descriptions_llava_cleaned": {f"{item}_0.jpg": f"a plain red mug number {i}"},
        }
        for i, item in enumerate(GOOD_IDS)
    }


def _with(item_id: str, value) -> bytes:
    """The good metadata with ``item_id`` set to ``value`` (raw JSON text when a str)."""
    meta = good_train_meta()
    meta[item_id] = "__BAD__"
    text = json.dumps(meta, indent=1)
    raw = value if isinstance(value, str) else json.dumps(value)
    return text.replace('"__BAD__"', raw).encode("utf-8")


def _line_of(data: bytes, needle: bytes) -> int:
    return data[: data.index(needle)].count(b"\n") + 1


def _meta_case(name: str, data: bytes, needle: bytes | None, says: str, **kw) -> Case:
    return Case(name, data, _line_of(data, needle) if needle else None, says, **kw)


_T = _train_meta(good_train_meta())
TRAIN_META_CASES: list[Case] = [
    _meta_case(
        "truncated file",
        _T[: len(_T) // 2],
        None,
        "truncated file",
        skippable=False,
    ),
    Case("top level is an array", b"[1, 2]\n", 1, "must be a JSON object", skippable=False),
    Case("empty file", b"", None, "empty file", skippable=False),
    _meta_case(
        "item is a string",
        _with("B0000000X9", '"a string"'),
        b'"B0000000X9"',
        "item 'B0000000X9': expected an object, got a string",
    ),
    _meta_case(
        "title is a number",
        _with("B0000000X9", {"title": 5}),
        b'"B0000000X9"',
        "key 'title' must be a string or null, got a number",
    ),
    _meta_case(
        "images is an object",
        _with("B0000000X9", {"title": "t", "images": {"large": "u"}}),
        b'"B0000000X9"',
        "key 'images' must be a list, got an object",
    ),
    _meta_case(
        "image entry is a string",
        _with("B0000000X9", {"title": "t", "images": ["https://x.invalid/a.jpg"]}),
        b'"B0000000X9"',
        "key 'images'[0] must be an object, got a string",
    ),
    _meta_case(
        "descriptions is a list",
        _with("B0000000X9", {"title": "t", "image_descriptions_llava_cleaned": ["a"]}),
        b'"B0000000X9"',
        "key 'image_descriptions_llava_cleaned' must be an object",
    ),
    _meta_case(
        "duplicate item id",
        _T[:-2] + b',\n "B0000000A1": {"title": "again"}\n}',
        b'"B0000000A1": {"title": "again"}',
        "duplicate item id 'B0000000A1'",
    ),
    _meta_case(
        "empty item id",
        _T[:-2] + b',\n "": {"title": "no id"}\n}',
        b'"": {"title"',
        "empty item id",
    ),
    _meta_case(
        "undecodable bytes",
        _T.replace(b"red mug 3", b"red \xff mug 3"),
        b"red \xff mug 3",
        "not valid UTF-8 text (byte 0xff",
        skippable=False,
    ),
    _meta_case(
        "data after the object",
        _T + b'\n{"B0000000Z1": {}}\n',
        b'{"B0000000Z1"',
        "extra data after the top-level JSON object",
        skippable=False,
    ),
    _meta_case(
        "unpaired surrogate in a title",
        _with("B0000000X9", '{"title": "mug \\udc80"}'),
        b'"B0000000X9"',
        "unpaired surrogate",
    ),
    _meta_case(
        "item-token placeholder in a title",
        _with("B0000000X9", {"title": "mug <ItemImageEmb5>"}),
        b'"B0000000X9"',
        "reserved item token '<ItemImageEmb5>'",
    ),
    _meta_case(
        "JSON nested 100,000 deep",
        _with("B0000000X9", '{"title": "t", "x": ' + _nested(100_000) + "}"),
        b'"B0000000X9"',
        "item 'B0000000X9': JSON nested too deeply",
        skippable=False,  # where the value ends is unknown: the rest cannot be read
    ),
]

# --------------------------------------------------------------------------- item2meta_valid.jsonl


def valid_meta_row(k: int, **overrides) -> dict:
    item = GOOD_IDS[k % len(GOOD_IDS)]
    row = {
        "title": f"red mug {k}",
        "image_name": f"{item}_0.jpg",
        "image": f"https://example.invalid/{item}.jpg",
        "image_description_llava_cleaned": f"a plain red mug number {k}",
    }
    for key, value in overrides.items():
        if value is None:
            row.pop(key, None)
        else:
            row[key] = value
    return row


def _vjsonl(bad: bytes, *, tail: bool = True) -> bytes:
    rows = [line(valid_meta_row(0)), bad] + ([line(valid_meta_row(1))] if tail else [])
    return b"".join(r + b"\n" for r in rows)


VALID_META_CASES: list[Case] = [
    Case(
        "truncated last line",
        line(valid_meta_row(0))
        + b"\n"
        + line(valid_meta_row(1))
        + b"\n"
        + line(valid_meta_row(3))[:30],
        3,
        "truncated last line",
    ),
    Case(
        "undecodable bytes",
        _vjsonl(line(valid_meta_row(2)).replace(b"red mug", b"red \xc3\x28 mug")),
        2,
        "not valid UTF-8 text (byte 0xc3",
    ),
    Case("not an object", _vjsonl(b'"just a string"'), 2, "expected a JSON object on each line"),
    Case(
        "missing image_name",
        _vjsonl(line(valid_meta_row(2, image_name=None))),
        2,
        "missing key 'image_name'",
    ),
    Case(
        "item_id is a number",
        _vjsonl(line(valid_meta_row(2, item_id=7))),
        2,
        "key 'item_id' must be a non-empty string, got a number",
    ),
    Case(
        "duplicate image_name",
        _vjsonl(line(valid_meta_row(0, title="again"))),
        2,
        "duplicate image_name 'B0000000A1_0.jpg'",
    ),
    Case(
        "title is a list",
        _vjsonl(line(valid_meta_row(2, title=["a"]))),
        2,
        "key 'title' must be a string or null, got an array",
    ),
    Case(
        "description is a number",
        _vjsonl(line(valid_meta_row(2, image_description_llava_cleaned=3.5))),
        2,
        "key 'image_description_llava_cleaned' must be a string or null, got a number",
    ),
    Case(
        "duplicate key",
        _vjsonl(line(valid_meta_row(2))[:-1] + b', "title": "second title"}'),
        2,
        "duplicate key 'title'",
    ),
    Case(
        "unpaired surrogate escape",
        _vjsonl(line(valid_meta_row(2)).replace(b"red mug", b"red \\udbff mug")),
        2,
        "unpaired surrogate",
    ),
    Case(
        "JSON nested 100,000 deep",
        _vjsonl(('{"image_name": "B0000000A3_0.jpg", "x": ' + _nested(100_000) + "}").encode()),
        2,
        "nested too deeply",
    ),
]

# ------------------------------------------------------------------------------------ configs


@dataclass(frozen=True)
class ConfigCase:
    name: str
    data: bytes
    line: int | None
    says: str


CONFIG_CASES: list[ConfigCase] = [
    ConfigCase("invalid YAML", b"lenient: true\ndata_dir: [unclosed\n", 3, "invalid YAML"),
    ConfigCase("top level is a list", b"- data_dir\n- x\n", None, "top level must be a mapping"),
    ConfigCase("unknown option", b"lenient: true\nnope: 3\n", None, "unknown option(s) ['nope']"),
    ConfigCase("bool option given a number", b"lenient: 3\n", None, "must be true or false"),
    ConfigCase("undecodable bytes", b"data_dir: caf\xe9\n", None, "not UTF-8 text"),
    ConfigCase(
        "python object tag",
        b"lenient: !!python/object/apply:os.system ['echo pwned']\n",
        1,
        "invalid YAML",
    ),
    ConfigCase("null for an option that takes none", b"lenient: null\n", None, "may not be null"),
    ConfigCase("a list for a path", b"data_dir: [a, b]\n", None, "option 'data_dir'"),
    ConfigCase("a mapping for a path", b"json: {a: 1}\n", None, "option 'json'"),
    ConfigCase("a repeated key", b"lenient: true\nlenient: false\n", 2, "duplicate key 'lenient'"),
    ConfigCase("an unhashable key", b"? [a, b]\n: 1\n", 1, "invalid YAML"),
]
# For `tune --config` (int / float / Literal / list options).
TUNE_CONFIG_CASES: list[ConfigCase] = [
    ConfigCase("int option given text", b"max_length: long\n", None, "option 'max_length'"),
    ConfigCase("int option given 1.5", b"batch_size: 1.5\n", None, "must be an integer"),
    ConfigCase("choice option off its list", b"precision: 64\n", None, "must be one of"),
    ConfigCase("int option given true", b"num_epochs: true\n", None, "must be a int"),
    ConfigCase("float option given a list", b"lr: [1, 2]\n", None, "option 'lr'"),
]

# ------------------------------------------------------------------------------------- images


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kw)
    return out.getvalue()


def png_header_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (24, 24), c) for c in [(250, 0, 0), (0, 250, 0), (0, 0, 250)]]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return out.getvalue()


def _sixteen_bit() -> bytes:
    image = Image.new("I;16", (20, 20))
    image.putdata([32768] * 400)  # mid-grey in 16 bits: 128 once scaled, not clipped to 255
    return _encode(image, "PNG")


def _rgba() -> bytes:
    image = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red
    return _encode(image, "PNG")


_JPEG = _encode(Image.new("RGB", (40, 30), (30, 120, 200)), "JPEG", quality=90)

# item id -> (bytes of <id>_0.jpg or None for special set-up, expected outcome of reading it)
IMAGE_CASES: dict[str, tuple[bytes | None, str]] = {
    "IMGOK00001": (_JPEG, "loaded"),
    "IMGZERO001": (b"", "unreadable"),
    "IMGCORRUPT": (bytes(range(256)) * 8, "unreadable"),
    "IMGTRUNC01": (_JPEG[: len(_JPEG) // 2], "unreadable"),
    "IMGHTML001": (b"<!doctype html><html><body>Access denied</body></html>", "unreadable"),
    "IMGCMYK001": (_encode(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), "JPEG"), "loaded"),
    "IMG16BIT01": (_sixteen_bit(), "loaded"),
    "IMGANIM001": (_animated_gif(), "loaded"),
    "IMGRGBA001": (_rgba(), "loaded"),
    "IMGPALET01": (_encode(Image.new("RGB", (20, 20), (9, 200, 9)).quantize(4), "PNG"), "loaded"),
    "IMG1BIT001": (_encode(Image.new("1", (20, 20), 1), "PNG"), "loaded"),
    "IMGBOMB001": (png_header_bomb(40_000, 40_000), "oversized"),
    "IMGDIR0001": (None, "missing"),  # a directory named IMGDIR0001_0.jpg
    "IMGLINK001": (None, "unsafe"),  # a symlink to a file outside the image folder
    "IMGNONE001": (None, "missing"),  # no file at all
    "IMG/SLASH1": (None, "unsafe"),  # a separator in the id
    "..": (None, "unsafe"),  # `.._0.jpg` is fine, but see the next
    "../IMGOK00001": (None, "unsafe"),  # climbs out of the folder
    "IMG\\BACKSL": (None, "unsafe"),
}
# `.._0.jpg` is a plain (if odd) name inside the folder, so it is merely missing.
IMAGE_CASES[".."] = (None, "missing")


def write_image_corpus(image_dir: Path, outside: Path) -> dict[str, str]:
    """Write the image corpus; returns item id -> expected outcome."""
    image_dir.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    secret = outside / "secret_0.jpg"
    secret.write_bytes(_JPEG)
    for item_id, (data, _) in IMAGE_CASES.items():
        if data is not None:
            (image_dir / f"{item_id}_0.jpg").write_bytes(data)
    (image_dir / "IMGDIR0001_0.jpg").mkdir(exist_ok=True)
    link = image_dir / "IMGLINK001_0.jpg"
    if not link.is_symlink():
        link.symlink_to(secret)
    return {item_id: outcome for item_id, (_, outcome) in IMAGE_CASES.items()}
