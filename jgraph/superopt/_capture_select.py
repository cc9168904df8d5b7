"""``select_n`` on a constant predicate that is not one value (a causal mask), as IR ops.

Capture folds the predicate (``tril(ones)`` is iota/ge/select equations on constants
only); the selection is then arithmetic with constant masks. With ``C`` what the
constant cases give (0 where a tensor case is chosen) and ``M_i`` the 0/1 mask of
tensor case ``t_i``:

* one tensor case whose every other position takes an infinite constant (``where(mask,
  s, -inf)``): ``t + C``, one add of a constant 0/-inf mask;
* otherwise: ``Σ t_i·M_i (+ C)``.

Both equal ``select_n`` wherever the values not selected are finite (``inf·0`` and
``-inf + inf`` are NaN, where select drops them): a score, activation or product the
program computes is, and a mask that hides an inf or NaN is not what it is for.

An infinite constant (the ``-inf`` of a mask) becomes ``±finfo(dtype).max / 2``: the
region's kernels are verified on finite values, and an online softmax over a tile the
mask hides entirely would compute ``-inf - (-inf)`` (NaN) where this gives ``exp`` of
a huge negative number, 0, as ``-inf`` does (the halving keeps ``s + C`` and ``C - m``
from overflowing). Softmax, max and sums of exps come out as with ``-inf``; a masked
value that reaches an output itself is that finite number, and a row masked entirely
averages instead of giving NaN (as masks built with ``finfo.min``, Flax's, do).
Constants keep size 1 along the dims they do not vary on (a column mask is ``(1, n)``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jgraph.superopt._capture import _FLOATS, Capture, Lay, UnsupportedError, Val

__all__ = ["select_constant"]


def _squeeze(arr: np.ndarray) -> np.ndarray:
    """``arr`` with size 1 along every dim it is constant on (it broadcasts back)."""
    for d in range(arr.ndim):
        if arr.shape[d] > 1:
            first = arr.take([0], axis=d)
            if np.array_equal(arr, np.broadcast_to(first, arr.shape)):
                arr = first
    return arr


def _const_like(cap: Capture, arr: np.ndarray, lay: Lay) -> Any:
    """Constant ``arr`` (logical shape ``lay.shape``) as an input laid out like ``lay``."""
    arr = _squeeze(arr)
    kshape = [1] * cap.R
    for i, d in enumerate(lay.dims):
        kshape[d] = arr.shape[i]
    kernel = arr.reshape(kshape)
    dtype = _FLOATS[np.dtype(arr.dtype).name]
    return cap.cur.new_input(("const", kernel), tuple(kshape), dtype)


def _big(dtype: np.dtype) -> float:
    import jax.numpy as jnp  # here: `import jgraph.superopt` stays light

    return float(jnp.finfo(dtype).max) / 2


def select_constant(
    cap: Capture, pred: np.ndarray, cases: list[Val], shape: tuple[int, ...]
) -> list[Val]:
    """``select_n(pred, *cases)`` for a constant ``pred`` (see the module docstring)."""
    dtype = cases[0].dtype
    if dtype.name not in _FLOATS:
        raise UnsupportedError(f"select_n of {dtype.name} values (μGraphs compute on floats)")
    idx = np.broadcast_to(np.asarray(pred).astype(np.int64), shape)
    if idx.size and (idx.min() < 0 or idx.max() >= len(cases)):
        raise UnsupportedError("select_n with a predicate out of range")
    fixed = np.zeros(shape, dtype)  # the constant cases' values, 0 where a tensor is chosen
    tensors: list[tuple[np.ndarray, Val]] = []
    for i, v in enumerate(cases):
        chosen = idx == i
        if not chosen.any():
            continue
        if v.const is None:
            tensors.append((chosen, v))
        else:
            fixed = np.where(chosen, np.broadcast_to(v.const, shape), fixed).astype(dtype)
    if not tensors:  # every case constant, yet not folded: over the fold size cap
        raise UnsupportedError("select_n of constants too large to fold")
    infinite = np.isinf(fixed)
    fixed = np.where(infinite, np.sign(fixed) * _big(dtype), fixed).astype(dtype)
    lays = [cap.lay(v) for _, v in tensors]
    if any(lay.dims != lays[0].dims for lay in lays):
        raise UnsupportedError("select_n of cases laid out differently")
    if len(tensors) == 1 and np.all(infinite[~tensors[0][0]]):
        out = cap.op("add", [lays[0].t, _const_like(cap, fixed, lays[0])])
    else:
        out = None
        for (chosen, _), lay in zip(tensors, lays, strict=True):
            term = cap.op("mul", [lay.t, _const_like(cap, chosen.astype(dtype), lay)])
            out = term if out is None else cap.op("add", [out, term])
        if np.any(fixed != 0):
            out = cap.op("add", [out, _const_like(cap, fixed, lays[0])])
    return [cap.tensor_val(cases[0], Lay(out, lays[0].dims, tuple(shape)))]
