"""The interpreter against jnp: the six programs, hand-written μGraphs, random block graphs."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from jgraph.superopt import evaluate, jax_function, new_kernel_graph, new_threadblock_graph
from jgraph.superopt.programs import HANDWRITTEN, PROGRAMS, get_program, handwritten
from jgraph.superopt.verify import FloatRing
from jgraph.testing import Tolerance, assert_no_recompile, assert_trees_close, tolerance


def _inputs(shapes, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) * 0.5 for s in shapes]


def _jnp64(fn, xs):
    with jax.enable_x64(True):
        return np.asarray(fn(*[jnp.asarray(x, jnp.float64) for x in xs]))


@pytest.mark.parametrize("name", PROGRAMS)
def test_programs_float64_interpreter_matches_jnp(name):
    prog = get_program(name, scale=16)
    xs = _inputs(prog.shapes, 0)
    got = evaluate(prog.graph, xs, FloatRing())[0]
    assert got.dtype == np.float64
    assert_trees_close(got, _jnp64(prog.fn, xs), kind="forward")


@pytest.mark.parametrize("kind", HANDWRITTEN)
def test_handwritten_mugraphs_match_jnp(kind):
    prog = get_program("gqa" if kind.startswith("gqa") else kind, scale=16)
    graph = handwritten(kind, prog)
    xs = _inputs(prog.shapes, 1)
    assert_trees_close(evaluate(graph, xs)[0], _jnp64(prog.fn, xs), kind="forward")
    # and the jitted float32 version (the runnable form of a μGraph), against the
    # float64 reference: both f32 paths reorder sums, so neither is the truth.
    # The table's f32 atol (1e-6) assumes O(1) terms; a length-K f32 sum is only
    # accurate to about K·eps·max|terms| (the gamma_K bound), so atol scales with it.
    out = jax_function(graph)(*[jnp.asarray(x, jnp.float32) for x in xs])[0]
    want = _jnp64(prog.fn, xs)
    base = tolerance("forward", np.float32)
    k = max(s[-1] for s in prog.shapes)
    tol = Tolerance(
        rtol=base.rtol, atol=k * float(np.finfo(np.float32).eps) * float(np.abs(want).max())
    )
    assert_trees_close(np.asarray(out), want.astype(np.float32), tol=tol)


def test_wrong_mugraph_does_not_match():
    # negative check: the comparison above would catch a wrong map
    prog = get_program("rmsnorm_linear", scale=16)
    g = new_kernel_graph()
    x, w = g.new_input(prog.shapes[0]), g.new_input(prog.shapes[1])
    tb = new_threadblock_graph((4, 1, 1), 4)
    bx, bw = tb.new_input(x, (-1,), -1), tb.new_input(w, (1,), -1)
    tb.new_output(
        tb.forloop_accum(tb.matmul(tb.rms_norm(bx), bw)), (1,)
    )  # sums the same tile 4 times
    (y,) = g.customized([x, w], tb)
    g.mark_output(y)
    xs = _inputs(prog.shapes, 2)
    with pytest.raises(AssertionError, match="max abs"):
        assert_trees_close(evaluate(g.graph, xs)[0], _jnp64(prog.fn, xs), kind="forward")


def test_jitted_mugraph_does_not_recompile():
    prog = get_program("gated_mlp", scale=16)
    f = jax_function(handwritten("gated_mlp", prog))
    a = [jnp.ones(s, jnp.float32) for s in prog.shapes]
    b = [jnp.full(s, 0.5, jnp.float32) for s in prog.shapes]
    jax.block_until_ready(f(*a))
    with assert_no_recompile("jax_function(gated_mlp)"):
        jax.block_until_ready(f(*b))
        jax.block_until_ready(f(*a))


_UNARY = ["exp", "square", "silu", "relu", "gelu", "gelu_exact"]
_BINARY = ["add", "sub", "mul"]
_JNP = {
    "exp": jnp.exp,
    "square": jnp.square,
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": lambda v: jax.nn.gelu(v, approximate=True),
    "gelu_exact": lambda v: jax.nn.gelu(v, approximate=False),
    "add": jnp.add,
    "sub": jnp.subtract,
    "mul": jnp.multiply,
}


@settings(max_examples=30, deadline=None)
@given(
    data=st.data(),
    rows=st.sampled_from([2, 4, 8]),
    cols=st.sampled_from([4, 8]),
    gx=st.sampled_from([1, 2]),
    frange=st.sampled_from([1, 2, 4]),
    acc=st.sampled_from(["sum", "rms", "mean", None, "max"]),
)
def test_random_block_graphs_match_jnp(data, rows, cols, gx, frange, acc):
    """Random element-wise loop bodies, rows split over the grid, cols over the loop."""
    g = new_kernel_graph()
    xa, xb = g.new_input((rows, cols)), g.new_input((rows, cols))
    tb = new_threadblock_graph((gx, 1, 1), frange)
    ins = [tb.new_input(xa, (0,), 1), tb.new_input(xb, (0,), 1)]
    refs = ["a", "b"]
    n_ops = data.draw(st.integers(1, 4))
    for _ in range(n_ops):
        if data.draw(st.booleans()):
            k = data.draw(st.sampled_from(_UNARY))
            i = data.draw(st.integers(0, len(ins) - 1))
            ins.append(getattr(tb, k)(ins[i]))
            refs.append((k, i))
        else:
            k = data.draw(st.sampled_from(_BINARY))
            i, j = data.draw(st.integers(0, len(ins) - 1)), data.draw(st.integers(0, len(ins) - 1))
            ins.append(getattr(tb, k)(ins[i], ins[j]))
            refs.append((k, i, j))
    last = ins[-1]
    out = tb.forloop_accum_max(last) if acc == "max" else tb.forloop_accum(last, acc)
    tb.new_output(out, (0,))
    (y,) = g.customized([xa, xb], tb)
    g.mark_output(y)
    rng = np.random.default_rng(data.draw(st.integers(0, 99)))
    a, b = rng.standard_normal((rows, cols)) * 0.5, rng.standard_normal((rows, cols)) * 0.5

    # independent jnp reference of the same schedule: cols cut into `frange` chunks
    with jax.enable_x64(True):
        vals = [jnp.asarray(a), jnp.asarray(b)]
        for r in refs[2:]:
            vals.append(_JNP[r[0]](*[vals[i] for i in r[1:]]))
        v = vals[-1].reshape(rows, frange, cols // frange)
        if acc is None:
            want = v.sum(1)
        elif acc == "max":
            want = v.max(1)
        elif acc == "sum":
            want = vals[-1].sum(1, keepdims=True)
        elif acc == "mean":
            want = vals[-1].mean(1, keepdims=True)
        else:
            want = jnp.sqrt(jnp.mean(vals[-1] ** 2, 1, keepdims=True))
        want = np.asarray(want)
    assert_trees_close(evaluate(g.graph, [a, b])[0], want, kind="forward")


def test_exact_gelu_matches_jax_in_float64_and_differs_from_the_tanh_form():
    x = np.concatenate([np.linspace(-12.0, 12.0, 2001), [-40.0, -1e-3, 0.0, 1e-3, 40.0]])
    g = new_kernel_graph()
    xin = g.new_input(x.shape)
    g.mark_output(g.gelu_exact(xin))
    got = evaluate(g.graph, [x], FloatRing())[0]
    exact = _jnp64(lambda v: jax.nn.gelu(v, approximate=False), [x])
    assert_trees_close(got, exact, kind="forward")
    # in the far tail too (x·Φ(x) ~ 1e-32 at x = -12): erfc, not 1 + erf
    tail = (x < -5) & (x > -20)  # at x = -40 both underflow to 0
    assert_trees_close(got[tail] / exact[tail], np.ones(tail.sum()), kind="forward")
    # negative: the tanh form is a different function (up to ~5e-4 apart)
    tanh = _jnp64(lambda v: jax.nn.gelu(v, approximate=True), [x])
    assert np.max(np.abs(got - tanh)) > 1e-4
    with pytest.raises(AssertionError):
        assert_trees_close(got, tanh, kind="forward")
