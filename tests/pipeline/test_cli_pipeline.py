"""`jgraph pipeline plan`: output files, one-line errors with exit status 2."""

import json

import pytest

from jgraph import cli
from jgraph.pipeline import StagePlan


def test_plan_writes_json_and_png(tmp_path, capsys):
    argv = ["pipeline", "plan", "--model", "synthetic", "--branches", "2", "--devices", "4",
            "--batch", "32", "--memory", "16GB", "--out", str(tmp_path), "--compare"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "samples/s (simulated)" in out
    assert "bubble" in out
    assert "GB/device" in out
    plan = StagePlan.from_json((tmp_path / "synthetic2_graphpipe_4dev.json").read_text())
    assert plan.planner == "graphpipe"
    assert plan.num_devices == 4
    assert (tmp_path / "synthetic2_graphpipe_4dev.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("pipedream", "piper", "gpipe"):
        assert name in out
    assert (
        json.loads((tmp_path / "synthetic2_graphpipe_4dev.json").read_text())["schema_version"] == 1
    )


def test_plan_is_the_default_action(tmp_path):
    argv = ["pipeline", "--model", "synthetic", "--branches", "2", "--devices", "2", "--batch", "8",
            "--out", str(tmp_path), "--no-png", "--planner", "pipedream"]  # fmt: skip
    assert cli.main(argv) == 0
    assert (tmp_path / "synthetic2_pipedream_2dev.json").exists()
    assert not (tmp_path / "synthetic2_pipedream_2dev.png").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--memory", "16XB"], "'16XB' is not a memory size"),
        (["--memory", "0GB"], "must be > 0"),
        (["--planner", "alpa"], "invalid choice: 'alpa'"),
        (["--memory", "0.01GB"], "the smallest per-device memory that fits is"),
        (["--micro-batch", "3"], "must divide the mini-batch size 8"),
    ],
)
def test_errors_are_one_line_exit_2(argv, expected, capsys, tmp_path):
    base = ["pipeline", "plan", "--model", "synthetic", "--branches", "2", "--devices", "2",
            "--batch", "8", "--out", str(tmp_path), "--no-png"]  # fmt: skip
    assert cli.main(base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err
    assert len(err.splitlines()) == 1
