"""Abstract expressions and the subexpression pruning oracle (spec §a.3), on egglog.

An abstract expression forgets element positions and keeps which inputs are
combined by which operators and how many terms each sum has: ``("var", i)``,
``("add"|"mul"|"div"|"pow", a, b)``,
``("exp"|"sqrt"|"silu"|"gelu"|"gelu_exact"|"relu"|"neg"|"scale"|"sq", a)``,
``("sum"|"rms"|"max", n, a)``. Tiling is invisible; a matmul over a tile with
contraction ``k`` is ``sum(k, mul(a, b))`` and an accumulator over ``F``
iterations wraps its input in ``sum(F, ·)``.

`Oracle` saturates the reference outputs' expressions once with the equivalence
axioms (commutativity/associativity, distributivity, division rules, sum rules,
``rms(n, x) = sqrt(sum(n, sq(x)))``) plus, for every sum degree ``n`` in the target
and each divisor ``j``, ``sum(n, x) = sum(j, sum(n/j, x))``. Then ``e ⊑ E_out`` is
"``e`` is represented in the saturated e-graph" (it contains every subterm of
every equivalent form), cached per expression. egglog was chosen over z3
because this is one saturation and then cheap membership lookups, with no
quantifier instantiation per query (z3's MBQI took the v0.2.4 route). The
``erased`` variant sets every degree to 0 (degree-free), a weaker check used
before grid and loop sizes are known; it never prunes what the exact check keeps.
These rules may be only abstractly true; they are never used to verify.

A square (``square(x)`` or ``mul(x, x)`` of one tensor) is the atomic ``sq(x)``,
which distributivity does not expand (``x·x`` found by the rules still folds
into ``sq(x)``). Otherwise every norm's ``sqrt(sum(y·y))`` expands
``y = a + b`` into ``a·a + a·b + b·a + b·b``, and then ``b + b``, ``a·a``, ...
all become subexpressions of the target: nTrans's two norms let thousands of
such block DAGs through. A candidate that computes a norm by expanding a square
is pruned by this choice; it is never cheaper than squaring ``y``.
"""

# mypy: disable-error-code="empty-body"
# (the egglog DSL declares its functions and constructors with `...` bodies)

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["Expr", "Oracle", "block_expr", "erase", "graph_exprs", "kernel_expr"]

log = logging.getLogger(__name__)

Expr = tuple[Any, ...]


def _sum(n: int, x: Expr, erased: bool) -> Expr:
    # Nested sums merge (the axiom sum(n, sum(m, x)) = sum(n·m, x)), so a matmul
    # accumulated over a loop has one normal form however the loop is split.
    if erased:
        return x if x[0] == "sum" else ("sum", 0, x)
    if n == 1:
        return x
    if x[0] == "sum":
        return ("sum", n * x[1], x[2])
    return ("sum", n, x)


def _elementwise(kind: str, a: Sequence[Expr]) -> Expr:
    if kind == "square" or (kind == "mul" and a[0] == a[1]):
        return ("sq", a[0])  # atomic square: see the module docstring
    if kind == "rsqrt":
        return ("div", ("one",), ("sqrt", a[0]))
    if kind == "mul_scalar":  # constants are invisible to the abstraction
        return a[0]
    if kind == "sub":
        return ("add", a[0], ("neg", a[1]))
    return (kind, *a)


def kernel_expr(
    kind: str,
    ins: Sequence[Expr],
    in_shapes: Sequence[tuple[int, ...]],
    attrs: dict[str, Any],
    erased: bool = False,
) -> Expr:
    """The expression of a pre-defined op's output (also used for block ops on tiles)."""
    if kind == "matmul":
        return _sum(in_shapes[0][-1], ("mul", ins[0], ins[1]), erased)
    if kind in ("reduce_sum", "reduce_max"):
        d = attrs.get("dim", len(in_shapes[0]) - 1)
        n = in_shapes[0][d]
        if kind == "reduce_max":
            return ("max", 0 if erased else n, ins[0])
        return _sum(n, ins[0], erased)
    if kind == "rms_norm":
        return ("div", ins[0], ("rms", 0 if erased else in_shapes[0][-1], ins[0]))
    if kind == "concat":
        return ("concat", *ins)
    return _elementwise(kind, ins)


