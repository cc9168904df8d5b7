"""Atomic writes: the content lands whole, or the old file stays untouched."""

import json
import os

import pytest

from jgraph.core import atomic_write_bytes, atomic_write_json, atomic_write_text


def test_writes_and_creates_parents(tmp_path):
    path = atomic_write_text(tmp_path / "a" / "b" / "x.txt", "héllo")
    assert path.read_text(encoding="utf-8") == "héllo"
    assert os.listdir(path.parent) == ["x.txt"]  # no temp file left behind


def test_json_is_sorted_with_newline(tmp_path):
    path = atomic_write_json(tmp_path / "r.json", {"b": 1, "a": [1.5]})
    text = path.read_text()
    assert text.endswith("\n")
    assert text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": [1.5], "b": 1}


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.bin"
    path.write_bytes(b"old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new contents")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.bin"]
