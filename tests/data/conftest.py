"""Shared fixtures for the data-layer tests: valid conversation records, JSON-lines bytes, and
for the network tests a local HTTP server with no proxy from the environment in the way."""

from __future__ import annotations

import json

import pytest

from .http_server import LocalServer

# Requests to 127.0.0.1 must never go through a proxy from the environment.
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server():
    """A server on 127.0.0.1 (tests/data/http_server.py), stopped after the test."""
    with LocalServer() as s:
        yield s


def conversation(**overrides) -> dict:
    """A valid conversation record; keyword arguments replace (or, as None-valued, drop) keys."""
    record = {
        "context": "<submission>Need a lip balm.</submission>\n",
        "context_items": ["B000000001"],
        "gt": "Try this one.",
        "gt_items": ["B00000000A"],
        "candidates_st": ["B00000000A", "B00000000B", "0060188782"],
        "candidates_gpt_large": ["B00000000C", "B00000000A"],
    }
    for key, value in overrides.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def jsonl_bytes(*records) -> bytes:
    """Records (dicts, or raw bytes/str for a literal line) joined as JSON lines."""
    lines = []
    for record in records:
        if isinstance(record, bytes):
            lines.append(record)
        elif isinstance(record, str):
            lines.append(record.encode("utf-8"))
        else:
            lines.append(json.dumps(record).encode("utf-8"))
    return b"".join(line + b"\n" for line in lines)


@pytest.fixture
def make_conversation():
    return conversation


@pytest.fixture
def make_jsonl():
    return jsonl_bytes
