"""The cache never costs a result: every read or write fault is a CacheWarning and a result.

Each fault is checked through `search` and, where the CLI reaches it
(``jgraph superopt run --cache-dir``), through the CLI: the result comes back
and equals a fresh search's (same μGraphs, same recomputed costs). Permission
faults are monkeypatched at the os level (root ignores permission bits, so a
chmod would test nothing in CI).
"""

import contextlib
import errno
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from jgraph.cli import main
from jgraph.superopt import CacheWarning, SearchConfig, evaluate, search
from jgraph.superopt._search_cache import cache_path
from jgraph.superopt.programs import get_program
from jgraph.testing import assert_trees_close

_PROG = get_program("rmsnorm_linear", batch=1, scale=16)
# The CLI's config for `--max-kernel-ops 1` (the time limit is not in the cache key); the
# search exhausts this space in 433 states (about a second).
_CFG = SearchConfig(max_kernel_ops=1, time_limit_s=60)
_CLI = ["superopt", "run", "--program", "rmsnorm_linear", "--batch", "1", "--scale", "16",
        "--max-kernel-ops", "1", "--time-limit", "60"]  # fmt: skip


@pytest.fixture(scope="module")
def fresh():
    """A search without a cache: what every faulty-cache run must return."""
    res = search(_PROG.graph, config=_CFG, name="rmsnorm_linear")
    assert res.best.label != "xla"  # so a cost mix-up would change `best`
    return res


@pytest.fixture(scope="module")
def good_cache(tmp_path_factory, fresh):
    d = tmp_path_factory.mktemp("good-cache")
    search(_PROG.graph, config=_CFG, name="rmsnorm_linear", cache_dir=d)
    (path,) = d.glob("superopt-*.json")
    assert path == cache_path(d, _PROG.graph, _CFG)
    return path


def _copy(good: Path, tmp_path: Path) -> Path:
    d = tmp_path / "cache"
    d.mkdir()
    return Path(shutil.copy(good, d / good.name))


def _assert_same_result(res, fresh):
    assert [c.graph for c in res.candidates] == [c.graph for c in fresh.candidates]
    assert [c.cost for c in res.candidates] == [c.cost for c in fresh.candidates]
    assert res.model_speedup == pytest.approx(fresh.model_speedup)
    assert res.xla.graph == _PROG.graph
    xs = [np.random.default_rng(7).standard_normal(s) for s in _PROG.shapes]
    assert_trees_close(evaluate(res.best.graph, xs), evaluate(_PROG.graph, xs), kind="forward")


def _fail_in(folder: Path, monkeypatch, func: str, err: int) -> list[str]:
    """Makes ``os.<func>`` raise ``err`` for paths in ``folder``; returns the paths it refused."""
    real, refused = getattr(os, func), []

    def fake(path, *args, **kwargs):
        if Path(path).parent == folder:
            refused.append(str(path))
            raise OSError(err, os.strerror(err), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, func, fake)
    return refused


# -- writes -----------------------------------------------------------------------------


def test_unwritable_folder_warns_and_returns_the_result(tmp_path, monkeypatch, fresh):
    refused = _fail_in(tmp_path, monkeypatch, "open", errno.EACCES)  # the temp file's create
    with pytest.warns(CacheWarning, match="could not write superopt cache file.*PermissionError"):
        res = search(_PROG.graph, config=_CFG, cache_dir=tmp_path)
    assert refused
    assert not list(tmp_path.iterdir())
    assert not res.from_cache
    _assert_same_result(res, fresh)


def test_folder_where_the_file_should_be_warns_and_returns_the_result(tmp_path, fresh):
    cache_path(tmp_path, _PROG.graph, _CFG).mkdir()
    # the read fails (IsADirectoryError), then the write: two warnings, one result
    with pytest.warns(CacheWarning) as got:
        res = search(_PROG.graph, config=_CFG, cache_dir=tmp_path)
    assert [str(w.message).split(" superopt")[0] for w in got] == ["ignoring", "could not write"]
    assert "it is a folder" in str(got[1].message)
    _assert_same_result(res, fresh)


def test_cache_dir_naming_a_file_warns_and_returns_the_result(tmp_path, fresh):
    file = tmp_path / "not-a-folder"
    file.write_text("x")
    with pytest.warns(CacheWarning, match="is a file, not a folder"):
        res = search(_PROG.graph, config=_CFG, cache_dir=file)
    assert file.read_text() == "x"
    _assert_same_result(res, fresh)


