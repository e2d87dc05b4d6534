"""The synthetic catalogue: the reference's layout, determinism, anyres variety, and the properties
the demo relies on (text alone is at chance, descriptions reach the ceiling, test items are cold).

Files are read back with plain ``json`` and with ``lavic.data.loaders``. Catalogues here are
small (a few hundred images, seconds to draw); the large-sample checks use
:func:`plan_catalogue`, which builds the same data without images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from lavic.cli import main
from lavic.data import loaders
from lavic.data.synthetic import (
    CANDIDATE_KEYS,
    SPLITS,
    STYLES,
    content_words,
    plan_catalogue,
    word_overlap_oracle,
    write_catalogue,
)
from lavic.errors import LavicError

DEFAULT_CATEGORIES = ["synthetic_home", "synthetic_fashion", "synthetic_beauty"]
HELDOUT_CATEGORIES = ["heldout_garden", "heldout_travel", "heldout_desk"]
RECORD_KEYS = [
    "context",
    "context_items",
    "gt",
    "gt_items",
    "candidates_st",
    "candidates_gpt_large",
]
ID_RE = re.compile(r"^(B0[0-9A-Z]{8}|[0-9]{10})$")
# LLaVA-v1.6's anyres grid (height, width) and view size.
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

# Small but complete: 3 categories x 3 splits, 6 candidates, some dropped answers, context
# items, ISBN ids and second images.
SMALL = dict(
    num_train=16,
    num_valid=8,
    num_test=16,
    num_candidates=5,
    min_items_per_kind=6,
    num_distill_valid=2,
    test_gt_drop_rate=0.125,
    context_item_rate=0.25,
    isbn_rate=0.1,
    second_image_rate=0.15,
)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class Catalogue:
    """A written catalogue read back with plain json."""

    def __init__(self, root: Path, summary):
        self.root = root
        self.summary = summary
        self.meta = json.loads((root / "item2meta_train.json").read_text(encoding="utf-8"))
        self.valid_meta = read_jsonl(root / "item2meta_valid.jsonl")
        self.splits = {
            c: {s: read_jsonl(root / c / f"{s}.jsonl") for s in SPLITS} for c in summary.categories
        }

    def records(self, split: str | None = None):
        for category, splits in self.splits.items():
            for name, records in splits.items():
                if split is None or name == split:
                    yield from ((category, r) for r in records)

    def description(self, item_id: str) -> str:
        return self.meta[item_id]["image_descriptions_llava_cleaned"][f"{item_id}_0.jpg"]


@pytest.fixture(scope="module")
def default_cat(tmp_path_factory) -> Catalogue:
    root = tmp_path_factory.mktemp("default") / "catalogue"
    summary = write_catalogue(root, seed=3, **SMALL)
    return Catalogue(root, summary)


@pytest.fixture(scope="module")
def heldout_cat(tmp_path_factory) -> Catalogue:
    root = tmp_path_factory.mktemp("heldout") / "catalogue"
    summary = write_catalogue(root, seed=3, style="heldout", **SMALL)
    return Catalogue(root, summary)


def look_of(text: str, style: str) -> tuple[set[str], set[str]]:
    """The style's colour words and pattern words that ``text`` contains."""
    words = content_words(text)
    st = STYLES[style]
    return words & {c.word for c in st.colours}, words & set(st.patterns)


# ----------------------------------------------------------------------------- layout


