"""``kill -9`` in the middle of distill, tune, encode and crawl, then a rerun (``--resume`` for
the trainers, plain for encode and crawl): it completes, says that it resumed, matches a run
that was never interrupted (same seed), loses no finished work, and no partial file is ever
visible under its final name (checked while the victim runs, after the kill and at the end).

The victims are real ``python -m lavic.cli`` processes on tiny-random models; the uninterrupted
oracle and the rerun run in this process (the same CLI code, without a second start-up).
"""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lavic.cli import main

from .helpers import final_names, subprocess_env

pytestmark = pytest.mark.slow  # each starts a Python process with torch from scratch

torch.set_num_threads(1)
START_TIMEOUT = 600  # seconds for the victim to reach the kill point (a loaded 2-core box)


def _popen(argv: list, *, prelude: str = "") -> subprocess.Popen:
    code = f"import sys\n{prelude}\nfrom lavic.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, argv)],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], what: str) -> None:
    """SIGKILL ``proc`` as soon as ``ready()``; fail if it ends (or stalls) before that."""
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if ready():
                break
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")[-3000:]
                raise AssertionError(
                    f"the victim ended (rc {proc.returncode}) before {what}:\n{err}"
                )
            time.sleep(0.05)
        else:
            raise AssertionError(f"the victim never reached {what}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the kill must land while the victim runs"


def _checkpoint_step(path: Path) -> int:
    """The step of ``path``; a checkpoint that exists must load whole (weights_only)."""
    if not path.is_file():
        return -1
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def _resumed_step(log_text: str, ckpt: Path) -> tuple[int, int]:
    """(epoch, step) from the trainer's "resuming from CKPT epoch E step S" line."""
    match = re.search(rf"resuming from {re.escape(str(ckpt))} epoch (\d+) step (\d+)", log_text)
    assert match, "the rerun did not say that it resumed"
    return int(match[1]), int(match[2])


def _assert_loadable(folder: Path, *, while_running: bool = False) -> list[str]:
    """Every file under a final (non-hidden) name in ``folder`` is whole; returns their names.

    ``while_running``: a file may vanish between listing and reading (an artefact directory
    swapped by rename, an unreferenced shard deleted); absent is allowed, partial never.
    """
    names = []
    for path in final_names(folder) if folder.is_dir() else []:
        try:
            if path.suffix == ".ckpt":
                torch.load(path, map_location="cpu", weights_only=True)
            elif path.suffix == ".safetensors":
                load_file(str(path))
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            if not while_running:
                raise
            continue
        names.append(str(path.relative_to(folder)))
    return names


# ------------------------------------------------------------------------------------ tune


def _tune_argv(stage1: Path, catalogue: dict[str, Path], out: Path, *extra) -> list:
    return [
        "tune", "--model_dir", stage1, "--item_meta_path", catalogue["item_meta_path"],
        "--image_dir", catalogue["image_dir"], "--data_dir", catalogue["data_dir"],
        "--category", "toys", "--finetune_output_dir", out, "--max_length", "512",
        "--lora_dropout", "0", "--lr", "1e-3", "--num_epochs", "4",
        "--checkpoint_every_n_steps", "1", "--log_every_n_steps", "1", "--skip_eval", *extra,
    ]  # fmt: skip


def test_tune_kill_9_then_resume(stage1, catalogue, tmp_path, caplog, tally):
    caplog.set_level(logging.INFO, logger="lavic")
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main([str(a) for a in _tune_argv(stage1, catalogue, reference)]) == 0

    ckpt = run / "checkpoints" / "last.ckpt"
    with tally.case("fault", "kill -9 (tune)", "SIGKILL mid-training, then --resume"):
        proc = _popen(_tune_argv(stage1, catalogue, run))
        seen = {"step": -1}

        def ready() -> bool:
            _assert_loadable(run, while_running=True)  # a torn file would fail the test
            seen["step"] = _checkpoint_step(ckpt)
            return seen["step"] >= 11  # 8 steps per epoch: mid-way through the 2nd epoch

        _kill_when(proc, ready, "step 11")
        on_disk = torch.load(ckpt, map_location="cpu", weights_only=True)
        names = _assert_loadable(run)
        # the validations before the kill wrote the best artefact so far (whole: loadable), with
        # the record that chose it: the first epoch's, or a later one's when the kill landed
        # past the second validation (the poll above is not instant on a loaded machine); the
        # run's metrics come only at the end
        assert "trained_lora_adapter/adapter_model.safetensors" in names
        best = json.loads((run / "trained_lora_adapter" / "metrics.json").read_text())
        assert best["final"] is False and 0 <= best["best"]["epoch"] <= on_disk["epoch"]
        assert not (run / "metrics.json").exists()

        assert main([str(a) for a in _tune_argv(stage1, catalogue, run, "--resume")]) == 0
        resumed = _resumed_step(caplog.text, ckpt)
        assert resumed == (on_disk["epoch"], on_disk["global_step"])
        _assert_loadable(run)
        want = json.loads((reference / "metrics.json").read_text())
        got = json.loads((run / "metrics.json").read_text())
        assert got["steps"] == want["steps"] == 32
        assert [e["epoch"] for e in got["epochs"]] == [0, 1, 2, 3]
        for a, b in zip(got["epochs"], want["epochs"], strict=True):
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5, abs=1e-6)
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
        assert got["best"]["epoch"] == want["best"]["epoch"]
        adapter = "trained_lora_adapter/adapter_model.safetensors"
        w_run, w_ref = load_file(str(run / adapter)), load_file(str(reference / adapter))
        assert w_run.keys() == w_ref.keys()
        for key in w_ref:
            torch.testing.assert_close(w_run[key], w_ref[key], rtol=1e-4, atol=1e-6)
        # The item-token cache filled before the kill was reused, not recomputed.
        assert got["item_token_cache"]["encoded"] == 0
        # Work lost: checkpointed steps the resume did not start from.
        tally.lost("tune kill -9", on_disk["global_step"] - resumed[1], "checkpointed steps")


