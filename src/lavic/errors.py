"""One exception type for every user-facing problem: the CLI prints it on one line and exits 2."""

from __future__ import annotations

from os import PathLike


class LavicError(Exception):
    """A problem the user can fix (bad input file, bad flag, missing artefact).

    The message is one line; when the problem is in a file it names the file and the line.
    """


class DataError(LavicError):
    """Malformed input data, located as ``file:line: problem``."""

    def __init__(self, path: str | PathLike[str], problem: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")
