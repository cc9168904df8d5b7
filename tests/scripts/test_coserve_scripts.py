"""The co-serving benchmarks' --smoke runs: scripts/bench_coserve.py (CI) and
scripts/gpu/bench_coserve.py (slow; its full run needs a GPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODES = {"inference_only", "coserve", "temporal", "static"}


def run_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        # On a GPU machine the test process holds the accelerator; the child uses the CPU.
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_bench_coserve_smoke_compares_every_mode_and_plots(tmp_path):
    out = tmp_path / "r.json"
    proc = run_script("scripts/bench_coserve.py", "--smoke", "--out", str(out))
    assert "understate co-serving" in proc.stdout
    res = json.loads(out.read_text())
    rows = res["rows"]
    assert {r["mode"] for r in rows} == MODES
    assert {r["load"] for r in rows} == {0.4, 0.9}
    setup = res["setup"][0]
    # The static split's K comes from the step time profiled in this run: on a busy machine
    # the profile can leave it no tokens (K = 0), and then it rightly trains nothing.
    trains = {"inference_only": False, "static": setup["static_ft_tokens"] > 0}
    for r in rows:
        assert 0.0 <= r["slo_attainment"] <= 1.0
        assert r["inf_tok_s"] > 0
        # Finetuning ran in every mode but inference-only (and a static split of 0 tokens).
        assert (r["ft_tok_s"] > 0) == trains.get(r["mode"], True)
    assert setup["tpot_target_ms"] == pytest.approx(1.5 * setup["inference_only_tpot_ms"])
    assert setup["peak_ft_tok_s"] > 0
    assert all(Path(p).stat().st_size > 0 for p in res["plots"])
    assert set(res["timelines"]["tiny"]) == {"coserve", "temporal"}


def test_gpu_bench_refuses_a_full_run_without_a_gpu(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/gpu/bench_coserve.py"), "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "GPU only" in proc.stderr


@pytest.mark.slow  # compiles the tiny step for 1 and 2 backward layers plus an engine (~40 s)
def test_gpu_bench_smoke_runs_the_sweep_and_the_serving_comparison(tmp_path):
    out = tmp_path / "r.json"
    proc = run_script("scripts/gpu/bench_coserve.py", "--smoke", "--out", str(out))
    assert "tiny: all 2 layers" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    sweep = [r for r in rows if "bwd_layers" in r]
    assert sorted({r["bwd_layers"] for r in sweep}) == [0, 1, 2]
    assert {r["ft_tokens"] for r in sweep} == {0, 8, 16}
    assert sweep[0]["overhead"] == 1.0
    assert {r["mode"] for r in rows if "mode" in r} == {"coserve", "temporal"}