# ---------------------------------------------------------------------------------- distill


def test_distill_kill_9_then_resume(tmp_path, caplog, tally):
    from distill.conftest import write_tiny_catalogue
    from distill.helpers import distill_argv

    caplog.set_level(logging.INFO, logger="lavic")
    paths = write_tiny_catalogue(tmp_path / "data")
    common = (
        "--num_epochs", "5", "--checkpoint_every_n_steps", "1", "--lora_dropout", "0",
        "--no-teacher_eval", "--accelerator", "cpu",
    )  # fmt: skip
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(distill_argv(paths, reference, *common)) == 0

    ckpt = run / "checkpoints" / "last.ckpt"
    with tally.case("fault", "kill -9 (distill)", "SIGKILL mid-training, then --resume"):
        proc = _popen(distill_argv(paths, run, *common))

        def ready() -> bool:
            _assert_loadable(run, while_running=True)  # checkpoint and best adapter, whole
            return _checkpoint_step(ckpt) >= 7  # 3 steps per epoch: mid-way through the 3rd

        _kill_when(proc, ready, "step 7")
        on_disk = torch.load(ckpt, map_location="cpu", weights_only=True)
        _assert_loadable(run)
        assert main(distill_argv(paths, run, *common, "--resume")) == 0
        resumed = _resumed_step(caplog.text, ckpt)
        assert resumed == (on_disk["epoch"], on_disk["global_step"])
        _assert_loadable(run)
        got = torch.load(ckpt, map_location="cpu", weights_only=True)
        want = torch.load(reference / ckpt.relative_to(run), map_location="cpu", weights_only=True)
        killed_at = f"killed at epoch {on_disk['epoch']} step {on_disk['global_step']}"
        assert got["global_step"] == want["global_step"] == 15, killed_at
        for key, value in want["state_dict"].items():
            torch.testing.assert_close(
                got["state_dict"][key],
                value,
                rtol=1e-5,
                atol=1e-6,
                msg=lambda m: f"{killed_at}: {m}",
            )
        m_got = json.loads((run / "metrics.json").read_text())
        m_want = json.loads((reference / "metrics.json").read_text())
        assert [e["step"] for e in m_got["epochs"]] == [e["step"] for e in m_want["epochs"]], (
            killed_at
        )
        assert [e["val_loss"] for e in m_got["epochs"]] == pytest.approx(
            [e["val_loss"] for e in m_want["epochs"]], rel=1e-5
        ), killed_at
        assert m_got["best_step"] == m_want["best_step"], killed_at
        assert m_got["val_loss_best"] == pytest.approx(m_want["val_loss_best"], rel=1e-5)
        best = "vision_lora_adapter_best/adapter_model.safetensors"
        w_run, w_ref = load_file(str(run / best)), load_file(str(reference / best))
        for key in w_ref:
            torch.testing.assert_close(w_run[key], w_ref[key], rtol=1e-5, atol=1e-6)
        tally.lost("distill kill -9", on_disk["global_step"] - resumed[1], "checkpointed steps")


