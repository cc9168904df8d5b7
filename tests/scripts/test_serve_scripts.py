"""scripts/bench_serve_overhead.py --smoke: both modes run on the same prompts and report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_serve_overhead_smoke(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/bench_serve_overhead.py"), "--smoke", "--out",
         str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        # On a GPU machine the test process holds the accelerator; the child uses the CPU.
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "server / direct TPOT (medians)" in proc.stdout
    assert "different token counts" not in proc.stderr  # same greedy work in both modes
    res = json.loads(out.read_text())
    direct, server = res["rows"]
    assert (direct["mode"], server["mode"]) == ("engine direct", "HTTP server")
    assert direct["requests"] == server["requests"] == 16
    assert direct["tpot_ms_median"] > 0
    assert res["ratio"] == pytest.approx(server["tpot_ms_median"] / direct["tpot_ms_median"])
    assert res["smoke"] is True
