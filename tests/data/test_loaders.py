"""Loaders of the reference's formats: records, one-line errors naming file/line/problem,
lenient mode."""

from __future__ import annotations

import json

import pytest

from lavic.cli import main
from lavic.constants import MISSING_TITLE
from lavic.data.loaders import (
    candidate_keys,
    described_images,
    item_title,
    items_without_title,
    load_conversations,
    load_item_meta,
    load_split,
)
from lavic.data.records import LoadReport
from lavic.errors import DataError, LavicError

MOJIBAKE = "\u00e2\u0080\u0099"  # UTF-8 of U+2019 read as Latin-1, as in the published files


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _cli(argv, capsys) -> tuple[int, str, str]:
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _assert_one_line_cli_error(argv, capsys, where: str, problem: str) -> None:
    rc, _, err = _cli(argv, capsys)
    assert rc == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert where in lines[0] and problem in lines[0], lines[0]


# ----------------------------------------------------------------------------- conversations


def test_load_conversations_reads_every_field(tmp_path, make_conversation, make_jsonl):
    second = make_conversation(gt_items=["B00000000B", "B00000000A"], extra_field={"k": 1})
    path = _write(tmp_path / "test.jsonl", make_jsonl(make_conversation(), "", "   ", second))
    report = LoadReport("")
    conversations = load_conversations(path, report=report)

    assert [c.line for c in conversations] == [1, 4]  # blank lines are not records
    first = conversations[0]
    assert first.context == "<submission>Need a lip balm.</submission>\n"
    assert first.context_items == ("B000000001",)
    assert first.gt == "Try this one."
    assert first.gt_items == ("B00000000A",)
    assert first.candidates == {
        "candidates_st": ("B00000000A", "B00000000B", "0060188782"),
        "candidates_gpt_large": ("B00000000C", "B00000000A"),
    }
    assert first.source == str(path)
    assert first.candidate_list("candidates_st")[2] == "0060188782"
    assert conversations[1].raw["extra_field"] == {"k": 1}  # echoed verbatim
    assert conversations[1].gt_items == ("B00000000B", "B00000000A")
    assert report.loaded == 2 and report.skipped == [] and report.path == str(path)
    assert candidate_keys(conversations) == ["candidates_gpt_large", "candidates_st"]


def test_text_is_kept_verbatim_including_mojibake_and_bom(tmp_path, make_conversation):
    record = make_conversation(context=f"It{MOJIBAKE}s great", gt="caf\u00e9 \U0001f600")
    text = json.dumps(record)  # ASCII with \u escapes, as in the published files
    assert "\\u00e2\\u0080\\u0099" in text
    path = _write(tmp_path / "t.jsonl", b"\xef\xbb\xbf" + text.encode() + b"\n")
    (conversation,) = load_conversations(path)
    assert conversation.context == "It\u00e2\u0080\u0099s great"
    assert conversation.gt == "caf\u00e9 \U0001f600"


def test_missing_candidate_key_on_a_record(tmp_path, make_conversation, make_jsonl):
    path = _write(tmp_path / "t.jsonl", make_jsonl(make_conversation()))
    with pytest.raises(DataError) as info:
        load_conversations(path, candidate_key="candidates_bm25")
    assert info.value.line == 1 and "missing key 'candidates_bm25'" in info.value.problem
    (conversation,) = load_conversations(path)
    with pytest.raises(DataError, match=r"t\.jsonl:1: no candidate list 'candidates_x'"):
        conversation.candidate_list("candidates_x")


