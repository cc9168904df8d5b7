"""Capture's rule per primitive: μGraph ops, a relabeled layout, or `UnsupportedError` (XLA)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jgraph.superopt._capture import (
    _FLOATS,
    _IDENTITY,
    Capture,
    Lay,
    UnsupportedError,
    Val,
    _assign,
)
from jgraph.superopt._capture_expr import EXPR_BINARY, EXPR_IN_KNOWN, EXPR_UNARY
from jgraph.superopt._capture_select import select_constant

__all__ = ["rule"]


def _scalar(v: Val) -> float | None:
    """A constant whose elements are all one value, as that value."""
    if v.const is None or v.const.size == 0:
        return None
    first = v.const.reshape(-1)[0]
    return float(first) if np.all(v.const == first) else None


def _tree(v: Val) -> tuple[Any, ...]:
    return v.expr if v.expr is not None else ("x",)


def _base(v: Val) -> Val:
    return v.base if v.base is not None else v


def _pending(cap: Capture, like: Val, base: Val, tree: tuple[Any, ...]) -> list[Val]:
    return [cap.new_val(like.shape, like.dtype, base=base, expr=tree)]


def _relabel(cap: Capture, v: Val, fixed: list[int | None], shape: tuple[int, ...], why: str):
    lay = cap.lay(v)
    dims = _assign(fixed, lay.t.shape)
    if dims is None:
        raise UnsupportedError(why)
    return [cap.tensor_val(v, Lay(lay.t, dims, tuple(shape)))]


def _own(lay: Lay, i: int) -> int | None:
    """Logical dim ``i``'s kernel dim when it holds data (else None: free to move)."""
    return lay.dims[i] if lay.t.shape[lay.dims[i]] != 1 else None


def _binary(cap: Capture, name: str, a: Val, b: Val) -> list[Val]:
    sa, sb = _scalar(a), _scalar(b)
    if name in ("max", "min"):
        t, c = (b, sa) if sa is not None else (a, sb)
        if c is None:
            raise UnsupportedError(f"{name} of two tensors (the IR has max only as relu)")
        if c == (-math.inf if name == "max" else math.inf):
            return [t]
        if name == "max" and c == 0.0:
            return _pending(cap, t, _base(t), ("relu", _tree(t)))
        raise UnsupportedError(f"{name} with {c} (the IR has max only as relu)")
    if sa is not None and b.const is None:
        return _pending(cap, b, _base(b), (name, ("c", sa), _tree(b)))
    if sb is not None and a.const is None:
        return _pending(cap, a, _base(a), (name, _tree(a), ("c", sb)))
    if a.const is None and b.const is None and _base(a) is _base(b):
        return _pending(cap, a, _base(a), (name, _tree(a), _tree(b)))
    la, lb = cap.lay(a), cap.lay(b)
    if la.dims != lb.dims:
        raise UnsupportedError(f"operands laid out differently ({la.t.shape} vs {lb.t.shape})")
    # the result has the broadcast shape (a size-1 left operand times a full tensor)
    shape = tuple(np.broadcast_shapes(la.shape, lb.shape))
    return [cap.tensor_val(a, Lay(cap.op(name, [la.t, lb.t]), la.dims, shape))]


def _reduce(cap: Capture, name: str, v: Val, axes: tuple[int, ...], out_shape: Any) -> list[Val]:
    lay = cap.lay(v)
    t = lay.t
    for ax in axes:
        d = lay.dims[ax]
        if t.shape[d] == 1:  # a broadcast never materialized: sum is a scaling, max a no-op
            if name == "reduce_sum" and lay.shape[ax] != 1:
                t = cap.op("mul_scalar", [t], {"scalar": float(lay.shape[ax])})
        else:
            t = cap.op(name, [t], {"dim": d})
    dims = tuple(d for i, d in enumerate(lay.dims) if i not in axes)
    return [cap.tensor_val(v, Lay(t, dims, tuple(out_shape)))]


