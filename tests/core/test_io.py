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


@pytest.fixture
def umask():
    """Sets the process umask for one test and restores it afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_new_file_honours_the_umask_like_open(tmp_path, umask, mask, mode):
    umask(mask)
    path = atomic_write_text(tmp_path / "cache" / "x.json", "{}")
    with open(tmp_path / "plain.txt", "w") as f:  # what an ordinary write gives
        f.write("{}")
    assert path.stat().st_mode & 0o777 == mode
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == mode


def test_replaced_file_keeps_its_mode(tmp_path, umask):
    umask(0o077)
    path = tmp_path / "shared.json"
    path.write_text("old")
    path.chmod(0o664)
    atomic_write_json(path, {"new": True})
    assert path.stat().st_mode & 0o777 == 0o664
    assert json.loads(path.read_text()) == {"new": True}
    assert os.listdir(tmp_path) == ["shared.json"]


def test_a_folder_in_the_way_is_named(tmp_path):
    (tmp_path / "plan.json").mkdir()
    with pytest.raises(IsADirectoryError, match=r"cannot write .*plan\.json: it is a folder"):
        atomic_write_text(tmp_path / "plan.json", "{}")
    assert os.listdir(tmp_path / "plan.json") == []
    assert os.listdir(tmp_path) == ["plan.json"]


def test_a_file_where_a_folder_should_be_is_named(tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("a file")
    with pytest.raises(NotADirectoryError, match=rf"{blocker} is a file, not a folder"):
        atomic_write_bytes(blocker / "a" / "x.bin", b"x")
    with pytest.raises(NotADirectoryError, match=rf"{blocker} is a file, not a folder"):
        atomic_write_bytes(blocker / "x.bin", b"x")