# (line 1 is always a good record; the bad one is line 2 unless said otherwise)
BAD_CONVERSATIONS = {
    "malformed_json": (b'{"context": "a", "gt": }', 2, "malformed JSON"),
    "not_utf8": (b'{"context": "caf\xe9"}', 2, "not valid UTF-8 text (byte 0xe9 at column 17)"),
    "not_an_object": (b'["B00000000A"]', 2, "expected a JSON object on each line, got an array"),
    "missing_key": ({"drop": "gt_items"}, 2, "missing key 'gt_items'"),
    "wrong_type_context": ({"context": ["a"]}, 2, "key 'context' must be a string, got an array"),
    "wrong_type_gt": ({"gt": 3}, 2, "key 'gt' must be a string, got a number"),
    "wrong_type_items": ({"context_items": "B0"}, 2, "key 'context_items' must be a list"),
    "wrong_item_in_list": (
        {"gt_items": ["B00000000A", 7]},
        2,
        "key 'gt_items'[1] must be a string item id, got a number",
    ),
    "empty_item_id": ({"candidates_st": ["B00000000A", ""]}, 2, "'candidates_st'[1] is an empty"),
    "empty_candidates": ({"candidates_st": []}, 2, "key 'candidates_st' is an empty list"),
    "candidates_not_list": (
        b'{"context": "", "context_items": [], "gt": "", "gt_items": ["A"], "candidates_st": null}',
        2,
        "key 'candidates_st' must be a list of item ids, got null",
    ),
    "empty_gt_items": ({"gt_items": []}, 2, "key 'gt_items' is an empty list"),
    "no_candidates": (
        {"drop": ["candidates_st", "candidates_gpt_large"]},
        2,
        "no candidate list",
    ),
    "different_keys": (
        {"drop": "candidates_gpt_large"},
        2,
        "candidate keys ['candidates_st'] differ from line 1's",
    ),
    "truncated_last_line": (b'{"context": "a", "context_items": [', 2, "truncated last line"),
}


def _bad_file(tmp_path, make_conversation, make_jsonl, bad) -> object:
    path = tmp_path / "data" / "cat" / "test.jsonl"
    if isinstance(bad, bytes):
        data = make_jsonl(make_conversation()) + bad + b"\n"
    else:
        overrides = {k: v for k, v in bad.items() if k != "drop"}
        drop = bad.get("drop", [])
        for key in [drop] if isinstance(drop, str) else drop:
            overrides[key] = None
        data = make_jsonl(make_conversation(), make_conversation(**overrides))
    return _write(path, data)


@pytest.mark.parametrize("case", sorted(BAD_CONVERSATIONS))
def test_bad_conversation_names_file_line_and_problem(
    tmp_path, capsys, make_conversation, make_jsonl, case
):
    bad, line, problem = BAD_CONVERSATIONS[case]
    path = _bad_file(tmp_path, make_conversation, make_jsonl, bad)
    if case == "truncated_last_line":
        path.write_bytes(path.read_bytes().rstrip(b"\n"))  # cut off mid-write: no final newline
    with pytest.raises(DataError) as info:
        load_conversations(path)
    error = info.value
    assert (error.path, error.line) == (str(path), line)
    assert problem in error.problem
    assert str(error).startswith(f"{path}:{line}: ") and "\n" not in str(error)

    argv = ["check-data", "--data_dir", str(tmp_path / "data")]
    _assert_one_line_cli_error(argv, capsys, f"{path}:{line}:", problem)

    # lenient: the bad record is skipped, counted and reported; the good one loads
    report = LoadReport("")
    conversations = load_conversations(path, lenient=True, report=report)
    assert [c.line for c in conversations] == [1]
    assert report.loaded == 1 and report.skipped == [str(error)]
    rc, out, _ = _cli([*argv, "--lenient"], capsys)
    assert rc == 0
    assert "lenient: 1 bad record(s) skipped" in out and str(error) in out


def test_valid_last_line_without_newline_is_fine(tmp_path, make_conversation, make_jsonl):
    path = _write(
        tmp_path / "t.jsonl", make_jsonl(make_conversation(), make_conversation()).rstrip()
    )
    assert len(load_conversations(path)) == 2


def test_lenient_counts_every_skip_and_accumulates(tmp_path, make_conversation, make_jsonl):
    data = make_jsonl(
        make_conversation(),
        "{oops",
        make_conversation(gt=1),
        "",
        make_conversation(),
        b"\xff\xfe",
        "42",
    )
    path = _write(tmp_path / "t.jsonl", data)
    report = LoadReport("")
    conversations = load_conversations(path, lenient=True, report=report)
    assert [c.line for c in conversations] == [1, 5]
    assert [m.split(":")[1] for m in report.skipped] == ["2", "3", "6", "7"]
    load_conversations(path, lenient=True, report=report)
    assert report.loaded == 4 and report.num_skipped == 8


def test_empty_file_has_no_records(tmp_path):
    path = _write(tmp_path / "t.jsonl", b"\n\n")
    assert load_conversations(path) == []


