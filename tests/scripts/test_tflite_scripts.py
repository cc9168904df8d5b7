"""scripts/bench_tflite.py: the smoke run's report (CI) and timing saved files on their own."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jgraph.testing import tolerance

pytestmark = pytest.mark.tflite

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench_tflite.py"
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), "JGRAPH_PROGRESS": "0"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=ENV,
    )


@pytest.mark.slow  # trains a small CNN and converts 8 models (~30-70 s on 2 busy cores)
def test_smoke_reports_sizes_codes_parity_and_latency_from_one_run(tmp_path):
    out, models = tmp_path / "r.json", tmp_path / "models"
    proc = run("--smoke", "--out", str(out), "--save-dir", str(models))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["smoke"] is True
    assert res["machine"]["machine"]
    assert res["machine"]["cpu_model"]
    assert res["versions"]["ai_edge_litert"] != "unknown"
    exports = {e["name"]: e for e in res["exports"]}
    assert list(exports) == [
        "cnn_fp32",
        "k16_float",
        "k16_codebook_int8",
        "k16_dynamic_int8",
        "k16_full_int8",
    ]
    fp = exports["cnn_fp32"]["size"]

    # Ratios are this run's fp32 file over each file, and the files on disk are those measured.
    manifest = json.loads((models / "manifest.json").read_text())
    for row in res["rows"]:
        size = exports[row["export"]]["size"]
        assert row["raw_B"] == size["raw"] == (models / f"{row['export']}.tflite").stat().st_size
        assert row["raw_B"] == manifest[row["export"]]["bytes"]
        assert row["raw_x"] == pytest.approx(fp["raw"] / size["raw"])
        assert row["gzip_x"] == pytest.approx(fp["gzip"] / size["gzip"])
        assert size["gzip"] < size["raw"]
    for mode in ("codebook_int8", "dynamic_int8", "full_int8"):
        assert exports[f"k16_{mode}"]["size"]["raw"] < fp["raw"] / 2  # int8 weights

    # Codes: the codebook survives codebook_int8 (<= K per tensor, stored int8) and the
    # float export (<= K per channel once BatchNorm is folded); standard int8 breaks it.
    layers = {c["layer"] for c in exports["k16_float"]["codebooks"]}
    assert layers == {"conv2", "conv3", "fc1"}  # every Conv/Dense but the first and last
    for c in exports["k16_codebook_int8"]["codebooks"]:
        assert c["stored"] == "INT8", c
        assert c["preserved"], c
        assert 1 < c["distinct"] <= c["k"] == 16
    for c in exports["k16_float"]["codebooks"]:
        assert c["stored"] == "FLOAT32", c
        assert c["distinct_per_channel"] <= 16, c
    dynamic = exports["k16_dynamic_int8"]["codebooks"]
    assert {c["layer"] for c in dynamic} == layers
    assert any(c["distinct"] > 16 for c in dynamic)  # per-channel scales spread the codes

    # Parity: export()'s own reports, on the same 100 test images for every file: float
    # exports match JAX within the cross-runtime tolerance; codebook_int8 is judged against
    # the trained (unsnapped) hard model and also reports the snapped model it exported.
    tol = tolerance("cross_runtime", np.float32)
    parity = {row["export"]: row for row in res["parity"]}
    for name, e in exports.items():
        check = e["trained_parity"] or e["parity"]
        assert e["parity"]["samples"] >= 100, name
        assert 0 <= check["top1_agreement"] <= 1
        assert 0 <= check["tflite_accuracy"] <= 1
        assert parity[name]["max_abs_err"] == check["max_abs_error"]
        assert parity[name]["top1_agree_%"] == pytest.approx(100 * check["top1_agreement"])
        assert parity[name]["tflite_acc_%"] == pytest.approx(100 * check["tflite_accuracy"])
        if e["mode"] == "float":
            assert e["parity"]["kind"] == "allclose"
            assert e["parity"]["passed"], name
            assert (e["parity"]["atol"], e["parity"]["rtol"]) == (tol.atol, tol.rtol)
            assert check["top1_agreement"] == 1.0
            assert check["tflite_accuracy"] == check["jax_accuracy"]
        else:
            assert e["parity"]["kind"] == "quantized"
            assert 0 < check["max_abs_error"] < 1, name  # quantized, but close
        if e["mode"] == "codebook_int8":
            snapped = e["parity"]
            assert parity[name]["vs_snapped_max_abs"] == snapped["max_abs_error"]
            # Snapping moves the weights: two different references, two different reports.
            assert 0 < snapped["max_abs_error"] != check["max_abs_error"]
        else:
            assert e["trained_parity"] is None, name
            assert parity[name]["vs_snapped_max_abs"] == ""
        assert e["reference"] == ("jax fp32" if name == "cnn_fp32" else "jax hard-quantized")
    hard_accuracy = {
        (e["trained_parity"] or e["parity"])["jax_accuracy"]
        for n, e in exports.items()
        if n != "cnn_fp32"
    }
    assert len(hard_accuracy) == 1  # every K = 16 file is compared with the same JAX model
    assert res["training"]["dgms"]["4"]["K"] == 16
    assert "FULLY_CONNECTED" in exports["k16_codebook_int8"]["ops"]
    assert "QUANTIZE" in exports["k16_full_int8"]["ops"]

    # Latency: 50 invocations per model and interpreter, speed-ups from this run's fp32 row.
    rows = res["latency"]
    assert {(r["model"], r["delegate"]) for r in rows} == {
        (m, d) for m in exports for d in ("xnnpack", "none")
    }
    for delegate in ("xnnpack", "none"):
        base = next(r for r in rows if r["model"] == "cnn_fp32" and r["delegate"] == delegate)
        assert base["speedup_vs_fp32"] == 1.0
        for r in rows:
            if r["delegate"] == delegate:
                assert r["invocations"] == 50
                assert 0 < r["p10_us"] <= r["median_us"] <= r["p90_us"]
                assert r["speedup_vs_fp32"] == pytest.approx(base["median_us"] / r["median_us"])
    if hasattr(os, "sched_setaffinity"):
        assert res["pinned_core"] in os.sched_getaffinity(0)

    # Targets: each verdict follows from its number.
    targets = res["targets"]
    assert {
        "k16_float_gzip_5x",
        "k16_codebook_int8_gzip_5x",
        "codebook_int8_raw_3.5x_and_K_codes",
        "codebook_int8_top1_agreement_99.5",
        "k16_codebook_int8_latency_2x",
        "k16_dynamic_int8_latency_2x",
        "k16_full_int8_latency_2x",
    } == set(targets)
    for name, t in targets.items():
        value = t.get("ratio", t.get("agreement", t.get("speedup")))
        assert t["met"] == (value >= t["target"] and t.get("max_codes", 0) <= t.get("K", 16)), name
    assert targets["codebook_int8_raw_3.5x_and_K_codes"]["ratio"] == pytest.approx(
        fp["raw"] / exports["k16_codebook_int8"]["size"]["raw"]
    )
    assert "MET" in proc.stdout or "MISSED" in proc.stdout


def _tiny_models(folder: Path) -> None:
    import tflite_export

    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    x = np.zeros((1, 64), np.float32)
    modes: tuple[tuple[str, tflite_export.Mode], ...] = (
        ("tiny_fp32", "float"),
        ("tiny_dynamic_int8", "dynamic_int8"),
    )
    for name, mode in modes:
        tflite_export.export(
            lambda a: a @ w,
            (x,),
            tflite_export.ExportConfig(mode=mode, verify="skip"),
            path=folder / f"{name}.tflite",
        )


def test_time_dir_times_saved_files_with_only_litert_imported(tmp_path):
    _tiny_models(tmp_path)
    out = tmp_path / "t.json"
    # What a board without jax or TensorFlow runs: neither may be imported.
    code = (
        "import runpy, sys\n"
        f"main = runpy.run_path({str(SCRIPT)!r})['main']\n"
        f"rc = main(['--time-dir', {str(tmp_path)!r}, '--out', {str(out)!r},\n"
        "            '--invocations', '20', '--warmup', '2', '--rounds', '2'])\n"
        "bad = sorted(m for m in ('jax', 'tensorflow', 'flax') if m in sys.modules)\n"
        "assert not bad, bad\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["machine"]["arch_label"] in proc.stdout
    rows = {(r["model"], r["delegate"]): r for r in res["latency"]}
    assert set(rows) == {
        (m, d) for m in ("tiny_fp32", "tiny_dynamic_int8") for d in ("xnnpack", "none")
    }
    for (_, delegate), r in rows.items():
        base = rows[("tiny_fp32", delegate)]["median_us"]
        assert r["invocations"] == 20
        assert r["speedup_vs_fp32"] == pytest.approx(base / r["median_us"])


def test_time_dir_without_tflite_files_fails_clearly(tmp_path):
    proc = run("--time-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "no .tflite files" in proc.stderr
