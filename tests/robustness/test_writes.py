"""How files land on disk (issue 20 §5): artefact folders replaced in one atomic step, files
and folders with the mode the umask gives, and a full disk as a one-line error."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path

import pytest

from lavic.cli import main
from lavic.io import atomic_directory, atomic_write_json, current_umask


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def test_the_umask_is_read_without_being_changed(umask_027):
    assert current_umask() == 0o027
    assert current_umask() == 0o027  # reading it twice: nothing was reset


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_and_artefact_folders_follow_the_umask(tmp_path, umask, tally):
    """mkstemp/mkdtemp make 0600/0700 whatever the umask: a server run as another user could
    not read an artefact. The atomic writers give what an ordinary open/mkdir would."""
    old = os.umask(umask)
    try:
        with tally.case("fault", "file modes", f"umask {umask:03o}"):
            atomic_write_json(tmp_path / "metrics.json", {"a": 1})
            with atomic_directory(tmp_path / "artefact") as tmp:
                (tmp / "weights").write_bytes(b"x")
            assert _mode(tmp_path / "metrics.json") == 0o666 & ~umask
            assert _mode(tmp_path / "artefact") == 0o777 & ~umask
    finally:
        os.umask(old)


def test_an_artefact_is_replaced_in_one_step(tmp_path, monkeypatch, tally):
    """Replacing an artefact exchanges the two folders atomically: at no instant is the path
    absent (two renames would leave a gap where a kill loses both), and the old one goes."""
    from lavic import io as lavic_io

    out = tmp_path / "artefact"
    with atomic_directory(out) as tmp:
        (tmp / "v").write_text("old")
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def watching_replace(src, dst):
        renames.append((str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(lavic_io.os, "replace", watching_replace)
    with tally.case("fault", "artefact writes", "replace an artefact in one step"):
        with atomic_directory(out) as tmp:
            (tmp / "v").write_text("new")
            assert (out / "v").read_text() == "old"  # the old one serves until the swap
        assert (out / "v").read_text() == "new"
        assert renames == []  # one exchange, no move-aside
        assert [p.name for p in tmp_path.iterdir()] == ["artefact"]  # no .tmp/.old left


def test_a_kill_right_after_the_swap_leaves_the_new_artefact(tmp_path, monkeypatch, tally):
    """Where the process dies after the exchange and before the old folder is deleted, the
    path already holds the new artefact; only a hidden leftover of the old one remains."""
    from lavic import io as lavic_io

    out = tmp_path / "artefact"
    with atomic_directory(out) as tmp:
        (tmp / "v").write_text("old")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lavic_io.shutil, "rmtree", killed)
    with tally.case("fault", "artefact writes", "kill between the swap and the clean-up"):
        with pytest.raises(KeyboardInterrupt), atomic_directory(out) as tmp:
            (tmp / "v").write_text("new")
        assert (out / "v").read_text() == "new"


def test_without_the_exchange_the_old_artefact_is_moved_aside(tmp_path, monkeypatch):
    """A filesystem without RENAME_EXCHANGE: the two-rename fallback still replaces it."""
    from lavic import io as lavic_io

    monkeypatch.setattr(lavic_io, "_exchange", lambda a, b: False)
    out = tmp_path / "artefact"
    for text in ("old", "new"):
        with atomic_directory(out) as tmp:
            (tmp / "v").write_text(text)
    assert (out / "v").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["artefact"]


def test_keep_existing_keeps_a_copy_another_process_finished_first(tmp_path):
    """A shared cache folder: two writers build the same content; the first to finish wins and
    the other's copy is dropped, never swapped in under a reader."""
    out = tmp_path / "cache"
    with atomic_directory(out, keep_existing=True) as tmp:
        (tmp / "v").write_text("mine")
        out.mkdir()  # meanwhile another process publishes its copy
        (out / "v").write_text("theirs")
    assert (out / "v").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # ours is gone
    with atomic_directory(tmp_path / "fresh", keep_existing=True) as tmp:
        (tmp / "v").write_text("new")
    assert (tmp_path / "fresh" / "v").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "fresh"]


def test_a_full_disk_is_a_one_line_error(tmp_path, monkeypatch, capsys, tally):
    """ENOSPC in the middle of a command's writes: one line naming the file, exit 1, no
    traceback; the file being written is not left half-written under its name."""
    from lavic import io

    real_fsync = os.fsync
    calls = {"n": 0}

    def full(fd):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as os.write raises it
        return real_fsync(fd)

    monkeypatch.setattr(io.os, "fsync", full)
    out = tmp_path / "catalogue"
    argv = ["synthesize", "--output_dir", str(out), "--categories", "synthetic_home"]
    argv += ["--num_train", "2", "--num_valid", "1", "--num_test", "1", "--max_image_side", "200"]
    with tally.case("fault", "disk", "disk full while writing"):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        lines = [x for x in err.replace("\r", "\n").splitlines() if "error" in x]  # not the bars
        assert len(lines) == 1, lines
        assert re.fullmatch(
            rf"lavic synthesize: error: No space left on device writing {re.escape(str(out))}/"
            r"\S+; free some space and run the command again",
            lines[0],
        ), lines
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
        for written in out.rglob("*.json"):
            json.loads(written.read_text())  # whatever is there is whole