def block_expr(
    kind: str,
    ins: Sequence[Expr],
    tiles: Sequence[tuple[int, ...]],
    attrs: dict[str, Any],
    frange: int,
    erased: bool = False,
) -> Expr:
    """The expression of a block op (accumulators over ``frange`` iterations)."""
    f = 0 if erased else frange
    if kind in ("accum_sum", "accum_rescale"):
        return _sum(frange, ins[0], erased)
    n = tiles[0][-1] if tiles else 1
    if kind in ("accum_sum_ld", "accum_mean_ld"):
        return _sum(frange * n, ins[0], erased)
    if kind == "accum_redtox_ld":
        return _sum(frange * n // attrs["dimx"], ins[0], erased)
    if kind == "accum_rms_ld":
        return ("rms", f * n, ins[0])
    if kind == "accum_max":
        return ("max", f, ins[0])
    return kernel_expr(kind, ins, tiles, attrs, erased)


def erase(e: Expr) -> Expr:
    """The degree-free form of an expression."""
    if e[0] in ("sum", "rms", "max"):
        inner = erase(e[2])
        if e[0] == "sum" and inner[0] == "sum":
            return inner
        return (e[0], 0, inner)
    if e[0] == "var":
        return e
    return (e[0], *(erase(a) for a in e[1:]))


def _divisors(n: int) -> list[int]:
    return [j for j in range(2, math.isqrt(n) + 1) if n % j == 0] + [
        n // j for j in range(2, math.isqrt(n) + 1) if n % j == 0 and j * j != n
    ]


def _degrees(e: Expr, out: set[int]) -> None:
    if e[0] in ("sum", "rms", "max"):
        out.add(e[1])
        _degrees(e[2], out)
    elif e[0] != "var":
        for a in e[1:]:
            _degrees(a, out)


class Oracle:
    """``e ⊑ E_out`` and ``e ≡ E_out`` modulo the axioms, memoized (see the module docstring)."""

    def __init__(
        self, targets: Sequence[Expr], *, iterations: int = 12, time_limit_s: float = 10.0
    ) -> None:
        from egglog import EGraph, birewrite, function, i64, i64Like, rewrite, vars_
        from egglog import Expr as EExpr

        class T(EExpr):
            @classmethod
            def var(cls, i: i64Like) -> T: ...

            @classmethod
            def one(cls) -> T: ...

        @function
        def add(a: T, b: T) -> T: ...

        @function
        def mul(a: T, b: T) -> T: ...

        @function
        def div(a: T, b: T) -> T: ...

        @function
        def powf(a: T, b: T) -> T: ...

        @function
        def concat(a: T, b: T) -> T: ...

        @function
        def un(name: i64Like, a: T) -> T: ...

        @function
        def ssum(n: i64Like, a: T) -> T: ...

        @function
        def rms(n: i64Like, a: T) -> T: ...

        @function
        def smax(n: i64Like, a: T) -> T: ...

        unary = ("exp", "sqrt", "silu", "gelu", "relu", "neg", "scale", "sq", "gelu_exact")
        self._unary_ids = {k: i for i, k in enumerate(unary)}
        self._T, self._fns = T, {"add": add, "mul": mul, "div": div, "pow": powf, "concat": concat}
        self._un, self._sum, self._rms, self._max = un, ssum, rms, smax
        a, b, c = vars_("a b c", T)
        n, m = vars_("n m", i64)
        sqrt_id, sq_id = self._unary_ids["sqrt"], self._unary_ids["sq"]
        rules = [
            rewrite(add(a, b)).to(add(b, a)),
            rewrite(mul(a, b)).to(mul(b, a)),
            birewrite(add(add(a, b), c)).to(add(a, add(b, c))),
            birewrite(mul(mul(a, b), c)).to(mul(a, mul(b, c))),
            birewrite(add(mul(a, c), mul(b, c))).to(mul(add(a, b), c)),
            birewrite(add(div(a, c), div(b, c))).to(div(add(a, b), c)),
            birewrite(mul(a, div(b, c))).to(div(mul(a, b), c)),
            birewrite(div(div(a, b), c)).to(div(a, mul(b, c))),
            birewrite(ssum(n, add(a, b))).to(add(ssum(n, a), ssum(n, b))),
            birewrite(ssum(n, mul(a, b))).to(mul(ssum(n, a), b)),
            birewrite(ssum(n, div(a, b))).to(div(ssum(n, a), b)),
            rewrite(ssum(n, ssum(m, a))).to(ssum(n * m, a)),
            rewrite(smax(n, smax(m, a))).to(smax(n * m, a)),
            birewrite(rms(n, a)).to(un(sqrt_id, ssum(n, un(sq_id, a)))),
            rewrite(mul(a, a)).to(un(sq_id, a)),
        ]
        degrees: set[int] = set()
        for t in targets:
            _degrees(t, degrees)
        for d in sorted(degrees):
            for j in _divisors(d):
                rules.append(rewrite(ssum(d, a)).to(ssum(j, ssum(d // j, a))))
                rules.append(
                    rewrite(rms(d, a)).to(un(sqrt_id, ssum(j, ssum(d // j, un(sq_id, a)))))
                )
                rules.append(rewrite(smax(d, a)).to(smax(j, smax(d // j, a))))
        self._terms: dict[Expr, Any] = {}
        self.egraph = EGraph()
        self.egraph.register(*rules)
        self.targets = [self.term(t) for t in targets]
        for k, t in enumerate(self.targets):
            self.egraph.let(f"target{k}", t)
        start = time.perf_counter()
        for _ in range(iterations):
            report = self.egraph.run(1)
            if not report.updated or time.perf_counter() - start > time_limit_s:
                break
        self.saturation_s = time.perf_counter() - start
        self._sub: dict[Expr, bool] = {}
        self._eq: dict[tuple[Expr, int], bool] = {}
        self.queries = 0

    def term(self, e: Expr) -> Any:
        """The egglog term of an expression (memoized: subterms recur across queries)."""
        t = self._terms.get(e)
        if t is None:
            t = self._terms[e] = self._term(e)
        return t

    def _term(self, e: Expr) -> Any:
        head = e[0]
        if head == "var":
            return self._T.var(e[1])
        if head == "one":
            return self._T.one()
        if head in self._fns:
            if head == "concat" and len(e) != 3:
                return self._fns["concat"](
                    self.term(e[1]),
                    self.term(("concat", *e[2:])) if len(e) > 3 else self.term(e[2]),
                )
            return self._fns[head](self.term(e[1]), self.term(e[2]))
        if head in self._unary_ids:
            return self._un(self._unary_ids[head], self.term(e[1]))
        if head == "sum":
            return self._sum(e[1], self.term(e[2]))
        if head == "rms":
            return self._rms(e[1], self.term(e[2]))
        if head == "max":
            return self._max(e[1], self.term(e[2]))
        raise ValueError(f"no abstract expression for {head!r}")

    def contains(self, e: Expr) -> bool:
        """Whether ``e`` is a subexpression of some target modulo the axioms."""
        hit = self._sub.get(e)
        if hit is None:
            self.queries += 1
            hit = bool(self.egraph.check_bool(self.term(e)))
            self._sub[e] = hit
        return hit

    def equivalent(self, e: Expr, k: int) -> bool:
        """Whether ``e`` is equivalent to target ``k`` modulo the axioms."""
        from egglog import eq

        key = (e, k)
        hit = self._eq.get(key)
        if hit is None:
            hit = self.contains(e) and bool(
                self.egraph.check_bool(eq(self.term(e)).to(self.targets[k]))
            )
            self._eq[key] = hit
        return hit


def graph_exprs(graph: Any, erased: bool = False) -> list[Expr]:
    """Expressions of every tensor of a `KernelGraph`, by id."""
    exprs: list[Expr] = [("var", i) for i in range(len(graph.inputs))]
    shapes = graph.shapes
    for op in graph.ops:
        ins = [exprs[i] for i in op.inputs]
        in_shapes = [shapes[i] for i in op.inputs]
        if op.block is None:
            exprs.append(kernel_expr(op.kind, ins, in_shapes, op.attr, erased))
            continue
        tiles, _, _ = op.block.infer(in_shapes)
        bex = list(ins)
        for bop in op.block.ops:
            bex.append(
                block_expr(
                    bop.kind,
                    [bex[i] for i in bop.inputs],
                    [tiles[i] for i in bop.inputs],
                    bop.attr,
                    op.block.frange,
                    erased,
                )
            )
        exprs.extend(bex[o.src] for o in op.block.outputs)
    return exprs
