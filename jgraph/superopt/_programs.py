"""The six Mirage benchmark programs (spec §d), as μGraphs and as jnp functions.

Shapes follow Mirage's ``benchmark/*.py`` verbatim; ``batch`` scales the
batched ones (GQA, QKNorm, RMSNorm, nTrans); LoRA and GatedMLP have fixed shapes
in the spec. ``scale`` divides every large dim for CPU-sized tests.
`is_known_good` says whether a μGraph has the structure Mirage's saved best
μGraph has (a yes/no reachability check for the benchmark, never a template).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from jgraph.core import check_choice, check_int
from jgraph.superopt._builder import new_kernel_graph
from jgraph.superopt._ir import KernelGraph

__all__ = ["PROGRAMS", "Program", "get_program", "is_known_good"]

PROGRAMS = ("gqa", "qknorm", "rmsnorm_linear", "lora", "gated_mlp", "ntrans")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Program:
    """One benchmark program at concrete shapes."""

    name: str
    graph: KernelGraph
    fn: Callable[..., Any]  # the jnp reference, same inputs in the same order
    shapes: tuple[tuple[int, ...], ...]


def _fns() -> dict[str, Callable[..., Any]]:
    # JAX is imported here, not at module level, so `import jgraph.superopt` stays light.
    import jax
    import jax.numpy as jnp

    def _attention(q: Any, k: Any, v: Any) -> Any:
        e = jnp.exp(jnp.matmul(q, k))
        return jnp.matmul(e / jnp.sum(e, axis=-1, keepdims=True), v)

    def _rms(x: Any) -> Any:
        return x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True))

    return {
        "gqa": _attention,
        "qknorm": lambda q, k, v: _attention(_rms(q), k, _rms(v)),
        "rmsnorm_linear": lambda x, w: jnp.matmul(_rms(x), w),
        "lora": lambda x, w, a, b: jnp.matmul(x, w) + jnp.matmul(jnp.matmul(x, a), b),
        "gated_mlp": lambda x, w1, w2: jax.nn.silu(jnp.matmul(x, w1)) * jnp.matmul(x, w2),
        "ntrans": lambda h, x, a: _rms((_rms(h) + x) * a + x),
    }


def _shapes(name: str, b: int, s: int) -> tuple[tuple[int, ...], ...]:
    return {
        "gqa": (
            (2 * b, 256 // s, 64 // s),
            (2 * b, 64 // s, 4096 // s),
            (2 * b, 4096 // s, 64 // s),
        ),
        "qknorm": (
            (2 * b, 256 // s, 64 // s),
            (2 * b, 64 // s, 4096 // s),
            (2 * b, 4096 // s, 64 // s),
        ),
        "rmsnorm_linear": ((2 * b, 4096 // s), (4096 // s, 6144 // s)),
        "lora": ((16, 256 // s), (256 // s, 4096 // s), (256 // s, 16), (16, 4096 // s)),
        "gated_mlp": ((8, 4096 // s), (4096 // s, 4096 // s), (4096 // s, 4096 // s)),
        "ntrans": ((8 * b, 4096 // s),) * 3,
    }[name]


def get_program(name: str, *, batch: int = 1, scale: int = 1, dtype: str = "float16") -> Program:
    """Builds a benchmark program.

    Args:
        name: one of `PROGRAMS`.
        batch: the spec's ``b`` (1 or 8 in the paper).
        scale: divides the large dims (1 = the spec's shapes; 16 for CPU tests).
        dtype: the inputs' dtype name.

    Returns:
        The `Program`.

    Example:
        >>> get_program("rmsnorm_linear", scale=16).graph.shapes[-1]
        (2, 384)
    """
    check_choice("program", name, PROGRAMS)
    check_int("batch", batch, minimum=1)
    check_int("scale", scale, minimum=1, maximum=16)
    shapes = _shapes(name, batch, scale)
    g = new_kernel_graph()
    ins = [g.new_input(s, dtype) for s in shapes]
    if name in ("gqa", "qknorm"):
        q, k, v = ins
        if name == "qknorm":
            q, v = g.rms_norm(q), g.rms_norm(v)
        e = g.exp(g.matmul(q, k))
        out = g.matmul(g.div(e, g.reduction(e, 2)), v)
    elif name == "rmsnorm_linear":
        out = g.matmul(g.rms_norm(ins[0]), ins[1])
    elif name == "lora":
        x, w, a, b = ins
        out = g.add(g.matmul(x, w), g.matmul(g.matmul(x, a), b))
    elif name == "gated_mlp":
        x, w1, w2 = ins
        out = g.mul(g.silu(g.matmul(x, w1)), g.matmul(x, w2))
    else:
        h, x, a = ins
        out = g.rms_norm(g.add(g.mul(g.add(g.rms_norm(h), x), a), x))
    g.mark_output(out)
    return Program(name=name, graph=g.graph, fn=_fns()[name], shapes=shapes)


def _block_kinds(graph: KernelGraph) -> list[list[str]]:
    return [[o.kind for o in op.block.ops] for op in graph.ops if op.block is not None]


def is_known_good(name: str, graph: KernelGraph) -> bool:
    """Whether ``graph`` has the structure of Mirage's saved best μGraph for ``name``.

    * rmsnorm_linear / ntrans: one graph-defined kernel and nothing else; for
      rmsnorm_linear its block graph has the matmul, an rms accumulator and the
      division after the loop (division moved after the matmul);
    * gqa / qknorm: two graph-defined kernels (split-KV), the second reducing partials;
    * lora: one graph-defined kernel holding all three matmuls;
    * gated_mlp: a graph-defined kernel with two matmul accumulators.
    """
    blocks = _block_kinds(graph)
    custom_only = all(op.kind == "customized" for op in graph.ops)
    if name == "rmsnorm_linear":
        return (
            len(graph.ops) == 1
            and len(blocks) == 1
            and {"matmul", "accum_rms_ld", "div"} <= set(blocks[0])
        )
    if name == "ntrans":
        return len(graph.ops) == 1 and len(blocks) == 1
    if name in ("gqa", "qknorm"):
        return (
            len(blocks) == 2
            and custom_only
            and any(k in blocks[1] for k in ("accum_redtox_ld", "accum_sum_ld"))
            and graph.ops[0].block is not None
            and graph.ops[0].block.grid[1] * graph.ops[0].block.grid[2] > 1
        )
    if name == "lora":
        return len(graph.ops) == 1 and len(blocks) == 1 and blocks[0].count("matmul") == 3
    if name == "gated_mlp":
        return any(b.count("matmul") == 2 and b.count("accum_sum") >= 2 for b in blocks)
    return False