# ----------------------------------------------------------------------------------- encode

SHARD_ITEMS = 16  # items per shard in these runs, so the cache commits as it goes
SHARD_PRELUDE = (
    "from lavic.cache.store import ItemTokenCache\n"
    # tiny-random's tokens are 5 x 32 float32 = 640 bytes: the 256 MiB default would never
    # close a shard; the real 7B model's 40 KiB per item does every ~6,500 items.
    f"ItemTokenCache.ensure.__kwdefaults__['shard_max_bytes'] = {SHARD_ITEMS * 640}\n"
)


def _encode_catalogue(root: Path, n: int) -> tuple[Path, Path]:
    from PIL import Image

    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    meta = {}
    for i in range(n):
        item = f"E{i:09d}"
        meta[item] = {"title": f"item {i}"}
        colour = ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)
        Image.new("RGB", (24, 20), colour).save(image_dir / f"{item}_0.jpg", quality=90)
    path = root / "item2meta_train.json"
    path.write_text(json.dumps(meta))
    return path, image_dir


def test_encode_kill_9_then_rerun(stage1, tmp_path, capsys, monkeypatch, tally):
    from lavic.cache.store import INDEX_FILE, ItemTokenCache, adapter_fingerprint

    n = 640
    meta, image_dir = _encode_catalogue(tmp_path / "cat", n)
    monkeypatch.setitem(ItemTokenCache.ensure.__kwdefaults__, "shard_max_bytes", SHARD_ITEMS * 640)

    def argv(cache: Path) -> list[str]:
        return [
            "encode", "--model_dir", str(stage1), "--cache_dir", str(cache), "--image_dir",
            str(image_dir), "--item_meta_path", str(meta), "--batch_size", "4",
        ]  # fmt: skip

    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(argv(reference)) == 0
    capsys.readouterr()

    with tally.case("fault", "kill -9 (encode)", "SIGKILL mid-encode, then a plain rerun"):
        proc = _popen(argv(run), prelude=SHARD_PRELUDE)
        seen = {"items": 0}

        def ready() -> bool:
            index = run / INDEX_FILE
            if not index.is_file():
                return False
            seen["items"] = len(json.loads(index.read_text())["items"])  # whole, or a failure
            _assert_loadable(run, while_running=True)
            return seen["items"] >= 10 * SHARD_ITEMS

        _kill_when(proc, ready, f"{10 * SHARD_ITEMS} items committed")
        names = _assert_loadable(run)  # the index and every shard under a final name are whole
        committed = len(json.loads((run / INDEX_FILE).read_text())["items"])
        assert seen["items"] <= committed < n
        assert INDEX_FILE in names

        assert main(argv(run)) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["reused"] == committed  # it resumed: nothing committed is encoded again
        assert report["encoded"] == n - committed and report["corrupt"] == 0
        _assert_loadable(run)
        fingerprint = adapter_fingerprint(stage1)
        ids = list(json.loads(meta.read_text()))
        got = ItemTokenCache.open(run, fingerprint=fingerprint).get(ids)
        want = ItemTokenCache.open(reference, fingerprint=fingerprint).get(ids)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        tally.lost("encode kill -9", committed - report["reused"], "committed items")


# ------------------------------------------------------------------------------------ crawl


