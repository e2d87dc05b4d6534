"""Every file the pipeline reads, malformed in every way we could think of, through the real CLI
of every command that reads it: a one-line ``file:line: problem`` error and exit status 2
(never a traceback), or with ``--lenient`` a counted skip (never a silent drop)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lavic.cli import main
from lavic.data.loaders import load_conversations, load_item_meta

from .corpus import (
    CONFIG_CASES,
    CONVERSATION_CASES,
    GOOD_IDS,
    IMAGE_CASES,
    ODD_BUT_VALID_TEXT,
    TRAIN_META_CASES,
    TUNE_CONFIG_CASES,
    VALID_META_CASES,
    Case,
    conversation,
    good_train_meta,
    line,
    valid_meta_row,
    write_image_corpus,
)
from .helpers import assert_one_line_error, run_cli, run_cli_process

CATEGORY = "toys"
SPLITS = ("train", "valid", "test")


def _data_dir(root: Path, data: bytes) -> Path:
    """A dataset whose three splits all hold ``data``."""
    for split in SPLITS:
        path = root / CATEGORY / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _good_data_dir(root: Path) -> Path:
    return _data_dir(root, b"".join(line(conversation(k)) + b"\n" for k in range(3)))


def _commands_reading_conversations(stage1, catalogue, tmp: Path, data_dir: Path):
    """(command, argv, split whose file it reads first)."""
    common = ["--data_dir", data_dir, "--category", CATEGORY]
    return [
        ("check-data", ["check-data", "--data_dir", data_dir], "train"),
        (
            "encode",
            ["encode", "--model_dir", stage1, "--cache_dir", tmp / "cache"]
            + ["--image_dir", catalogue["image_dir"], *common],
            "train",
        ),
        (
            "tune",
            ["tune", "--model_dir", stage1, "--item_meta_path", catalogue["item_meta_path"]]
            + ["--image_dir", catalogue["image_dir"], "--finetune_output_dir", tmp / "ft", *common],
            "train",
        ),
        (
            "evaluate",
            ["evaluate", "--model_dir", stage1, "--item_meta_path", catalogue["item_meta_path"]]
            + ["--output_dir", tmp / "ev", *common],
            "test",
        ),
    ]


# ------------------------------------------------------------------------------ conversations


@pytest.mark.parametrize("case", CONVERSATION_CASES, ids=lambda c: c.name)
def test_bad_conversations_strict(case: Case, stage1, catalogue, tmp_path, capsys, tally):
    data_dir = _data_dir(tmp_path / "data", case.data)
    for command, argv, split in _commands_reading_conversations(
        stage1, catalogue, tmp_path, data_dir
    ):
        with tally.case("input", f"conversations ({command})", case.name):
            result = run_cli(capsys, *argv)
            where = data_dir / CATEGORY / f"{split}.jsonl"
            assert_one_line_error(result, command, where, case.says, line=case.line)
    for folder in ("ft", "ev", "cache"):  # a strict run stops before writing anything
        assert not (tmp_path / folder).exists(), folder


def test_bad_conversations_lenient_are_counted(tmp_path, capsys, tally):
    """All skippable cases in one file: every good line loads, every bad one is counted."""
    good = [line(conversation(k)) for k in range(4)]
    bad = [c for c in CONVERSATION_CASES if c.name != "truncated last line"]
    body = [good[0]] + [c.data.split(b"\n")[1] for c in bad] + good[1:]
    truncated = next(c for c in CONVERSATION_CASES if c.name == "truncated last line")
    data = b"".join(r + b"\n" for r in body) + truncated.data.split(b"\n")[-1]
    data_dir = _data_dir(tmp_path / "data", data)
    with tally.case("input", "conversations (check-data --lenient)", "all bad lines in one file"):
        result = run_cli(
            capsys, "check-data", "--data_dir", data_dir, "--lenient", "--json", tmp_path / "r.json"
        )
        assert result.rc == 0, result.err
        report = json.loads((tmp_path / "r.json").read_text())
        for row in report["files"]:
            assert row["loaded"] == len(good)
            assert row["skipped"] == len(bad) + 1
            lines = [int(m.split(":")[1]) for m in row["skip_messages"]]
            assert lines == list(range(2, 2 + len(bad))) + [len(body) + 1]
        assert f"lenient: {3 * (len(bad) + 1)} bad record(s) skipped" in result.out


@pytest.mark.parametrize("name", list(ODD_BUT_VALID_TEXT))
def test_odd_but_valid_text_is_kept_verbatim(name, tmp_path, capsys, tally):
    text = ODD_BUT_VALID_TEXT[name]
    record = conversation(0, context=f"<submission>{text}</submission>\n", gt=text)
    data_dir = _data_dir(tmp_path / "data", line(record) + b"\n")
    with tally.case("input", "conversations (odd Unicode)", name):
        result = run_cli(capsys, "check-data", "--data_dir", data_dir)
        assert result.rc == 0, result.err
        (loaded,) = load_conversations(data_dir / CATEGORY / "test.jsonl")
        assert loaded.context == record["context"] and loaded.gt == text  # not "repaired"


# ------------------------------------------------------------------------------ item metadata


def _good_valid_jsonl(path: Path) -> Path:
    path.write_bytes(b"".join(line(valid_meta_row(k)) + b"\n" for k in range(3)))
    return path


def _good_train_json(path: Path) -> Path:
    path.write_text(json.dumps(good_train_meta()), encoding="utf-8")
    return path


def _commands_reading_meta(stage1, catalogue, tmp: Path, meta: Path, *, train: bool):
    data_dir = _good_data_dir(tmp / "good-data")
    images = catalogue["image_dir"]
    if train:
        distill_meta = ["--train_data", meta, "--val_data", _good_valid_jsonl(tmp / "v.jsonl")]
    else:
        distill_meta = ["--train_data", _good_train_json(tmp / "t.json"), "--val_data", meta]
    common = ["--data_dir", data_dir, "--category", CATEGORY, "--item_meta_path", meta]
    return [
        ("check-data", ["check-data", "--data_dir", data_dir, "--item_meta_path", meta]),
        (
            "distill",
            ["distill", "--model_name", "tiny-random", "--output_dir", tmp / "out", *distill_meta]
            + ["--train_images_dir", images, "--val_images_dir", images],
        ),
        (
            "encode",
            ["encode", "--model_dir", stage1, "--cache_dir", tmp / "cache", "--image_dir", images]
            + ["--item_meta_path", meta],
        ),
        (
            "tune",
            ["tune", "--model_dir", stage1, "--image_dir", images]
            + ["--finetune_output_dir", tmp / "ft", *common],
        ),
        ("evaluate", ["evaluate", "--model_dir", stage1, "--output_dir", tmp / "ev", *common]),
        (
            "describe",
            ["describe", "--model_name", "tiny-random", "--item_meta_path", meta]
            + ["--image_dir", images, "--output_path", tmp / f"described{meta.suffix}"],
        ),
        (
            "index",
            ["index", "--model_dir", stage1, "--item_meta_path", meta, "--image_dir", images]
            + ["--index_dir", tmp / "index"],
        ),
    ]


@pytest.mark.parametrize("case", TRAIN_META_CASES, ids=lambda c: c.name)
def test_bad_train_metadata_strict(case: Case, stage1, catalogue, tmp_path, capsys, tally):
    meta = tmp_path / "item2meta_train.json"
    meta.write_bytes(case.data)
    for command, argv in _commands_reading_meta(stage1, catalogue, tmp_path, meta, train=True):
        with tally.case("input", f"item2meta_train.json ({command})", case.name):
            result = run_cli(capsys, *argv)
            assert_one_line_error(result, command, meta, case.says, line=case.line)
    for folder in ("out", "ft", "ev", "cache", "index", "described.json", "described.jsonl"):
        assert not (tmp_path / folder).exists(), folder


@pytest.mark.parametrize("case", VALID_META_CASES, ids=lambda c: c.name)
def test_bad_valid_metadata_strict(case: Case, stage1, catalogue, tmp_path, capsys, tally):
    meta = tmp_path / "item2meta_valid.jsonl"
    meta.write_bytes(case.data)
    for command, argv in _commands_reading_meta(stage1, catalogue, tmp_path, meta, train=False):
        with tally.case("input", f"item2meta_valid.jsonl ({command})", case.name):
            result = run_cli(capsys, *argv)
            assert_one_line_error(result, command, meta, case.says, line=case.line)


def test_bad_metadata_lenient_are_counted(tmp_path, tally):
    """Lenient loads of each skippable metadata case keep the good items and count the bad."""
    for kind, cases, name in (
        ("item2meta_train.json", TRAIN_META_CASES, "m.json"),
        ("item2meta_valid.jsonl", VALID_META_CASES, "m.jsonl"),
    ):
        for case in cases:
            if not case.skippable:
                continue
            with tally.case("input", f"{kind} (lenient)", case.name):
                path = tmp_path / name
                path.write_bytes(case.data)
                from lavic.data.records import LoadReport

                report = LoadReport(str(path))
                items = load_item_meta(path, lenient=True, report=report)
                assert report.num_skipped == 1, report.skipped
                assert case.says in report.skipped[0]
                if case.line is not None:
                    assert report.skipped[0].startswith(f"{path}:{case.line}: ")
                assert report.loaded == len(items) >= 2


# --------------------------------------------------------------------------------- images


def test_bad_images_are_counted_never_fatal(tmp_path, capsys, tally):
    """check-data --image_dir: each image case lands in its outcome's count; nothing leaves the
    folder (a symlink out of it and ids with separators or '..' are never opened)."""
    image_dir = tmp_path / "images"
    expected = write_image_corpus(image_dir, tmp_path / "outside")
    ids = list(IMAGE_CASES)
    rows = [conversation(0, candidates_st=ids, candidates_gpt_large=ids, gt_items=[ids[0]])]
    data_dir = _data_dir(tmp_path / "data", b"".join(line(r) + b"\n" for r in rows))
    from lavic.data.images import read_image

    with tally.case("input", "images (read_image)", "name with an unpaired surrogate: unsafe"):
        assert read_image(image_dir, "IMG\ud83dSUR_0.jpg") == (None, "unsafe")
    for item_id, outcome in expected.items():
        with tally.case("input", "images (read_image)", f"{item_id!r}: {outcome}"):
            image, got = read_image(image_dir, f"{item_id}_0.jpg")
            assert got == outcome, item_id
            assert (image is not None) == (outcome == "loaded")
            if image is not None:
                assert image.mode == "RGB"
    with tally.case("input", "images (check-data)", "the whole image corpus"):
        result = run_cli(
            capsys, "check-data", "--data_dir", data_dir, "--image_dir", image_dir, "--json",
            tmp_path / "r.json",
        )  # fmt: skip
        assert result.rc == 0, result.err
        report = json.loads((tmp_path / "r.json").read_text())
        counts = {o: sum(v == o for v in expected.values()) for o in set(expected.values())}
        for row in report["rows"]:
            assert row["candidate_images"] == len(ids)
            assert {k: v for k, v in row["images"].items() if v} == counts


def test_decodable_oddities_are_converted_not_clipped(tmp_path, tally):
    from lavic.data.images import read_image

    image_dir = tmp_path / "images"
    write_image_corpus(image_dir, tmp_path / "outside")
    with tally.case("input", "images (pixels)", "16-bit, alpha, animated, CMYK"):
        assert read_image(image_dir, "IMG16BIT01_0.jpg")[0].getpixel((5, 5)) == (128, 128, 128)
        assert read_image(image_dir, "IMGRGBA001_0.jpg")[0].getpixel((5, 5)) == (255, 255, 255)
        r, g, b = read_image(image_dir, "IMGANIM001_0.jpg")[0].getpixel((5, 5))
        assert r > 200 and g < 50 and b < 50  # the first frame
        r, g, b = read_image(image_dir, "IMGCMYK001_0.jpg")[0].getpixel((5, 5))
        assert r > 200 and g < 60 and b < 60  # C=0 M=Y=255: red


# --------------------------------------------------------------------------------- configs


def _config(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", CONFIG_CASES, ids=lambda c: c.name)
def test_bad_config_check_data(case, tmp_path, capsys, tally):
    with tally.case("input", "YAML --config (check-data)", case.name):
        path = _config(tmp_path, case.data)
        result = run_cli(capsys, "check-data", "--config", path)
        assert_one_line_error(result, "check-data", path, case.says, line=case.line)


@pytest.mark.parametrize("case", TUNE_CONFIG_CASES, ids=lambda c: c.name)
def test_bad_config_tune(case, tmp_path, capsys, tally):
    with tally.case("input", "YAML --config (tune)", case.name):
        path = _config(tmp_path, case.data)
        result = run_cli(capsys, "tune", "--config", path)
        assert_one_line_error(result, "tune", path, case.says, line=case.line)


@pytest.mark.parametrize(
    "name, data, says",
    [
        ("str option given a list", b"category: [a, b]\n", "option 'category'"),
        ("str option given a mapping", b"candidate_type: {x: 1}\n", "option 'candidate_type'"),
    ],
)
def test_config_wrong_container_types(name, data, says, tmp_path, capsys, tally):
    with tally.case("input", "YAML --config (tune)", name):
        path = _config(tmp_path, data)
        result = run_cli(capsys, "tune", "--config", path)
        assert_one_line_error(result, "tune", path, says)


def test_config_list_of_lists(tmp_path, capsys, tally):
    with tally.case("input", "YAML --config (encode)", "list option holding a list"):
        path = _config(tmp_path, b"splits: [[train], valid]\n")
        result = run_cli(capsys, "encode", "--config", path)
        assert_one_line_error(result, "encode", path, "option 'splits'")


def test_missing_and_directory_configs(tmp_path, capsys, tally):
    for name, path, says in (
        ("missing file", tmp_path / "absent.yaml", "cannot read config"),
        ("a directory", tmp_path, "cannot read config"),
    ):
        with tally.case("input", "YAML --config (check-data)", name):
            result = run_cli(capsys, "check-data", "--config", path)
            assert_one_line_error(result, "check-data", path, says)


# ------------------------------------------------------------------------ as real processes


def test_errors_from_real_processes(tmp_path, tally):
    """A few cases as separate processes: the exit status and the whole stderr of the OS."""
    conv = CONVERSATION_CASES[1]  # undecodable bytes
    data_dir = _data_dir(tmp_path / "data", conv.data)
    meta_case = TRAIN_META_CASES[4]  # title is a number
    meta = tmp_path / "item2meta_train.json"
    meta.write_bytes(meta_case.data)
    config = _config(tmp_path, CONFIG_CASES[0].data)
    for name, argv, where, says, at in (
        ("conversations", ["check-data", "--data_dir", data_dir], "train", conv.says, conv.line),
        (
            "item metadata",
            ["check-data", "--data_dir", _good_data_dir(tmp_path / "g"), "--item_meta_path", meta],
            meta,
            meta_case.says,
            meta_case.line,
        ),
        ("config", ["check-data", "--config", config], config, "invalid YAML", 3),
    ):
        with tally.case("input", "real process (check-data)", name):
            result = run_cli_process(*argv, timeout=120)
            if where == "train":
                where = data_dir / CATEGORY / "train.jsonl"
            assert_one_line_error(result, "check-data", where, says, line=at)
            assert len(result.err.strip().splitlines()) == 1, result.err  # nothing else at all


def test_crawl_reads_metadata_with_one_line_errors(tmp_path, capsys, tally):
    """crawl has its own fast metadata reader: the same contract for what it reads."""
    cases = [
        ("item2meta_valid.jsonl", c)
        for c in VALID_META_CASES
        if c.name
        in {"truncated last line", "undecodable bytes", "not an object", "JSON nested 100,000 deep"}
    ] + [
        ("item2meta_train.json", c)
        for c in TRAIN_META_CASES
        if c.name
        in {
            "truncated file",
            "top level is an array",
            "item is a string",
            "images is an object",
            "JSON nested 100,000 deep",
        }
    ]
    cases += [
        (
            "item2meta_valid.jsonl",
            Case(
                "unpaired surrogate in image_name",
                b'{"image": "http://127.0.0.1:9/a.jpg", "image_name": "a\\ud83d_0.jpg"}\n',
                1,
                "unpaired surrogate",
            ),
        ),
        (
            "item2meta_train.json",
            Case(
                "unpaired surrogate in an item id",
                b'{"A\\udc80": {"images": [{"large": "http://127.0.0.1:9/a.jpg"}]}}',
                None,
                "unpaired surrogate",
            ),
        ),
    ]
    for file_name, case in cases:
        with tally.case("input", f"{file_name} (crawl)", case.name):
            meta = tmp_path / file_name
            meta.write_bytes(case.data)
            result = run_cli(
                capsys, "crawl", "--item_meta_path", meta, "--images_dir", tmp_path / "img"
            )
            assert_one_line_error(result, "crawl", meta, "")
            assert not (tmp_path / "img").exists() or not any((tmp_path / "img").iterdir())


def test_unknown_ids_and_gt_without_metadata_are_counted(catalogue, tmp_path, capsys, tally):
    """Candidates and gt items with no metadata and no image are not errors: each is shown as
    ``No Title`` with the placeholder image, and counted."""
    unknown = ["UNKNOWN001", "UNKNOWN002"]
    rows = [
        conversation(k, gt_items=["NOMETA0001"], candidates_st=GOOD_IDS[:3] + unknown)
        for k in range(3)
    ]
    data_dir = _data_dir(tmp_path / "data", b"".join(line(r) + b"\n" for r in rows))
    shutil.copy(catalogue["item_meta_path"], tmp_path / "meta.json")
    with tally.case("input", "conversations (check-data)", "unknown ids, gt without metadata"):
        result = run_cli(
            capsys, "check-data", "--data_dir", data_dir, "--item_meta_path",
            tmp_path / "meta.json", "--image_dir", catalogue["image_dir"], "--json",
            tmp_path / "r.json",
        )  # fmt: skip
        assert result.rc == 0, result.err
        rows_out = json.loads((tmp_path / "r.json").read_text())["rows"]
        st = next(r for r in rows_out if r["candidate_key"] == "candidates_st")
        # items without a title: the two unknown candidates and the gt item with no metadata
        assert st["items_without_title"] == 3
        assert st["images"]["missing"] == 2
        assert st["gt_in_candidates"] == 0.0


def test_crawl_never_writes_outside_its_folder(tmp_path, tally, capsys):
    """Image names that are paths (separators, ``..``, absolute) are refused by the loader, as
    for every command: a one-line ``file:line`` error, nothing fetched or written. Plain names
    the crawler keeps for itself (hidden names, its manifest's) are refused one by one and
    counted as failures in the manifest; nothing is written outside the folder."""
    from data.http_server import LocalServer, image_bytes, ok
    from lavic.data.crawl import MANIFEST_NAME

    paths = ["../escape_0.jpg", "../../escape_1.jpg", "sub/dir_0.jpg", "/tmp/abs_0.jpg"]
    paths.append("..\\back_0.jpg")
    reserved = [".hidden_0.jpg", MANIFEST_NAME]
    images = tmp_path / "a" / "b" / "images"
    with LocalServer() as server:
        server.add("/x.jpg", ok(image_bytes()))

        def write_meta(names: list[str]) -> Path:
            rows = [{"image": server.url("/x.jpg"), "image_name": n} for n in names]
            rows.append({"image": server.url("/x.jpg"), "image_name": "GOOD_0.jpg"})
            meta = tmp_path / "meta.jsonl"
            meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
            return meta

        def outside() -> set[Path]:
            return {p for p in tmp_path.rglob("*")} | set(Path("/tmp").glob("abs_0.jpg"))

        # --allow_private_hosts: the test's server is on 127.0.0.1
        argv = ["crawl", "--images_dir", str(images), "--allow_private_hosts"]
        with tally.case("input", "item2meta_valid.jsonl (crawl)", "image names that are paths"):
            for name in paths:
                meta = write_meta([name])  # the path on line 1, a good name on line 2
                before = outside()
                assert main([*argv, "--item_meta_path", str(meta)]) == 2
                err = capsys.readouterr().err.strip().splitlines()
                assert len(err) == 1 and f"{meta}:1: key 'image_name' {name!r}" in err[0]
                assert outside() - before == set()  # nothing fetched, nothing written
                assert server.count("/x.jpg") == 0
        with tally.case("input", "item2meta_valid.jsonl (crawl)", "reserved image names"):
            meta = write_meta(reserved)
            before = outside()
            assert main([*argv, "--item_meta_path", str(meta)]) == 0
            after = outside()
            assert {p.name for p in after - before if p.is_file()} == {"GOOD_0.jpg", MANIFEST_NAME}
            assert all(images in p.parents for p in after - before if p.is_file())
            manifest = [json.loads(x) for x in (images / MANIFEST_NAME).read_text().splitlines()]
            reasons = {r["file"]: r.get("reason") for r in manifest if r["status"] == "failed"}
            assert sorted(reasons) == sorted(reserved)
            assert set(reasons.values()) == {"unsafe_name"}


def test_image_corpus_through_encode(stage1, tmp_path, capsys, tally):
    """``lavic encode`` over the image corpus: every odd image is encoded or replaced by the
    placeholder, and each outcome is counted in its report."""
    image_dir = tmp_path / "images"
    expected = write_image_corpus(image_dir, tmp_path / "outside")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({i: {"title": i} for i in expected}))
    with tally.case("input", "images (encode)", "the whole image corpus"):
        result = run_cli(
            capsys, "encode", "--model_dir", stage1, "--cache_dir", tmp_path / "cache",
            "--image_dir", image_dir, "--item_meta_path", meta,
        )  # fmt: skip
        assert result.rc == 0, result.err
        report = json.loads(result.out)
        counts = {o: sum(v == o for v in expected.values()) for o in set(expected.values())}
        assert {k: v for k, v in report["image_stats"].items() if v} == counts
        assert report["placeholders"] == len(expected) - counts["loaded"]
        assert report["items"] == len(expected)
