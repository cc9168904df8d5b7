"""Element-wise chains on one tensor, kept symbolic until used, then emitted as μGraph ops.

Capture does not emit ``x * logistic(x)`` or ``0.5·x·(1 + tanh(c·(x + 0.044715·x³)))``
op by op: element-wise primitives whose other operand is a scalar constant or the
same base tensor grow a tree over that base. When the value is needed the tree is
compared numerically, on a grid of probe points, with the element-wise ops the IR
has (silu, gelu in its tanh form, relu): a match becomes that one op, which the
search and the kernels know. Otherwise the tree is emitted with IR ops: scalar
constants become constant inputs (or ``mul_scalar``), ``logistic(z)`` is
``1 / (1 + exp(-z))``, ``tanh(z)`` is ``2·logistic(2z) - 1``, ``neg`` is
``mul_scalar(-1)`` and ``integer_pow`` a chain of ``square``/``mul``.

Trees are tuples: ``("x",)`` the base, ``("c", value)`` a scalar, ``(op, *children)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["EXPR_BINARY", "EXPR_UNARY", "Emitter", "emit", "evaluate_expr"]

EXPR_UNARY = frozenset({"neg", "exp", "logistic", "tanh", "sqrt", "rsqrt", "square"})
EXPR_BINARY = frozenset({"add", "sub", "mul", "div", "pow"})
Tree = tuple[Any, ...]

_C = math.sqrt(2 / math.pi)
_PROBE = np.concatenate([np.linspace(-8.0, 8.0, 161), [-30.0, -0.013, 0.007, 30.0]])
_KNOWN: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "silu": lambda x: x / (1 + np.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1 + np.tanh(_C * (x + 0.044715 * x**3))),
    "relu": lambda x: np.maximum(x, 0.0),
}


def evaluate_expr(tree: Tree, x: np.ndarray) -> np.ndarray:
    """The tree's value at ``x`` in float64 (numpy)."""
    op, args = tree[0], tree[1:]
    if op == "x":
        return x
    if op == "c":
        return np.full_like(x, float(args[0]))
    vals = [evaluate_expr(a, x) for a in args if isinstance(a, tuple)]
    with np.errstate(all="ignore"):
        return {
            "neg": lambda v: -v[0],
            "exp": lambda v: np.exp(v[0]),
            "logistic": lambda v: 1 / (1 + np.exp(-v[0])),
            "tanh": lambda v: np.tanh(v[0]),
            "sqrt": lambda v: np.sqrt(v[0]),
            "rsqrt": lambda v: 1 / np.sqrt(v[0]),
            "square": lambda v: v[0] ** 2,
            "relu": lambda v: np.maximum(v[0], 0.0),
            "ipow": lambda v: v[0] ** args[1],
            "add": lambda v: v[0] + v[1],
            "sub": lambda v: v[0] - v[1],
            "mul": lambda v: v[0] * v[1],
            "div": lambda v: v[0] / v[1],
            "pow": lambda v: v[0] ** v[1],
        }[op](vals)


def _known(tree: Tree) -> str | None:
    if tree[0] in ("x", "c"):
        return None
    got = evaluate_expr(tree, _PROBE)
    for name, f in _KNOWN.items():
        want = f(_PROBE)
        # float32 literals (0.044714998…) differ from the exact constants by ~1e-8 relative
        if np.all(np.isfinite(got)) and np.allclose(got, want, rtol=1e-6, atol=1e-9):
            return name
    return None


class Emitter:
    """What `emit` needs from capture: ops on region tensors and scalar constants."""

    def op(self, kind: str, xs: list[Any], attrs: dict[str, Any] | None = None) -> Any:
        raise NotImplementedError

    def const(self, value: float) -> Any:
        raise NotImplementedError


def emit(tree: Tree, base: Any, em: Emitter) -> Any:
    """Emits ``tree`` over region tensor ``base``; returns the result tensor."""
    name = _known(tree)
    if name is not None:
        return em.op(name, [base])
    return _emit(tree, base, em)


def _const(t: Tree) -> float | None:
    return float(t[1]) if t[0] == "c" else None


def _emit(tree: Tree, base: Any, em: Emitter) -> Any:
    op, args = tree[0], tree[1:]
    if op == "x":
        return base
    if op == "c":
        return em.const(float(args[0]))
    if op in ("add", "sub", "mul", "div", "pow"):
        a, b = args
        ca, cb = _const(a), _const(b)
        if op == "mul" and (ca is not None or cb is not None):
            t, c = (b, ca) if ca is not None else (a, cb)
            return em.op("mul_scalar", [_emit(t, base, em)], {"scalar": c})
        if op == "div" and cb is not None:
            return em.op("mul_scalar", [_emit(a, base, em)], {"scalar": 1.0 / cb})
        return em.op(op, [_emit(a, base, em), _emit(b, base, em)])
    x = _emit(args[0], base, em)
    if op in ("exp", "sqrt", "rsqrt", "square", "relu"):
        return em.op(op, [x])
    if op == "neg":
        return em.op("mul_scalar", [x], {"scalar": -1.0})
    if op == "logistic":
        return _logistic(x, em)
    if op == "tanh":
        s = _logistic(em.op("mul_scalar", [x], {"scalar": 2.0}), em)
        return em.op("sub", [em.op("mul_scalar", [s], {"scalar": 2.0}), em.const(1.0)])
    if op == "ipow":
        return _ipow(x, int(args[1]), em)
    raise AssertionError(f"no emission rule for {op!r}")  # capture only builds the ops above


def _logistic(x: Any, em: Emitter) -> Any:
    e = em.op("exp", [em.op("mul_scalar", [x], {"scalar": -1.0})])
    one = em.const(1.0)
    return em.op("div", [one, em.op("add", [one, e])])


def _ipow(x: Any, y: int, em: Emitter) -> Any:
    if y < 0:
        return em.op("div", [em.const(1.0), _ipow(x, -y, em)])
    if y == 1:
        return x
    half = _ipow(x, y // 2, em) if y > 3 else x
    sq = em.op("square", [half])
    return em.op("mul", [sq, x]) if y % 2 else sq
