"""The JAX frontend: jaxpr capture, unsupported primitives, the callable result."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgraph.core import ConfigError
from jgraph.superopt import SearchConfig, VerifyConfig, capture, superoptimize
from jgraph.superopt.programs import PROGRAMS, get_program
from jgraph.superopt.verify import Verifier
from jgraph.testing import Tolerance, assert_no_recompile, assert_trees_close, tolerance


@pytest.mark.parametrize("name", PROGRAMS)
def test_captured_programs_are_equivalent_to_the_builder_programs(name):
    prog = get_program(name, scale=16)
    graph = capture(prog.fn, *[jnp.zeros(s, jnp.float16) for s in prog.shapes])
    assert [s.shape for s in graph.inputs] == list(prog.shapes)
    assert graph.inputs[0].dtype == "float16"
    assert Verifier(prog.graph, VerifyConfig(float_screen=False)).check(graph).ok


def test_captured_program_is_not_equivalent_to_a_different_one():
    prog = get_program("rmsnorm_linear", scale=16)
    other = capture(lambda x, w: x @ w, *[jnp.zeros(s) for s in prog.shapes])
    assert not Verifier(prog.graph, VerifyConfig(float_screen=False)).check(other).ok


def test_capture_of_an_unsupported_primitive_names_it_and_lists_the_supported_ones():
    # superoptimize keeps it as XLA (tests/superopt/test_capture_constructs.py); capture
    # returns one μGraph, so it says which operator is not one.
    with pytest.raises(ConfigError, match=r"sort: no μGraph op for it.*dot_general.*reduce_sum"):
        capture(lambda x: jnp.sort(jnp.exp(x)), jnp.ones((2, 2)))
    assert [op.kind for op in capture(lambda x: x**3, jnp.ones((2, 2))).ops] == ["square", "mul"]


def test_superoptimize_returns_a_callable_verified_result():
    def f(x, w):
        return jnp.exp(x) @ w

    x, w = jnp.ones((8, 64), jnp.float32), jnp.ones((64, 32), jnp.float32)
    res = superoptimize(f, x, w, config=SearchConfig(time_limit_s=60, max_kernel_ops=1))
    assert all(c.verdict.ok for c in res.candidates)
    key = jax.random.key(0)
    xs = jax.random.normal(key, (8, 64)) * 0.3
    ws = jax.random.normal(jax.random.fold_in(key, 1), (64, 32))
    out = res(xs, ws)  # called like f: one array back, not a list
    assert out.shape == (8, 32)
    assert out.dtype == jnp.float32
    jax.block_until_ready(out)
    want = np.asarray(f(xs, ws), np.float64)
    # f32 sums of 64 terms: the table's f32 atol scaled by K·max|out| (gamma_K bound)
    tol = Tolerance(
        rtol=tolerance("forward", np.float32).rtol, atol=64 * 1.2e-7 * float(np.abs(want).max())
    )
    assert_trees_close(np.asarray(out), want, tol=tol)
    xs2 = jax.block_until_ready(xs * 2)
    with assert_no_recompile("superoptimize result"):
        jax.block_until_ready(res(xs2, ws))


def test_superoptimize_runs_its_selection_and_keeps_fns_pytrees():
    def f(params, x):
        return {"y": jax.nn.silu(x @ params["w1"]) * (x @ params["w2"]), "n": (x * 2.0,)}

    x = jnp.ones((16, 64), jnp.float32)
    params = {"w1": jnp.ones((64, 64), jnp.float32), "w2": jnp.ones((64, 64), jnp.float32)}
    cfg = SearchConfig(time_limit_s=30, max_kernel_ops=3, max_customized=1)
    res = superoptimize(f, params, x, config=cfg)
    # On CPU the selection is the model's best, not timed (interpret-mode times mean nothing).
    assert res.selection is not None
    assert not res.selection.measured
    assert res.selection.candidate == res.best
    assert res.kernel().route == "interpret"
    key = jax.random.key(3)
    xs = jax.random.normal(key, (16, 64)) * 0.3
    ps = {k: jax.random.normal(jax.random.fold_in(key, i), (64, 64)) * 0.2
          for i, k in enumerate(("w1", "w2"))}  # fmt: skip
    out = jax.jit(res)(ps, xs)
    want = f(ps, xs)
    assert jax.tree.structure(out) == jax.tree.structure(want)
    # f32 sums of 64 terms: the table's f32 atol scaled by K·max|out| (gamma_K bound)
    tol = Tolerance(
        rtol=tolerance("forward", np.float32).rtol,
        atol=64 * 1.2e-7 * float(np.abs(np.asarray(want["y"])).max()),
    )
    assert_trees_close(jax.tree.map(np.asarray, out), jax.tree.map(np.asarray, want), tol=tol)
    # A selection naming another candidate is what runs (negative: not always `best`).
    other = dataclasses.replace(
        res, selection=dataclasses.replace(res.selection, candidate=res.xla)
    )
    assert other.kernel().graph == res.xla.graph
    with pytest.raises(ConfigError, match=r"arrays\[2\]"):
        res(ps, xs[:8])
