"""Walks a jaxpr into superoptimizable regions and XLA steps (`jgraph.superopt._plan`).

Layouts: every kernel tensor has the program's largest rank ``R``. A jaxpr value
of rank ``r`` is a kernel tensor plus ``dims`` (the kernel dim of each of its
dims, increasing) and its logical shape; kernel dims outside ``dims`` have size
1, and a dim of size 1 in the kernel but not in the value is a broadcast not
materialized. Inputs are padded on the left (``(512,)`` is ``(1, 512)``), as
numpy broadcasts; reductions keep the reduced dim with size 1. So biases,
keepdims statistics, ``[:, None]``, squeezes and transposes that only move
size-1 dims are relabelings, never ops.

Constants (literals, closed-over arrays, anything computed from them alone,
which is folded here up to `FOLD_LIMIT` elements: iota, comparisons, a ``tril`` mask)
become constant inputs of the region or ``mul_scalar``; ``select_n`` on a folded
predicate is arithmetic with constant masks (`jgraph.superopt._capture_select`).
An equation the IR cannot express (``cumsum``, ``sort``, ``erf``, a real
transpose, a reshape that merges dims, a matmul whose batch dims differ...)
becomes an XLA step: values it reads are region outputs, what it writes starts
a new region. `xla_ops` says which primitives stayed XLA and why.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import numpy as np

from jgraph.superopt._capture_expr import Emitter, emit, lift
from jgraph.superopt._region import Region, RTensor, Src, const_dtype

__all__ = ["FOLD_LIMIT", "Capture", "UnsupportedError", "Val"]

_FLOATS = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32", "float64": "float32"}
_INLINE = (
    "pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
    "custom_vjp_call_jaxpr", "remat", "checkpoint",
)  # fmt: skip
_IDENTITY = ("copy", "copy_p", "stop_gradient", "optimization_barrier", "reduce_precision")
# The most elements (16M) a folded constant may have: folding runs the equation eagerly
# and its result becomes a kernel input, so a bigger constant-only computation (an iota
# the size of a long-context mask) goes to the rules instead, as an XLA step mostly.
FOLD_LIMIT = 1 << 24


def _small(eqn: Any) -> bool:
    return all(math.prod(getattr(o.aval, "shape", ())) <= FOLD_LIMIT for o in eqn.outvars)


class UnsupportedError(Exception):
    """An equation capture keeps as XLA; the message says why."""


class _MovedError(Exception):
    """A rule laid an operand, then another one's erfc became an XLA step (a new region)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Lay:
    """A value laid out in a region: tensor, data dims, logical shape."""

    t: RTensor
    dims: tuple[int, ...]
    shape: tuple[int, ...]


@dataclasses.dataclass(eq=False)
class Val:
    """A jaxpr value: a constant, a region tensor, a run-time value (``key`` only) or a
    pending element-wise tree over ``base``."""

    key: int
    shape: tuple[int, ...]
    dtype: Any
    const: np.ndarray | None = None
    lay: Lay | None = None
    base: Val | None = None
    expr: tuple[Any, ...] | None = None
    materialized: Val | None = None


def max_rank(jaxpr: Any) -> int:
    """The largest rank of any value in ``jaxpr`` and the jaxprs inside it."""
    best = 0
    for v in itertools.chain(jaxpr.invars, jaxpr.outvars, jaxpr.constvars):
        best = max(best, len(getattr(getattr(v, "aval", None), "shape", ())))
    for eqn in jaxpr.eqns:
        for v in itertools.chain(eqn.invars, eqn.outvars):
            best = max(best, len(getattr(v.aval, "shape", ())))
        for p in eqn.params.values():
            sub = getattr(p, "jaxpr", p)
            if hasattr(sub, "eqns"):
                best = max(best, max_rank(sub))
    return best


