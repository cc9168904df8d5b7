"""A builder API close to Mirage's Python API (spec §g, checklist item 9).

``g = new_kernel_graph()``; ``x = g.new_input(dims, dtype)``; ops (``g.matmul``,
``g.rms_norm``, ...); ``g.mark_output(y)``; ``g.superoptimize(config=...)``. Experts
write block graphs by hand: ``tb = new_threadblock_graph(grid_dim, forloop_range)``,
``tb.new_input(t, imap, forloop_dim)``, block ops, ``tb.forloop_accum(x, kind)``,
``tb.new_output(x, omap)``, then ``g.customized([inputs], tb)``. Every op checks
shapes as it is added and raises `ShapeError` naming the op and the shapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from jgraph.core import ConfigError, check_choice
from jgraph.superopt._ir import (
    BlockGraph,
    BlockInput,
    BlockOutput,
    KernelGraph,
    KernelOp,
    Op,
    TensorSpec,
    make_attrs,
    output_shape,
    tile_shape,
)
from jgraph.superopt._ops import ACCUMULATORS, op_shape

if TYPE_CHECKING:
    from jgraph.superopt._config import SearchConfig
    from jgraph.superopt._result import SearchResult

__all__ = [
    "DTensor",
    "KernelGraphBuilder",
    "STensor",
    "ThreadblockGraphBuilder",
    "new_kernel_graph",
    "new_threadblock_graph",
]

_ACCUM_KINDS = {
    None: "accum_sum",
    "sum": "accum_sum_ld",
    "mean": "accum_mean_ld",
    "rms": "accum_rms_ld",
    "sum_todimx": "accum_redtox_ld",
    "nored": "accum_sum",
}


@dataclasses.dataclass(frozen=True)
class DTensor:
    """A device tensor of a kernel graph under construction."""

    graph: KernelGraphBuilder
    id: int
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class STensor:
    """A shared-memory tensor of a block graph under construction."""

    graph: ThreadblockGraphBuilder
    id: int
    shape: tuple[int, ...]
    after_accum: bool


def _unary(kind: str):
    def method(self: Any, x: Any) -> Any:
        return self._op(kind, [x])

    method.__name__ = kind
    method.__doc__ = f"Element-wise ``{kind}``."
    return method


def _binary(kind: str):
    def method(self: Any, a: Any, b: Any) -> Any:
        return self._op(kind, [a, b])

    method.__name__ = kind
    method.__doc__ = f"Element-wise ``{kind}`` with equal-rank broadcasting."
    return method


class _Ops:
    """Ops shared by the kernel and the block builders."""

    def _op(self, kind: str, xs: Sequence[Any], attrs: dict[str, Any] | None = None) -> Any:
        raise NotImplementedError

    exp = _unary("exp")
    square = _unary("square")
    sqrt = _unary("sqrt")
    rsqrt = _unary("rsqrt")
    silu = _unary("silu")
    gelu = _unary("gelu")
    gelu_exact = _unary("gelu_exact")
    relu = _unary("relu")
    add = _binary("add")
    sub = _binary("sub")
    mul = _binary("mul")
    div = _binary("div")
    pow = _binary("pow")
    matmul = _binary("matmul")

    def mul_scalar(self, x: Any, scalar: float) -> Any:
        """``x * scalar``."""
        return self._op("mul_scalar", [x], {"scalar": float(scalar)})

    def reduction(self, x: Any, dim: int) -> Any:
        """Sum along ``dim``, keeping it with size 1."""
        return self._op("reduce_sum", [x], {"dim": int(dim) % len(x.shape)})

    def reduce_max(self, x: Any, dim: int) -> Any:
        """Max along ``dim``, keeping it with size 1."""
        return self._op("reduce_max", [x], {"dim": int(dim) % len(x.shape)})

    def rms_norm(self, x: Any) -> Any:
        """``x / sqrt(mean(x², last dim))`` (no epsilon, no weight, as in Mirage)."""
        return self._op("rms_norm", [x])

    def concat(self, xs: Sequence[Any], dim: int) -> Any:
        """Concatenation along ``dim``."""
        return self._op("concat", list(xs), {"dim": int(dim) % len(xs[0].shape)})


class KernelGraphBuilder(_Ops):
    """Builds a `KernelGraph` op by op (see the module docstring)."""

    def __init__(self) -> None:
        self._inputs: list[TensorSpec] = []
        self._ops: list[KernelOp] = []
        self._shapes: list[tuple[int, ...]] = []
        self._outputs: list[int] = []

    def new_input(self, dims: Sequence[int], dtype: str = "float16") -> DTensor:
        """Adds a graph input (inputs must come before any op)."""
        if self._ops:
            raise ConfigError("new_input", tuple(dims), "inputs must be created before ops", "")
        dims = tuple(int(d) for d in dims)
        if not dims or min(dims) < 1:
            raise ConfigError("new_input.dims", dims, "dims must be >= 1", "pass positive dims")
        check_choice("new_input.dtype", dtype, ("float16", "bfloat16", "float32"))
        self._inputs.append(TensorSpec(shape=dims, dtype=dtype))
        self._shapes.append(dims)
        return DTensor(self, len(self._shapes) - 1, dims)

    def _check(self, xs: Sequence[Any]) -> tuple[int, ...]:
        for x in xs:
            if not isinstance(x, DTensor) or x.graph is not self:
                raise ConfigError("operand", x, "not a tensor of this kernel graph", "")
        return tuple(x.id for x in xs)

    def _op(self, kind: str, xs: Sequence[Any], attrs: dict[str, Any] | None = None) -> DTensor:
        ids = self._check(xs)
        shape = op_shape(kind, [self._shapes[i] for i in ids], attrs or {})
        self._ops.append(KernelOp(kind, ids, make_attrs(attrs)))
        self._shapes.append(shape)
        return DTensor(self, len(self._shapes) - 1, shape)

    def customized(self, inputs: Sequence[DTensor], tb: ThreadblockGraphBuilder) -> list[DTensor]:
        """Adds a graph-defined kernel; returns its outputs."""
        ids = self._check(inputs)
        block = tb.build()
        outs = block.infer([self._shapes[i] for i in ids])[2]
        self._ops.append(KernelOp("customized", ids, (), block))
        first = len(self._shapes)
        self._shapes.extend(outs)
        return [DTensor(self, first + k, s) for k, s in enumerate(outs)]

    def mark_output(self, t: DTensor) -> None:
        """Marks ``t`` as a graph output."""
        self._outputs.append(self._check([t])[0])

    @property
    def graph(self) -> KernelGraph:
        """The frozen `KernelGraph` built so far."""
        if not self._outputs:
            raise ConfigError("mark_output", None, "the graph has no outputs", "call mark_output")
        return KernelGraph(tuple(self._inputs), tuple(self._ops), tuple(self._outputs))

    def superoptimize(
        self, config: SearchConfig | None = None, *, name: str = "program"
    ) -> SearchResult:
        """Searches verified μGraphs equivalent to this graph (see `jgraph.superopt.search`)."""
        from jgraph.superopt._search import search

        return search(self.graph, config=config, name=name)


class ThreadblockGraphBuilder(_Ops):
    """Builds a `BlockGraph` by hand (Mirage's ``new_threadblock_graph``)."""

    def __init__(self, grid_dim: Sequence[int], forloop_range: int) -> None:
        g = tuple(int(v) for v in grid_dim) + (1,) * (3 - len(grid_dim))
        if len(g) != 3 or min(g) < 1 or forloop_range < 1:
            raise ConfigError(
                "new_threadblock_graph", (grid_dim, forloop_range), "bad sizes", "use sizes >= 1"
            )
        self.grid: tuple[int, int, int] = (g[0], g[1], g[2])
        self.frange = int(forloop_range)
        self._inputs: list[BlockInput] = []
        self._ops: list[Op] = []
        self._shapes: list[tuple[int, ...]] = []
        self._post: list[bool] = []
        self._outputs: list[BlockOutput] = []

    def new_input(self, t: DTensor, input_map: Sequence[int], forloop_dim: int = -1) -> STensor:
        """An input iterator over device tensor ``t``; ``input_map`` maps grid axes to dims."""
        if self._ops:
            raise ConfigError("tb.new_input", t, "inputs must be created before ops", "")
        imap = tuple(int(v) for v in input_map) + (-1,) * (3 - len(input_map))
        shape = tile_shape(
            t.shape, self.grid, (imap[0], imap[1], imap[2]), forloop_dim, self.frange
        )
        self._inputs.append(BlockInput((imap[0], imap[1], imap[2]), int(forloop_dim)))
        self._shapes.append(shape)
        self._post.append(False)
        return STensor(self, len(self._shapes) - 1, shape, False)

    def _op(self, kind: str, xs: Sequence[Any], attrs: dict[str, Any] | None = None) -> STensor:
        for x in xs:
            if not isinstance(x, STensor) or x.graph is not self:
                raise ConfigError("operand", x, "not a tensor of this block graph", "")
        phases = {x.after_accum for x in xs}
        if kind in ACCUMULATORS:
            if phases != {False}:
                raise ConfigError(kind, "after_accum", "accumulates a post-loop tensor", "")
            post = True
        else:
            if len(phases) != 1:
                raise ConfigError(kind, "after_accum", "mixes loop and post-loop tensors", "")
            post = phases.pop()
        shape = op_shape(kind, [x.shape for x in xs], attrs or {})
        self._ops.append(Op(kind, tuple(x.id for x in xs), make_attrs(attrs)))
        self._shapes.append(shape)
        self._post.append(post)
        return STensor(self, len(self._shapes) - 1, shape, post)

    def forloop_accum(self, x: STensor, acc: str | None = None, *, dimx: int = 64) -> STensor:
        """A for-loop accumulator: None/"nored" (sum), "sum", "mean", "rms", "sum_todimx"."""
        kind = check_choice("forloop_accum.acc", acc, tuple(_ACCUM_KINDS))
        attrs = {"dimx": dimx} if kind == "sum_todimx" else None
        return self._op(_ACCUM_KINDS[kind], [x], attrs)

    def forloop_accum_max(self, x: STensor) -> STensor:
        """Running element-wise max over loop iterations."""
        return self._op("accum_max", [x])

    def forloop_accum_rescale(self, x: STensor, row_max: STensor) -> STensor:
        """The online-softmax accumulator (see `jgraph.superopt` interpreter docs)."""
        return self._op("accum_rescale", [x, row_max])

    def new_output(self, x: STensor, output_map: Sequence[int]) -> None:
        """An output saver for ``x`` (must be after a for-loop accumulator)."""
        omap = tuple(int(v) for v in output_map) + (-1,) * (3 - len(output_map))
        if not x.after_accum:
            raise ConfigError(
                "tb.new_output", x.id, "not after a for-loop accumulator", "accumulate it first"
            )
        output_shape(x.shape, self.grid, (omap[0], omap[1], omap[2]))
        self._outputs.append(BlockOutput(x.id, (omap[0], omap[1], omap[2])))

    def build(self) -> BlockGraph:
        """The frozen `BlockGraph`."""
        if not self._outputs:
            raise ConfigError("tb.new_output", None, "the block graph has no outputs", "")
        return BlockGraph(
            self.grid, self.frange, tuple(self._inputs), tuple(self._ops), tuple(self._outputs)
        )


def new_kernel_graph() -> KernelGraphBuilder:
    """Starts a kernel graph (Mirage: ``mi.new_kernel_graph()``).

    Example:
        >>> g = new_kernel_graph()
        >>> x = g.new_input((2, 8)); w = g.new_input((8, 4))
        >>> g.mark_output(g.matmul(g.rms_norm(x), w))
        >>> g.graph.shapes[-1]
        (2, 4)
    """
    return KernelGraphBuilder()


def new_threadblock_graph(grid_dim: Sequence[int], forloop_range: int) -> ThreadblockGraphBuilder:
    """Starts a hand-written block graph (Mirage: ``mi.new_threadblock_graph``)."""
    return ThreadblockGraphBuilder(grid_dim, forloop_range)