def test_missing_file_and_split(tmp_path, make_conversation, make_jsonl):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        load_conversations(tmp_path / "nope.jsonl")
    _write(tmp_path / "beauty" / "valid.jsonl", make_jsonl(make_conversation()))
    assert len(load_split(tmp_path, "beauty", "valid")) == 1
    with pytest.raises(
        LavicError, match=r"test\.jsonl: no such split file \(splits of 'beauty': \['valid'\]\)"
    ):
        load_split(tmp_path, "beauty", "test")
    with pytest.raises(LavicError, match=r"categories with data under .*: \['beauty'\]"):
        load_split(tmp_path, "home", "test")
    with pytest.raises(LavicError, match="unsafe category name '..'"):
        load_split(tmp_path, "..", "test")
    with pytest.raises(LavicError, match="unsafe split name '../valid'"):
        load_split(tmp_path, "beauty", "../valid")
    # a category folder may be a link to where the data lives
    (tmp_path / "linked").symlink_to(tmp_path / "beauty")
    assert len(load_split(tmp_path, "linked", "valid")) == 1


def test_cli_reports_missing_data_dir(tmp_path, capsys):
    _assert_one_line_cli_error(
        ["check-data", "--data_dir", str(tmp_path / "absent")], capsys, "absent", "not found"
    )
    _assert_one_line_cli_error(
        ["check-data", "--data_dir", str(tmp_path)], capsys, str(tmp_path), "no <category>"
    )


# ----------------------------------------------------------------------------- item metadata


def _train_meta() -> dict:
    return {
        "B00000000A": {
            "title": f"Lip balm {MOJIBAKE}",
            "images": [
                {"large": "https://x/a0.jpg", "thumb": "t"},
                {"large": None},
                {"large": "https://x/a2.jpg"},
            ],
            "image_descriptions_llava_cleaned": {
                "B00000000A_0.jpg": "A small tube.",
                "B00000000A_2.jpg": "",
                "B00000000A_7.jpg": "An extra view.",
            },
            "categories": ["Beauty"],
        },
        "0060188782": {"title": "", "images": []},
        "B00000000C": {},
    }


def test_load_train_meta(tmp_path):
    path = _write(tmp_path / "item2meta_train.json", json.dumps(_train_meta(), indent=2).encode())
    report = LoadReport("")
    meta = load_item_meta(path, report=report)
    assert list(meta) == ["B00000000A", "0060188782", "B00000000C"]
    a = meta["B00000000A"]
    assert a.title == "Lip balm \u00e2\u0080\u0099"
    # names follow list positions (the crawler's naming), plus described images not listed
    assert a.image_names == (
        "B00000000A_0.jpg",
        "B00000000A_1.jpg",
        "B00000000A_2.jpg",
        "B00000000A_7.jpg",
    )
    assert a.image_urls == {
        "B00000000A_0.jpg": "https://x/a0.jpg",
        "B00000000A_2.jpg": "https://x/a2.jpg",
    }
    assert a.descriptions["B00000000A_7.jpg"] == "An extra view."
    assert meta["0060188782"].title is None  # an empty title counts as none
    assert meta["B00000000C"].image_names == () and meta["B00000000C"].title is None
    assert report.loaded == 3

    samples = described_images(meta)
    assert [(s.item_id, s.image_name, s.title) for s in samples] == [
        ("B00000000A", "B00000000A_0.jpg", a.title),
        ("B00000000A", "B00000000A_7.jpg", a.title),
    ]
    assert item_title(meta, "0060188782") == MISSING_TITLE
    assert item_title(meta, "B00000000A") == a.title
    assert items_without_title(meta, ["B00000000A", "X", "B00000000C", "X"]) == ["X", "B00000000C"]


def test_described_images_title_fallback(tmp_path, make_jsonl):
    path = _write(
        tmp_path / "m.jsonl",
        make_jsonl(
            {"image_name": "X_0.jpg", "title": None, "image_description_llava_cleaned": "d"}
        ),
    )
    (sample,) = described_images(load_item_meta(path))
    assert (sample.item_id, sample.title, sample.description) == ("X", MISSING_TITLE, "d")


