"""Progress bars pass items through unchanged, drawn or not."""

import pytest

from jgraph.core import progress, progress_enabled


@pytest.mark.parametrize("enabled", [True, False])
def test_items_pass_through(enabled, capsys):
    assert list(progress(iter(range(5)), description="work", total=5, enabled=enabled)) == [
        0,
        1,
        2,
        3,
        4,
    ]
    out = capsys.readouterr()
    assert out.out == ""  # never on stdout: stdout belongs to the CLI's results
    if not enabled:
        assert out.err == ""


@pytest.mark.parametrize(("value", "expected"), [("0", False), ("1", True), ("false", False)])
def test_env_override(monkeypatch, value, expected):
    monkeypatch.setenv("JGRAPH_PROGRESS", value)
    assert progress_enabled() is expected