def test_layout_is_exactly_the_seeds(default_cat):
    root = default_cat.root
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [
            *DEFAULT_CATEGORIES,
            "item2meta_train.json",
            "item2meta_valid.jsonl",
            "train_images",
            "valid_images",
        ]
    )
    for category in DEFAULT_CATEGORIES:
        assert sorted(p.name for p in (root / category).iterdir()) == [
            "test.jsonl",
            "train.jsonl",
            "valid.jsonl",
        ]
        for split, n in (("train", 16), ("valid", 8), ("test", 16)):
            assert len(default_cat.splits[category][split]) == n
    for _, record in default_cat.records():
        assert list(record) == RECORD_KEYS
        assert record["context"].startswith("<submission>") and record["context"].endswith("\n")
        assert "</submission>\n" in record["context"]
        assert all(c.endswith("</comment>") for c in record["context"].split("\n")[1:-1])
        assert isinstance(record["gt"], str) and len(record["gt_items"]) == 1
        assert all(len(record[k]) == 5 for k in CANDIDATE_KEYS)
        assert all(isinstance(i, str) for k in RECORD_KEYS[1:] if k != "gt" for i in record[k])
    # No temporary files left behind by the atomic writes.
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_item_metadata_covers_every_item_and_image(default_cat):
    named = {
        i
        for _, r in default_cat.records()
        for k in ("gt_items", "context_items", *CANDIDATE_KEYS)
        for i in r[k]
    }
    assert set(default_cat.meta) == named  # every item any conversation names, nothing else
    on_disk = {p.name for p in (default_cat.root / "train_images").iterdir()}
    expected = set()
    for item_id, meta in default_cat.meta.items():
        assert ID_RE.match(item_id), item_id
        assert isinstance(meta["title"], str) and meta["title"]
        names = [f"{item_id}_{k}.jpg" for k in range(len(meta["images"]))]
        assert [im["large"] for im in meta["images"]] == [
            f"https://example.invalid/{n}" for n in names
        ]
        assert list(meta["image_descriptions_llava_cleaned"]) == names
        expected.update(names)
    assert on_disk == expected
    assert any(len(m["images"]) == 2 for m in default_cat.meta.values())  # some have a second image
    assert any(i.isdigit() for i in default_cat.meta)  # some ISBN-style numeric ids
    assert sum(i.startswith("B") for i in default_cat.meta) > 0.8 * len(default_cat.meta)


def test_stage1_validation_items_are_disjoint_and_have_images(default_cat):
    lines = default_cat.valid_meta
    assert len(lines) == 2 * 3
    for line in lines:
        assert list(line) == ["title", "image_name", "image", "image_description_llava_cleaned"]
        item_id = line["image_name"].removesuffix("_0.jpg")
        assert line["image"] == f"https://example.invalid/{line['image_name']}"
        assert item_id not in default_cat.meta
        assert (default_cat.root / "valid_images" / line["image_name"]).is_file()
        colours, patterns = look_of(line["image_description_llava_cleaned"], "default")
        assert len(colours) == 1 and len(patterns) == 1
    assert sorted(p.name for p in (default_cat.root / "valid_images").iterdir()) == sorted(
        line["image_name"] for line in lines
    )


def test_ids_are_unique_across_categories(default_cat):
    ids = list(default_cat.meta) + [line["image_name"][:-6] for line in default_cat.valid_meta]
    assert len(ids) == len(set(ids))
    per_category = {
        c: {i for s in SPLITS for r in default_cat.splits[c][s] for i in r["candidates_st"]}
        for c in DEFAULT_CATEGORIES
    }
    assert not per_category["synthetic_home"] & per_category["synthetic_fashion"]


# ----------------------------------------------------------------------------- determinism


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    tiny = dict(
        categories=["synthetic_home"],
        num_train=8,
        num_valid=4,
        num_test=8,
        num_candidates=3,
        min_items_per_kind=4,
    )
    write_catalogue(tmp_path / "a", seed=11, **tiny)
    write_catalogue(tmp_path / "b", seed=11, **tiny)
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert a == b  # every file, images included, byte-identical
    assert len(a) > 50
    # The written files are the plan of that seed; another seed plans other items.
    same, other = plan_catalogue(seed=11, **tiny), plan_catalogue(seed=12, **tiny)
    written = json.loads((tmp_path / "a" / "item2meta_train.json").read_text())
    assert list(written) == same.referenced_ids()
    assert (
        read_jsonl(tmp_path / "a" / "synthetic_home" / "test.jsonl")
        == same.conversations["synthetic_home"]["test"]
    )
    assert not set(same.items) & set(other.items)


def test_heldout_draws_other_items_with_the_same_seed():
    a = plan_catalogue(seed=0, style="default")
    b = plan_catalogue(seed=0, style="heldout")
    assert not set(a.items) & set(b.items)


# ----------------------------------------------------------------------------- images