def test_load_valid_meta_merges_lines_per_item(tmp_path, make_jsonl):
    lines = [
        {
            "title": "Mask",
            "image_name": "B08LYS9WYD_10.jpg",
            "image": "u10",
            "image_description_llava_cleaned": "ten",
        },
        {
            "title": "Mask",
            "image_name": "B08LYS9WYD_2.jpg",
            "image": "u2",
            "image_description_llava_cleaned": "two",
        },
        {"title": "Book", "image_name": "0060188782_0.jpg", "image": "b0"},
        {
            "title": "Mask",
            "image_name": "B08LYS9WYD_0.jpg",
            "image": None,
            "image_description_llava_cleaned": None,
        },
    ]
    path = _write(tmp_path / "item2meta_valid.jsonl", make_jsonl(*lines))
    meta = load_item_meta(path)
    assert list(meta) == ["B08LYS9WYD", "0060188782"]
    mask = meta["B08LYS9WYD"]
    assert mask.title == "Mask"
    assert mask.image_names == ("B08LYS9WYD_0.jpg", "B08LYS9WYD_2.jpg", "B08LYS9WYD_10.jpg")
    assert mask.image_urls == {"B08LYS9WYD_10.jpg": "u10", "B08LYS9WYD_2.jpg": "u2"}
    assert mask.descriptions == {"B08LYS9WYD_10.jpg": "ten", "B08LYS9WYD_2.jpg": "two"}
    assert meta["0060188782"].descriptions == {}
    assert [s.image_name for s in described_images(meta)] == [
        "B08LYS9WYD_2.jpg",
        "B08LYS9WYD_10.jpg",
    ]


GOOD_VALID_LINE = {
    "title": "t",
    "image_name": "X_0.jpg",
    "image": "u",
    "image_description_llava_cleaned": "d",
}

BAD_VALID_META = {
    "malformed_json": (b'{"title": "t", "image_name": }', "malformed JSON"),
    "not_utf8": (b'{"title": "\xc3("}', "not valid UTF-8 text"),
    "not_an_object": (b'"X_1.jpg"', "expected a JSON object on each line, got a string"),
    "missing_image_name": ({"title": "t"}, "missing key 'image_name'"),
    "empty_image_name": ({"image_name": ""}, "key 'image_name' is an empty string"),
    "item_id_type": (
        {"image_name": "X.png", "item_id": ["X"]},
        "key 'item_id' must be a non-empty string, got an array",
    ),
    "duplicate": (GOOD_VALID_LINE, "duplicate image_name 'X_0.jpg' (first on line 1)"),
    "image_name_climbs": (
        {"image_name": "../../../../etc/passwd"},
        "key 'image_name' '../../../../etc/passwd' is not a plain file name",
    ),
    "image_name_is_a_path": ({"image_name": "sub/X_1.jpg"}, "is not a plain file name"),
    "image_name_backslash": ({"image_name": "..\\X_1.jpg"}, "is not a plain file name"),
    "title_type": (
        {"image_name": "X_1.jpg", "title": ["t"]},
        "key 'title' must be a string or null",
    ),
    "description_type": (
        {"image_name": "X_1.jpg", "image_description_llava_cleaned": 5},
        "key 'image_description_llava_cleaned' must be a string or null, got a number",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_VALID_META))
def test_bad_valid_meta_line(tmp_path, capsys, make_jsonl, case):
    bad, problem = BAD_VALID_META[case]
    path = _write(tmp_path / "item2meta_valid.jsonl", make_jsonl(GOOD_VALID_LINE, bad))
    with pytest.raises(DataError) as info:
        load_item_meta(path)
    assert (info.value.path, info.value.line) == (str(path), 2)
    assert problem in info.value.problem
    report = LoadReport("")
    assert list(load_item_meta(path, lenient=True, report=report)) == ["X"]
    assert report.skipped == [str(info.value)]

    data_dir = tmp_path / "data"
    _write(
        data_dir / "c" / "test.jsonl",
        make_jsonl(
            {
                "context": "",
                "context_items": [],
                "gt": "",
                "gt_items": ["A"],
                "candidates_st": ["A"],
            }
        ),
    )
    argv = ["check-data", "--data_dir", str(data_dir), "--item_meta_path", str(path)]
    _assert_one_line_cli_error(argv, capsys, f"{path}:2:", problem)


