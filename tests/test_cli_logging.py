"""The CLI's log handler writes to the stderr of the moment: a stream swapped in and closed by
a caller (pytest's capture, a notebook) never leaves it writing into a closed file."""

from __future__ import annotations

import io
import logging
import sys

from lavic.cli import _StderrHandler


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("lavic", logging.INFO, __file__, 1, message, None, None)


def test_handler_follows_sys_stderr_after_the_first_stream_is_closed(monkeypatch):
    handler = _StderrHandler()
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    handler.emit(_record("one"))
    assert first.getvalue() == "one\n"
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    handler.emit(_record("two"))  # a handler bound at set-up would print "--- Logging error ---"
    assert second.getvalue() == "two\n"