def test_crawl_kill_9_then_rerun(tmp_path, tally):
    from data.http_server import LocalServer, image_bytes, trickle
    from lavic.data.crawl import MANIFEST_NAME

    n = 32
    bodies = {f"K{i}_0.jpg": image_bytes(size=(64, 64), seed=i) for i in range(n)}
    images = tmp_path / "images"
    with LocalServer() as server:
        for name, body in bodies.items():
            server.add(f"/{name}", trickle(body, chunks=4, interval=0.05))
        meta = tmp_path / "meta.jsonl"
        meta.write_text(
            "".join(
                json.dumps({"title": n_, "image": server.url(f"/{n_}"), "image_name": n_}) + "\n"
                for n_ in bodies
            )
        )
        argv = [
            "crawl", "--item_meta_path", str(meta), "--images_dir", str(images),
            "--concurrency", "4", "--timeout", "10", "--retries", "1", "--backoff_base", "0.05",
            "--allow_private_hosts",  # the server is on 127.0.0.1
        ]  # fmt: skip
        observed: list[str] = []

        def whole_files_only() -> bool:
            # Watched while the crawler runs: a final name always holds the whole image.
            if images.is_dir():
                for path in images.iterdir():
                    if not path.name.startswith(".") and path.name != MANIFEST_NAME:
                        assert path.read_bytes() == bodies[path.name], path.name
                        observed.append(path.name)
            return server.total_finished() >= 8

        with tally.case("fault", "kill -9 (crawl)", "SIGKILL mid-crawl, then a plain rerun"):
            proc = _popen(argv)
            _kill_when(proc, whole_files_only, "8 downloads")
            before = {p.name for p in final_names(images) if p.name != MANIFEST_NAME}
            assert 0 < len(before) < n
            for name in before:
                assert (images / name).read_bytes() == bodies[name]
            server.reset_counts()
            assert main(argv) == 0
            for name, body in bodies.items():
                assert (images / name).read_bytes() == body  # = an uninterrupted crawl
            refetched = [name for name in before if server.count(f"/{name}")]
            rows = [json.loads(x) for x in (images / MANIFEST_NAME).read_text().splitlines()]
            status = {row["file"]: row["status"] for row in rows}
            assert sum(s == "present" for s in status.values()) == len(before)  # it resumed
            assert not [p for p in images.iterdir() if p.name.startswith(".")]
            tally.lost("crawl kill -9", len(refetched), "finished downloads fetched again")


# ------------------------------------------------------------- checkpoints across filesystems


def test_checkpoints_are_renamed_into_place_even_with_tmpdir_elsewhere(
    stage1, catalogue, tmp_path, monkeypatch, tally
):
    """Lightning writes a checkpoint to a file under $TMPDIR and *moves* it onto its name; when
    $TMPDIR is another filesystem (a tmpfs /tmp, outputs on a data disk) the move is a copy,
    and a kill during it leaves a truncated last.ckpt under the final name. Every checkpoint
    must instead be renamed into place from beside it."""
    import os
    import shutil
    import tempfile

    other_fs = Path("/dev/shm")
    if not other_fs.is_dir() or os.stat(other_fs).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs a $TMPDIR on another filesystem than the outputs (/dev/shm)")
    tmpdir = Path(tempfile.mkdtemp(dir=other_fs))
    copied: list[str] = []
    real_copyfile = shutil.copyfile

    def spying_copyfile(src, dst, *args, **kwargs):
        copied.append(str(dst))
        return real_copyfile(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", spying_copyfile)
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    try:
        with tally.case("fault", "checkpoints (tune, distill)", "$TMPDIR on another filesystem"):
            out = tmp_path / "tune"
            argv = _tune_argv(stage1, catalogue, out, "--max_steps", "2", "--no_images")
            assert main([str(a) for a in argv]) == 0
            from distill.conftest import write_tiny_catalogue
            from distill.helpers import distill_argv

            paths = write_tiny_catalogue(tmp_path / "data")
            common = ("--max_steps", "2", "--checkpoint_every_n_steps", "1", "--no-teacher_eval")
            assert main(distill_argv(paths, tmp_path / "distill", *common)) == 0
            assert (out / "checkpoints" / "last.ckpt").is_file()
            assert (tmp_path / "distill" / "checkpoints" / "last.ckpt").is_file()
            assert not [c for c in copied if c.endswith(".ckpt")], copied
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
