"""`lavic download-data` against a local server laid out like the LaViC repository's data/."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from lavic.cli import main as cli_main
from lavic.data.download import (
    CHECKSUMS_NAME,
    TRAIN_META,
    TRAIN_META_ZIP,
    VALID_META,
    Args,
    download_data,
    published_files,
    read_checksums,
    verify_jsonl,
)
from lavic.data.netguard import HostRefused
from lavic.errors import DataError

from .http_server import (
    PUBLIC_NAME,
    LocalServer,
    cut,
    ranged,
    redirect,
    route_public_name,
    sequence,
    status,
)

PREFIX = "/jeon185/LaViC/main/data"


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def published() -> dict[str, bytes]:
    """The remote files: path under data/ -> bytes."""
    files = {}
    for remote in published_files():
        if remote.endswith(".jsonl") and "/" in remote:
            files[remote] = _jsonl(
                [
                    {
                        "context": f"<submission>{remote} {i}</submission>",
                        "gt_items": [f"B00000000{i}"],
                    }
                    for i in range(3)
                ]
            )
    train_meta = {
        f"B00000000{i}": {"title": f"item {i}", "images": [{"large": f"http://h/{i}.jpg"}]}
        for i in range(50)
    }
    files["_train_json"] = json.dumps(train_meta).encode()
    # As zipped on a Mac: the real member plus resource-fork junk that must be ignored.
    files[TRAIN_META_ZIP] = _zip(
        {TRAIN_META: files["_train_json"], f"__MACOSX/._{TRAIN_META}": b"\0\5junk"}
    )
    files[VALID_META] = _jsonl([{"title": "t", "image_name": "A_0.jpg", "image": "http://h/a.jpg"}])
    return files


@pytest.fixture
def server(published):
    with LocalServer() as s:
        for remote, body in published.items():
            if not remote.startswith("_"):
                s.add(f"{PREFIX}/{remote}", ranged(body))
        yield s


def args_for(server: LocalServer, dest: Path, **kw) -> Args:
    return Args(
        dest=dest,
        base_url=server.url(PREFIX),
        retries=kw.pop("retries", 2),
        backoff_base=0.01,
        timeout=5,
        allow_private_hosts=True,  # the local server is on 127.0.0.1
        **kw,
    )


def laid_out(published: dict[str, bytes]) -> dict[str, bytes]:
    """What data/ should hold afterwards (the reference's layout)."""
    out = {k: v for k, v in published.items() if k.endswith(".jsonl")}
    out[TRAIN_META] = published["_train_json"]
    return out


def test_download_lays_out_the_reference_data_and_resumes(server, published, tmp_path):
    dest = tmp_path / "data"
    results = download_data(args_for(server, dest))
    assert [(r.path, r.status) for r in results] == [
        (TRAIN_META if p == TRAIN_META_ZIP else p, "downloaded") for p in published_files()
    ]
    expected = laid_out(published)
    files = {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert files.pop(CHECKSUMS_NAME)
    assert files == expected  # nothing else: no zip, no .part files
    sums = read_checksums(dest / CHECKSUMS_NAME)
    assert sums == {k: hashlib.sha256(v).hexdigest() for k, v in expected.items()}
    assert all(server.count(f"{PREFIX}/{p}") == 1 for p in published_files())

    server.reset_counts()
    again = download_data(args_for(server, dest))
    assert {r.status for r in again} == {"present"} and server.total() == 0
    # A file damaged after the fact is fetched again (and only that one).
    (dest / "amazon_home" / "test.jsonl").write_bytes(b'{"cut": ')
    again = download_data(args_for(server, dest))
    assert [r.path for r in again if r.status == "downloaded"] == ["amazon_home/test.jsonl"]
    assert server.total() == 1
    assert (dest / "amazon_home" / "test.jsonl").read_bytes() == expected["amazon_home/test.jsonl"]


def test_cut_download_resumes_with_range_and_never_shows_a_partial_file(
    server, published, tmp_path
):
    body = published[TRAIN_META_ZIP]
    half = len(body) // 2
    path = f"{PREFIX}/{TRAIN_META_ZIP}"
    server.add(path, sequence(cut(body, half), ranged(body)))
    server.add(f"{PREFIX}/{VALID_META}", sequence(status(500), ranged(published[VALID_META])))
    dest = tmp_path / "data"

    first = {r.path: r for r in download_data(args_for(server, dest, retries=0))}
    assert (
        first[TRAIN_META].status == "failed" and "complete message body" in first[TRAIN_META].error
    )
    assert first[VALID_META].status == "failed" and "HTTP 500" in first[VALID_META].error
    assert not (dest / TRAIN_META).exists() and not (dest / TRAIN_META_ZIP).exists()
    assert not (dest / VALID_META).exists()
    assert (dest / f".{TRAIN_META_ZIP}.part").read_bytes() == body[:half]
    assert TRAIN_META not in read_checksums(dest / CHECKSUMS_NAME)

    second = {r.path: r.status for r in download_data(args_for(server, dest, retries=0))}
    assert second[TRAIN_META] == "downloaded" and second[VALID_META] == "downloaded"
    assert server.request_headers[path][1].get("Range") == f"bytes={half}-"
    assert (dest / TRAIN_META).read_bytes() == published["_train_json"]
    assert not (dest / f".{TRAIN_META_ZIP}.part").exists()


def test_retries_a_500_within_one_run(server, published, tmp_path):
    server.add(
        f"{PREFIX}/{VALID_META}",
        sequence(
            status(500), status(429, headers={"Retry-After": "0"}), ranged(published[VALID_META])
        ),
    )
    results = {r.path: r.status for r in download_data(args_for(server, tmp_path / "d"))}
    assert results[VALID_META] == "downloaded" and server.count(f"{PREFIX}/{VALID_META}") == 3


@pytest.mark.parametrize(
    ("remote", "body", "problem"),
    [
        ("all_beauty/valid.jsonl", b'{"a": 1}\n{"a": \n', "all_beauty/valid.jsonl:2: invalid JSON"),
        (
            "all_beauty/valid.jsonl",
            b'{"a": 1}\n[1]\n',
            "all_beauty/valid.jsonl:2: expected a JSON object",
        ),
        (VALID_META, b"<html>rate limited</html>\n", f"{VALID_META}:1: invalid JSON"),
        (TRAIN_META_ZIP, b"PK\x03\x04 not really a zip", "not a zip archive"),
        (TRAIN_META_ZIP, _zip({"other.json": b"{}"}), f"zip holds no {TRAIN_META}"),
        (TRAIN_META_ZIP, _zip({TRAIN_META: b"[1, 2, 3]"}), "expected a JSON object mapping ASIN"),
        (
            "amazon_home/train.jsonl",
            b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 10\n",
            "Git LFS pointer",
        ),
    ],
)
def test_malformed_remote_files_are_refused(server, tmp_path, remote, body, problem):
    server.add(f"{PREFIX}/{remote}", ranged(body))
    dest = tmp_path / "data"
    results = {r.path: r for r in download_data(args_for(server, dest))}
    name = TRAIN_META if remote == TRAIN_META_ZIP else remote
    assert results[name].status == "failed" and problem in results[name].error
    assert "\n" not in results[name].error
    assert not (dest / name).exists()
    assert not [p for p in dest.rglob(".*.part")] and not (dest / TRAIN_META_ZIP).exists()
    assert sum(r.status == "downloaded" for r in results.values()) == len(results) - 1


def test_corrupt_zip_member_fails_its_crc(server, published, tmp_path):
    data = bytearray(_zip({TRAIN_META: published["_train_json"]}, zipfile.ZIP_STORED))
    data[len(data) // 2] ^= 0xFF  # inside the stored member
    server.add(f"{PREFIX}/{TRAIN_META_ZIP}", ranged(bytes(data)))
    results = {r.path: r for r in download_data(args_for(server, tmp_path / "data"))}
    assert results[TRAIN_META].status == "failed" and "corrupt zip" in results[TRAIN_META].error


def test_checksums_are_enforced(server, published, tmp_path):
    good = hashlib.sha256(published[VALID_META]).hexdigest()
    sums = tmp_path / "sums.txt"
    sums.write_text(f"{good}  {VALID_META}\n{'0' * 64}  *all_beauty/test.jsonl\n")
    dest = tmp_path / "data"
    results = {r.path: r for r in download_data(args_for(server, dest, checksums=sums))}
    assert results[VALID_META].status == "downloaded"
    assert results["all_beauty/test.jsonl"].status == "failed"
    assert "does not match the expected 0000" in results["all_beauty/test.jsonl"].error
    assert not (dest / "all_beauty" / "test.jsonl").exists()
    # The SHA256SUMS written by one run is a valid --checksums for the next.
    server.reset_counts()
    again = download_data(args_for(server, dest, checksums=dest / CHECKSUMS_NAME))
    assert sum(r.status == "present" for r in again) == len(again) - 1
    assert server.total() == 1


def test_cli_exit_code_and_one_line_error(server, tmp_path, capsys):
    server.add(f"{PREFIX}/amazon_fashion/train.jsonl", status(404))
    dest = tmp_path / "data"
    flags = ["--dest", str(dest), "--base_url", server.url(PREFIX), "--retries", "0"]
    flags.append("--allow_private_hosts")
    assert cli_main(["download-data", *flags]) == 2
    captured = capsys.readouterr()
    err_lines = [
        line for line in captured.err.splitlines() if line.startswith("lavic download-data: error")
    ]
    assert len(err_lines) == 1 and "amazon_fashion/train.jsonl" in err_lines[0]
    assert "HTTP 404" in captured.out and "Traceback" not in captured.err
    assert server.count(f"{PREFIX}/amazon_fashion/train.jsonl") == 1  # 404 is not retried
    assert (dest / "amazon_home" / "train.jsonl").exists()


def test_a_private_base_url_is_refused_before_any_request(server, tmp_path, capsys):
    """Without --allow_private_hosts a --base_url on 127.0.0.1 is one clear error (exit 2),
    before any request and before --dest is made."""
    dest = tmp_path / "data"
    args = Args(dest=dest, base_url=server.url(PREFIX), retries=0, timeout=5)
    with pytest.raises(HostRefused) as info:
        download_data(args)
    assert str(info.value) == (
        f"refused {server.url(PREFIX)}: 127.0.0.1 is a loopback address "
        "(use --allow_private_hosts to allow)"
    )
    assert cli_main(["download-data", "--dest", str(dest), "--base_url", server.url(PREFIX)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "--allow_private_hosts" in errors[0]
    assert server.total() == 0 and not dest.exists()


def test_a_redirect_to_loopback_is_refused_and_the_other_files_still_come(
    server, published, tmp_path, monkeypatch
):
    """A public mirror (public.example, really the local server) whose one file redirects to
    127.0.0.1: that file fails with the refusal, the redirect's target is never requested."""
    route_public_name(monkeypatch, server)
    server.add(f"{PREFIX}/amazon_home/test.jsonl", redirect(server.url("/secret.jsonl")))
    server.add("/secret.jsonl", ranged(_jsonl([{"secret": 1}])))
    args = Args(dest=tmp_path / "data", base_url=f"http://{PUBLIC_NAME}{PREFIX}", retries=2)
    results = {r.path: r for r in download_data(args)}
    refused = results.pop("amazon_home/test.jsonl")
    assert refused.status == "failed"
    assert refused.error == (
        f"refused {server.url('/secret.jsonl')}: 127.0.0.1 is a loopback address "
        "(use --allow_private_hosts to allow)"
    )
    assert {r.status for r in results.values()} == {"downloaded"}
    assert server.count("/secret.jsonl") == 0
    assert server.count(f"{PREFIX}/amazon_home/test.jsonl") == 1  # a refusal is not retried
    assert not (tmp_path / "data" / "amazon_home" / "test.jsonl").exists()


def test_read_checksums_and_verify_jsonl_report_lines(tmp_path):
    bad = tmp_path / "sums"
    bad.write_text(f"{'a' * 64}  x.jsonl\nnot-a-sum file\n")
    with pytest.raises(DataError, match=r"sums:2: expected"):
        read_checksums(bad)
    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(b'{"a": 1}\n\n{"b": 2}\n')
    assert verify_jsonl(rows) == 2
    rows.write_bytes(b"")
    with pytest.raises(DataError, match="no records"):
        verify_jsonl(rows)
