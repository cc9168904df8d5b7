"""`jgraph pipeline train`: plan (or load a plan), train pipelined, resume, and many processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from jgraph import cli
from jgraph.pipeline import ClusterConfig, plan_pipeline
from jgraph.pipeline.models import module_model
from jgraph.testing import assert_trees_close

HERE = Path(__file__).resolve().parent


def saved_plan(tmp_path: Path, model: str = "transformer-tiny", devices: int = 8) -> Path:
    """A GraphPipe plan of the model's graph with uniform made-up costs (no profiling)."""
    sys.path.insert(0, str(HERE))
    from test_runtime import _costed

    plan = plan_pipeline(_costed(module_model(model)), ClusterConfig(num_devices=devices), batch=16)
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    return path


@pytest.mark.slow  # three CLI runs, each compiling the pipelined step; resume's fast twin is
# tests/pipeline/test_runtime.py::test_resumed_run_equals_uninterrupted_run_bit_for_bit
def test_train_a_saved_plan_checks_the_reference_and_resumes(tmp_path, capsys):
    plan = saved_plan(tmp_path)
    argv = ["pipeline", "train", "--model", "transformer-tiny", "--devices", "8", "--plan",
            str(plan), "--steps", "2", "--checkpoint-every", "1", "--out", str(tmp_path / "run"),
            "--check-reference"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "collective-permutes per tick" in out
    assert "first step: pipelined loss" in out
    assert "MISMATCH" not in out
    first = json.loads((tmp_path / "run" / "transformer-tiny_train.json").read_text())
    assert [h["step"] for h in first["history"]] == [1, 2]
    # Same folder again: refused without --resume, continued with it.
    assert cli.main([*argv[:-1]]) == 2
    assert "already holds a run" in capsys.readouterr().err
    argv_resume = [*argv[:-1], "--resume"]
    argv_resume[argv_resume.index("--steps") + 1] = "3"
    assert cli.main(argv_resume) == 0
    resumed = json.loads((tmp_path / "run" / "transformer-tiny_train.json").read_text())
    assert resumed["resumed_from"] == 2
    assert [h["step"] for h in resumed["history"]] == [1, 2, 3]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "mmt"], "train needs a Flax module model"),
        (["--model", "mmt-tiny", "--num-processes", "2"], "--coordinator"),
        (
            [
                "--model",
                "mmt-tiny",
                "--num-processes",
                "2",
                "--process-id",
                "2",
                "--coordinator",
                "127.0.0.1:1",
            ],
            "--process-id",
        ),
        (["--model", "mmt-tiny", "--coordinator", "nohost"], "host:port"),
        (
            [
                "--model",
                "mmt-tiny",
                "--devices",
                "3",
                "--num-processes",
                "2",
                "--coordinator",
                "127.0.0.1:1",
            ],
            "multiple of --num-processes",
        ),
    ],
)
def test_bad_train_flags_exit_2_with_one_line(tmp_path, capsys, extra, message):
    assert cli.main(["pipeline", "train", *extra, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_processes_from_the_command_line_match_one(tmp_path):
    plan = saved_plan(tmp_path)
    common = ["-c", "import sys; from jgraph.cli import main; sys.exit(main(sys.argv[1:]))", "pipeline", "train", "--model", "transformer-tiny", "--devices",
              "8", "--plan", str(plan), "--steps", "2"]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JGRAPH_PROGRESS": "0"}
    one = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                *common,
                "--out",
                str(tmp_path / "two"),
                "--num-processes",
                "2",
                "--process-id",
                str(i),
                "--coordinator",
                f"127.0.0.1:{port}",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    a = json.loads((tmp_path / "one" / "transformer-tiny_train.json").read_text())
    b = json.loads((tmp_path / "two" / "transformer-tiny_train.json").read_text())
    assert b["processes"] == 2
    # Same math; gloo may sum data-parallel replicas in another order.
    assert_trees_close(
        [h["loss"] for h in b["history"]], [h["loss"] for h in a["history"]], kind="gradient"
    )
