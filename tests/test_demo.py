"""`jgraph demo`: runs every part, reports unbuilt and failed parts honestly."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from jgraph import _demo
from jgraph.core import DemoReport

JGRAPH = Path(sys.executable).parent / "jgraph"


@pytest.mark.slow  # the whole tour; each part has its own test
def test_demo_command_tours_every_part(tmp_path):
    proc = subprocess.run(
        [str(JGRAPH), "demo", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        # On a GPU machine the test process holds the accelerator; the child uses the CPU.
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 0, proc.stderr
    for part in _demo.PARTS:
        assert part.title in proc.stdout
    assert f"artifacts under {tmp_path}" in proc.stdout
    # The coserve part's serving stop ran: the openai client streamed through the HTTP server
    # while a finetuning job trained, and the job finished with loss events.
    serving = json.loads((tmp_path / "coserve" / "summary.json").read_text())["serving"]
    assert serving["streams"] == 8
    assert 0 < serving["ttft_s_median"] <= serving["ttft_s_max"]
    assert serving["tpot_s_median"] > 0
    assert serving["job_status"] == "succeeded"
    assert len(serving["job_losses"]) == 24  # 4 examples x 6 epochs
    assert serving["fine_tuned_model"] == "ft:tiny:demo"
    assert "openai-client streams" in proc.stdout
    # The tflite part exported the 2-bit model, ran it in LiteRT and kept <= K = 4 codes.
    tfl = json.loads((tmp_path / "tflite" / "summary.json").read_text())
    assert tfl["dgms_float"]["parity"]["passed"]
    layers = tfl["dgms_codebook_int8"]["codebooks"]
    assert all(c["distinct"] <= 4 for c in layers if c["stored"] == "INT8")
    assert tfl["dgms_codebook_int8"]["trained_parity"]["top1_agreement"] >= 0.95
    assert (tmp_path / "tflite" / "dgms_codebook_int8.tflite").stat().st_size > 0


@pytest.fixture
def fake_parts(monkeypatch):
    ok = types.ModuleType("fake_ok")

    def demo(out_dir: Path) -> DemoReport:
        out_dir.mkdir(parents=True)
        path = out_dir / "result.txt"
        path.write_text("42")
        return DemoReport(headline="answer found", rows=(("answer", "42"),), artifacts=(path,))

    ok.demo = demo
    bad = types.ModuleType("fake_bad")

    def broken(out_dir: Path) -> DemoReport:
        raise ZeroDivisionError("boom")

    bad.demo = broken
    missing = types.ModuleType("fake_missing")
    for mod in (ok, bad, missing):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    parts = tuple(
        _demo.DemoPart(name=n, title=n, module=f"fake_{n}", issue="issue #0")
        for n in ("ok", "bad", "missing")
    )
    monkeypatch.setattr(_demo, "PARTS", parts)
    return parts


def test_run_demo_outcomes(fake_parts, tmp_path):
    outcomes = {o.part.name: o for o in _demo.run_demo(tmp_path)}
    assert outcomes["ok"].status == "ok"
    assert outcomes["ok"].report.rows == (("answer", "42"),)
    assert (tmp_path / "ok" / "result.txt").read_text() == "42"
    assert outcomes["bad"].status == "failed"
    assert outcomes["bad"].error == "ZeroDivisionError: boom"
    assert outcomes["missing"].status == "not_built"


def test_run_demo_only_and_unknown(fake_parts, tmp_path):
    assert [o.part.name for o in _demo.run_demo(tmp_path, only=["missing"])] == ["missing"]
    with pytest.raises(ValueError, match="unknown demo part"):
        _demo.run_demo(tmp_path, only=["nope"])


def test_cli_demo_exits_1_when_a_part_fails(fake_parts, tmp_path, capsys):
    from jgraph import cli

    assert cli.main(["demo", "--out", str(tmp_path), "--only", "bad"]) == 1
    assert "FAILED" in capsys.readouterr().out
