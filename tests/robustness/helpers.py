"""Helpers of the robustness suite: run the real CLI and check the one-line error contract."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lavic.cli import main

ERROR_RE = re.compile(r"lavic (?P<command>[\w-]+): error: (?P<message>.*)$")
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@dataclass
class CliResult:
    rc: int
    out: str
    err: str

    def error_lines(self) -> list[str]:
        # A progress bar left open may share the error's line (it ends in \r, not \n).
        return [m.group(0) for line in self.err.splitlines() if (m := ERROR_RE.search(line))]


def run_cli(capsys, *argv) -> CliResult:
    """``lavic ARGV`` in this process; stdout and stderr captured."""
    capsys.readouterr()  # drop anything captured before
    _rebind_stream_handlers()
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return CliResult(rc, captured.out, captured.err)


def _rebind_stream_handlers() -> None:
    # Lightning attaches a stderr handler when first imported, i.e. to the capture stream of
    # whichever test imported it; once that stream is closed, logging prints "--- Logging
    # error ---" with a traceback. Point such handlers at this test's stderr (a harness issue:
    # a real process has one stderr).
    import logging

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_utilities"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                handler.stream = sys.stderr  # (setStream would flush the closed one)


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_cli_process(*argv, timeout: float = 300, **popen) -> CliResult:
    """``python -m lavic.cli ARGV`` as a separate process (the real exit code and stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "lavic.cli", *map(str, argv)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def assert_one_line_error(
    result: CliResult, command: str, where: str | Path, fragment: str, line: int | None = None
) -> str:
    """Exit status 2, no traceback, exactly one ``lavic COMMAND: error:`` line, and it is the
    last line of stderr; it names ``where`` (``:line`` after it when given) and says
    ``fragment``. Returns the message."""
    assert "Traceback" not in result.err, result.err[-3000:]
    assert result.rc == 2, (result.rc, result.err[-2000:])
    lines = result.error_lines()
    assert len(lines) == 1, result.err[-2000:]
    assert result.err.rstrip().endswith(lines[0]), f"the error is not the last line:\n{result.err}"
    message = ERROR_RE.search(lines[0])
    assert message["command"] == command
    text = message["message"]
    located = f"{where}:{line}:" if line is not None else str(where)
    assert located in text, f"{located!r} not in {text!r}"
    assert fragment in text, f"{fragment!r} not in {text!r}"
    return text


def final_names(folder: Path) -> list[Path]:
    """Files under ``folder`` that are not temporary (hidden) names: what a reader would open."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


class Deadline(Exception):
    """Raised in the main thread when a :func:`deadline` expires (a hang, not a slow step)."""


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail the block with :class:`Deadline` after ``seconds`` (SIGALRM; main thread only)."""

    def expire(signum, frame):
        raise Deadline(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Payload:
    """Unpickling this creates ``marker`` (proof that a pickle was executed)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_malicious_pickle(path: Path, marker: Path) -> None:
    """A torch-format file whose unpickling (``weights_only=False``) creates ``marker``."""
    import torch

    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Payload(marker)}, path)
