"""`lavic describe`: the reference's formats in and out, unreadable images skipped and counted,
batched generation equal to one-at-a-time, and resuming an interrupted run."""

from __future__ import annotations

import json

import pytest

from lavic.cli import main
from lavic.data.loaders import described_images, load_item_meta
from lavic.distill import describe


def _argv(meta, images, out, *extra):
    return [
        "describe",
        "--model_name",
        "tiny-random",
        "--item_meta_path",
        str(meta),
        "--image_dir",
        str(images),
        "--output_path",
        str(out),
        "--max_new_tokens",
        "6",
        *extra,
    ]


def test_jsonl_in_jsonl_out(tiny_catalogue, tmp_path, capsys):
    out = tmp_path / "described.jsonl"
    meta, images = tiny_catalogue["val_data"], tiny_catalogue["val_images_dir"]
    assert main(_argv(meta, images, out, "--batch_size", "2")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 4 and summary["described"] == 3
    assert summary["image_stats"]["unsafe"] == 1
    src = [json.loads(line) for line in meta.read_text().splitlines()]
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(got) == len(src)
    for s, g in zip(src, got, strict=True):
        assert {k: v for k, v in g.items() if k != describe.VALID_FIELD} == {
            k: v for k, v in s.items() if k != describe.VALID_FIELD
        }
        if s["image_name"] == "ESCAPE_0.jpg":  # a link out of the image folder
            assert g[describe.VALID_FIELD] is None  # never described as the placeholder
        else:
            assert isinstance(g[describe.VALID_FIELD], str)
            assert (
                g[describe.VALID_FIELD] != s[describe.VALID_FIELD]
            )  # the model's, not the input's
    # The output is valid input for distillation.
    assert len(described_images(load_item_meta(out))) == 3


def test_json_in_json_out(tiny_catalogue, tmp_path):
    out = tmp_path / "described.json"
    meta, images = tiny_catalogue["train_data"], tiny_catalogue["train_images_dir"]
    assert main(_argv(meta, images, out, "--batch_size", "4")) == 0
    src, got = json.loads(meta.read_text()), json.loads(out.read_text())
    assert list(got) == list(src)
    for item_id, value in got.items():
        assert value["images"] == src[item_id]["images"] and value["title"] == src[item_id]["title"]
        field = value[describe.TRAIN_FIELD]
        if item_id in ("B000000001", "B000000002"):  # missing and corrupt images
            assert field == {}
        else:
            assert list(field) == [f"{item_id}_0.jpg"] and isinstance(
                field[f"{item_id}_0.jpg"], str
            )


def test_batched_generation_equals_one_at_a_time(tiny_catalogue, tmp_path):
    meta, images = tiny_catalogue["val_data"], tiny_catalogue["val_images_dir"]
    one, three = tmp_path / "one.jsonl", tmp_path / "three.jsonl"
    assert main(_argv(meta, images, one, "--batch_size", "1")) == 0
    assert main(_argv(meta, images, three, "--batch_size", "3")) == 0
    assert one.read_text() == three.read_text()


def test_interrupted_run_resumes_without_redoing(tiny_catalogue, tmp_path, monkeypatch):
    meta, images = tiny_catalogue["val_data"], tiny_catalogue["val_images_dir"]
    out = tmp_path / "described.jsonl"
    calls: list[int] = []
    real = describe.generate_descriptions

    def crash_on_second_batch(backbone, imgs, titles, **kw):
        calls.append(len(imgs))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(backbone, imgs, titles, **kw)

    monkeypatch.setattr(describe, "generate_descriptions", crash_on_second_batch)
    argv = _argv(meta, images, out, "--batch_size", "1", "--save_every", "1")
    assert main(argv) == 130  # interrupted, after one image was saved
    first = [json.loads(line)[describe.VALID_FIELD] for line in out.read_text().splitlines()]
    assert sum(d is not None for d in first) == 1

    calls.clear()
    monkeypatch.setattr(describe, "generate_descriptions", real)
    counted: list[int] = []
    monkeypatch.setattr(
        describe,
        "generate_descriptions",
        lambda b, imgs, titles, **kw: counted.append(len(imgs)) or real(b, imgs, titles, **kw),
    )
    assert main(argv) == 0
    assert sum(counted) == 2  # only the two readable images not yet described
    final = [json.loads(line)[describe.VALID_FIELD] for line in out.read_text().splitlines()]
    assert final[0] == first[0]  # kept, not regenerated
    assert sum(d is not None for d in final) == 3

    counted.clear()
    assert main([*argv, "--overwrite"]) == 0
    assert sum(counted) == 3  # --overwrite starts afresh


def test_refuses_to_overwrite_its_input(tiny_catalogue, capsys):
    meta, images = tiny_catalogue["val_data"], tiny_catalogue["val_images_dir"]
    assert main(_argv(meta, images, meta)) == 2
    assert "must not overwrite the input" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["out.json", "out.txt"])
def test_output_format_must_match_input(tiny_catalogue, tmp_path, name, capsys):
    meta, images = tiny_catalogue["val_data"], tiny_catalogue["val_images_dir"]
    assert main(_argv(meta, images, tmp_path / name)) == 2
    assert "must have the input's format" in capsys.readouterr().err
