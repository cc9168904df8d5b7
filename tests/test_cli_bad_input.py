"""Bad input at every subcommand: exit 2, one line on stderr naming the flag, no traceback.

Every case here must fail at argument parsing or in the handler's first check,
before any JAX work, so the whole table runs in-process in about a second. Two
cases also run through the installed console script.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jgraph import cli

JGRAPH = Path(sys.executable).parent / "jgraph"
CPU_ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}

P = ["pipeline", "--model", "mmt", "--no-png"]
S = ["superopt", "run", "--program", "rmsnorm_linear"]
Q = ["quant", "train", "--model", "mlp"]
E = ["export-tflite", "--run", "{dir}"]

# (argv with {file}, {dir}, {under}, {fake_npz}, {long} placeholders, text the error must contain)
CASES = [
    # demo
    (["demo", "--out", "{file}"], "--out"),
    (["demo", "--out", "{under}"], "--out"),
    (["demo", "--out", ""], "--out"),
    (["demo", "--out", "{long}"], "--out"),
    (["demo", "--only", ""], "--only"),
    # pipeline: paths
    ([*P, "--out", "{file}"], "--out"),
    ([*P, "--out", "{under}"], "--out"),
    ([*P, "--out", ""], "--out"),
    # pipeline: numbers
    ([*P, "--batch", "-3"], "--batch"),
    ([*P, "--batch", str(10**15)], "--batch"),
    ([*P, "--batch", "9" * 5000], "--batch"),
    ([*P, "--batch", "nan"], "--batch"),
    ([*P, "--batch", "65536", "--devices", "64", "--micro-batch", "1"], "--micro-batch"),
    ([*P, "--devices", "100000"], "--devices"),
    ([*P, "--devices-per-node", "-1"], "--devices-per-node"),
    ([*P, "--memory", "-5GB"], "--memory"),
    ([*P, "--memory=-5GB"], "--memory"),
    ([*P, "--memory", "0"], "--memory"),
    ([*P, "--memory", "9" * 400], "--memory"),
    ([*P, "--memory", ""], "--memory"),
    (["pipeline", "--model", "synthetic", "--branches", "100000"], "--branches"),
    ([*P, "--micro-batch", "-2"], "--micro-batch"),
    ([*P, "--peak-tflops", "-inf"], "--peak-tflops"),
    ([*P, "--intra-alpha-us", "-5"], "--intra-alpha-us"),
    ([*P, "--inter-alpha-us", "nan"], "--inter-alpha-us"),
    ([*P, "--piper-max-downsets", str(10**6)], "--piper-max-downsets"),
    ([*P, "--planner", ""], "--planner"),
    # superopt
    ([*S, "--out", "{file}"], "--out"),
    ([*S, "--out", "{under}"], "--out"),
    ([*S, "--cache-dir", "{file}"], "--cache-dir"),
    ([*S, "--cache-dir", ""], "--cache-dir"),
    ([*S, "--batch", str(10**9)], "--batch"),
    ([*S, "--batch", "-3"], "--batch"),
    ([*S, "--scale", "17"], "--scale"),
    ([*S, "--tests", "1000"], "--tests"),
    ([*S, "--max-kernel-ops", "100"], "--max-kernel-ops"),
    ([*S, "--time-limit", "-inf"], "--time-limit"),
    ([*S, "--time-limit", "nan"], "--time-limit"),
    ([*S, "--sizes-per-mapping", "-1"], "--sizes-per-mapping"),
    # serve
    (["serve", "--port", "-1"], "--port"),
    (["serve", "--port", "0"], "--port"),
    (["serve", "--host", ""], "--host"),
    (["serve", "--model", ""], "--model"),
    (["serve", "--model", "/nonexistent/checkpoint"], "--model"),
    (["serve", "--adapter", "no-equals-sign"], "--adapter"),
    (["serve", "--adapter", "a=/nonexistent/adapter"], "--adapter"),
    (["serve", "--adapter", "={dir}"], "--adapter"),
    (["serve", "--adapter", "a={dir}", "--adapter", "a={dir}"], "--adapter"),
    (["serve", "--state-dir", "{file}"], "--state-dir"),
    (["serve", "--api-key", ""], "--api-key"),
    # quant
    ([*Q, "--out", "{file}"], "--out"),
    ([*Q, "--out", "{under}"], "--out"),
    ([*Q, "--out", ""], "--out"),
    ([*Q, "--data", "/nonexistent.npz"], "--data"),
    ([*Q, "--data", "{file}"], "--data"),
    ([*Q, "--data", "{fake_npz}"], "--data"),
    ([*Q, "--data", ""], "--data"),
    ([*Q, "--data", "{object_npz}"], "--data"),
    ([*Q, "--data", "{mismatch_npz}"], "--data"),
    ([*Q, "--data", "{empty_npz}"], "--data"),
    ([*Q, "--data", "{nan_npz}"], "--data"),
    ([*Q, "--bits", "-1"], "--bits"),
    ([*Q, "--epochs", str(10**9)], "--epochs"),
    ([*Q, "--fp-epochs", "0"], "--fp-epochs"),
    ([*Q, "--batch-size", str(10**9)], "--batch-size"),
    ([*Q, "--fp-lr", "-0.1"], "--fp-lr"),
    ([*Q, "--tau0", "inf"], "--tau0"),
    ([*Q, "--seed", "-1"], "--seed"),
    ([*Q, "--seed", str(2**70)], "--seed"),
    ([*Q, "--layers", "["], "--layers"),
    # export-tflite
    (["export-tflite", "--run", "{file}", "--out", "m.tflite"], "--run"),
    (["export-tflite", "--run", "", "--out", "m.tflite"], "--run"),
    ([*E, "--out", "m.tflite"], "--run"),  # a folder without a finished run
    ([*E, "--out", "m.tflite", "--mode", "int4"], "--mode"),
    ([*E, "--out", "m.tflite", "--batch", "0"], "--batch"),
    ([*E, "--out", "m.tflite", "--signature", "a b"], "--signature"),
    ([*E, "--out", "{dir}"], "--out"),
    ([*E, "--out", "{under}"], "--out"),
    ([*E, "--out", ""], "--out"),
]


@pytest.fixture
def paths(tmp_path):
    file = tmp_path / "file.txt"
    file.write_text("not a folder\n")
    fake_npz = tmp_path / "fake.npz"
    fake_npz.write_text("not a zip archive\n")
    return {
        "file": str(file),
        "dir": str(tmp_path),
        "under": str(file / "sub"),
        "fake_npz": str(fake_npz),
        "long": str(tmp_path / ("a" * 300)),
        **{f"{name}_npz": str(_bad_npz(tmp_path, name)) for name in BAD_NPZ},
    }


# Data files the loader refuses before any training: (arrays, text the message must hold)
BAD_NPZ = {
    "object": (
        {"x": np.array([{"pixels": 1}] * 4, dtype=object), "y": np.zeros(4)},
        "object.npz:x='an array of Python objects': is not a plain numeric array",
    ),
    "mismatch": (
        {"x": np.zeros((6, 4, 4)), "y": np.zeros(5, np.int64)},
        "mismatch.npz:y='5 labels for 6 images",
    ),
    "empty": (
        {"x": np.zeros((0, 4, 4)), "y": np.zeros(0, np.int64)},
        "empty.npz:x='array of shape (0, 4, 4, 1)': holds no images",
    ),
    "nan": (
        {"x": np.full((6, 4, 4), np.nan), "y": np.arange(6) % 2},
        "nan.npz:x='6 of 6 images with NaN or inf values (first: image 0)'",
    ),
}


def _bad_npz(folder, name):
    path = folder / f"{name}.npz"
    np.savez(path, **BAD_NPZ[name][0])
    return path


@pytest.mark.parametrize("name", sorted(BAD_NPZ))
def test_bad_data_file_names_file_field_value_and_fix(name, tmp_path, capsys):
    path = _bad_npz(tmp_path, name)
    code = cli.main([*Q, "--data", str(path), "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    _assert_one_line_usage_error(code, captured, "--data")
    err = captured.err.strip()
    assert str(tmp_path / BAD_NPZ[name][1]) in err, err
    assert "; fix: " in err, err
    assert not (tmp_path / "run" / "fp").exists()  # refused before any training


def _assert_one_line_usage_error(code, captured, flag):
    err = captured.err.strip()
    assert code == 2, (code, captured.err, captured.out[-500:])
    assert len(err.splitlines()) == 1, err
    assert flag in err, err
    assert "Traceback" not in err
    assert captured.out == ""


@pytest.mark.parametrize(("argv", "flag"), CASES, ids=[" ".join(c[0])[:80] for c in CASES])
def test_bad_input_is_one_line_exit_2(argv, flag, paths, capsys):
    code = cli.main([a.format(**paths) for a in argv])
    _assert_one_line_usage_error(code, capsys.readouterr(), flag)


def _sysfs_refuses_writes() -> bool:
    probe = Path("/sys/jgraph-probe")
    try:
        probe.mkdir()
    except OSError:
        return Path("/sys").is_dir()
    probe.rmdir()
    return False


@pytest.mark.skipif(not _sysfs_refuses_writes(), reason="needs a /sys that refuses mkdir")
@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        ([*P, "--out", "/sys/jgraph-out"], "--out"),
        ([*S, "--cache-dir", "/sys/jgraph-cache"], "--cache-dir"),
        ([*Q, "--out", "/sys/jgraph-out"], "--out"),
        (["demo", "--out", "/sys/jgraph-out"], "--out"),
        ([*E, "--out", "/sys/jgraph.tflite"], "--out"),
    ],
)
def test_unwritable_folder_even_for_root(argv, flag, paths, capsys):
    # Root ignores permission bits, so the handler creates the folder (or a temp file
    # in it) before any work; sysfs refuses both even to root.
    argv = [a.format(**paths) for a in argv]
    _assert_one_line_usage_error(cli.main(argv), capsys.readouterr(), flag)


# As root (CI) permission bits stop nothing; the monkeypatched test below checks the same
# messages there, and test_unwritable_folder_even_for_root the real write probe.
@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    _assert_one_line_usage_error(
        cli.main([*P, "--out", str(ro / "plans")]), capsys.readouterr(), "--out"
    )


def test_permission_bits_are_checked_when_they_apply(tmp_path, monkeypatch, capsys):
    # What a non-root user sees for a folder without write permission (root bypasses it).
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    _assert_one_line_usage_error(
        cli.main([*P, "--out", str(tmp_path / "plans")]), capsys.readouterr(), "no write permission"
    )
    _assert_one_line_usage_error(
        cli.main([*Q, "--out", str(tmp_path)]), capsys.readouterr(), "is not writable"
    )


def test_limits_admit_the_defaults_and_the_edges(tmp_path, capsys, monkeypatch):
    """The bounds are not off by one and leave the documented ranges usable."""
    seen = {}

    def check_only(args):
        from jgraph.pipeline.models import paper_model

        cli._pipeline.make_output_dir(args.out, "--out")
        nodes = len(paper_model(args.model, branches=args.branches).nodes)
        cli._pipeline._check_schedule_size(args, nodes)
        seen.update(vars(args))
        return 0

    monkeypatch.setattr(cli._pipeline, "run", check_only)
    out = str(tmp_path / "plans")
    argv = [*P, "--out", out, "--batch", "16384", "--devices", "64", "--memory=16GiB"]
    assert cli.main([*argv, "--intra-alpha-us", "0"]) == 0
    assert seen["batch"] == 16384
    assert seen["memory"] == 16 * 2**30
    assert Path(out).is_dir()
    argv = ["pipeline", "--model", "synthetic", "--branches", "64", "--out", out]
    assert cli.main([*argv, "--piper-max-downsets", "10000"]) == 0
    assert seen["branches"] == 64
    # Stages are bounded by the graph's nodes too: a small graph on many devices is fine.
    argv = ["pipeline", "--model", "synthetic", "--branches", "2", "--out", out]
    assert cli.main([*argv, "--devices", "4096", "--batch", "4096"]) == 0
    assert cli.main([*Q, "--seed", str(2**32 - 1), "--bits", "8", "--help"]) == 0


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(JGRAPH), *args], capture_output=True, text=True, timeout=120, env=CPU_ENV
    )


def test_console_script_negative_memory_and_existing_file(tmp_path):
    proc = _run("pipeline", "--model", "mmt", "--memory", "-5GB")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "jgraph pipeline: error: argument --memory/--memory-gb: -5GB must be > 0 and finite; "
        "pass e.g. 16GB or 32GiB (see 'jgraph pipeline --help')"
    ]
    file = tmp_path / "plan.json"
    file.write_text("{}")
    proc = _run("quant", "train", "--out", str(file))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"jgraph quant train: error: argument --out: {str(file)!r} is a file, not a folder; "
        "pass a folder (created if missing) (see 'jgraph quant train --help')"
    ]