def _unreadable(path: Path, monkeypatch) -> None:
    """Makes reading ``path`` (only) a PermissionError, as for another user's 0600 file."""
    real = Path.read_text

    def read_text(self, *args, **kwargs):
        if self == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)


def test_file_owned_by_another_user_warns_and_returns_the_result(
    tmp_path, monkeypatch, good_cache, fresh
):
    # Another user's 0600 file in a sticky folder (/tmp): reading it is EACCES and
    # replacing it is EPERM. Simulated at the os level so that it holds as root too.
    path = _copy(good_cache, tmp_path)
    _fail_in(path.parent, monkeypatch, "replace", errno.EPERM)
    _unreadable(path, monkeypatch)
    with pytest.warns(CacheWarning) as got:
        res = search(_PROG.graph, config=_CFG, cache_dir=path.parent)
    assert len(got) == 2
    assert all("PermissionError" in str(w.message) for w in got)
    assert not res.from_cache
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    _assert_same_result(res, fresh)


# -- reads ------------------------------------------------------------------------------


def _tamper(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _rebuilt(path: Path, fresh, match: str) -> None:
    with pytest.warns(CacheWarning, match=match):
        res = search(_PROG.graph, config=_CFG, cache_dir=path.parent)
    assert not res.from_cache
    _assert_same_result(res, fresh)
    # the rebuilt file is good again: the next run is a clean cache hit
    again = search(_PROG.graph, config=_CFG, cache_dir=path.parent)
    assert again.from_cache
    _assert_same_result(again, fresh)


def test_malformed_op_is_a_warning_and_a_rebuild(tmp_path, good_cache, fresh):
    path = _copy(good_cache, tmp_path)
    _tamper(path, lambda d: d["candidates"][0]["graph"].update(ops=["x"]))
    _rebuilt(path, fresh, "AttributeError")


@pytest.mark.parametrize("where", ["file", "ops"])
def test_deep_nesting_is_a_warning_and_a_rebuild(tmp_path, good_cache, fresh, where):
    path = _copy(good_cache, tmp_path)
    deep = "[" * 100_000 + "]" * 100_000
    if where == "file":
        path.write_text(deep)
    else:
        text = path.read_text()
        path.write_text(text.replace('"ops": [', f'"ops": [{deep}, ', 1))
    _rebuilt(path, fresh, "RecursionError")


def test_entry_without_the_xla_candidate_is_a_warning_and_a_rebuild(tmp_path, good_cache, fresh):
    path = _copy(good_cache, tmp_path)

    def drop_xla(d):
        d["candidates"] = [c for c in d["candidates"] if c["label"] != "xla"]

    _tamper(path, drop_xla)
    _rebuilt(path, fresh, "XLA candidate is missing")


def test_a_wrong_graph_labelled_xla_is_a_warning_and_a_rebuild(tmp_path, good_cache, fresh):
    path = _copy(good_cache, tmp_path)

    def relabel(d):
        for c in d["candidates"]:
            c["label"] = "xla" if c["label"] == "search" else "search"

    _tamper(path, relabel)
    _rebuilt(path, fresh, "not the reference program")


def test_a_tampered_non_best_candidate_fails_reverification(tmp_path, good_cache, fresh):
    path = _copy(good_cache, tmp_path)

    def add_wrong(d):
        # the reference with its matmul operands' roles broken: rms_norm of w, not of x
        wrong = json.loads(json.dumps(d["reference"]))
        wrong["ops"][0]["kind"] = "sqrt"
        d["candidates"].append({**d["candidates"][-1], "graph": wrong, "label": "search"})

    _tamper(path, add_wrong)
    _rebuilt(path, fresh, "fails verification")


def test_stored_costs_are_recomputed_not_trusted(tmp_path, good_cache, fresh):
    path = _copy(good_cache, tmp_path)

    def zero_xla_cost(d):
        for c in d["candidates"]:
            if c["label"] == "xla":
                c["cost"] = dict.fromkeys(c["cost"], 0)
            else:
                c["cost"]["estimated_us"] = 1e9
        d["candidates"].reverse()

    _tamper(path, zero_xla_cost)
    res = search(_PROG.graph, config=_CFG, cache_dir=path.parent)  # no warning: nothing lost
    assert res.from_cache
    _assert_same_result(res, fresh)
    assert res.model_speedup > 1
    assert res.best.label == "search"


# -- the CLI ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_cli_out():
    """The CLI's (code, stdout, stderr) on a fresh search (no cache)."""
    return _cli_run(None)


def _result_lines(out: str) -> list[str]:
    """The result part of the CLI's output (from the best μGraph on; no timings)."""
    lines = out.splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("best μGraph")) :]


