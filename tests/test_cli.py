"""The `jgraph` CLI: subcommands, --help everywhere, one-line errors with exit 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jgraph import cli
from jgraph.core import ConfigError

SUBCOMMANDS = ("demo", "pipeline", "superopt", "serve", "quant", "export-tflite")
JGRAPH = Path(sys.executable).parent / "jgraph"  # the installed console script
# Child processes run on the CPU: on a GPU machine this test process already
# holds the accelerator (exclusive mode lets no second process open it).
CPU_ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(JGRAPH), *args], capture_output=True, text=True, timeout=300, env=CPU_ENV
    )


def test_console_script_help_lists_every_subcommand():
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    for name in SUBCOMMANDS:
        assert name in proc.stdout


@pytest.mark.parametrize(
    "argv",
    [[*(name,), "--help"] for name in SUBCOMMANDS]
    + [["superopt", "run", "--help"], ["quant", "train", "--help"]],
)
def test_help_everywhere(argv, capsys):
    assert cli.main(argv) == 0
    assert "usage: jgraph" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "choose a command: demo, pipeline"),
        (["superopt", "run", "--program", "nope"], "choose from 'gqa', 'qknorm'"),
        (["superopt", "run", "--program", "gqa", "--batch", "0"], "0 must be >= 1"),
        (["superopt", "run", "--program", "gqa", "--time-limit", "soon"], "not a number"),
        (["quant", "train", "--bits", "9"], "DGMS uses 1-8 bits"),
        (["quant", "train", "--bits", "x"], "'x' is not an integer"),
        (["serve", "--port", "70000"], "use 1-65535"),
        # --model or, since #13, --graph (a user's ModelGraph JSON): exactly one is required.
        (["pipeline"], "one of the arguments --model --graph is required"),
        (
            ["export-tflite", "--run", "/nonexistent/dir", "--out", "m.tflite"],
            "not a directory",
        ),
        (["demo", "--only", "everything"], "invalid choice: 'everything'"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(argv, expected, capsys):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert expected in err
    assert len(err.splitlines()) == 1, err
    assert "--help" in err  # the fix: where to look
    assert captured.out == ""


def test_bad_argument_in_a_real_process_has_no_traceback():
    proc = _run("quant", "train", "--bits", "0")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "jgraph quant train: error: argument --bits: 0 must be >= 1 (see 'jgraph quant train --help')"
    ]


def test_config_error_from_the_library_is_one_line_exit_2(monkeypatch, capsys):
    def handler(args):
        raise ConfigError("PipelineConfig.num_stages", 0, "must be >= 1", "use a value >= 1")

    monkeypatch.setattr(cli._pipeline, "run", handler)
    assert cli.main(["pipeline", "--model", "mmt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "jgraph: error: PipelineConfig.num_stages=0: must be >= 1; fix: use a value >= 1"


def test_bugs_are_not_swallowed(monkeypatch):
    def handler(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli._pipeline, "run", handler)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["pipeline", "--model", "mmt"])


def test_export_tflite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    out = tmp_path / "m.tflite"
    assert cli.main(["export-tflite", "--run", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--run" in err
    assert "no result.json" in err
    assert not out.exists()


def test_version(capsys):
    from jgraph import __version__

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"jgraph {__version__}"


def test_serve_flags_become_a_serve_config(tmp_path, monkeypatch):
    import jgraph.coserve.serve as serve_mod

    seen = []
    monkeypatch.setattr(serve_mod, "serve", seen.append)
    monkeypatch.setenv(serve_mod.API_KEY_ENV, "from-env")
    argv = ["serve", "--port", "8123", "--state-dir", str(tmp_path / "s"), "--adapter",
            f"mine={tmp_path}"]  # fmt: skip
    assert cli.main(argv) == 0
    (c,) = seen
    assert (c.model, c.host, c.port) == ("tiny", "127.0.0.1", 8123)
    assert c.state_dir == str(tmp_path / "s")
    assert c.adapters == (("mine", str(tmp_path)),)
    assert c.api_key == "from-env"
    assert cli.main([*argv, "--api-key", "from-flag"]) == 0
    assert seen[1].api_key == "from-flag"
    assert cli._serve.API_KEY_ENV == serve_mod.API_KEY_ENV
