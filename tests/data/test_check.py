"""``lavic check-data``: hand-derived numbers on a tiny dataset, the JSON report, the real data."""

from __future__ import annotations

import json
import struct
import zlib

import pytest
from PIL import Image

from lavic.cli import main
from lavic.data.check import check_catalogue, check_dataset


def _conv(gt_items, **candidates) -> dict:
    return {
        "context": "<submission>?</submission>",
        "context_items": [],
        "gt": "g",
        "gt_items": gt_items,
        **candidates,
    }


def _write_jsonl(path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _huge_png_header() -> bytes:
    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def dataset(tmp_path):
    data = tmp_path / "data"
    _write_jsonl(
        data / "beauty" / "test.jsonl",
        [
            _conv(["A"], candidates_st=["A", "B"], candidates_gpt_large=["C", "D"]),
            _conv(["B", "E"], candidates_st=["X", "E"], candidates_gpt_large=["B", "C"]),
            _conv(["F", "F"], candidates_st=["F", "G"], candidates_gpt_large=["H", "../evil"]),
        ],
    )
    _write_jsonl(
        data / "beauty" / "valid.jsonl",
        [_conv(["A"], candidates_st=["A"], candidates_gpt_large=["A"])],
    )
    _write_jsonl(data / "beauty" / "notes.jsonl", [{"not": "a split"}])  # not a split name: ignored
    _write_jsonl(data / "home" / "train.jsonl", [_conv(["Q"], candidates_st=["R"])])
    _write_jsonl(data / "empty" / "test.jsonl", [])
    (data / "no_splits").mkdir()

    meta = {
        "A": {"title": "Balm"},
        "B": {"title": None},
        "C": {"title": "Cream"},
        "F": {"title": "Foam"},
    }
    meta_path = tmp_path / "item2meta_train.json"
    meta_path.write_text(json.dumps(meta), encoding="utf-8")

    images = tmp_path / "images"
    images.mkdir()
    for name in ("A_0.jpg", "X_0.jpg", "D_0.jpg"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(images / name)
    (images / "B_0.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (images / "C_0.jpg").write_bytes(_huge_png_header())
    (tmp_path / "evil_0.jpg").write_bytes((images / "A_0.jpg").read_bytes())  # outside the folder
    return data, meta_path, images


def _row(summary, category, split, key):
    (row,) = [
        r
        for r in summary["rows"]
        if (r["category"], r["split"], r["candidate_key"]) == (category, split, key)
    ]
    return row


def test_check_dataset_numbers_by_hand(dataset):
    data, meta_path, images = dataset
    summary = check_dataset(data, item_meta_path=meta_path, image_dir=images)
    keys = [(r["category"], r["split"], r["candidate_key"]) for r in summary["rows"]]
    assert keys == [
        ("beauty", "valid", "candidates_gpt_large"),
        ("beauty", "valid", "candidates_st"),
        ("beauty", "test", "candidates_gpt_large"),
        ("beauty", "test", "candidates_st"),
        ("empty", "test", None),
        ("home", "train", "candidates_st"),
    ]
    st = _row(summary, "beauty", "test", "candidates_st")
    # 5 gt items (A; B, E; F, F). In the st lists: A, E, F, F -> 4/5; every conversation can hit -> 3/5
    assert (st["conversations"], st["gt_items"], st["duplicate_gt_conversations"]) == (3, 5, 1)
    assert st["gt_in_candidates"] == pytest.approx(0.8)
    assert st["recall_at_1_ceiling"] == pytest.approx(0.6)
    # items among candidates + gt: A B X E F G; without a title: B (null), X, E, G
    assert (st["items"], st["items_without_title"]) == (6, 4)
    # ... of which X, E and G are not in the catalogue at all (B is, with a null title)
    assert st["unknown_items"] == 3
    test_jsonl = data / "beauty" / "test.jsonl"
    assert st["unknown_examples"] == [
        f"{test_jsonl}:2: 'X' is not in the catalogue",
        f"{test_jsonl}:2: 'E' is not in the catalogue",
        f"{test_jsonl}:3: 'G' is not in the catalogue",
    ]
    # `_0` images of A B X E F G: A, X decode; B is corrupt; E, F, G are missing
    assert st["candidate_images"] == 6
    assert st["images"] == {"loaded": 2, "missing": 3, "unreadable": 1, "unsafe": 0, "oversized": 0}

    gpt = _row(summary, "beauty", "test", "candidates_gpt_large")
    assert gpt["gt_in_candidates"] == pytest.approx(0.2)  # only B
    assert gpt["recall_at_1_ceiling"] == pytest.approx(0.2)
    # items: C D B H ../evil + A E F; without a title: D B H ../evil E
    assert (gpt["items"], gpt["items_without_title"]) == (8, 5)
    assert gpt["images"] == {
        "loaded": 1,
        "missing": 1,
        "unreadable": 1,
        "unsafe": 1,
        "oversized": 1,
    }

    assert _row(summary, "beauty", "valid", "candidates_st")["recall_at_1_ceiling"] == 1.0
    assert _row(summary, "home", "train", "candidates_st")["recall_at_1_ceiling"] == 0.0
    empty = _row(summary, "empty", "test", None)
    assert (empty["conversations"], empty["gt_items"], empty["recall_at_1_ceiling"]) == (0, 0, 0.0)
    assert summary["item_meta"]["items"] == 4 and summary["item_meta"]["items_with_title"] == 3


def _table_rows(out: str) -> dict[tuple[str, str, str], dict[str, str]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("category"))
    header = lines[start].split()
    rows = {}
    for line in lines[start + 2 :]:
        cells = line.split()
        if len(cells) != len(header):
            break
        rows[tuple(cells[:3])] = dict(zip(header, cells, strict=True))
    return rows


def test_cli_table_and_json(dataset, tmp_path, capsys):
    data, meta_path, images = dataset
    json_path = tmp_path / "out" / "report.json"
    argv = [
        "check-data",
        "--data_dir",
        str(data),
        "--item_meta_path",
        str(meta_path),
        "--image_dir",
        str(images),
        "--json",
        str(json_path),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = _table_rows(out)
    st = rows[("beauty", "test", "candidates_st")]
    assert st == {
        "category": "beauty",
        "split": "test",
        "candidates": "candidates_st",
        "convs": "3",
        "gt_items": "5",
        "gt_in_cands": "0.8000",
        "R@1_ceiling": "0.6000",
        "dup_gt": "1",
        "items": "6",
        "no_title": "4",
        "unknown": "3",
        "cand_imgs": "6",
        "img_missing": "3",
        "img_bad": "1",
    }
    assert (
        rows[("beauty", "test", "candidates_gpt_large")]["img_bad"] == "3"
    )  # unreadable+unsafe+oversized
    assert rows[("empty", "test", "-")]["convs"] == "0"
    assert len(rows) == 6

    report = json.loads(json_path.read_text())
    assert report == json.loads(
        json.dumps(check_dataset(data, item_meta_path=meta_path, image_dir=images))
    )
    for row in report["rows"]:
        shown = rows[(row["category"], row["split"], row["candidate_key"] or "-")]
        assert shown["R@1_ceiling"] == f"{row['recall_at_1_ceiling']:.4f}"
        assert shown["gt_in_cands"] == f"{row['gt_in_candidates']:.4f}"


def test_cli_without_meta_or_images_has_no_such_columns(dataset, capsys):
    data, _, _ = dataset
    assert main(["check-data", "--data_dir", str(data)]) == 0
    header = _table_rows(capsys.readouterr().out)[("beauty", "test", "candidates_st")].keys()
    assert "no_title" not in header and "img_missing" not in header and "skipped" not in header


def test_cli_missing_image_dir_is_a_one_line_error(dataset, tmp_path, capsys):
    data, _, _ = dataset
    rc = main(["check-data", "--data_dir", str(data), "--image_dir", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "nope: image folder not found" in err


def test_cli_lenient_reports_skips_per_file(dataset, capsys):
    data, meta_path, _ = dataset
    path = data / "beauty" / "test.jsonl"
    path.write_text(path.read_text() + "not json\n" * 7 + '{"context": 1}\n')
    assert main(["check-data", "--data_dir", str(data)]) == 2
    assert f"{path}:4: malformed JSON" in capsys.readouterr().err
    assert main(["check-data", "--data_dir", str(data), "--lenient"]) == 0
    out = capsys.readouterr().out
    assert _table_rows(out)[("beauty", "test", "candidates_st")]["skipped"] == "8"
    assert (
        _table_rows(out)[("beauty", "test", "candidates_st")]["R@1_ceiling"] == "0.6000"
    )  # unchanged
    assert "lenient: 8 bad record(s) skipped" in out
    assert f"{path}:8: malformed JSON" in out  # the first five are shown
    assert f"... and 3 more in {path}" in out


def test_real_data_ceilings(shared_data, capsys):
    summary = check_dataset(shared_data, item_meta_path=shared_data / "item2meta_valid.jsonl")
    ceiling = {
        (r["category"], r["split"], r["candidate_key"]): r["recall_at_1_ceiling"]
        for r in summary["rows"]
    }
    assert len(ceiling) == 12  # 3 categories x {valid, test} x 2 candidate keys
    assert round(ceiling[("all_beauty", "test", "candidates_st")], 4) == 0.2011
    assert round(ceiling[("amazon_home", "test", "candidates_gpt_large")], 4) == 0.6902
    # none of the conversation items has metadata in item2meta_valid.jsonl
    assert all(r["items_without_title"] == r["items"] for r in summary["rows"])
    assert main(["check-data", "--data_dir", str(shared_data)]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert rows[("all_beauty", "test", "candidates_st")]["R@1_ceiling"] == "0.2011"
    assert rows[("amazon_home", "test", "candidates_gpt_large")]["R@1_ceiling"] == "0.6902"


# ------------------------------------------------------------------------ a catalogue alone


@pytest.fixture
def catalogue(tmp_path):
    """Items covering each case: a good one, an empty title, two sharing a title (one of
    them with a copy of another's picture), a missing and a corrupt picture, no image listed."""
    meta = {
        "GOOD": {
            "title": "Red mug",
            "images": [{"path": "a.jpg"}, {"path": "b.jpg"}],
            "image_descriptions_llava_cleaned": {"GOOD_0.jpg": "A red mug.", "GOOD_1.jpg": ""},
        },
        "NOTITLE": {"title": "", "images": [{"path": "c.jpg"}]},
        "TWIN": {"title": "red  MUG", "images": [{"path": "a.jpg"}]},
        "GONE": {"title": "Lamp", "images": [{"path": "gone.jpg"}]},
        "BROKEN": {"title": "Bowl", "images": [{"path": "broken.jpg"}]},
        "NOPIC": {"title": "Gift card", "images": []},
    }
    meta_path = tmp_path / "item2meta_train.json"
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    images = tmp_path / "train_images"
    images.mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(images / "GOOD_0.jpg")
    Image.new("RGB", (8, 8), (0, 200, 0)).save(images / "GOOD_1.jpg")
    Image.new("RGB", (8, 8), (0, 0, 200)).save(images / "NOTITLE_0.jpg")
    (images / "TWIN_0.jpg").write_bytes((images / "GOOD_0.jpg").read_bytes())
    (images / "BROKEN_0.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    return meta_path, images


def test_a_catalogue_alone_is_checked_without_conversations(catalogue, capsys):
    meta_path, images = catalogue
    summary = check_catalogue(meta_path, image_dir=images)
    assert summary["items"] == 6
    assert summary["titles"] == {"present": 5, "empty": 1}
    # Listed: GOOD_0, GOOD_1, NOTITLE_0, TWIN_0, GONE_0, BROKEN_0 (NOPIC lists none)
    assert summary["images"] == {
        "loaded": 4, "missing": 1, "unreadable": 1, "unsafe": 0, "oversized": 0,
    }  # fmt: skip
    assert summary["items_listing_no_image"] == 1
    assert summary["placeholder_items"] == 3  # GONE, BROKEN, NOPIC
    assert summary["descriptions"] == {"images": 1, "items": 1}
    assert summary["duplicates"] == {"titles": 2, "first_images": 1}
    assert summary["examples"]["duplicate_title"] == ["GOOD = TWIN"]
    assert summary["examples"]["duplicate_first_image"] == ["TWIN = GOOD"]
    assert summary["examples"]["image_missing"] == ["GONE_0.jpg", "NOPIC_0.jpg"]

    assert main(["check-data", "--item_meta_path", str(meta_path), "--image_dir", str(images)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:3] == [
        f"catalogue: {meta_path}",
        "  items:         6",
        "  titles:        5 present, 1 empty (e.g. NOTITLE)",
    ]
    assert "4 readable, 1 missing (e.g. GONE_0.jpg, NOPIC_0.jpg)" in out
    assert "  placeholder:   3 item(s) shown with the white placeholder" in out
    assert "1 first picture(s) identical to another item's (e.g. TWIN = GOOD)" in out
    # Without --image_dir: titles, descriptions and duplicate titles only.
    assert main(["check-data", "--item_meta_path", str(meta_path)]) == 0
    out = capsys.readouterr().out
    assert "images:" not in out and "2 item(s) share a title" in out


def test_check_data_needs_conversations_or_a_catalogue(capsys):
    assert main(["check-data"]) == 2
    assert "give --data_dir (conversations), --item_meta_path (a catalogue), or both" in (
        capsys.readouterr().err
    )


def test_unknown_ids_are_named_with_their_line(dataset, capsys):
    data, meta_path, _ = dataset
    assert main(["check-data", "--data_dir", str(data), "--item_meta_path", str(meta_path)]) == 0
    out = capsys.readouterr().out
    test_jsonl = data / "beauty" / "test.jsonl"
    assert f"unknown: {test_jsonl}:2: 'X' is not in the catalogue" in out
    assert _table_rows(out)[("beauty", "test", "candidates_st")]["unknown"] == "3"