def _cli_run(cache_dir: Path | None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*_CLI, *([] if cache_dir is None else ["--cache-dir", str(cache_dir)])])
    return code, out.getvalue(), err.getvalue()


def _assert_cli_result(got, fresh_cli_out, *expected: str) -> None:
    """Exit 0, one warning line per expected text (in order), and the fresh run's result."""
    code, out, err = got
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == len(expected), err
    for line, text in zip(lines, expected, strict=True):
        assert line.startswith(("jgraph: warning: ignoring", "jgraph: warning: could not write"))
        assert text in line, (text, line)
    assert "cached result:" not in out
    assert _result_lines(out) == _result_lines(fresh_cli_out[1])


def test_cli_fresh_run_prints_the_result_and_no_warning(fresh_cli_out, good_cache):
    code, out, err = fresh_cli_out
    assert code == 0
    assert "warning" not in err
    # the library fixture's file is the CLI's cache file (same key): a clean hit
    cached = _cli_run(good_cache.parent)
    assert cached[0] == 0
    assert "warning" not in cached[2]
    assert "cached result:" in cached[1]
    assert _result_lines(cached[1]) == _result_lines(out)


def test_cli_unwritable_cache_dir(tmp_path, monkeypatch, fresh_cli_out):
    _fail_in(tmp_path, monkeypatch, "open", errno.EACCES)
    _assert_cli_result(_cli_run(tmp_path), fresh_cli_out, "PermissionError")


def test_cli_folder_where_the_cache_file_should_be(tmp_path, fresh_cli_out):
    cache_path(tmp_path, _PROG.graph, _CFG).mkdir()
    _assert_cli_result(_cli_run(tmp_path), fresh_cli_out, "IsADirectoryError", "it is a folder")


def test_cli_file_owned_by_another_user(tmp_path, monkeypatch, good_cache, fresh_cli_out):
    # reading it is EACCES and replacing it is EPERM (see the library test)
    path = _copy(good_cache, tmp_path)
    _fail_in(path.parent, monkeypatch, "replace", errno.EPERM)
    _unreadable(path, monkeypatch)
    _assert_cli_result(_cli_run(path.parent), fresh_cli_out, "(PermissionError", "(PermissionError")


@pytest.mark.parametrize(
    ("edit", "warning"),
    [
        (lambda d: d["candidates"][0]["graph"].update(ops=["x"]), "AttributeError"),
        (
            lambda d: d.update(candidates=[c for c in d["candidates"] if c["label"] != "xla"]),
            "XLA candidate is missing",
        ),
    ],
)
def test_cli_malformed_entry(tmp_path, good_cache, fresh_cli_out, edit, warning):
    path = _copy(good_cache, tmp_path)
    _tamper(path, edit)
    _assert_cli_result(_cli_run(path.parent), fresh_cli_out, warning)


def test_cli_deeply_nested_entry(tmp_path, good_cache, fresh_cli_out):
    path = _copy(good_cache, tmp_path)
    path.write_text("[" * 100_000 + "]" * 100_000)
    _assert_cli_result(_cli_run(path.parent), fresh_cli_out, "RecursionError")


def test_cli_tampered_costs_are_recomputed(tmp_path, good_cache, fresh_cli_out):
    path = _copy(good_cache, tmp_path)
    _tamper(path, lambda d: [c["cost"].update(estimated_us=0.0) for c in d["candidates"]])
    code, out, err = _cli_run(path.parent)
    assert code == 0
    assert "warning" not in err
    assert "cached result:" in out
    assert _result_lines(out) == _result_lines(fresh_cli_out[1])
    assert "model speedup over XLA: 0.00x" not in out


def test_cli_cache_dir_naming_a_file_is_refused_before_the_search(tmp_path, capsys):
    # The CLI checks its folders before any work (exit 2), so no search is lost there;
    # the library's path (above) warns instead.
    file = tmp_path / "f"
    file.write_text("x")
    assert main([*_CLI, "--cache-dir", str(file)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
