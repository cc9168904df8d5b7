"""Runs a μGraph as a jitted JAX function (the interpreter over ``jax.numpy``).

Graph-defined kernels execute their exact block schedule with jnp ops (float32
compute and accumulation, outputs cast to the inputs' dtype); lowering them to
``pallas_call`` is a later issue. The all-pre-defined-ops μGraph is exactly the
XLA program.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from jgraph.superopt._interp import evaluate
from jgraph.superopt._ir import KernelGraph
from jgraph.superopt._ring import FloatRing

__all__ = ["jax_function"]


@functools.lru_cache(maxsize=64)
def jax_function(graph: KernelGraph) -> Callable[..., list[Any]]:
    """A jitted ``f(*arrays) -> list of outputs`` for ``graph`` (cached per graph).

    Example:
        >>> import jax.numpy as jnp
        >>> from jgraph.superopt.programs import get_program
        >>> prog = get_program("rmsnorm_linear", scale=16, dtype="float32")
        >>> xs = [jnp.ones(s, jnp.float32) for s in prog.shapes]
        >>> jax_function(prog.graph)(*xs)[0].shape
        (2, 384)
    """
    # JAX is imported here, not at module level, so `import jgraph.superopt` stays light.
    import jax
    import jax.numpy as jnp

    graph.validate()
    ring = FloatRing(jnp.float32, jnp.float32, jnp)

    @jax.jit
    def run(*arrays: jax.Array) -> list[jax.Array]:
        out_dtype = arrays[0].dtype if arrays else jnp.float32
        outs = evaluate(graph, [jnp.asarray(a, jnp.float32) for a in arrays], ring)
        return [o.astype(out_dtype) for o in outs]

    return run
