"""The pipeline scripts' --smoke runs: the planner benchmark under several cost curves, the profiler."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jgraph.pipeline.profiling import CostProfile, EfficiencyCurve

ROOT = Path(__file__).resolve().parents[2]


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


def test_bench_smoke_reports_every_curve_side_by_side(tmp_path):
    ff = EfficiencyCurve(
        match="kind", key="ff", micro_batches=(1, 64),
        fwd_s_per_sample=(1e-3, 1e-5), bwd_s_per_sample=(2e-3, 2e-5),
    )  # fmt: skip
    path = tmp_path / "slow_ff.json"
    CostProfile(
        device="made up", source="derived", jax_version="-", date="2026-12-07",
        curves=(ff,), note="test: FF layers 100x slower at micro-batch 1 than at 64",
    ).save(path)  # fmt: skip
    out = tmp_path / "r.json"
    proc = run_script(
        "scripts/bench_pipeline_plan.py", "--smoke", "--out", str(out),
        "--curve", "roofline", "--curve", "measured-shape", "--curve", str(path),
    )  # fmt: skip
    assert "DERIVED, not measured" in proc.stdout
    assert "roofline speedup" in proc.stdout
    assert "measured-shape speedup" in proc.stdout
    res = json.loads(out.read_text())
    assert res["curves"]["roofline"] == "roofline"
    assert res["curves"]["measured-shape"]["source"] == "derived"
    by = {(r["curve"], r["model"]): r for r in res["rows"] + res["branch_sweep"]}
    roof, shaped = by["roofline", "mmt2x2"], by["measured-shape", "mmt2x2"]
    # The measured shape makes the Transformer layers slower at small micro-batches.
    assert shaped["curved_nodes"] == 4
    assert shaped["gp_samples_s"] < roof["gp_samples_s"]
    # No Transformer layer in the FF sweep: the roofline result, reused ...
    assert by["measured-shape", "synthetic2"]["curved_nodes"] == 0
    assert (
        by["measured-shape", "synthetic2"]["gp_samples_s"]
        == by["roofline", "synthetic2"]["gp_samples_s"]
    )
    # ... while the FF curve from the file changes it.
    assert by["slow_ff", "synthetic2"]["curved_nodes"] > 0
    assert (
        by["slow_ff", "synthetic2"]["gp_samples_s"] != by["roofline", "synthetic2"]["gp_samples_s"]
    )
    assert set(res["case_study"]) == {"roofline", "measured-shape", "slow_ff"}


@pytest.mark.slow  # compiles three blocks at two sizes on the CPU (~20-40 s)
def test_profile_script_smoke_writes_a_loadable_profile(tmp_path):
    out = tmp_path / "cpu.json"
    proc = run_script("scripts/gpu/profile_pipeline.py", "--smoke", "--out", str(out))
    p = CostProfile.load(out)
    assert p.source == "measured"
    assert p.device == "cpu"
    assert [c.key for c in p.curves] == ["transformer_layer", "ff", "embedding_bag"]
    assert all(c.micro_batches == (1, 2) and c.ref_flops > 0 for c in p.curves)
    assert "v100_roofline_us_per_sample" in proc.stdout
