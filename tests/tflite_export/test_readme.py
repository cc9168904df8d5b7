"""The README's DGMS example and its `.tflite` export continuation run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.tflite


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_dgms_and_export_examples_run(tmp_path) -> None:
    blocks = _python_blocks()
    train = next(b for b in blocks if "quant.harden(" in b)
    export = next(b for b in blocks if "import tflite_export" in b)
    script = tmp_path / "readme_example.py"
    script.write_text(train + "\n" + export)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "JGRAPH_PROGRESS": "0"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "cnn_2bit.tflite").stat().st_size > 0
    # Every DGMS layer line reports its codes; int8 ones stay within K = 4.
    layers = re.findall(r"^(\S+) (INT8|FLOAT32) (\d+) of K = 4$", done.stdout, flags=re.M)
    assert layers
    assert all(int(n) <= 4 for _, kind, n in layers if kind == "INT8")
