"""superoptimize accepts ordinary JAX code: constants, biases, keepdims statistics,
jax.nn activations and softmax, integer powers, casts, relabeling reshapes, and
operators the IR lacks (kept as XLA between searched regions)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jgraph.core import ConfigError
from jgraph.superopt import SearchConfig, capture, superoptimize
from jgraph.testing import Tolerance, assert_trees_close, tolerance

CFG = SearchConfig(time_limit_s=3, max_kernel_ops=1)
ROWS, HID, OUT = 4, 32, 16
# f32 sums of up to HID terms: the table's f32 atol scaled by HID (gamma_K bound), 10x headroom
TOL = Tolerance(rtol=tolerance("forward", np.float32).rtol, atol=HID * 1.2e-7 * 10)


def _ln(x):
    m = x.mean(-1, keepdims=True)
    return (x - m) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-5)


def _rms(x, g):
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + 1e-6) * g[None, :]


# name -> (fn, argument shapes)
PROGRAMS = {
    "scalar_constant": (lambda x: x + 1e-5, [(ROWS, HID)]),
    "constant_minus_x": (lambda x: 1.0 - x * 3.0, [(ROWS, HID)]),
    "array_constant": (lambda x: x * jnp.arange(HID, dtype=jnp.float32)[None, :], [(ROWS, HID)]),
    # Flax's Dense adds its bias this way (a reshape of the 1-D bias)
    "dense_bias": (
        lambda x, w, b: x @ w + jnp.reshape(b, (1, -1)),
        [(ROWS, HID), (HID, OUT), (OUT,)],
    ),
    "dense_bias_gelu": (
        lambda x, w, b: jax.nn.gelu(x @ w + b[None, :]),
        [(ROWS, HID), (HID, OUT), (OUT,)],
    ),
    "silu": (jax.nn.silu, [(ROWS, HID)]),
    "sigmoid": (jax.nn.sigmoid, [(ROWS, HID)]),
    "tanh": (jnp.tanh, [(ROWS, HID)]),
    "softmax": (lambda x: jax.nn.softmax(x, axis=-1), [(ROWS, HID)]),
    "mean_no_keepdims": (lambda x: x.mean(-1), [(ROWS, HID)]),
    "center_rows": (lambda x: x - x.mean(-1)[:, None], [(ROWS, HID)]),
    "layernorm": (_ln, [(ROWS, HID)]),
    "rmsnorm_weight": (_rms, [(ROWS, HID), (HID,)]),
    "integer_pow": (lambda x: x**3 - x**-2, [(ROWS, HID)]),
    "casts": (lambda x: x.astype(jnp.float32).mean(-1).astype(jnp.bfloat16), [(ROWS, HID)]),
    "relabel_reshape": (
        lambda x: (jnp.expand_dims(x.sum(-1), -1) * x)[None].squeeze(0).reshape(1, ROWS, HID),
        [(ROWS, HID)],
    ),
    "relu_neg": (lambda x: jax.nn.relu(-x), [(ROWS, HID)]),
    # exact GELU: x·0.5·erfc(-x/√2) as jax writes it, one gelu_exact op (no XLA erfc)
    "dense_bias_gelu_exact": (
        lambda x, w, b: jax.nn.gelu(x @ w + b[None, :], approximate=False),
        [(ROWS, HID), (HID, OUT), (OUT,)],
    ),
    "flax_gelu_exact": (lambda x: nn.gelu(x * 3.0, approximate=False), [(ROWS, HID)]),
    "residual_gelu_exact": (  # the match is a subtree of a larger element-wise tree
        lambda x: x + 2.0 * jax.nn.gelu(x, approximate=False),
        [(ROWS, HID)],
    ),
}


def _args(shapes, seed):
    key = jax.random.key(seed)
    return [jax.random.normal(jax.random.fold_in(key, i), s) * 0.5 for i, s in enumerate(shapes)]


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_construct_runs_equals_fn_and_keeps_the_output_structure(name):
    fn, shapes = PROGRAMS[name]
    res = superoptimize(fn, *_args(shapes, 0), config=CFG)
    assert res.stayed_xla == ()  # all of it is μGraph ops
    fresh = _args(shapes, 1)
    got, want = res(*fresh), fn(*fresh)
    assert jax.tree.structure(got) == jax.tree.structure(want)  # an array, not a list
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    if got.dtype == jnp.bfloat16:  # "casts": one bf16 rounding of the result
        assert_trees_close(np.asarray(got, np.float32), np.asarray(want, np.float32))
        return
    assert_trees_close(np.asarray(got), np.asarray(want), tol=TOL)


def test_known_activations_become_one_ir_op():
    x = jnp.ones((ROWS, HID))
    assert [op.kind for op in capture(jax.nn.silu, x).ops] == ["silu"]
    assert [op.kind for op in capture(lambda x: jax.nn.gelu(x), x).ops] == ["gelu"]
    assert [op.kind for op in capture(jax.nn.relu, x).ops] == ["relu"]
    exact = ["gelu_exact"]
    assert [op.kind for op in capture(lambda x: jax.nn.gelu(x, approximate=False), x).ops] == exact
    assert [op.kind for op in capture(lambda x: nn.gelu(x, approximate=False), x).ops] == exact
    # negative: the tanh form (~5e-4 away) is not taken for the exact one, nor the reverse
    assert [op.kind for op in capture(lambda x: nn.gelu(x, approximate=True), x).ops] == ["gelu"]
    residual = capture(lambda x: x + jax.nn.gelu(x, approximate=False), x)
    assert [op.kind for op in residual.ops] == ["gelu_exact", "add"]
    # its argument may be an element-wise tree of its own
    scaled = capture(lambda x: nn.gelu(x * 3.0 + 1.0, approximate=False), x)
    assert [op.kind for op in scaled.ops] == ["mul_scalar", "add", "gelu_exact"]
    # sigmoid has no IR op: written with exp (not mistaken for silu)
    assert "silu" not in [op.kind for op in capture(jax.nn.sigmoid, x).ops]


def test_bias_is_a_left_padded_input_and_constants_come_after_the_arguments():
    x, w, b = jnp.ones((ROWS, HID)), jnp.ones((HID, OUT)), jnp.ones((OUT,))
    g = capture(lambda x, w, b: x @ w + b[None, :] + 1e-5, x, w, b)
    assert [s.shape for s in g.inputs] == [(ROWS, HID), (HID, OUT), (1, OUT), (1, 1)]
    assert [op.kind for op in g.ops] == ["matmul", "add", "add"]


def test_output_pytree_with_reduced_and_passthrough_leaves():
    def f(x):
        return {"mean": x.mean(-1), "pair": (jnp.exp(x), x)}

    x = _args([(ROWS, HID)], 2)[0]
    res = superoptimize(f, x, config=CFG)
    got, want = res(x), f(x)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert got["mean"].shape == (ROWS,)
    assert_trees_close(jax.tree.map(np.asarray, got), jax.tree.map(np.asarray, want))


@pytest.mark.parametrize(
    ("fn", "stayed"),
    [
        (lambda x: jnp.cumsum(jnp.exp(x), -1) * 2.0 + 1.0, "cumsum"),
        (lambda x: jnp.sort(x, -1), "sort"),
        (lambda x: jax.lax.erfc(x) * 2.0, "erfc"),
        (lambda x, w: jax.nn.softmax(x @ w.T, -1), "transpose"),
        # a size-1 left operand broadcast against a tensor from an XLA step: the result
        # has the broadcast shape (it used to keep the left operand's)
        (lambda x: (x[:, :1] * 3.0) * jnp.cumsum(x, -1), "cumsum"),
        (lambda x: (x[:1, :] - jnp.cumsum(x, -1)) / (x[:, :1] + 4.0), "cumsum"),
    ],
)
def test_operators_the_ir_lacks_stay_xla_and_are_reported(fn, stayed):
    shapes = [(ROWS, HID)] if fn.__code__.co_argcount == 1 else [(ROWS, HID), (OUT, HID)]
    res = superoptimize(fn, *_args(shapes, 0), config=CFG)
    assert any(line.startswith(stayed + ":") for line in res.stayed_xla), res.stayed_xla
    fresh = _args(shapes, 3)
    assert_trees_close(np.asarray(res(*fresh)), np.asarray(fn(*fresh)), tol=TOL)
    assert_trees_close(np.asarray(jax.jit(res)(*fresh)), np.asarray(fn(*fresh)), tol=TOL)
    with pytest.raises(ConfigError, match="not one μGraph"):
        capture(fn, *_args(shapes, 0))


# name -> (fn, argument shapes, erfc kept as XLA, gelu_exact ops)
_ERFC_KEPT = {
    "alone": (lambda x: jax.lax.erfc(x), [(ROWS, HID)], 1, 0),
    "times_two": (lambda x: jax.lax.erfc(x) * 2.0, [(ROWS, HID)], 1, 0),
    # gelu's shape with another constant: no known op, so its erfc stays XLA
    "near_gelu": (lambda x: 0.5 * x * jax.lax.erfc(-x * 0.6), [(ROWS, HID)], 1, 0),
    "nested": (
        lambda x: jnp.exp(x) + jax.lax.erfc(jnp.exp(x) + jax.lax.erfc(x)),
        [(ROWS, HID)],
        2,
        0,
    ),
    # one erfc joins gelu_exact, the other stays XLA
    "beside_gelu": (
        lambda x: x * jax.lax.erfc(x) + jax.nn.gelu(x, approximate=False),
        [(ROWS, HID)],
        1,
        1,
    ),
    # operands of one equation laid before and after the erfc's XLA step
    "two_bases": (
        lambda x, y: (x * 3.0) * jax.lax.erfc(y) + jax.nn.gelu(y, approximate=False),
        [(ROWS, HID), (ROWS, HID)],
        1,
        1,
    ),
    "matmul_operand": (
        lambda x, w: jnp.exp(x) @ (jax.lax.erfc(w) * 2.0),
        [(ROWS, HID), (HID, OUT)],
        1,
        0,
    ),
}


@pytest.mark.parametrize("name", sorted(_ERFC_KEPT))
def test_an_erfc_outside_an_exact_gelu_stays_xla(name):
    fn, shapes, n_erfc, n_gelu = _ERFC_KEPT[name]
    res = superoptimize(fn, *_args(shapes, 0), config=CFG)
    assert res.stayed_xla == ("erfc: no μGraph op for it",) * n_erfc
    fresh = _args(shapes, 3)
    assert_trees_close(np.asarray(res(*fresh)), np.asarray(fn(*fresh)), tol=TOL)
    assert_trees_close(np.asarray(jax.jit(res)(*fresh)), np.asarray(fn(*fresh)), tol=TOL)
    results = res.program.results if res.program is not None else (res,)
    kinds = [op.kind for r in results for op in r.reference.ops]
    assert kinds.count("gelu_exact") == n_gelu


def test_a_wrong_capture_would_be_caught():
    """Negative: the equality check above fails for a perturbed result."""
    fn, shapes = PROGRAMS["layernorm"]
    res = superoptimize(fn, *_args(shapes, 0), config=CFG)
    fresh = _args(shapes, 1)
    got = np.asarray(res(*fresh))
    bad = got.copy()
    bad[0, 0] += 1e-3
    with pytest.raises(AssertionError):
        assert_trees_close(bad, np.asarray(fn(*fresh)))
    # a program that differs from the captured one (no centering) fails the same check
    with pytest.raises(AssertionError):
        assert_trees_close(
            got, np.asarray(fresh[0] * jax.lax.rsqrt(fresh[0].var(-1, keepdims=True) + 1e-5))
        )
