"""configs/reproduce.sh (`make reproduce`): every command it would run parses into its Args,
with the YAML configs under configs/ (unknown keys are errors), in a dry run."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from lavic.cli import COMMANDS, _load, build_parser
from lavic.config import dataclass_from_namespace

ROOT = Path(__file__).resolve().parents[1]


def _dry_run(**env: str) -> list[list[str]]:
    out = subprocess.run(
        ["bash", str(ROOT / "configs" / "reproduce.sh")],
        cwd=ROOT,
        env={**os.environ, "DRY_RUN": "1", "LAVIC": "lavic", **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ ")]


def test_every_reproduce_command_parses_with_its_config():
    commands = _dry_run()
    # 4 data steps + distill + 3 categories x 2 candidate sets x (tune, tune text-only, evaluate)
    assert [c[1] for c in commands[:5]] == [
        "download-data",
        "crawl",
        "crawl",
        "check-data",
        "distill",
    ]
    assert len(commands) == 5 + 3 * 2 * 3
    seen = set()
    for argv in commands:
        name = argv[1]
        module = _load(COMMANDS[name][0])
        args = dataclass_from_namespace(module.Args, build_parser(only=name).parse_args(argv[1:]))
        seen.add((name, getattr(args, "candidate_type", None), getattr(args, "no_images", None)))
        if name == "distill":
            assert args.model_name == "llava-hf/llava-v1.6-mistral-7b-hf"
            assert (args.lr, args.num_epochs, args.batch_size) == (5e-5, 5, 4)  # the reference's
        if name == "tune":
            assert (args.lr, args.batch_size, args.max_length) == (5e-5, 1, 2048)
    assert ("tune", "candidates_gpt_large", True) in seen  # the text-only ablation
    assert ("evaluate", "candidates_st", False) in seen


def test_reproduce_overrides():
    commands = _dry_run(CATEGORIES="all_beauty", CANDIDATE_TYPES="candidates_st", OUT="/tmp/x")
    assert len(commands) == 5 + 3
    assert "/tmp/x/distill" in commands[4]