def _assign(fixed: list[int | None], kshape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Increasing kernel dims: ``fixed`` ones kept, each None one a free size-1 kernel dim."""
    taken = {p for p in fixed if p is not None}
    out: list[int] = []
    prev = -1
    for i, p in enumerate(fixed):
        nxt = next((q for q in fixed[i + 1 :] if q is not None), len(kshape))
        if p is None:
            p = next((q for q in range(prev + 1, nxt) if kshape[q] == 1 and q not in taken), None)
            if p is None:
                return None
            taken.add(p)
        if p <= prev:
            return None
        out.append(p)
        prev = p
    return tuple(out)


class Capture(Emitter):
    """The walk (see the module docstring); `steps` and `outputs` feed `_plan.CapturedProgram`."""

    def __init__(self, rank: int) -> None:
        from jax.extend.core import Literal  # here: `import jgraph.superopt` stays light

        self._literal = Literal
        self.R = max(rank, 1)
        self.regions: list[Region] = []
        self.steps: list[tuple[str, Any]] = []
        self.xla_ops: list[tuple[str, str]] = []
        self._keys = itertools.count()
        self._imports: dict[tuple[int, int], Lay] = {}
        self._new_region()

    # -- values ------------------------------------------------------------------------
    def _new_region(self) -> None:
        self.cur = Region(len(self.regions))
        self.regions.append(self.cur)
        self.steps.append(("region", self.cur.index))

    def new_val(self, shape: Any, dtype: Any, **kw: Any) -> Val:
        return Val(next(self._keys), tuple(shape), np.dtype(dtype), **kw)

    def constant(self, arr: Any) -> Val:
        arr = np.asarray(arr)
        return self.new_val(arr.shape, arr.dtype, const=arr)

    def read(self, env: dict[Any, Val], v: Any) -> Val:
        return self.constant(v.val) if isinstance(v, self._literal) else env[v]

    def _pad(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        r = len(shape)
        if r > self.R:
            raise UnsupportedError(f"rank {r} above the program's {self.R}")
        return (1,) * (self.R - r) + tuple(shape), tuple(range(self.R - r, self.R))

    def lay(self, v: Val) -> Lay:
        """``v`` as a tensor of the current region (importing or materializing it)."""
        if v.expr is not None:
            return self.lay(self.materialize(v))
        if v.lay is not None and v.lay.t.region == self.cur.index:
            return v.lay
        cache = (self.cur.index, v.key)
        if cache not in self._imports:
            if v.const is not None:
                kshape, dims = self._pad(v.shape)
                arr = v.const.reshape(kshape)
                t = self.cur.new_input(("const", arr), kshape, const_dtype(arr, "float32"))
            else:
                dtype = _FLOATS.get(v.dtype.name)
                if dtype is None:
                    raise UnsupportedError(f"a {v.dtype.name} operand (μGraphs compute on floats)")
                kshape, dims = self._pad(v.shape)
                self.export(v)
                t = self.cur.new_input(("key", v.key), kshape, dtype)
            self._imports[cache] = Lay(t, dims, v.shape)
        return self._imports[cache]

    def export(self, v: Val) -> Src:
        """Where ``v`` is at run time (a region output, a run-time value or a constant)."""
        if v.const is not None:
            return ("const", v.const)
        if v.expr is not None:
            return self.export(self.materialize(v))
        if v.lay is not None:
            self.regions[v.lay.t.region].output(v.lay.t, v.key, v.lay.dims, v.lay.shape)
        return ("key", v.key)

    def materialize(self, v: Val) -> Val:
        if v.materialized is None:
            src = v.base
            assert src is not None
            assert v.expr is not None
            tree = lift(v.expr, lambda child, eqn: self._xla_in_tree(src, child, eqn))
            if tree[0] == "v":  # the tree was one XLA step's output
                v.materialized = tree[1]
            else:
                base = self.lay(src)  # after the XLA steps: in the region they started
                t = emit(tree, base.t, self)
                v.materialized = self.new_val(v.shape, v.dtype, lay=Lay(t, base.dims, base.shape))
        return v.materialized

    def _xla_in_tree(self, base: Val, child: tuple[Any, ...], eqn: Any) -> Val:
        """The XLA step of an element-wise tree's ``eqn`` (an erfc no known op took in)."""
        aval = eqn.invars[0].aval
        arg = base
        if child != ("x",):
            arg = self.new_val(aval.shape, aval.dtype, base=base, expr=child)
        return self.xla(eqn, [arg], "no μGraph op for it")[0]

    def tensor_val(self, like: Val, lay: Lay, shape: Any = None) -> Val:
        return self.new_val(lay.shape if shape is None else shape, like.dtype, lay=lay)

    # Emitter
    def op(self, kind: str, xs: list[Any], attrs: dict[str, Any] | None = None) -> Any:
        if any(x.region != self.cur.index for x in xs):
            raise _MovedError
        return self.cur.op(kind, xs, attrs)

    def const(self, value: float) -> Any:
        return self.lay(self.constant(np.asarray(value, np.float32))).t

    def value(self, v: Any) -> Any:
        return self.lay(v).t

    # -- the walk -----------------------------------------------------------------------
    def run(self, jaxpr: Any, args: list[Val], consts: Any = ()) -> list[Val]:
        env: dict[Any, Val] = dict(zip(jaxpr.invars, args, strict=True))
        for cv, val in zip(jaxpr.constvars, consts, strict=True):
            env[cv] = self.constant(val)
        for eqn in jaxpr.eqns:
            ins = [self.read(env, v) for v in eqn.invars]
            for var, val in zip(eqn.outvars, self.eqn(eqn, ins), strict=True):
                env[var] = val
        return [self.read(env, v) for v in jaxpr.outvars]

    def eqn(self, eqn: Any, ins: list[Val]) -> list[Val]:
        from jgraph.superopt._capture_rules import rule

        name = eqn.primitive.name
        if name in _INLINE:
            for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
                if key in eqn.params:
                    sub = eqn.params[key]
                    return self.run(getattr(sub, "jaxpr", sub), ins, getattr(sub, "consts", ()))
        if all(v.const is not None for v in ins) and not eqn.effects and _small(eqn):
            return [self.constant(o) for o in self.bind(eqn, [v.const for v in ins])]
        try:
            for _ in range(len(ins)):
                try:
                    return rule(self, eqn, ins)
                except _MovedError:
                    # laying an operand ran XLA steps; again, with those operands now
                    # materialized (cached), so every operand is laid in the new region
                    pass
            return rule(self, eqn, ins)
        except UnsupportedError as exc:
            return self.xla(eqn, ins, str(exc))

    @staticmethod
    def bind(eqn: Any, vals: list[Any]) -> list[Any]:
        params = eqn.primitive.get_bind_params(eqn.params)
        if isinstance(params, tuple):  # older JAX: (subfuns, params)
            out = eqn.primitive.bind(*params[0], *vals, **params[1])
        else:
            out = eqn.primitive.bind(*vals, **params)
        return list(out) if eqn.primitive.multiple_results else [out]

    def xla(self, eqn: Any, ins: list[Val], why: str) -> list[Val]:
        srcs = tuple(self.export(v) for v in ins)
        outs = [self.new_val(o.aval.shape, o.aval.dtype) for o in eqn.outvars]
        dtypes = tuple(np.dtype(v.aval.dtype) for v in eqn.invars)
        self.steps.append(("xla", (eqn, srcs, dtypes, tuple(o.key for o in outs), why)))
        self.xla_ops.append((eqn.primitive.name, why))
        self._new_region()
        return outs
