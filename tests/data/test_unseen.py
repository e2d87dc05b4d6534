"""The unseen catalogue (``lavic synthesize-unseen``): its own code and words, the layout the
pipeline reads, determinism, and the properties a visual benchmark needs (the request's look is
the answer's, lists are full of near misses, the image shows the colour).

One small catalogue is written per module (a few conversations per split); properties that need
no images are checked on :func:`plan_unseen`, which builds the same records without drawing.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lavic.cli import main
from lavic.data import loaders
from lavic.data.unseen import (
    CANDIDATE_KEYS,
    CATEGORIES,
    COLOURS,
    PATTERNS,
    SPLITS,
    drawing,
    look_in_text,
    look_oracle,
    plan_unseen,
    vocabulary,
    write_unseen,
)

PACKAGE_DIR = Path(drawing.__file__).resolve().parent
RECORD_KEYS = ["context", "context_items", "gt", "gt_items", *CANDIDATE_KEYS]
ID_RE = re.compile(r"^B0[0-9A-Z]{8}$")
# Tiny but complete: every category and split, dropped answers and context items.
SMALL = dict(
    seed=5,
    num_train=3,
    num_valid=2,
    num_test=8,
    num_distill_valid=1,
    test_gt_drop_rate=0.25,
    context_item_rate=0.5,
)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("unseen") / "catalogue"
    summary = write_unseen(root, **SMALL)
    return root, summary


@pytest.fixture(scope="module")
def plan():
    """The written catalogue's plan: the same records, with each item's look."""
    return plan_unseen(**SMALL)


def all_records(plan):
    for category in plan.categories:
        for split in SPLITS:
            for record in plan.conversations[category][split]:
                yield category, split, record


# ----------------------------------------------------------------------------- its own code


def test_no_code_of_the_synthetic_package_is_imported():
    # Read the source: no import statement names lavic.data.synthetic ...
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not [n for n in names if "synthetic" in n], f"{path.name} imports {names}"
    # ... and importing the package (and writing its command's module) loads none of it.
    code = (
        "import sys, lavic.data.unseen, lavic.data.unseen.builder; "
        "print(sorted(m for m in sys.modules if m.startswith('lavic.data.synthetic')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_kinds_colours_and_patterns_are_not_synthesizes():
    from lavic.data.synthetic.styles import STYLES  # the test may look; the module may not

    theirs_kinds = {k.name for style in STYLES.values() for k in style.kinds}
    theirs_looks = {w for style in STYLES.values() for w in style.look_words}
    ours_kinds = {k.name for kinds in CATEGORIES.values() for k in kinds}
    ours_looks = {c.word for c in COLOURS} | {p.word for p in PATTERNS}
    assert not ours_kinds & theirs_kinds
    assert not ours_looks & theirs_looks
    assert not set(CATEGORIES) & {c for style in STYLES.values() for c in style.categories}
    assert all(c.startswith("unseen_") for c in CATEGORIES)


def test_fixed_text_never_names_a_colour_or_a_pattern():
    # Only the look may put a colour or pattern word into a text: brands, product lines,
    # phrasing and shape sentences hold none.
    fixed = [
        *vocabulary.BRANDS,
        *vocabulary.PRODUCT_LINES,
        *vocabulary.SUBMISSION_TITLES,
        *vocabulary.OPENERS,
        *vocabulary.CONTEXT_MENTIONS,
        *vocabulary.FILLER_COMMENTS,
        *vocabulary.OP_REPLIES,
        *vocabulary.GT_TEMPLATES,
        *vocabulary.DESCRIPTION_CLOSERS,
        *vocabulary.DESCRIPTION_TEMPLATES,
        *vocabulary.REQUEST_TEMPLATES,
    ]
    for kinds in CATEGORIES.values():
        for kind in kinds:
            fixed += [kind.name, kind.surface, *kind.qualifiers, *kind.shape_sentences]
    for text in fixed:
        assert look_in_text(text) == (set(), set()), text
    for pattern in PATTERNS:  # each pattern's phrases name it and nothing else
        for phrase in (pattern.word, *pattern.with_phrases, *pattern.descriptions):
            assert look_in_text(phrase) == (set(), {pattern.word}), phrase


# ----------------------------------------------------------------------------- layout


def test_layout_is_the_one_synthesize_writes(written):
    root, summary = written
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [
            *CATEGORIES,
            "item2meta_train.json",
            "item2meta_valid.jsonl",
            "train_images",
            "valid_images",
        ]
    )
    meta = json.loads((root / "item2meta_train.json").read_text(encoding="utf-8"))
    for item_id, item in meta.items():
        assert ID_RE.match(item_id)
        assert list(item) == [
            "title",
            "main_category",
            "store",
            "images",
            "image_descriptions_llava_cleaned",
        ]
        assert item["images"][0]["large"] == f"https://example.invalid/{item_id}_0.jpg"
        assert list(item["image_descriptions_llava_cleaned"]) == [f"{item_id}_0.jpg"]
    valid = read_jsonl(root / "item2meta_valid.jsonl")
    assert len(valid) == len(CATEGORIES) * SMALL["num_distill_valid"] == summary["num_valid_items"]
    for line in valid:
        assert list(line) == ["title", "image_name", "image", "image_description_llava_cleaned"]
        assert (root / "valid_images" / line["image_name"]).is_file()
        assert line["image_name"].removesuffix("_0.jpg") not in meta  # in no conversation
    for category in CATEGORIES:
        for split in SPLITS:
            records = read_jsonl(root / category / f"{split}.jsonl")
            assert (
                len(records) == SMALL[f"num_{split}"] == summary["conversations"][category][split]
            )
            for record in records:
                assert list(record) == RECORD_KEYS
                named = record["gt_items"] + record["context_items"]
                assert all(i in meta for key in CANDIDATE_KEYS for i in record[key] + named)
    assert summary["num_images"] == len(list((root / "train_images").iterdir())) + len(valid)


def test_the_projects_loaders_and_check_data_read_it(written, tmp_path, capsys):
    root, _ = written
    assert loaders.find_splits(root) == {c: list(SPLITS) for c in sorted(CATEGORIES)}
    meta = loaders.load_item_meta(root / "item2meta_train.json")
    for category in CATEGORIES:
        for split in SPLITS:
            for key in CANDIDATE_KEYS:
                conversations = loaders.load_split(root, category, split, candidate_key=key)
                assert len(conversations) == SMALL[f"num_{split}"]
                for conv in conversations:
                    assert loaders.items_without_title(meta, conv.candidate_list(key)) == []
    assert len(loaders.described_images(meta)) == len(meta)
    valid = loaders.load_item_meta(root / "item2meta_valid.jsonl")
    assert len(loaders.described_images(valid)) == len(valid) == len(CATEGORIES)
    assert loaders.is_synthetic_catalogue(meta)  # drawn: `tiny` takes it without a warning

    report = tmp_path / "check.json"
    args = ["check-data", "--data_dir", str(root), "--item_meta_path",
            str(root / "item2meta_train.json"), "--image_dir", str(root / "train_images"),
            "--json", str(report)]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    rows = json.loads(report.read_text(encoding="utf-8"))["rows"]
    assert len(rows) == len(CATEGORIES) * len(SPLITS) * len(CANDIDATE_KEYS)
    for row in rows:
        assert row["unknown_items"] == row["items_without_title"] == 0
        assert row["images"]["loaded"] == row["candidate_images"]
        assert row["recall_at_1_ceiling"] == (1.0 if row["split"] != "test" else 0.75)


def test_same_seed_same_bytes(tmp_path):
    tiny = dict(categories=["unseen_kitchen"], num_train=1, num_valid=1, num_test=2,
                num_candidates=4, num_distill_valid=1, test_gt_drop_rate=0.5)  # fmt: skip
    write_unseen(tmp_path / "a", **tiny)
    write_unseen(tmp_path / "b", **tiny)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert len(tree_digest(tmp_path / "a")) > 10


def test_same_seed_same_plan_other_seed_other_items(plan):
    again = plan_unseen(**SMALL)
    assert again.conversations == plan.conversations
    assert [(i, it.title, it.size, it.description) for i, it in again.items.items()] == [
        (i, it.title, it.size, it.description) for i, it in plan.items.items()
    ]
    other = plan_unseen(**{**SMALL, "seed": SMALL["seed"] + 1})
    assert set(other.items).isdisjoint(plan.items)


def test_the_plan_is_what_was_written(written, plan):
    root, _ = written
    for category, split, record in all_records(plan):
        assert record in read_jsonl(root / category / f"{split}.jsonl")


# ----------------------------------------------------------------------------- content


def test_the_request_states_the_answers_look_and_its_description_too(plan):
    for _, _, record in all_records(plan):
        gt = plan.items[record["gt_items"][0]]
        want = ({gt.look.colour.word}, {gt.look.pattern.word})
        assert look_in_text(record["context"]) == want, record["context"]
        assert look_in_text(gt.description) == want, gt.description
        assert gt.kind.name in record["context"].lower()


def test_titles_hide_the_look_unless_asked(plan):
    for item in plan.items.values():
        assert look_in_text(item.title) == (set(), set()), item.title
        assert item.kind.name.title() in item.title
    shown = plan_unseen(**SMALL, title_look=True)
    for item in shown.items.values():
        assert item.title.endswith(f" ({item.look.colour.word}, {item.look.pattern.word})")
    # The control: a title reader now finds every listed answer (plain titles: chance).
    for category in CATEGORIES:
        test = shown.conversations[category]["test"]
        shown_titles = {i: it.title for i, it in shown.items.items()}
        plain_titles = {i: it.title for i, it in plan.items.items()}
        assert look_oracle(test, shown_titles)["oracle"] == pytest.approx(0.75)
        assert look_oracle(test, plain_titles)["oracle"] == pytest.approx(0.075)
    # Only the titles change: the same items, looks and lists.
    assert [(i, it.look.key) for i, it in shown.items.items()] == [
        (i, it.look.key) for i, it in plan.items.items()
    ]


def test_lists_hold_one_kind_one_item_per_look_and_near_misses(plan):
    for _, split, record in all_records(plan):
        gt = plan.items[record["gt_items"][0]]
        for key in CANDIDATE_KEYS:
            items = [plan.items[i] for i in record[key]]
            assert len(items) == 10 and len({i.item_id for i in items}) == 10
            assert {i.kind.name for i in items} == {gt.kind.name}
            assert len({i.look.key for i in items}) == 10
            if gt not in items:
                assert split == "test" and gt.look.key not in {i.look.key for i in items}
                continue
            others = [i for i in items if i is not gt]
            same_colour = [i for i in others if i.look.colour == gt.look.colour]
            same_pattern = [i for i in others if i.look.pattern == gt.look.pattern]
            assert same_colour, key  # the answer's colour in another pattern
            if key == "candidates_st":
                assert len(same_pattern) >= 3  # its pattern in other colours
            # Every candidate shares the colour or the pattern of some other candidate: near
            # misses all round, so the list's shape does not point at the answer.
            for item in items:
                assert any(
                    o.look.colour == item.look.colour or o.look.pattern == item.look.pattern
                    for o in items
                    if o is not item
                )


def test_answers_drop_from_test_lists_only_and_splits_share_no_item(plan):
    ids_by_split = {s: set() for s in SPLITS}
    dropped = Counter()
    for _, split, record in all_records(plan):
        ids_by_split[split].update(record["gt_items"], *(record[k] for k in CANDIDATE_KEYS))
        for key in CANDIDATE_KEYS:
            dropped[split, key] += record["gt_items"][0] not in record[key]
    assert dropped["test", "candidates_st"] == dropped["test", "candidates_gpt_large"] == 6
    assert all(dropped[s, k] == 0 for s in ("train", "valid") for k in CANDIDATE_KEYS)
    assert not ids_by_split["train"] & (ids_by_split["valid"] | ids_by_split["test"])
    assert not ids_by_split["valid"] & ids_by_split["test"]


def test_summary_oracle_descriptions_reach_the_ceiling_titles_sit_at_chance(written):
    _, summary = written
    for numbers in summary["oracle"].values():
        assert numbers["in_list"] == 0.75  # 2 of 8 test answers dropped
        assert numbers["description"] == numbers["in_list"]
        assert numbers["title"] == numbers["chance"] == pytest.approx(0.075)


# ----------------------------------------------------------------------------- images


def colour_votes(image: Image.Image) -> Counter:
    """Each pixel within 32 (RGB distance) of a vocabulary colour votes for that colour."""
    pixels = np.asarray(image, dtype=np.float32).reshape(-1, 3)
    palette = np.asarray([c.rgb for c in COLOURS], dtype=np.float32)
    distance = np.sqrt(((pixels[:, None, :] - palette[None, :, :]) ** 2).sum(-1))
    nearest = distance.argmin(1)
    close = distance.min(1) < 32
    return Counter({COLOURS[k].word: int(n) for k, n in Counter(nearest[close].tolist()).items()})


def test_images_open_and_show_the_stated_colour(written, plan):
    root, _ = written
    meta = json.loads((root / "item2meta_train.json").read_text(encoding="utf-8"))
    checked = Counter()
    for item_id in meta:
        item = plan.items[item_id]
        if checked[item.kind.name, item.look.pattern.word] >= 2:  # a sample keeps it quick
            continue
        checked[item.kind.name, item.look.pattern.word] += 1
        with Image.open(root / "train_images" / f"{item_id}_0.jpg") as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert image.size == item.size
            assert all(drawing.MIN_SIDE <= side <= drawing.MAX_SIDE for side in image.size)
            votes = colour_votes(image)
        # The item's colour is the fill: it must win the vote and cover a fair part of the
        # picture (gingham leaves the least plain fill; a wide, low item the smallest body).
        word, count = votes.most_common(1)[0]
        assert word == item.look.colour.word, (item_id, item.look.key, votes)
        assert count > 0.05 * image.width * image.height, (item_id, item.look.key, votes)
    kinds = [k.name for kinds in CATEGORIES.values() for k in kinds]
    assert set(checked) == {(k, p.word) for k in kinds for p in PATTERNS}


def test_every_kind_and_pattern_draws():
    import random

    for kinds in CATEGORIES.values():
        for kind in kinds:
            for pattern in PATTERNS:
                size = drawing.image_size(random.Random(1), kind.aspect)
                image = drawing.draw_item(
                    random.Random(2), kind.shape, kind.aspect, COLOURS[0].rgb, pattern.word, size
                )
                assert image.size == size


# ----------------------------------------------------------------------------- the command


def test_cli_writes_refuses_a_non_empty_dir_and_overwrites(tmp_path, capsys):
    out = tmp_path / "cat"
    args = ["synthesize-unseen", "--output_dir", str(out), "--categories", "unseen_stationery",
            "--num_train", "1", "--num_valid", "1", "--num_test", "2", "--num_candidates", "4",
            "--num_distill_valid", "1"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["categories"] == ["unseen_stationery"]
    assert summary["conversations"]["unseen_stationery"] == {"train": 1, "valid": 1, "test": 2}
    first = {p.name for p in (out / "train_images").iterdir()}

    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err

    (out / "notes.txt").write_text("mine")
    assert main([*args, "--seed", "1", "--overwrite"]) == 0
    capsys.readouterr()
    second = {p.name for p in (out / "train_images").iterdir()}
    meta = json.loads((out / "item2meta_train.json").read_text(encoding="utf-8"))
    assert second == {f"{i}_0.jpg" for i in meta}
    assert not first & second  # the first run's images are gone
    assert (out / "notes.txt").read_text() == "mine"  # what is not ours stays


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--categories", "synthetic_home"], "unknown unseen categories"),
        (["--num_candidates", "1"], "num_candidates"),
        (["--num_candidates", "32"], "num_candidates"),
        (["--num_test", "0"], "num_test"),
        (["--test_gt_drop_rate", "1.5"], "test_gt_drop_rate"),
        (["--jpeg_quality", "0"], "jpeg_quality"),
    ],
)
def test_cli_rejects_bad_options_in_one_line(tmp_path, capsys, flags, message):
    assert main(["synthesize-unseen", "--output_dir", str(tmp_path / "x"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "x").exists()
