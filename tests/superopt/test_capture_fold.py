"""Capture folds what depends on no input (iota, comparisons, a ``tril`` mask) and turns
``select_n`` on such a predicate into IR ops: causal attention is one region."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jgraph.superopt._capture as capture_mod
from jgraph.superopt import SearchConfig, capture, superoptimize
from jgraph.superopt.corpus import example
from jgraph.testing import Tolerance, assert_trees_close, tolerance

CFG = SearchConfig(time_limit_s=3, max_kernel_ops=1)
# The fusion moves alone (one enumeration state): the online-softmax kernel, deterministic.
FUSION_ONLY = SearchConfig(time_limit_s=30, max_kernel_ops=1, max_states=1)
ROWS, HID = 8, 32
# f32 dot products / sums of up to HID terms of O(1) values: the table's f32 atol scaled
# by the contraction length (gamma_K bound), with 10x headroom.
TOL = Tolerance(rtol=tolerance("forward", np.float32).rtol, atol=HID * 1.2e-7 * 10)


def _args(seed, *shapes):
    key = jax.random.key(seed)
    return [jax.random.normal(jax.random.fold_in(key, i), s) for i, s in enumerate(shapes)]


def _causal(q, kt, v):
    s = q @ kt / math.sqrt(q.shape[-1])
    s = jnp.where(jnp.tril(jnp.ones((q.shape[0], kt.shape[1]), bool)), s, -jnp.inf)
    return jax.nn.softmax(s, axis=-1) @ v


def _check(fn, res, args):
    assert_trees_close(np.asarray(res(*args)), np.asarray(fn(*args)), tol=TOL)


def test_causal_attention_is_one_region_with_an_additive_mask():
    shapes = [(ROWS, HID), (HID, ROWS), (ROWS, HID)]
    g = capture(_causal, *_args(0, *shapes))  # raises if anything stayed XLA
    assert "add" in [op.kind for op in g.ops]
    res = superoptimize(_causal, *_args(0, *shapes), config=CFG)
    assert res.stayed_xla == ()
    assert len(res.program.regions) == 1
    _check(_causal, res, _args(1, *shapes))


def test_corpus_causal_attention_keeps_only_the_transpose_as_xla():
    ex = example("causal_attention", rows=ROWS, hidden=HID)
    res = superoptimize(ex.fn, *ex.args(0), config=CFG)
    assert [line.split(":")[0] for line in res.stayed_xla] == ["transpose"]
    _check(ex.fn, res, ex.args(1))


def test_a_mask_hiding_whole_tiles_gives_no_nan():
    """At 128 rows the online-softmax kernel walks column tiles; for the first rows the
    second tile is masked entirely (with a -inf mask its running max is -inf - -inf)."""
    ex = example("causal_attention", rows=128, hidden=64)
    res = superoptimize(ex.fn, *ex.args(0), config=FUSION_ONLY)
    assert res.fused_kernels
    got = np.asarray(res(*ex.args(1)))
    assert not np.isnan(got).any()
    # f32 sums of 128 terms: the table's f32 atol scaled by the length, 10x headroom
    tol = Tolerance(rtol=tolerance("forward", np.float32).rtol, atol=128 * 1.2e-7 * 10)
    assert_trees_close(got, np.asarray(ex.fn(*ex.args(1))), tol=tol)


FOLDED = {
    "iota_offset": lambda x: x + jnp.arange(HID)[None] * 0.5,
    "column_mask": lambda x: jnp.where(jnp.arange(HID) < 3, x, 0.0),
    "two_tensor_cases": lambda x: jnp.where(jnp.arange(HID)[None] % 2 == 0, x, jnp.exp(x)),
    "constant_case_not_one_value": lambda x: jnp.where(
        jnp.tril(jnp.ones((ROWS, HID), bool)), x, jnp.arange(HID, dtype=jnp.float32)[None]
    ),
    "three_way": lambda x: jax.lax.select_n(
        jnp.broadcast_to(jnp.arange(HID, dtype=jnp.int32) % 3, (ROWS, HID)), x, 2.0 * x, -x
    ),
}


@pytest.mark.parametrize("name", sorted(FOLDED))
def test_computed_constants_are_folded_and_correct(name):
    fn = FOLDED[name]
    g = capture(fn, *_args(0, (ROWS, HID)))  # one μGraph: nothing stayed XLA
    assert "select_n" not in [op.kind for op in g.ops]
    res = superoptimize(fn, *_args(0, (ROWS, HID)), config=CFG)
    assert res.stayed_xla == ()
    _check(fn, res, _args(1, (ROWS, HID)))


def test_a_mask_constant_along_rows_is_one_row():
    g = capture(FOLDED["column_mask"], jnp.ones((ROWS, HID)))
    assert [s.shape for s in g.inputs] == [(ROWS, HID), (1, HID)]
    assert [op.kind for op in g.ops] == ["mul"]


def test_a_masked_value_that_is_an_output_is_a_huge_finite_number():
    """Documented difference: -inf becomes -finfo.max/2 (see _capture_select)."""

    def fn(x):
        return jnp.where(jnp.tril(jnp.ones((ROWS, HID), bool)), x, -jnp.inf)

    x = _args(0, (ROWS, HID))[0]
    got = np.asarray(superoptimize(fn, x, config=CFG)(x))
    keep = np.tril(np.ones((ROWS, HID), bool))
    assert_trees_close(got[keep], np.asarray(x)[keep])
    assert np.all(got[~keep] == -np.finfo(np.float32).max / 2)


def test_a_predicate_from_the_inputs_stays_xla():
    def fn(x, y):
        return jnp.where(x > y, x, y * 2.0)

    args = _args(0, (ROWS, HID), (ROWS, HID))
    res = superoptimize(fn, *args, config=CFG)
    assert "select_n: select_n on a predicate known only at run time" in res.stayed_xla
    _check(fn, res, _args(1, (ROWS, HID), (ROWS, HID)))


def test_constants_over_the_fold_limit_stay_xla(monkeypatch):
    monkeypatch.setattr(capture_mod, "FOLD_LIMIT", 4)  # (ROWS, HID) is over it; scalars not
    fn = FOLDED["iota_offset"]
    res = superoptimize(fn, *_args(0, (ROWS, HID)), config=CFG)
    assert res.stayed_xla[0].startswith("iota:")
    _check(fn, res, _args(1, (ROWS, HID)))
    # every case constant, none folded: select_n itself says why
    mask = np.tril(np.ones((ROWS, HID), bool))
    a, b = np.ones((ROWS, HID), np.float32), np.full((ROWS, HID), 3.0, np.float32)

    def sel(x):
        return x + jnp.where(mask, a, b)

    res = superoptimize(sel, *_args(0, (ROWS, HID)), config=CFG)
    assert "select_n: select_n of constants too large to fold" in res.stayed_xla
    _check(sel, res, _args(1, (ROWS, HID)))
