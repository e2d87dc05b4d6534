"""The config system and the CLI's error contract."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from lavic.cli import COMMANDS, main
from lavic.config import add_dataclass_arguments, dataclass_from_namespace, save_config
from lavic.errors import LavicError
from lavic.io import atomic_open, safe_join


@dataclass
class DemoArgs:
    output_dir: Path = field(metadata={"help": "where to write"})
    lr: float = field(default=5e-5, metadata={"help": "learning rate"})
    num_epochs: int = field(default=5, metadata={"help": "epochs"})
    precision: Literal["auto", "32-true", "bf16-mixed"] = field(
        default="auto", metadata={"help": "p"}
    )
    merge: bool = field(default=False, metadata={"help": "merge"})
    devices: list[int] | None = field(default=None, metadata={"help": "devices"})


def parse(argv):
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, DemoArgs)
    return dataclass_from_namespace(DemoArgs, parser.parse_args(argv))


def test_defaults_flags_and_types():
    args = parse(["--output_dir", "out", "--lr", "1e-4", "--merge"])
    assert args == DemoArgs(output_dir=Path("out"), lr=1e-4, merge=True)


def test_yaml_below_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("output_dir: from_yaml\nlr: 0.001\nnum_epochs: 2\n")
    args = parse(["--config", str(cfg), "--lr", "0.5"])
    assert args.output_dir == Path("from_yaml") and args.lr == 0.5 and args.num_epochs == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("learning_rate: 1\n", "unknown option(s) ['learning_rate']"),
        ("num_epochs: two\n", "option 'num_epochs'"),
        ("precision: fp8\n", "must be one of"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("lr: [1,\n", "invalid YAML"),
        ("merge: 3\n", "must be true or false"),
    ],
)
def test_bad_yaml_is_one_clear_line(tmp_path, text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(LavicError) as info:
        parse(["--config", str(cfg), "--output_dir", "x"])
    assert message in str(info.value) and str(cfg) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_required_option():
    with pytest.raises(LavicError, match="--output_dir"):
        parse([])


def test_saved_config_round_trips(tmp_path):
    args = parse(["--output_dir", "o", "--devices", "0", "1"])
    save_config(args, tmp_path / "config.yaml")
    assert parse(["--config", str(tmp_path / "config.yaml")]) == args


def test_every_command_module_has_args_and_run():
    import importlib

    missing = []
    for name, (module_name, _) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            missing.append(name)
            continue
        assert hasattr(module, "Args") and callable(module.run), name
    # Every registered command must exist once the pipeline is complete.
    assert not missing, f"registered commands without a module: {missing}"


def test_cli_error_is_one_line_and_exit_2(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("nonsense_key: 1\n")
    code = main(["check-data", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("lavic check-data: error:") and err.count("\n") == 1
    assert "Traceback" not in err


def test_atomic_open_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


@pytest.mark.parametrize(
    "name", ["../x.jpg", "a/b.jpg", "..", "", "/etc/passwd", "a\\b", "x\x00.jpg"]
)
def test_safe_join_refuses_escapes(tmp_path, name):
    with pytest.raises(LavicError):
        safe_join(tmp_path, name)


def test_safe_join_refuses_symlink_out(tmp_path):
    (tmp_path / "outside").mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.jpg").symlink_to(tmp_path / "outside" / "x.jpg")
    with pytest.raises(LavicError):
        safe_join(root, "link.jpg")
    assert safe_join(root, "ok.jpg") == (root / "ok.jpg").resolve()


def test_remove_partial_writes_deletes_only_the_killed_temporaries(tmp_path):
    from lavic.io import remove_partial_writes

    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"whole")
    (tmp_path / ".last.ckpt.ab12cd.tmp").write_bytes(b"half")  # what a kill -9 mid-write leaves
    (tmp_path / ".other.ckpt.ab12cd.tmp").write_bytes(b"not ours")
    (tmp_path / "metrics.json").write_text("{}")
    assert remove_partial_writes(ckpt) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.ckpt.ab12cd.tmp",
        "last.ckpt",
        "metrics.json",
    ]
    assert remove_partial_writes(tmp_path / "absent" / "last.ckpt") == 0


def test_tune_and_evaluate_share_the_recommendation_data_group():
    """One declaration of the data and prompt options; tune hands exactly those on to the
    evaluation of its artefact (nothing listed by name a second time)."""
    import dataclasses

    from lavic.config import RecommendDataArgs
    from lavic.evaluation.evaluate import Args as EvaluateArgs
    from lavic.tune.train import Args as TuneArgs

    group = {f.name: f for f in dataclasses.fields(RecommendDataArgs)}
    assert {"data_dir", "category", "item_meta_path", "candidate_type", "image_dir"} <= set(group)
    for cls in (TuneArgs, EvaluateArgs):
        assert issubclass(cls, RecommendDataArgs)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name, f in group.items():  # same type; tune's help says what it means in training
            assert fields[name].type == f.type, (cls, name)
    tune = TuneArgs(
        model_dir=Path("s1"),
        item_meta_path=Path("meta.json"),
        category="beauty",
        data_dir=Path("d"),
        image_dir=Path("img"),
        candidate_type="candidates_gpt_large",
        decoding="constrained",
        max_length=512,
        lenient=True,
        batch_size=3,
    )
    evaluation = EvaluateArgs.following(
        tune, model_dir=Path("t"), output_dir=Path("o"), batch_size=tune.batch_size
    )
    assert RecommendDataArgs.values_of(evaluation) == RecommendDataArgs.values_of(tune)
    assert evaluation.batch_size == 3 and evaluation.split == "test"


def test_override_changes_only_what_it_is_given():
    from lavic.config import RecommendDataArgs, override

    @dataclass(kw_only=True)
    class Cmd(RecommendDataArgs):
        category: str = override(RecommendDataArgs, "category", help="which shop")
        max_length: int = override(RecommendDataArgs, "max_length", 512)

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Cmd)
    helps = {a.dest: a.help for a in parser._actions}
    assert helps["category"] == "which shop (required)"  # still required, new help
    assert helps["max_length"] == "token budget of prompt + answer (default: 512)"
    with pytest.raises(LavicError, match="--category"):
        dataclass_from_namespace(
            Cmd, parser.parse_args(["--data_dir", "d", "--item_meta_path", "m"])
        )
