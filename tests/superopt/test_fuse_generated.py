"""Generated layer programs at odd sizes through `superoptimize` with the fusion moves:
whatever is fused, the result equals the function on fresh inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgraph.superopt import SearchConfig, superoptimize
from jgraph.testing import Tolerance, assert_trees_close, tolerance

# The fusion moves alone (one enumeration state): deterministic and quick.
FUSION_ONLY = SearchConfig(time_limit_s=30, max_kernel_ops=1, max_states=1)


def _norm(x, g, kind):
    if kind == "rms":
        return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * g[None]
    mu = x.mean(-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * g[None]


def _program(seed, rows, hid):
    """A random chain of layer pieces: norms, softmax, dense+bias+activation, residuals."""
    rng = np.random.default_rng(seed)
    pieces = rng.choice(["norm", "softmax", "dense", "residual", "scale"], size=rng.integers(2, 5))
    acts = [jax.nn.silu, jax.nn.relu, jnp.tanh, lambda v: jax.nn.gelu(v, approximate=False)]
    plan = []
    for p in pieces:
        if p == "norm":
            plan.append(("norm", str(rng.choice(["rms", "ln"]))))
        elif p == "dense":
            plan.append(("dense", int(rng.integers(len(acts)))))
        else:
            plan.append((str(p), None))

    def fn(x, w, b, g):
        h = x
        for kind, arg in plan:
            if kind == "norm":
                h = _norm(h, g, arg)
            elif kind == "softmax":
                h = jax.nn.softmax(h, axis=-1)
            elif kind == "dense":
                h = acts[arg](h @ w + b[None])
            elif kind == "residual":
                h = h + x
            else:
                h = h * 0.5 - 1.0
        return h

    return fn, plan


@pytest.mark.parametrize("seed", range(15))
def test_generated_layer_programs_fuse_correctly(seed):
    # odd row counts; widths that Triton can tile (power-of-two blocks) except the last
    rows, hid = [(7, 32), (12, 64), (5, 16), (24, 32), (9, 48)][seed % 5]
    fn, plan = _program(seed, rows, hid)
    rng = np.random.default_rng(1000 + seed)

    def args(r):
        shapes = [(rows, hid), (hid, hid), (hid,), (hid,)]
        return [jnp.asarray(r.standard_normal(s) / (np.sqrt(hid) if i == 1 else 1), jnp.float32)
                for i, s in enumerate(shapes)]  # fmt: skip

    res = superoptimize(fn, *args(rng), config=FUSION_ONLY)
    fresh = args(rng)
    # f32 chains of up to four layers with hid-term dot products: the table's f32 forward
    # tolerance, atol scaled by the contraction length (gamma_K) with 10x headroom
    tol = Tolerance(rtol=tolerance("forward", np.float32).rtol, atol=hid * 1.2e-7 * 10 * 4)
    got, want = np.asarray(res(*fresh)), np.asarray(fn(*fresh))
    assert got.shape == want.shape, plan
    assert_trees_close(got, want, tol=tol)
    results = res.program.results if res.program is not None else (res,)
    lax = not any(r.stats.rejected.get("not_lax") for r in results)
    reduces = any(kind in ("norm", "softmax") for kind, _ in plan)
    if not lax:  # not field-checkable (a softmax of an exp): the XLA program
        assert res.fused_kernels == ()
    elif reduces and hid != 48:  # a norm or softmax fused with what reads it beats XLA
        # (a row of 48 is no power-of-two tile, so a kernel holding whole rows of it
        # cannot lower for CUDA; only its element-wise parts can fuse, split on the grid)
        assert res.fused_kernels, plan


def test_a_program_that_is_not_field_checkable_runs_as_xla():
    # Gemma-style logit soft-capping: tanh is written with exp, so the softmax takes an
    # exp of an exp, which no finite-field test can check (it used to raise)
    def capped_softmax(x):
        return jax.nn.softmax(jnp.tanh(x / 30.0) * 30.0, axis=-1)

    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 32)), jnp.float32)
    res = superoptimize(capped_softmax, x, config=FUSION_ONLY)
    assert res.fused_kernels == ()
    assert res.stats.rejected == {"not_lax": 1}
    assert [c.label for c in res.candidates] == ["xla"]
    assert_trees_close(np.asarray(res(x)), np.asarray(capped_softmax(x)), kind="forward")
