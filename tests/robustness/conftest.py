"""The robustness suite's tally: every bad input tried and fault injected is counted here, with
whether the pipeline survived it (a clear one-line error, a counted skip, or a full recovery)
and how much finished work was lost. At the end of the session the counts are written to
``runs/robustness_counts.json`` (``LAVIC_ROBUSTNESS_COUNTS`` overrides the path); the numbers
in ``docs/robustness.md`` are copied from that file.

Use in a test::

    def test_x(tally):
        with tally.case("input", "conversations", "truncated last line"):
            ...  # assertions; leaving the block normally counts the case as survived
        tally.lost("tune kill -9", n)  # finished work missing after recovery (should be 0)
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COUNTS_ENV = "LAVIC_ROBUSTNESS_COUNTS"
KINDS = ("input", "fault")


@dataclass
class Tally:
    """Cases tried (``kind`` ``input``: a bad input; ``fault``: a crash, corruption or attack)."""

    cases: list[dict] = field(default_factory=list)
    lost_records: list[dict] = field(default_factory=list)

    @contextlib.contextmanager
    def case(self, kind: str, area: str, name: str):
        """Count one case; it survived if the block finishes without an exception."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        record = {"kind": kind, "area": area, "name": name, "survived": False}
        self.cases.append(record)
        try:
            yield record
        except BaseException as exc:
            text = str(exc).strip().splitlines()
            record["error"] = f"{type(exc).__name__}: {text[0][:500] if text else ''}"
            raise
        record["survived"] = True

    def lost(self, area: str, count: int, what: str = "") -> None:
        """Record how much finished work was missing after recovering from a fault."""
        self.lost_records.append({"area": area, "count": int(count), "what": what})

    def summary(self) -> dict:
        by_area: dict[str, dict[str, int]] = {}
        for c in self.cases:
            row = by_area.setdefault(
                c["area"], {"inputs": 0, "faults": 0, "survived": 0, "not_survived": 0}
            )
            row["inputs" if c["kind"] == "input" else "faults"] += 1
            row["survived" if c["survived"] else "not_survived"] += 1
        # The same bad file given to several commands is one distinct input, several tries.
        distinct = {(c["kind"], c["area"].split(" (")[0], c["name"]) for c in self.cases}
        return {
            "distinct_inputs": sum(kind == "input" for kind, _, _ in distinct),
            "distinct_faults": sum(kind == "fault" for kind, _, _ in distinct),
            "inputs_tried": sum(c["kind"] == "input" for c in self.cases),
            "faults_injected": sum(c["kind"] == "fault" for c in self.cases),
            "survived": sum(c["survived"] for c in self.cases),
            "not_survived": sum(not c["survived"] for c in self.cases),
            "data_lost": sum(r["count"] for r in self.lost_records),
            "by_area": dict(sorted(by_area.items())),
            "not_survived_cases": [
                f"{c['area']}: {c['name']}: {c.get('error', '')}"
                for c in self.cases
                if not c["survived"]
            ],
            "data_lost_by_area": dict(
                Counter({r["area"]: r["count"] for r in self.lost_records if r["count"]})
            ),
        }


_TALLY = Tally()
_OUTCOMES: Counter[str] = Counter()
_STARTED = time.time()


@pytest.fixture
def tally() -> Tally:
    return _TALLY


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory) -> dict[str, Path]:
    """tests/tune's catalogue: conversations (category ``toys``), item2meta_train.json, images."""
    from tune.fixtures import write_catalogue

    return write_catalogue(tmp_path_factory.mktemp("robust-catalogue"))


@pytest.fixture(scope="session")
def stage1(tmp_path_factory) -> Path:
    """A tiny-random distill artefact whose vision LoRA is not the identity."""
    from lora_artefacts import write_stage1_artifact

    return write_stage1_artifact(tmp_path_factory.mktemp("robust-distill") / "vision_lora_best")


@pytest.fixture(scope="session")
def tuned(tmp_path_factory) -> Path:
    """A tiny-random tune artefact on a distill artefact, both with random LoRA."""
    from lora_artefacts import write_tuned_lineage

    return write_tuned_lineage(tmp_path_factory.mktemp("robust-artefacts"))


def pytest_runtest_logreport(report):
    # (A hook of this conftest: it sees only the reports of tests under tests/robustness.)
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _OUTCOMES[report.outcome] += 1


def pytest_sessionfinish(session, exitstatus):
    if not _TALLY.cases:
        return
    path = Path(os.environ.get(COUNTS_ENV, REPO / "runs" / "robustness_counts.json"))
    summary = {
        **_TALLY.summary(),
        "tests": dict(_OUTCOMES),
        "wall_seconds": round(time.time() - _STARTED, 1),
        "cases": _TALLY.cases,
        "lost": _TALLY.lost_records,
    }
    from lavic.io import atomic_write_json, atomic_write_text

    atomic_write_json(path, summary)
    atomic_write_text(path.with_suffix(".md"), counts_table(summary))


def counts_table(summary: dict) -> str:
    """The counts as the Markdown tables of docs/robustness.md."""
    lines = [
        "| | count |",
        "|---|---:|",
        f"| distinct bad inputs | {summary['distinct_inputs']} |",
        f"| inputs tried (input x command) | {summary['inputs_tried']} |",
        f"| distinct faults | {summary['distinct_faults']} |",
        f"| faults injected | {summary['faults_injected']} |",
        f"| survived | {summary['survived']} |",
        f"| not survived | {summary['not_survived']} |",
        f"| data lost | {summary['data_lost']} |",
        "",
        "| area (command) | inputs | faults | survived |",
        "|---|---:|---:|---:|",
    ]
    for area, row in summary["by_area"].items():
        lines.append(f"| {area} | {row['inputs']} | {row['faults']} | {row['survived']} |")
    return "\n".join(lines) + "\n"
