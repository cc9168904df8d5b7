"""The README's Flax-layer superopt example runs as written and fuses the LayerNorm."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from jgraph.testing import assert_trees_close, tolerance

REPO = Path(__file__).resolve().parents[2]


def test_readme_flax_block_example_runs_and_fuses():
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    (code,) = [b for b in blocks if "class Block(nn.Module)" in b]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    res, x = scope["res"], scope["x"]
    assert res.fused_kernels
    assert "reduce_sum" in res.fused_kernels[0]  # the norm's statistics inside the kernel
    assert res.model_speedup > 1
    want = scope["Block"]().apply(scope["params"], x)
    assert_trees_close(
        np.asarray(scope["y"]), np.asarray(want), tol=tolerance("forward", np.float32)
    )
