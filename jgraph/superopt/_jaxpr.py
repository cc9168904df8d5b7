"""The JAX frontend: capture a plain JAX function's jaxpr and superoptimize it.

``superoptimize(fn, *example_args)`` traces ``fn`` with `jax.make_jaxpr` and
walks it (`jgraph.superopt._capture`): nested ``jit``/``pjit``,
``custom_jvp_call`` and ``custom_vjp_call`` bodies are inlined, constants are
folded into constant inputs or ``mul_scalar``, rank changes that only move
size-1 dims (biases, keepdims statistics) are relabelings, element-wise chains
become IR ops (``x * logistic(x)`` is ``silu``, the tanh form of gelu is
``gelu``, the exact one (``erfc``) ``gelu_exact``, ``max(x, 0)`` is ``relu``, tanh
and logistic are written with exp).
Every operator the IR cannot express stays XLA: the program is split into
regions around it, each region is searched, and the result runs the regions'
μGraphs and the XLA operators in order (`SearchResult.stayed_xla` says which
and why). `capture` returns the kernel graph of an ``fn`` that is one region.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from jgraph.core import ConfigError
from jgraph.superopt._capture import Capture, max_rank
from jgraph.superopt._config import SearchConfig
from jgraph.superopt._ir import KernelGraph
from jgraph.superopt._plan import CapturedProgram, RegionStep, XlaStep
from jgraph.superopt._result import SearchResult
from jgraph.superopt._search import search
from jgraph.superopt._signature import Signature

__all__ = ["SUPPORTED_PRIMITIVES", "capture", "superoptimize"]

log = logging.getLogger(__name__)

SUPPORTED_PRIMITIVES = (
    "add", "broadcast_in_dim", "convert_element_type (float to float)", "custom_jvp_call",
    "custom_vjp_call", "div", "dot_general ((..., m, k) @ (..., k, n))", "exp",
    "expand_dims", "integer_pow", "jit/pjit", "logistic", "max/min (with 0 or inf)", "mul",
    "neg", "pow", "reduce_max", "reduce_sum", "reshape (size-1 dims only)", "rsqrt",
    "select_n (constant predicate)", "sqrt", "square", "squeeze", "stop_gradient", "sub",
    "tanh", "transpose (size-1 dims only)", "constants (folded)",
)  # fmt: skip


def _capture(
    fn: Callable[..., Any], example_args: tuple[Any, ...]
) -> tuple[CapturedProgram, Signature]:
    import jax  # here, not at module level, so `import jgraph.superopt` stays light

    leaves, in_tree = jax.tree.flatten(example_args)

    def flat(*xs: Any) -> Any:
        return fn(*jax.tree.unflatten(in_tree, list(xs)))

    closed, out_shapes = jax.make_jaxpr(flat, return_shape=True)(*leaves)
    out_leaves, out_tree = jax.tree.flatten(out_shapes)
    for k, a in enumerate(leaves):
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise ConfigError(
                f"superoptimize.args[{k}]", type(a).__name__, "not an array",
                "pass arrays (pytrees of them are fine)",
            )  # fmt: skip
    cap = Capture(max_rank(closed.jaxpr))
    args = [cap.new_val(a.shape, a.dtype) for a in leaves]
    for a in args:  # region 0's inputs in argument order (unused ones are pruned)
        if a.dtype.name in ("float16", "bfloat16", "float32", "float64"):
            cap.lay(a)
    outs = cap.run(closed.jaxpr, args, closed.consts)
    # pending element-wise trees now: one that is a lone erfc becomes an XLA step's output
    outs = [cap.materialize(v) if v.expr is not None else v for v in outs]
    if not any(v.lay is not None or v.expr is not None for v in outs) and not any(
        r.ops for r in cap.regions
    ):
        # Nothing but XLA operators: one identity region (x·1) on the first float output,
        # so the result is still a searched, callable program.
        first = next(
            (
                i
                for i, v in enumerate(outs)
                if v.const is None and v.dtype.name in ("float16", "bfloat16", "float32", "float64")
            ),
            None,
        )
        if first is not None:
            v = outs[first]
            outs[first] = cap.new_val(v.shape, v.dtype, base=v, expr=("mul", ("x",), ("c", 1.0)))
    srcs = tuple(cap.export(o) for o in outs)
    steps: list[RegionStep | XlaStep] = []
    for kind, item in cap.steps:
        if kind == "xla":
            eqn, ins, dtypes, keys, why = item
            steps.append(XlaStep(eqn=eqn, inputs=ins, in_dtypes=dtypes, outputs=keys, reason=why))
            continue
        region = cap.regions[item]
        built = region.build()
        if built is not None:
            graph, ins = built
            outs_meta = tuple((key, dims, shape) for _, key, dims, shape in region.outputs)
            steps.append(RegionStep(index=item, graph=graph, inputs=ins, outputs=outs_meta))
    prog = CapturedProgram(
        arg_keys=tuple(a.key for a in args),
        arg_shapes=tuple(tuple(a.shape) for a in leaves),
        steps=tuple(steps),
        outputs=srcs,
    )
    sig = Signature(
        in_tree=in_tree,
        out_tree=out_tree,
        out_dtypes=tuple(np.dtype(o.dtype).name for o in out_leaves),
    )
    return prog, sig


def capture(fn: Callable[..., Any], *example_args: Any) -> KernelGraph:
    """The kernel graph of ``fn`` at the example arguments' shapes and dtypes.

    Arguments may be pytrees of arrays; the graph's inputs are their leaves in
    `jax.tree.flatten` order, its outputs the leaves of ``fn``'s result.

    Lower-rank arguments are padded on the left with size-1 dims to the largest
    rank in ``fn`` (a bias ``(512,)`` is a ``(1, 512)`` input), and reductions keep
    their reduced dim with size 1; scalar and array constants become extra inputs
    after the arguments. `superoptimize` accepts any ``fn``; this needs one that
    is a single μGraph.

    Raises:
        ConfigError: ``fn`` has an operator the IR cannot express (named, with why
            and the supported list).

    Example:
        >>> import jax.numpy as jnp
        >>> g = capture(lambda x, w: jnp.exp(x) @ w, jnp.ones((2, 4)), jnp.ones((4, 3)))
        >>> [op.kind for op in g.ops]
        ['exp', 'matmul']
    """
    prog = _capture(fn, example_args)[0]
    if prog.xla_ops or len(prog.regions) != 1:
        raise ConfigError(
            "capture.fn", getattr(fn, "__name__", "fn"),
            "it is not one μGraph (" + ("; ".join(prog.xla_ops) or "nothing to compute") + ")",
            "use superoptimize (it keeps these operators as XLA) or rewrite fn with "
            + ", ".join(SUPPORTED_PRIMITIVES),
        )  # fmt: skip
    return prog.regions[0].graph


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
        config: search settings (default `SearchConfig()`); its ``time_limit_s`` is
            the whole program's, shared by the searched regions by their op counts.
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

    prog, sig = _capture(fn, example_args)
    regions = prog.regions
    if not regions:
        raise ConfigError(
            "superoptimize.fn", getattr(fn, "__name__", "fn"),
            "nothing to superoptimize (" + ("; ".join(prog.xla_ops) or "no operator") + ")",
            "call fn directly",
        )  # fmt: skip
    name = getattr(fn, "__name__", "fn")
    results = []
    config = config or SearchConfig()
    total_ops = sum(len(step.graph.ops) for step in regions)
    for k, step in enumerate(regions):
        label = name if len(regions) == 1 else f"{name}[region {k}]"
        # the time limit is the whole program's: regions share it by their op counts
        share = config.time_limit_s * len(step.graph.ops) / max(total_ops, 1)
        cfg = dataclasses.replace(config, time_limit_s=max(share, 1e-3))
        res = search(step.graph, config=cfg, name=label, cache_dir=cache_dir)
        chosen = select(res, measure=measure, cache_dir=cache_dir)
        results.append(dataclasses.replace(res, selection=chosen))
    main = max(range(len(regions)), key=lambda k: len(regions[k].graph.ops))
    for line in prog.xla_ops:
        log.info("%s: kept as XLA: %s", name, line)
    prog = dataclasses.replace(prog, results=tuple(results), main=main)
    return dataclasses.replace(results[main], signature=sig, program=prog)
