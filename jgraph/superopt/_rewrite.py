"""Exact algebraic rewrites that let a fused kernel loop over a matmul's contraction.

`hoist_row_factors` expands a matmul's left operand into a signed sum of products
(through ``add``, ``sub``, ``mul``, ``div`` and ``mul_scalar``) and moves every factor
that is constant along the contraction (last dim 1: a per-row statistic, a scalar)
past the matmul: ``(Σ_m s_m · r_m · p_m) @ W = Σ_m s_m · r_m · (p_m @ W)``. That turns
RMSNorm + Linear into ``((x·g) @ W) · rsqrt(mean(x²) + eps)`` and LayerNorm + Linear
into ``r·((x·g) @ W) − μ·r·(g @ W) + β @ W``, whose matmuls can accumulate over the
hidden dimension while the row statistics accumulate beside them. The rewrite is an
identity of real arithmetic; the verifier checks every candidate built from it,
including its float error (a cancelling form can be rejected there).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from jgraph.superopt._ir import Op, make_attrs
from jgraph.superopt._ops import op_shape, scalar_of

__all__ = ["cse", "hoist_row_factors"]

_MAX_TERMS = 8

# A monomial: (coefficient, factors as (tensor id, is_divisor)).
Term = tuple[Fraction, tuple[tuple[int, bool], ...]]


def hoist_row_factors(
    n_in: int, in_shapes: Sequence[tuple[int, ...]], ops: Sequence[Op], outputs: Sequence[int]
) -> tuple[list[Op], list[int]] | None:
    """``ops`` with per-row factors moved past the matmuls (None: no matmul changes).

    Returns the new op list (unused ops dropped) and the new output ids.
    """
    shapes = [tuple(s) for s in in_shapes]
    for op in ops:
        shapes.append(op_shape(op.kind, [shapes[i] for i in op.inputs], op.attr))
    producer = {n_in + k: op for k, op in enumerate(ops)}

    def expand(t: int) -> list[Term] | None:
        op = producer.get(t)
        if op is None or op.kind not in ("add", "sub", "mul", "div", "mul_scalar"):
            return [(Fraction(1), ((t, False),))]
        if op.kind == "mul_scalar":
            inner = expand(op.inputs[0])
            f = scalar_of(op.attr)
            return None if inner is None else [(c * f, fs) for c, fs in inner]
        a, b = (expand(i) for i in op.inputs)
        if a is None or b is None:
            return None
        if op.kind in ("add", "sub"):
            sign = 1 if op.kind == "add" else -1
            out = a + [(sign * c, fs) for c, fs in b]
        elif op.kind == "mul":
            out = [(ca * cb, fa + fb) for ca, fa in a for cb, fb in b]
        else:  # div: only by a single monomial (a product of factors)
            if len(b) != 1:
                return [(Fraction(1), ((t, False),))]
            cb, fb = b[0]
            out = [(ca / cb, fa + tuple((f, not inv) for f, inv in fb)) for ca, fa in a]
        return out if len(out) <= _MAX_TERMS else None

    new: list[Op] = []
    remap = {k: k for k in range(n_in)}
    changed = False

    def emit(kind: str, ins: Sequence[int], attrs: tuple = ()) -> int:
        new.append(Op(kind, tuple(ins), attrs))
        return n_in + len(new) - 1

    def scaled(acc: int, factors: Sequence[tuple[int, bool]], coef: Fraction) -> int:
        """``acc`` times (or divided by) each factor, then by ``coef``."""
        for f, inv in factors:
            acc = emit("div" if inv else "mul", (acc, remap[f]))
        if coef != 1:
            acc = emit("mul_scalar", (acc,), make_attrs({"scalar": float(coef)}))
        return acc

    for k, op in enumerate(ops):
        t = n_in + k
        terms = expand(op.inputs[0]) if op.kind == "matmul" else None
        rows = [[(f, inv) for f, inv in fs if shapes[f][-1] == 1] for _, fs in terms or ()]
        if terms is None or not any(rows):
            remap[t] = emit(op.kind, [remap[i] for i in op.inputs], op.attrs)
            continue
        total = None
        for (coef, fs), row in zip(terms, rows, strict=True):
            rest = [(f, inv) for f, inv in fs if shapes[f][-1] != 1]
            if not rest or any(inv for _, inv in rest):
                total = None
                break
            lhs = scaled(remap[rest[0][0]], rest[1:], Fraction(1))
            term = scaled(emit("matmul", (lhs, remap[op.inputs[1]])), row, coef)
            total = term if total is None else emit("add", (total, term))
        if total is None:
            return None
        remap[t], changed = total, True
    if not changed:
        return None
    outs = [remap[o] for o in outputs]
    return cse(n_in, new, outs)


def cse(n_in: int, ops: Sequence[Op], outputs: Sequence[int]) -> tuple[list[Op], list[int]]:
    """Drops ops no output needs and merges identical ones, renumbering."""
    live = set(outputs)
    for k in range(len(ops) - 1, -1, -1):
        if n_in + k in live:
            live.update(ops[k].inputs)
    kept: list[Op] = []
    remap = {k: k for k in range(n_in)}
    index: dict[Op, int] = {}
    for k, op in enumerate(ops):
        if n_in + k not in live:
            continue
        o = Op(op.kind, tuple(remap[i] for i in op.inputs), op.attrs)
        if o not in index:
            kept.append(o)
            index[o] = n_in + len(kept) - 1
        remap[n_in + k] = index[o]
    return kept, [remap[o] for o in outputs]
