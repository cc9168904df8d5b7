"""`jgraph export-tflite --run DIR`: a `jgraph quant train` run to a checked .tflite file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tflite_export as te
from jgraph import cli
from jgraph.quant.recipes import load_run

pytestmark = pytest.mark.tflite

JGRAPH = Path(sys.executable).parent / "jgraph"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quant") / "run"
    argv = ["quant", "train", "--model", "cnn", "--bits", "2", "--fp-epochs", "2"]
    argv += ["--epochs", "1", "--no-plots", "--out", str(out)]
    assert cli.main(argv) == 0
    return out


def test_export_codebook_int8_from_a_run(run_dir, tmp_path) -> None:
    out = tmp_path / "model.tflite"
    proc = subprocess.run(
        [str(JGRAPH), "export-tflite", "--run", str(run_dir), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "JGRAPH_PROGRESS": "0"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(Path(f"{out}.json").read_text())
    assert report["mode"] == "codebook_int8"
    int8 = [c for c in report["codebooks"] if c["stored"] == "INT8"]
    assert int8
    assert all(c["distinct"] <= 4 for c in int8)
    assert report["trained_parity"]["top1_agreement"] >= 0.95
    # The file on disk runs: same argmax as the hard JAX model on a few test images.
    saved = load_run(run_dir)
    from jgraph.quant.recipes import load_dataset, make_model

    data = load_dataset("digits")
    model = make_model(saved.model, saved.num_classes)
    runner = te.TFLiteRunner(out.read_bytes(), "serving_default")
    x = data.x_test[:20]
    got = np.concatenate([runner([x[i : i + 1]])[0] for i in range(len(x))])
    want = np.asarray(model.apply(saved.hardened.variables, x, train=False))
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9
    assert "top-1 agreement" in proc.stdout


def test_export_full_int8_batch_4(run_dir, tmp_path) -> None:
    out = tmp_path / "full.tflite"
    argv = ["export-tflite", "--run", str(run_dir), "--out", str(out), "--mode", "full_int8"]
    assert cli.main([*argv, "--batch", "4", "--signature", "classify"]) == 0
    info = te.read_model(out.read_bytes())
    assert info.ops[0] == "QUANTIZE"
    assert info.signatures["classify"] == (("input",), ("output",))
    report = json.loads(Path(f"{out}.json").read_text())
    assert report["parity"]["samples"] == 450 // 4