def test_valid_meta_accepts_any_file_name_and_takes_the_id_from_the_reference_form_only(
    tmp_path, make_jsonl
):
    from PIL import Image

    from lavic.data.images import LOADED, UNSAFE, read_image

    lines = [
        {"title": "Red mug", "image_name": "mug-red.png", "image_description_llava_cleaned": "a"},
        {"title": "Blue mug", "image_name": "B0BLUE_1.jpg"},
        {"title": None, "image_name": "B0BLUE_0.jpg", "image_description_llava_cleaned": "b"},
        # An explicit item_id groups images whose names say nothing about their item.
        {"title": "Lamp", "image_name": "lamp front.webp", "item_id": "LAMP1"},
        {"image_name": "lamp_side.JPG", "item_id": "LAMP1"},
        {"title": "Not a reference name", "image_name": "photo_2.jpeg"},
    ]
    path = _write(tmp_path / "item2meta_valid.jsonl", make_jsonl(*lines))
    meta = load_item_meta(path)
    assert list(meta) == ["mug-red.png", "B0BLUE", "LAMP1", "photo_2.jpeg"]
    assert meta["mug-red.png"].image_names == ("mug-red.png",)
    assert meta["mug-red.png"].descriptions == {"mug-red.png": "a"}
    assert meta["B0BLUE"].image_names == ("B0BLUE_0.jpg", "B0BLUE_1.jpg")  # index order
    assert meta["B0BLUE"].title == "Blue mug"
    assert meta["LAMP1"].image_names == ("lamp front.webp", "lamp_side.JPG")
    assert meta["LAMP1"].title == "Lamp"
    assert [s.image_name for s in described_images(meta)] == ["mug-red.png", "B0BLUE_0.jpg"]

    # A name that is a path is refused by the loader (BAD_VALID_META); and a reader, given
    # one anyway, never opens it.
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(images / "mug-red.png")
    Image.new("RGB", (8, 8), (0, 0, 200)).save(tmp_path / "escape_0.png")
    image, outcome = read_image(images, "mug-red.png")
    assert outcome == LOADED and image.getpixel((0, 0)) == (200, 0, 0)
    assert read_image(images, "../escape_0.png") == (None, UNSAFE)


def _train_text(**items) -> str:
    """One item per line: the good item on line 2, then the given ones."""
    members = [
        f"{json.dumps(k)}: {json.dumps(v)}"
        for k, v in {"B00000000A": {"title": "ok"}, **items}.items()
    ]
    return "{\n" + ",\n".join(members) + "\n}\n"


BAD_TRAIN_META = {
    "top_level_list": (
        '[{"title": "t"}]',
        1,
        "top-level value must be a JSON object of item id -> metadata, got an array",
    ),
    "top_level_string_line": ('\n\n"just text"', 3, "got a string"),
    "item_not_object": (
        _train_text(B00000000B=["t"]),
        3,
        "item 'B00000000B': expected an object, got an array",
    ),
    "title_type": (
        _train_text(B00000000B={"title": 5}),
        3,
        "item 'B00000000B': key 'title' must be a string or null",
    ),
    "images_type": (
        _train_text(B00000000B={"images": "u"}),
        3,
        "key 'images' must be a list, got a string",
    ),
    "image_entry_type": (
        _train_text(B00000000B={"images": ["u"]}),
        3,
        "key 'images'[0] must be an object",
    ),
    "url_type": (
        _train_text(B00000000B={"images": [{"large": 1}]}),
        3,
        "key 'images[0].large' must be a string or null",
    ),
    "descriptions_type": (
        _train_text(B00000000B={"image_descriptions_llava_cleaned": ["d"]}),
        3,
        "key 'image_descriptions_llava_cleaned' must be an object",
    ),
    "description_value_type": (
        _train_text(B00000000B={"image_descriptions_llava_cleaned": {"B00000000B_0.jpg": None}}),
        3,
        "key \"image_descriptions_llava_cleaned['B00000000B_0.jpg']\" must be a string, got null",
    ),
    "duplicate_id": (
        '{\n"A": {},\n"B": {},\n"A": {}\n}',
        4,
        "duplicate item id 'A' (first on line 2)",
    ),
    "empty_id": ('{\n"": {}\n}', 2, "empty item id"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRAIN_META))
