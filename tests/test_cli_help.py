"""Every command's ``--help`` keeps the flags and defaults it had before the training core was
shared (issue 12): the stage Args are now composed from shared groups, and this is the oracle.

``tests/fixtures/cli_options.json`` was written from the code *before* that change with
``python tests/test_cli_help.py --write``; regenerate it only for a deliberate change of flags.
Deliberate changes since: ``import-catalogue`` (new command); ``build-tiny`` (the
``item_tokens`` and ``instruct`` modes and their flags,
``--instruct_schedule``, ``--describe_weight``); ``synthesize --title_look``; ``demo
--tune_steps`` (one stage-2 model for every category) and ``--tune_curriculum``; ``tune
--candidate_curriculum``; ``distill``/``tune --precision`` (one list of choices for both
stages, the default unchanged); ``crawl``/``import-catalogue``/``download-data
--allow_private_hosts`` (issue 20: non-public addresses are refused unless it is given);
``import-catalogue --encoding``; ``check-data --data_dir``
optional (a catalogue alone); ``--threads`` on describe, distill, tune, evaluate, index and
serve (issue 22); ``serve --max_queue``, ``--queue_timeout_s`` and
``--limit_concurrency`` (shedding load, issue 20); ``evaluate --described_baseline``,
``demo --num_test`` 50 and ``--reference`` (issue 19); ``synthesize-unseen`` (new command: a
second held-out catalogue generator); ``demo``'s stage-2 recipe (``--tune_batch_size`` 4,
``--tune_lr`` 2e-4, ``--tune_steps`` 40, no ``--tune_curriculum``), ``--distill_lr`` 1e-4 and
``--num_train`` 60 (issue 19); ``build-tiny --instruct_init`` and ``--instruct_precision``
(issue 19: continuing tiny's selection LoRA on the broad phrasings); ``build-tiny
--item_token_pictures`` (issue 19: the [CLS]-path warm start on pictures of many renderings).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from lavic.cli import COMMANDS, build_parser

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "cli_options.json"
_DEFAULT = "(default: "


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def describe_command(name: str) -> dict[str, dict]:
    """``{flag: {"default", "required", "type", "nargs", "choices"}}`` of one subcommand, read
    from the parser ``lavic NAME --help`` prints (the default as its help text shows it)."""
    options: dict[str, dict] = {}
    for action in _subparser(build_parser(only=name), name)._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        help_text = " ".join((action.help or "").split())
        # The last "(default: X)": help texts may hold parentheses, and so may X itself.
        at = help_text.rfind(_DEFAULT)
        default = (
            help_text[at + len(_DEFAULT) : -1] if at >= 0 and help_text.endswith(")") else None
        )
        if isinstance(action, argparse.BooleanOptionalAction):
            kind = "bool"
        else:
            kind = getattr(action.type, "__name__", None) if action.type else None
        options[action.option_strings[0]] = {
            "flags": sorted(action.option_strings),
            "default": default,
            "required": help_text.endswith("(required)"),
            "type": kind,
            "nargs": action.nargs,
            "choices": list(action.choices) if action.choices is not None else None,
        }
    return options


def snapshot() -> dict[str, dict]:
    return {name: describe_command(name) for name in COMMANDS}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_keeps_flags_and_defaults(command):
    before = json.loads(FIXTURE.read_text(encoding="utf-8"))
    assert command in before, f"new command {command!r}: add it with --write"
    now = describe_command(command)
    assert sorted(now) == sorted(before[command]), "flags added or removed"
    for flag, old in before[command].items():
        new = now[flag]
        for key in ("flags", "default", "required", "type", "nargs"):
            assert new[key] == old[key], f"{command} {flag}: {key} {old[key]!r} -> {new[key]!r}"
        if old["choices"] is not None:  # a choice may be added, never taken away
            assert new["choices"] is not None and set(old["choices"]) <= set(new["choices"]), (
                f"{command} {flag}: choices {old['choices']} -> {new['choices']}"
            )


def test_fixture_names_every_command():
    assert sorted(json.loads(FIXTURE.read_text(encoding="utf-8"))) == sorted(COMMANDS)


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        FIXTURE.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n")
        print(f"wrote {FIXTURE}")