def test_images_give_three_to_five_anyres_views(default_cat):
    from transformers import LlavaNextImageProcessorPil

    processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_grid_pinpoints=PINPOINTS,
    )
    paths = sorted((default_cat.root / "train_images").iterdir())
    sizes = {}
    for path in paths:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            sizes[path] = im.size
        assert max(sizes[path]) <= 768 and min(sizes[path]) >= 160
        assert path.stat().st_size < 100_000
    # The processor is slow on CPU: run it on the extremes and an even spread of aspect ratios.
    by_aspect = sorted(paths, key=lambda p: (sizes[p][0] / sizes[p][1], sizes[p][0] * sizes[p][1]))
    by_area = sorted(paths, key=lambda p: sizes[p][0] * sizes[p][1])
    step = max(1, len(by_aspect) // 12)
    sample = set(by_aspect[::step]) | {by_aspect[0], by_aspect[-1], by_area[0], by_area[-1]}
    views = Counter()
    for path in sample:
        with Image.open(path) as im:
            pixel_values = processor(im.convert("RGB"), return_tensors="np")["pixel_values"]
        assert pixel_values.shape[0] == 1 and pixel_values.shape[2:] == (3, 336, 336)
        views[pixel_values.shape[1]] += 1
    assert set(views) == {3, 4, 5}, views


def test_styles_are_drawn_differently(default_cat, heldout_cat):
    # Default: flat backdrop (top and bottom rows alike); held-out: a vertical gradient.
    def top_bottom_gap(root: Path) -> list[float]:
        gaps = []
        for path in sorted((root / "train_images").iterdir())[:40]:
            with Image.open(path) as im:
                w, h = im.size
                top = im.crop((0, 0, w, 2)).resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
                bottom = (
                    im.crop((0, h - 2, w, h)).resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
                )
            gaps.append(sum(abs(a - b) for a, b in zip(top, bottom, strict=True)))
        return gaps

    default_gaps, heldout_gaps = top_bottom_gap(default_cat.root), top_bottom_gap(heldout_cat.root)
    assert max(default_gaps) <= 12
    assert sorted(heldout_gaps)[len(heldout_gaps) // 2] > 12


# ----------------------------------------------------------------------------- content


@pytest.mark.parametrize("which", ["default", "heldout"])
def test_titles_hide_the_look_descriptions_and_conversations_state_it(
    which, default_cat, heldout_cat
):
    cat = default_cat if which == "default" else heldout_cat
    every_look_word = set().union(*(s.look_words for s in STYLES.values()))
    for meta in cat.meta.values():
        assert not content_words(meta["title"]) & every_look_word, meta["title"]
        for description in meta["image_descriptions_llava_cleaned"].values():
            colours, patterns = look_of(description, which)
            assert len(colours) == 1 and len(patterns) == 1, description
            assert 1 <= description.count(".") <= 3  # LLaVA-style, 1-3 sentences
    for line in cat.valid_meta:
        assert not content_words(line["title"]) & every_look_word
    for _, record in cat.records():
        asked_colour, asked_pattern = look_of(record["context"], which)
        assert len(asked_colour) == 1 and len(asked_pattern) == 1, record["context"]
        gt = record["gt_items"][0]
        assert look_of(cat.description(gt), which) == (asked_colour, asked_pattern)
        assert cat.meta[gt]["title"] in record["gt"] and gt in record["gt"]


@pytest.mark.parametrize("which", ["default", "heldout"])
def test_each_list_shares_one_kind_and_has_one_item_per_look(which, default_cat, heldout_cat):
    cat = default_cat if which == "default" else heldout_cat
    kinds = [k.name for k in STYLES[which].kinds]

    def kind_of(text: str) -> str:
        (kind,) = [k for k in kinds if re.search(rf"\b{k}\b", text)]
        return kind

    for _, record in cat.records():
        asked_kind = kind_of(record["context"].split("</submission>")[0].lower())
        for key in CANDIDATE_KEYS:
            descriptions = [cat.description(i) for i in record[key]]
            assert {kind_of(d) for d in descriptions} == {asked_kind}
            looks = [look_of(d, which) for d in descriptions]
            looks = [(min(c), min(p)) for c, p in looks]
            assert len(set(looks)) == len(looks), looks  # one item per look
            assert len(set(record[key])) == len(record[key])


def test_answers_are_dropped_from_some_test_lists_only(default_cat):
    for category in DEFAULT_CATEGORIES:
        for split in SPLITS:
            records = default_cat.splits[category][split]
            missing = [r for r in records if r["gt_items"][0] not in r["candidates_st"]]
            expected = round(0.125 * len(records)) if split == "test" else 0
            assert len(missing) == expected
            for r in missing:  # dropped from both lists at once
                assert r["gt_items"][0] not in r["candidates_gpt_large"]
                # ... and the look asked for is then absent from the list too
                asked = look_of(r["context"], "default")
                assert all(
                    look_of(default_cat.description(i), "default") != asked
                    for i in r["candidates_st"]
                )


def test_context_items_are_linked_in_the_context(default_cat):
    with_items = [r for _, r in default_cat.records() if r["context_items"]]
    assert len(with_items) == 3 * round(0.25 * 16) * 2 + 3 * round(0.25 * 8)
    for r in with_items:
        (item,) = r["context_items"]
        assert f"https://www.amazon.com/dp/{item}" in r["context"]
        assert item not in r["candidates_st"] and item not in r["gt_items"]


# ----------------------------------------------------------------------------- anti-memorisation


def test_test_and_valid_items_were_never_train_answers(default_cat):
    for category in DEFAULT_CATEGORIES:
        splits = default_cat.splits[category]
        train_answers = Counter(i for r in splits["train"] for i in r["gt_items"])
        assert max(train_answers.values()) == 1
        train_items = {
            i
            for r in splits["train"]
            for k in (*CANDIDATE_KEYS, "gt_items", "context_items")
            for i in r[k]
        }
        for split in ("valid", "test"):
            items = {
                i
                for r in splits[split]
                for k in (*CANDIDATE_KEYS, "gt_items", "context_items")
                for i in r[k]
            }
            assert not items & set(train_answers)
            assert not items & train_items  # not even shown in training (cold)
        valid_items = {
            i for r in splits["valid"] for k in RECORD_KEYS[1:] if k != "gt" for i in r[k]
        }
        test_items = {i for r in splits["test"] for k in RECORD_KEYS[1:] if k != "gt" for i in r[k]}
        assert not valid_items & test_items


def test_default_sizes_keep_answers_rare_and_looks_repeated():
    plan = plan_catalogue(seed=0)  # the defaults the demo uses: no images drawn
    for category in plan.categories:
        train = plan.conversations[category]["train"]
        counts = Counter(r["gt_items"][0] for r in train)
        assert max(counts.values()) == 1 and len(counts) == 120
        test_items = {
            i for r in plan.conversations[category]["test"] for k in CANDIDATE_KEYS for i in r[k]
        }
        assert not test_items & set(counts)
    looks = Counter(item.look.key for item in plan.items.values())
    assert len(looks) == 32 and min(looks.values()) >= 10  # every look on many ids
    plan2 = plan_catalogue(seed=0, max_answers_per_item=2, num_train=200)
    for category in plan2.categories:
        counts = Counter(r["gt_items"][0] for r in plan2.conversations[category]["train"])
        assert max(counts.values()) == 2


# ----------------------------------------------------------------------------- oracles


def test_word_overlap_oracle_on_a_hand_built_case():
    records = [
        {
            "context": "<submission>a red mug with stripes</submission>\n",
            "gt_items": ["A"],
            "candidates_st": ["A", "B", "C"],
        },
        {
            "context": "<submission>a blue mug</submission>\n",
            "gt_items": ["Z"],
            "candidates_st": ["A", "B", "C", "D"],
        },
    ]
    texts = {
        "A": "red mug, stripes",
        "B": "red mug, dots",
        "C": "blue mug, stripes",
        "D": "blue mug",
    }
    result = word_overlap_oracle(records, texts)
    # 1st: A scores 3, B and C 2 -> hit. 2nd: gt absent -> miss.
    assert result.accuracy == pytest.approx(0.5)
    assert result.chance == pytest.approx((1 / 3 + 0) / 2)
    assert result.ceiling == pytest.approx(0.5) and result.n == 2
    tied = word_overlap_oracle(records[:1], {"A": "mug", "B": "mug", "C": "mug"})
    assert tied.accuracy == pytest.approx(1 / 3)  # three-way tie, expected value


@pytest.mark.parametrize("style", ["default", "heldout"])
@pytest.mark.parametrize("key", CANDIDATE_KEYS)
def test_titles_are_at_chance_descriptions_at_the_ceiling(style, key):
    plan = plan_catalogue(seed=5, style=style, num_test=300)
    titles = {i: item.title for i, item in plan.items.items()}
    descriptions = {i: item.images[0].description for i, item in plan.items.items()}
    test = [r for c in plan.categories for r in plan.conversations[c]["test"]]
    by_title = word_overlap_oracle(test, titles, key)
    by_description = word_overlap_oracle(test, descriptions, key)
    assert by_title.n == 900
    assert by_title.ceiling == pytest.approx(1 - 36 / 300)  # 12% dropped
    assert abs(by_title.accuracy - by_title.chance) < 0.03
    assert by_description.accuracy == pytest.approx(by_title.ceiling)


@pytest.mark.parametrize("key", CANDIDATE_KEYS)
def test_a_list_alone_does_not_single_out_its_answer(key):
    # Pick, without the conversation, the candidate sharing a colour or pattern with the most
    # others (what a biased "hard negative" sampler would give away): it must be at chance.
    plan = plan_catalogue(seed=2, num_test=300)
    hit = chance = 0.0
    records = [r for c in plan.categories for r in plan.conversations[c]["test"]]
    for r in records:
        looks = [plan.items[i].look for i in r[key]]
        shared = [
            sum(o is not a and (o.colour == a.colour or o.pattern == a.pattern) for o in looks)
            for a in looks
        ]
        winners = [i for i, s in zip(r[key], shared, strict=True) if s == max(shared)]
        hit += sum(i in r["gt_items"] for i in winners) / len(winners)
        chance += sum(i in r["gt_items"] for i in r[key]) / len(r[key])
    assert abs(hit - chance) / len(records) < 0.03


def test_summary_reports_the_oracles(default_cat):
    oracle = default_cat.summary.oracle
    assert set(oracle) == set(DEFAULT_CATEGORIES)
    for result in oracle.values():
        assert result["description"] == pytest.approx(result["ceiling"])
        assert result["ceiling"] == pytest.approx(14 / 16)


# ----------------------------------------------------------------------------- held-out style


@pytest.mark.parametrize("style", ["default", "heldout"])
def test_conversations_and_descriptions_share_only_kind_and_look_words(style):
    # What makes the description oracle exact: any other shared word would be noise (or a
    # shortcut) unrelated to the look.
    plan = plan_catalogue(seed=4, style=style)
    context_words = set().union(
        *(
            content_words(r["context"])
            for c in plan.categories
            for s in SPLITS
            for r in plan.conversations[c][s]
        )
    )
    description_words = set().union(
        *(content_words(im.description) for item in plan.items.values() for im in item.images)
    )
    st = STYLES[style]
    allowed = st.look_words | {w for kind in st.kinds for w in content_words(kind.name)}
    assert context_words & description_words - allowed == set()


def _style_strings(obj):
    """Every string in a style's definition (templates, title parts, sentences), recursively."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, tuple | list | set | frozenset):
        for x in obj:
            yield from _style_strings(x)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _style_strings(k)
            yield from _style_strings(v)
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            if f.name not in ("vocab", "name"):  # a style's own name, and its vocabulary itself
                yield from _style_strings(getattr(obj, f.name))


def test_no_template_of_one_style_uses_the_others_words():
    # Exhaustive over every string either style can emit, not just those a sample drew.
    d, h = STYLES["default"], STYLES["heldout"]
    default_words = _stem(set().union(*(content_words(s) for s in _style_strings(d))))
    heldout_words = _stem(set().union(*(content_words(s) for s in _style_strings(h))))
    assert not default_words & _stem(h.kind_vocab | h.look_words)
    assert not heldout_words & _stem(d.kind_vocab | d.look_words)


def _stem(words: set[str]) -> set[str]:
    return {w.removesuffix("s") for w in words}


def test_heldout_shares_no_vocabulary_with_default(default_cat, heldout_cat):
    d, h = STYLES["default"], STYLES["heldout"]
    assert not d.kind_vocab & h.kind_vocab
    assert not {c.word for c in d.colours} & {c.word for c in h.colours}
    assert not set(d.patterns) & set(h.patterns)
    assert not set(d.brands) & set(h.brands)
    assert not {k.name for k in d.kinds} & {k.name for k in h.kinds}

    def all_words(cat: Catalogue) -> set[str]:
        words = set()
        for meta in cat.meta.values():
            words |= content_words(meta["title"])
            for text in meta["image_descriptions_llava_cleaned"].values():
                words |= content_words(text)
        for _, r in cat.records():
            words |= content_words(r["context"]) | content_words(r["gt"])
        return words

    heldout_words, default_words = all_words(heldout_cat), all_words(default_cat)
    assert not _stem(heldout_words) & _stem(d.kind_vocab | d.look_words)
    assert not _stem(default_words) & _stem(h.kind_vocab | h.look_words)
    # The phrasing differs too: the two styles' conversations share few content words.
    default_ctx = set().union(*(content_words(r["context"]) for _, r in default_cat.records()))
    heldout_ctx = set().union(*(content_words(r["context"]) for _, r in heldout_cat.records()))
    assert default_ctx & heldout_ctx == {"submission", "comment", "https", "www", "amazon", "com"}


def test_heldout_layout_matches_default(heldout_cat):
    assert heldout_cat.summary.categories == HELDOUT_CATEGORIES
    for _, record in heldout_cat.records():
        assert list(record) == RECORD_KEYS
    assert set(heldout_cat.summary.oracle) == set(HELDOUT_CATEGORIES)


# ----------------------------------------------------------------------------- loaders and CLI


def test_files_load_through_lavic_loaders(default_cat):
    root = default_cat.root
    assert loaders.find_splits(root) == {c: list(SPLITS) for c in sorted(DEFAULT_CATEGORIES)}
    meta = loaders.load_item_meta(root / "item2meta_train.json")
    assert set(meta) == set(default_cat.meta)
    for category in DEFAULT_CATEGORIES:
        for split in SPLITS:
            conversations = loaders.load_split(root, category, split, candidate_key="candidates_st")
            assert len(conversations) == len(default_cat.splits[category][split])
            for conv in conversations:
                assert loaders.items_without_title(meta, conv.candidate_list("candidates_st")) == []
    for item in meta.values():
        assert item.image_names[0] == f"{item.item_id}_0.jpg"
        assert (root / "train_images" / item.image_names[0]).is_file()
    valid = loaders.load_item_meta(root / "item2meta_valid.jsonl")
    assert len(loaders.described_images(valid)) == len(default_cat.valid_meta)
    assert len(loaders.described_images(meta)) == sum(
        len(m["images"]) for m in default_cat.meta.values()
    )


def test_cli_writes_refuses_a_non_empty_dir_and_overwrites(tmp_path, capsys):
    out = tmp_path / "cat"
    args = ["synthesize", "--output_dir", str(out), "--categories", "synthetic_beauty", "--num_train", "4",
            "--num_valid", "2", "--num_test", "4", "--num_candidates", "3", "--min_items_per_kind", "4"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (
        summary["categories"] == ["synthetic_beauty"]
        and summary["conversations"]["synthetic_beauty"]["train"] == 4
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat"]  # nothing written beside it
    first_images = {p.name for p in (out / "train_images").iterdir()}

    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err

    (out / "notes.txt").write_text("mine")
    assert main([*args, "--seed", "1", "--overwrite"]) == 0
    capsys.readouterr()
    second_images = {p.name for p in (out / "train_images").iterdir()}
    meta = json.loads((out / "item2meta_train.json").read_text())
    assert second_images == {
        f"{i}_{k}.jpg" for i, m in meta.items() for k in range(len(m["images"]))
    }
    assert not first_images & second_images  # the stale images of the first run are gone
    assert (out / "notes.txt").read_text() == "mine"  # files that are not ours are kept


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--categories", "amazon_home"], "unknown default categories"),
        (["--style", "heldout", "--categories", "synthetic_home"], "unknown heldout categories"),
        (["--num_candidates", "40"], "num_candidates"),
        (["--min_items_per_kind", "5"], "min_items_per_kind"),
        (["--test_gt_drop_rate", "1.5"], "test_gt_drop_rate"),
        (["--max_image_side", "100"], "no image size fits"),
    ],
)
def test_cli_rejects_bad_options_in_one_line(tmp_path, capsys, flags, message):
    assert main(["synthesize", "--output_dir", str(tmp_path / "x"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_write_catalogue_rejects_an_unknown_style(tmp_path):
    with pytest.raises(LavicError, match="unknown style"):
        write_catalogue(tmp_path / "x", style="fancy")