def test_bad_train_meta_item(tmp_path, capsys, make_jsonl, case):
    text, line, problem = BAD_TRAIN_META[case]
    path = _write(tmp_path / "item2meta_train.json", text.encode())
    with pytest.raises(DataError) as info:
        load_item_meta(path)
    assert (info.value.path, info.value.line) == (str(path), line)
    assert problem in info.value.problem, info.value.problem
    data_dir = tmp_path / "data"
    _write(
        data_dir / "c" / "test.jsonl",
        make_jsonl(
            {
                "context": "",
                "context_items": [],
                "gt": "",
                "gt_items": ["A"],
                "candidates_st": ["A"],
            }
        ),
    )
    argv = ["check-data", "--data_dir", str(data_dir), "--item_meta_path", str(path)]
    _assert_one_line_cli_error(argv, capsys, f"{path}:{line}:", problem)
    if case.startswith("top_level"):
        with pytest.raises(DataError):  # nothing to skip to: fatal in lenient mode too
            load_item_meta(path, lenient=True)
    else:
        report = LoadReport("")
        meta = load_item_meta(path, lenient=True, report=report)
        assert report.skipped == [str(info.value)] and len(meta) == report.loaded
        assert "B00000000A" in meta or case in ("duplicate_id", "empty_id")


BROKEN_TRAIN_JSON = {
    "malformed_value": (
        '{\n"A": {"title": "t",},\n"B": {}\n}',
        2,
        "malformed JSON: Expecting property name",
    ),
    "missing_comma": ('{\n"A": {}\n"B": {}\n}', 3, "malformed JSON: Expecting ',' delimiter"),
    "unquoted_key": (
        "{\nA: {}\n}",
        2,
        "malformed JSON: Expecting property name enclosed in double quotes",
    ),
    "truncated": ('{\n"A": {"title": "t"},\n"B": {"title": "u', 3, "truncated file"),
    "truncated_after_value": ('{\n"A": {"title": "t"}', 2, "truncated file"),
    "extra_data": ('{"A": {}}\n{"B": {}}\n', 2, "extra data after the top-level JSON object"),
    "empty": ("  \n", None, "empty file"),
    "not_utf8": (
        '{\n"A": {"title": "caf\udce9"}}',
        2,
        "not valid UTF-8 text (byte 0xe9 at column 20)",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_TRAIN_JSON))
def test_broken_train_json_is_fatal_even_lenient(tmp_path, case):
    text, line, problem = BROKEN_TRAIN_JSON[case]
    path = _write(tmp_path / "item2meta_train.json", text.encode("utf-8", "surrogateescape"))
    for lenient in (False, True):
        with pytest.raises(DataError) as info:
            load_item_meta(path, lenient=lenient)
        assert (info.value.path, info.value.line) == (str(path), line)
        assert problem in info.value.problem, info.value.problem


def test_empty_train_dict_and_unknown_suffix(tmp_path):
    assert load_item_meta(_write(tmp_path / "m.json", b" { } \n")) == {}
    with pytest.raises(DataError, match=r"m\.csv: item metadata must be a \.json"):
        load_item_meta(_write(tmp_path / "m.csv", b""))


# ----------------------------------------------------------------------------- the real data


def test_real_shared_files_load(shared_data):
    expected = {  # (conversations, gt items) per category and split, counted independently
        ("all_beauty", "test"): (772, 890),
        ("amazon_fashion", "valid"): (797, 971),
        ("amazon_home", "test"): (372, 397),
    }
    for (category, split), (n, gts) in expected.items():
        conversations = load_split(shared_data, category, split, candidate_key="candidates_st")
        assert len(conversations) == n
        assert sum(len(c.gt_items) for c in conversations) == gts
        assert candidate_keys(conversations) == ["candidates_gpt_large", "candidates_st"]
    beauty = load_split(shared_data, "all_beauty", "test")
    # mojibake is preserved as the file has it, and raw echoes the exact JSON object
    with_mojibake = [c for c in beauty if MOJIBAKE in c.context]
    assert with_mojibake
    path = shared_data / "all_beauty" / "test.jsonl"
    first = with_mojibake[0]
    raw_line = path.read_text(encoding="utf-8").splitlines()[first.line - 1]
    assert first.raw == json.loads(raw_line)

    report = LoadReport("")
    meta = load_item_meta(shared_data / "item2meta_valid.jsonl", report=report)
    assert len(meta) == report.loaded == 508 and report.skipped == []
    assert sum(len(m.image_names) for m in meta.values()) == 512
    assert meta["B08LYS9WYD"].title.startswith("Flo Mask")
    assert "B08LYS9WYD_4.jpg" in meta["B08LYS9WYD"].image_names
    assert len(described_images(meta)) == 512
