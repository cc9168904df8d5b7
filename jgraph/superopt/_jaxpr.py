"""The JAX frontend: capture a plain JAX function's jaxpr as a kernel graph.

``superoptimize(fn, *example_args)`` traces ``fn`` with `jax.make_jaxpr`, maps
each primitive onto a μGraph op, then runs `search`. Nested ``jit``/``pjit``,
``custom_jvp_call`` and ``custom_vjp_call`` bodies are inlined. Reductions
keep their reduced dim with size 1 in the kernel graph, so a later
``broadcast_in_dim``/``reshape`` that only restores that dim is free.
``x * logistic(x)`` becomes ``silu``, ``max(x, 0)`` becomes ``relu`` and a
multiplication or division by a constant becomes ``mul_scalar``. Any other
primitive raises `ConfigError` naming it and listing what is supported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from jgraph.core import ConfigError
from jgraph.superopt._builder import DTensor, KernelGraphBuilder, new_kernel_graph
from jgraph.superopt._config import SearchConfig
from jgraph.superopt._ir import KernelGraph
from jgraph.superopt._result import SearchResult
from jgraph.superopt._search import search
from jgraph.superopt._signature import Signature

__all__ = ["SUPPORTED_PRIMITIVES", "capture", "superoptimize"]

SUPPORTED_PRIMITIVES = (
    "add", "broadcast_in_dim", "convert_element_type", "custom_jvp_call", "custom_vjp_call",
    "div", "dot_general", "exp", "integer_pow (y=2)", "jit/pjit", "logistic (in x*logistic(x))",
    "max (with 0)", "mul", "pow", "reduce_max", "reduce_sum", "reshape", "rsqrt", "sqrt",
    "square", "sub",
)  # fmt: skip

_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32", "float64": "float32"}


@dataclasses.dataclass(frozen=True)
class _V:
    """A jaxpr value: a kernel tensor, a scalar constant, or a pending logistic(x)."""

    t: DTensor | None = None
    const: float | None = None
    logistic_of: DTensor | None = None


def _unsupported(name: str, why: str = "") -> ConfigError:
    return ConfigError(
        "superoptimize.primitive",
        name,
        f"primitive {name!r} is not supported{': ' + why if why else ''}",
        "rewrite fn with supported primitives (" + ", ".join(SUPPORTED_PRIMITIVES) + ")",
    )


class _Capture:
    def __init__(self, g: KernelGraphBuilder) -> None:
        # JAX is imported here, not at module level, so `import jgraph.superopt` stays light.
        from jax.extend.core import Literal

        self.g = g
        self._literal = Literal

    def read(self, env: dict[Any, _V], v: Any) -> _V:
        if isinstance(v, self._literal):
            return _V(const=float(np.asarray(v.val)))
        return env[v]

    def tensor(self, x: _V, prim: str) -> DTensor:
        if x.t is None:
            raise _unsupported(prim, "an operand is a constant or an unfused logistic")
        return x.t

    def run(self, jaxpr: Any, args: list[_V], consts: Any = ()) -> list[_V]:
        env: dict[Any, _V] = dict(zip(jaxpr.invars, args, strict=True))
        for cv, val in zip(jaxpr.constvars, consts, strict=True):
            arr = np.asarray(val)
            if arr.size != 1:
                raise _unsupported(
                    "constant array", "close over scalars only; pass arrays as inputs"
                )
            env[cv] = _V(const=float(arr.reshape(())))
        for eqn in jaxpr.eqns:
            ins = [self.read(env, v) for v in eqn.invars]
            outs = self.eqn(eqn, ins)
            for var, val in zip(eqn.outvars, outs, strict=True):
                env[var] = val
        return [self.read(env, v) for v in jaxpr.outvars]

    def eqn(self, eqn: Any, ins: list[_V]) -> list[_V]:
        g, name, p = self.g, eqn.primitive.name, eqn.params
        for sub_key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
            if (
                name
                in (
                    "pjit",
                    "jit",
                    "closed_call",
                    "custom_jvp_call",
                    "custom_vjp_call",
                    "custom_vjp_call_jaxpr",
                )
                and sub_key in p
            ):
                sub = p[sub_key]
                return self.run(getattr(sub, "jaxpr", sub), ins, getattr(sub, "consts", ()))
        if name == "convert_element_type":
            return [ins[0]]
        if name in ("exp", "sqrt", "rsqrt"):
            return [_V(t=getattr(g, name)(self.tensor(ins[0], name)))]
        if name == "logistic":
            return [_V(logistic_of=self.tensor(ins[0], name))]
        if name == "integer_pow":
            if p["y"] != 2:
                raise _unsupported(f"integer_pow(y={p['y']})", "only y=2 (square)")
            return [_V(t=g.square(self.tensor(ins[0], name)))]
        if name == "square":
            return [_V(t=g.square(self.tensor(ins[0], name)))]
        if name == "max":
            a, b = ins
            if b.const == 0.0 or a.const == 0.0:
                return [_V(t=g.relu(self.tensor(a if b.const == 0.0 else b, name)))]
            raise _unsupported(name, "only max(x, 0) (relu)")
        if name == "mul":
            a, b = ins
            for x, y in ((a, b), (b, a)):
                if y.logistic_of is not None and x.t is y.logistic_of:
                    return [_V(t=g.silu(x.t))]
                if y.const is not None and x.t is not None:
                    return [_V(t=g.mul_scalar(x.t, y.const))]
            return [_V(t=g.mul(self.tensor(a, name), self.tensor(b, name)))]
        if name == "div":
            a, b = ins
            if b.const is not None and a.t is not None:
                return [_V(t=g.mul_scalar(a.t, 1.0 / b.const))]
            return [_V(t=g.div(self.tensor(a, name), self.tensor(b, name)))]
        if name in ("add", "sub", "pow"):
            return [_V(t=getattr(g, name)(self.tensor(ins[0], name), self.tensor(ins[1], name)))]
        if name in ("reduce_sum", "reduce_max"):
            t = self.tensor(ins[0], name)
            for d in p["axes"]:
                t = g.reduction(t, d) if name == "reduce_sum" else g.reduce_max(t, d)
            return [_V(t=t)]
        if name in ("broadcast_in_dim", "reshape"):
            x = ins[0]
            if x.const is not None:
                return [x]
            t = self.tensor(x, name)
            shape = tuple(p["shape"] if name == "broadcast_in_dim" else p["new_sizes"])
            if len(shape) == len(t.shape) and all(
                a == b or a == 1 for a, b in zip(t.shape, shape, strict=True)
            ):
                return [x]  # only restores a kept (size-1) dim or broadcasts: free
            raise _unsupported(name, f"{t.shape} -> {shape} changes the kernel layout")
        if name == "dot_general":
            (lc, rc), (lb, rb) = p["dimension_numbers"]
            lhs, rhs = (self.tensor(v, name) for v in ins)
            r = len(lhs.shape)
            batch = tuple(range(r - 2))
            if (
                (tuple(lc), tuple(rc)) != ((r - 1,), (r - 2,))
                or tuple(lb) != batch
                or tuple(rb) != batch
            ):
                raise _unsupported(name, "only batched (..., m, k) @ (..., k, n) matmuls")
            return [_V(t=g.matmul(lhs, rhs))]
        raise _unsupported(name)


def _capture(
    fn: Callable[..., Any], example_args: tuple[Any, ...]
) -> tuple[KernelGraph, Signature]:
    import jax  # here, not at module level, so `import jgraph.superopt` stays light

    leaves, in_tree = jax.tree.flatten(example_args)

    def flat(*xs: Any) -> Any:
        return fn(*jax.tree.unflatten(in_tree, list(xs)))

    closed, out_shapes = jax.make_jaxpr(flat, return_shape=True)(*leaves)
    out_leaves, out_tree = jax.tree.flatten(out_shapes)
    g = new_kernel_graph()
    args = []
    for k, a in enumerate(leaves):
        dtype = _DTYPES.get(np.dtype(getattr(a, "dtype", np.float64)).name)
        if dtype is None or not hasattr(a, "shape"):
            raise ConfigError(
                f"superoptimize.args[{k}]", getattr(a, "dtype", type(a).__name__),
                "not a float array", "pass float arrays (pytrees of them are fine)",
            )  # fmt: skip
        args.append(_V(t=g.new_input(tuple(a.shape), dtype)))
    cap = _Capture(g)
    outs = cap.run(closed.jaxpr, args, closed.consts)
    for o in outs:
        g.mark_output(cap.tensor(o, "output"))
    sig = Signature(
        in_tree=in_tree,
        out_tree=out_tree,
        out_dtypes=tuple(np.dtype(o.dtype).name for o in out_leaves),
    )
    return g.graph, sig


def capture(fn: Callable[..., Any], *example_args: Any) -> KernelGraph:
    """The kernel graph of ``fn`` at the example arguments' shapes and dtypes.

    Arguments may be pytrees of arrays; the graph's inputs are their leaves in
    `jax.tree.flatten` order, its outputs the leaves of ``fn``'s result.

    Raises:
        ConfigError: an unsupported primitive (named, with the supported list).

    Example:
        >>> import jax.numpy as jnp
        >>> g = capture(lambda x, w: jnp.exp(x) @ w, jnp.ones((2, 4)), jnp.ones((4, 3)))
        >>> [op.kind for op in g.ops]
        ['exp', 'matmul']
    """
    return _capture(fn, example_args)[0]


def superoptimize(
    fn: Callable[..., Any],
    *example_args: Any,
    config: SearchConfig | None = None,
    cache_dir: str | None = None,
    measure: bool | None = None,
) -> SearchResult:
    """Captures ``fn``, searches verified μGraphs for it (see `search`) and picks one to run.

    The result is callable like ``fn``: ``result(*args)`` takes the same pytree of
    arrays (the example arguments' shapes and dtypes; others raise `ConfigError`)
    and returns ``fn``'s result pytree, computed by the chosen μGraph lowered to
    Pallas kernels (`jgraph.superopt.lower`); it can be called inside `jax.jit`.
    The choice is `jgraph.superopt.lower.select`'s (``result.selection``): on an
    NVIDIA GPU the fastest of the model's top candidates and launch knobs, timed
    (cached per device kind in ``cache_dir``); on CPU the best by model cost.

    Args:
        fn: a JAX function of float arrays (pytrees of them are fine).
        *example_args: arguments with the shapes and dtypes to optimize for.
        config: search settings (default `SearchConfig()`).
        cache_dir: where search results and measured selections are cached.
        measure: time candidates to choose (None: only on a GPU).

    Example:
        >>> import jax.numpy as jnp
        >>> from jgraph.superopt import SearchConfig
        >>> def f(x, w):
        ...     return {"y": jnp.exp(x) @ w}
        >>> x, w = jnp.ones((8, 64)), jnp.ones((64, 32))
        >>> res = superoptimize(f, x, w, config=SearchConfig(time_limit_s=30, max_kernel_ops=1))
        >>> res(x, w)["y"].shape
        (8, 32)
    """
    from jgraph.superopt._select import select

    graph, sig = _capture(fn, example_args)
    result = search(graph, config=config, name=getattr(fn, "__name__", "fn"), cache_dir=cache_dir)
    chosen = select(result, measure=measure, cache_dir=cache_dir)
    return dataclasses.replace(result, signature=sig, selection=chosen)