def _reshape(cap: Capture, v: Val, shape: tuple[int, ...]) -> list[Val]:
    lay = cap.lay(v)
    src = [i for i, n in enumerate(lay.shape) if n != 1]
    dst = [j for j, n in enumerate(shape) if n != 1]
    if [lay.shape[i] for i in src] != [shape[j] for j in dst]:
        raise UnsupportedError(f"reshape {lay.shape} -> {shape} merges or splits dims")
    fixed: list[int | None] = [None] * len(shape)
    for i, j in zip(src, dst, strict=True):
        fixed[j] = _own(lay, i)
    return _relabel(cap, v, fixed, shape, f"reshape {lay.shape} -> {shape} needs a relayout")


def _dot(cap: Capture, eqn: Any, a: Val, b: Val) -> list[Val]:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    la, lb_ = cap.lay(a), cap.lay(b)
    r = len(la.shape)
    batch = tuple(range(r - 2))
    if (
        len(lb_.shape) != r
        or r < 2
        or (tuple(lc), tuple(rc)) != ((r - 1,), (r - 2,))
        or tuple(lb) != batch
        or tuple(rb) != batch
    ):
        raise UnsupportedError("only batched (..., m, k) @ (..., k, n) matmuls")
    k = cap.R
    if la.dims[-2:] != (k - 2, k - 1) or lb_.dims[-2:] != (k - 2, k - 1):
        raise UnsupportedError("matmul operands not in the last two kernel dims")
    if la.t.shape[:-2] != lb_.t.shape[:-2] or la.t.shape[-1] != lb_.t.shape[-2]:
        raise UnsupportedError(f"matmul of kernel shapes {la.t.shape} and {lb_.t.shape}")
    out = (*la.shape[:-1], lb_.shape[-1])
    return [cap.tensor_val(a, Lay(cap.op("matmul", [la.t, lb_.t]), la.dims, out))]


def rule(cap: Capture, eqn: Any, ins: list[Val]) -> list[Val]:
    """The values ``eqn`` gives (raises `UnsupportedError` for an XLA step)."""
    name, p = eqn.primitive.name, eqn.params
    out_shape = tuple(eqn.outvars[0].aval.shape)
    if name in _IDENTITY and len(ins) == 1:
        return ins
    if name == "convert_element_type":
        if not {np.dtype(p["new_dtype"]).name, ins[0].dtype.name} <= set(_FLOATS):
            raise UnsupportedError(f"a cast to {np.dtype(p['new_dtype']).name}")
        return ins
    if name in EXPR_UNARY:
        v = ins[0]
        return _pending(cap, v, _base(v), (name, _tree(v)))
    if name in EXPR_IN_KNOWN:  # the eqn: an XLA step unless a known op takes it in
        v = ins[0]
        return _pending(cap, v, _base(v), (name, _tree(v), eqn))
    if name == "integer_pow":
        if p["y"] == 0:
            raise UnsupportedError("x**0")
        v = ins[0]
        return _pending(cap, v, _base(v), ("ipow", _tree(v), int(p["y"])))
    if name in EXPR_BINARY or name in ("max", "min"):
        return _binary(cap, name, *ins)
    if name in ("reduce_sum", "reduce_max"):
        return _reduce(cap, name, ins[0], tuple(p["axes"]), out_shape)
    if name == "broadcast_in_dim":
        lay = cap.lay(ins[0])
        fixed: list[int | None] = [None] * len(out_shape)
        for i, j in enumerate(p["broadcast_dimensions"]):
            fixed[j] = _own(lay, i)
        return _relabel(cap, ins[0], fixed, out_shape, f"broadcast to {out_shape} needs a relayout")
    if name in ("reshape", "squeeze", "expand_dims"):
        return _reshape(cap, ins[0], out_shape)
    if name == "transpose":
        lay = cap.lay(ins[0])
        fixed = [_own(lay, i) for i in p["permutation"]]
        return _relabel(cap, ins[0], fixed, out_shape, "a transpose that moves data")
    if name == "dot_general":
        return _dot(cap, eqn, *ins)
    if name == "select_n":
        pred = _scalar(ins[0])
        if pred is not None:
            return [ins[1 + int(pred)]]
        if ins[0].const is None:
            raise UnsupportedError("select_n on a predicate known only at run time")
        return select_constant(cap, ins[0].const, ins[1:], out_shape)
    raise UnsupportedError("no μGraph op for it")
