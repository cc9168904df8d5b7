"""Element-wise chains on one tensor, kept symbolic until used, then emitted as μGraph ops.

Capture does not emit ``x * logistic(x)`` or ``0.5·x·(1 + tanh(c·(x + 0.044715·x³)))``
op by op: element-wise primitives whose other operand is a scalar constant or the
same base tensor grow a tree over that base. When the value is needed the tree is
compared numerically, on a grid of probe points, with the element-wise ops the IR
has (silu, gelu in its tanh form, gelu_exact, relu): a match becomes that one op,
which the search and the kernels know. Otherwise the tree is emitted with IR ops:
scalar constants become constant inputs (or ``mul_scalar``), ``logistic(z)`` is
``1 / (1 + exp(-z))``, ``tanh(z)`` is ``2·logistic(2z) - 1``, ``neg`` is
``mul_scalar(-1)`` and ``integer_pow`` a chain of ``square``/``mul``.

``erfc`` (`EXPR_IN_KNOWN`) has no IR op: it joins a tree only so that exact gelu
(``0.5·x·erfc(-x/√2)``) can match ``gelu_exact``, also inside a larger tree and
over an argument that is itself a subtree (``gelu(3·x + 1)``, see `_match`). An
``erfc`` outside every match stays an XLA step: `lift` hands it to capture, which
returns the step's output, a ``("v", value)`` leaf of the tree it then emits.

Trees are tuples: ``("x",)`` the base, ``("c", value)`` a scalar, ``(op, *children)``,
``("erfc", child, eqn)`` with the jaxpr equation an XLA step would run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["EXPR_BINARY", "EXPR_IN_KNOWN", "EXPR_UNARY", "Emitter", "emit", "evaluate_expr", "lift"]

EXPR_UNARY = frozenset({"neg", "exp", "logistic", "tanh", "sqrt", "rsqrt", "square"})
# Kept symbolic only as part of a known op; elsewhere an XLA step (see `lift`).
EXPR_IN_KNOWN = frozenset({"erfc"})
EXPR_BINARY = frozenset({"add", "sub", "mul", "div", "pow"})
Tree = tuple[Any, ...]

_C = math.sqrt(2 / math.pi)
_ERFC = np.frompyfunc(math.erfc, 1, 1)  # numpy has no erf; scipy is only a test dependency


def _erfc(x: np.ndarray) -> np.ndarray:
    return np.asarray(_ERFC(x), dtype=np.float64)


_PROBE = np.concatenate([np.linspace(-8.0, 8.0, 161), [-30.0, -0.013, 0.007, 30.0]])
_KNOWN: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "silu": lambda x: x / (1 + np.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1 + np.tanh(_C * (x + 0.044715 * x**3))),
    # jax.nn.gelu(approximate=False) writes it so; it differs from the tanh form by up to ~5e-4
    "gelu_exact": lambda x: 0.5 * x * _erfc(-x / math.sqrt(2)),
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
            "erfc": lambda v: _erfc(v[0]),
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


def _has(tree: Tree, ops: frozenset[str]) -> bool:
    return tree[0] in ops or any(_has(a, ops) for a in tree[1:] if isinstance(a, tuple))


def _known(tree: Tree) -> str | None:
    if tree[0] in ("x", "c") or _has(tree, frozenset({"v"})):
        return None
    got = evaluate_expr(tree, _PROBE)
    for name, f in _KNOWN.items():
        want = f(_PROBE)
        # float32 literals (0.044714998…) differ from the exact constants by ~1e-8 relative
        if np.all(np.isfinite(got)) and np.allclose(got, want, rtol=1e-6, atol=1e-9):
            return name
    return None


def _subtrees(tree: Tree, out: list[Tree]) -> list[Tree]:
    for a in tree[1:]:
        if isinstance(a, tuple) and a[0] not in ("x", "c"):
            if a not in out:
                out.append(a)
            _subtrees(a, out)
    return out


def _replace(tree: Tree, old: Tree, new: Tree) -> Tree:
    if tree == old:
        return new
    return (tree[0], *(_replace(a, old, new) if isinstance(a, tuple) else a for a in tree[1:]))


def _match(tree: Tree) -> tuple[str, Tree] | None:
    """A known op and its argument ``s`` (a subtree) such that ``tree`` is ``op(s)``.

    Other trees match only over the base itself (``s = x``). One with an erfc also
    tries each subtree ``s`` through which all of its dependence on ``x`` goes
    (``gelu(3·x)``), so that the erfc does not stay XLA: ``s`` is replaced by a fresh
    variable and the rest compared on the probe grid, as over ``x``.
    """
    name = _known(tree)
    if name is not None:
        return name, ("x",)
    if not _has(tree, EXPR_IN_KNOWN) or _has(tree, frozenset({"v"})):
        return None
    for s in _subtrees(tree, []):
        if _has(s, EXPR_IN_KNOWN):
            continue
        rest = _replace(tree, s, ("s",))
        if _has(rest, frozenset({"x"})):
            continue
        name = _known(_replace(rest, ("s",), ("x",)))
        if name is not None:
            return name, s
    return None


class Emitter:
    """What `emit` needs from capture: ops on region tensors and scalar constants."""

    def op(self, kind: str, xs: list[Any], attrs: dict[str, Any] | None = None) -> Any:
        raise NotImplementedError

    def const(self, value: float) -> Any:
        raise NotImplementedError

    def value(self, v: Any) -> Any:
        """A ``("v", v)`` leaf's tensor (see `lift`)."""
        raise NotImplementedError


def lift(tree: Tree, step: Callable[[Tree, Any], Any]) -> Tree:
    """``tree`` with each ``erfc`` outside a known-op subtree replaced by ``("v", step(...))``.

    ``step(child, eqn)`` runs the XLA step on the (already lifted) child and returns its
    output; innermost ``erfc`` first. A tree without them is returned as is.
    """
    if not _has(tree, EXPR_IN_KNOWN) or _match(tree) is not None:
        return tree
    kids = tuple(lift(a, step) if isinstance(a, tuple) else a for a in tree[1:])
    if tree[0] in EXPR_IN_KNOWN:
        return ("v", step(kids[0], kids[1]))
    return (tree[0], *kids)


def emit(tree: Tree, base: Any, em: Emitter) -> Any:
    """Emits ``tree`` over region tensor ``base``; returns the result tensor."""
    m = _match(tree)
    if m is not None:
        return em.op(m[0], [_emit(m[1], base, em)])
    return _emit(tree, base, em)


def _const(t: Tree) -> float | None:
    return float(t[1]) if t[0] == "c" else None


def _emit(tree: Tree, base: Any, em: Emitter) -> Any:
    op, args = tree[0], tree[1:]
    if op == "x":
        return base
    if op == "c":
        return em.const(float(args[0]))
    if op == "v":
        return em.value(args[0])
    if _has(tree, EXPR_IN_KNOWN):  # a known op inside a larger tree (`lift` kept it)
        m = _match(tree)
        if m is not None:
            return em.op(m[0], [_emit(m[1], base, em)])
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
    # capture only builds the ops above, and `lift` replaced every erfc outside a known op
    raise AssertionError(f"no emission rule for {op!r}")


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
