"""scripts/gpu/bench_superopt.py: the CPU smoke run's report, and its refusal to time on CPU."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jgraph.superopt.programs import get_program

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu" / "bench_superopt.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        # On a GPU machine the test process holds the accelerator; the child uses the CPU.
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), "JGRAPH_PROGRESS": "0"},
    )


def test_full_run_refuses_without_a_gpu(tmp_path):
    proc = run("--out", str(tmp_path / "r.json"))
    assert proc.returncode == 2
    assert "GPU only" in proc.stderr
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow  # two 8 s searches and interpret-mode compiles (~25 s on 2 cores)
def test_smoke_reports_xla_and_the_selected_mugraph_side_by_side(tmp_path):
    out = tmp_path / "r.json"
    proc = run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["smoke"] is True
    assert "not performance numbers" in res["note"]
    kernels = {(r["program"], r["kernel"]): r for r in res["rows"]}
    for name in ("rmsnorm_linear", "gqa"):
        assert {"xla", "mugraph"} <= {k for p, k in kernels if p == name}
        for (p, _), row in kernels.items():
            if p == name:
                assert row["status"] == "ok", row
                assert row["median_us"] > 0
                assert 0 <= row["tol_used"] <= 1
    sels = {s["program"]: s for s in res["selections"]}
    assert set(sels) == {"rmsnorm_linear", "gqa"}
    for sel in sels.values():
        assert sel["measured"]
        timed = [m for m in sel["measurements"] if m["median_us"] is not None]
        ranks = {m["rank"] for m in timed}
        assert len(ranks) >= 2  # a search (or fusion) candidate and the XLA one
        # rank agreement of model and timer: with two candidates it can only be +-1
        assert -1.0 <= sel["kendall_tau"] <= 1.0
        if len(ranks) == 2:
            assert sel["kendall_tau"] in (-1.0, 1.0)
    assert res["environment"]["device_kind"] == "cpu"


def _script_module():
    spec = importlib.util.spec_from_file_location("bench_superopt", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_search_cache_covers_every_timed_program():
    """The GPU run reads these files instead of searching (minutes it does not have)."""
    bench = _script_module()
    committed = bench.committed_results(bench.CACHE_DIR)
    plan = bench.plan(argparse.Namespace(smoke=False, programs=""))
    assert len(plan) == 10  # six programs; LoRA and GatedMLP have one shape
    for name, batch in plan:
        res = committed.get(get_program(name, batch=batch).graph.dumps())
        assert res is not None, f"no committed search result for {name} batch {batch}"
        assert res.xla in res.candidates
        assert res.reference == get_program(name, batch=batch).graph
