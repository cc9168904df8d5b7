"""A region of a captured program: a kernel graph built out of order, then pruned.

`KernelGraphBuilder` needs every input before the first op; capture learns of
inputs late (a value imported from an earlier region, a constant met mid-way),
so a `Region` records inputs and ops separately and `Region.build` numbers
them, drops ops no output needs and inputs no op reads.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jgraph.superopt._ir import KernelGraph, KernelOp, TensorSpec, make_attrs
from jgraph.superopt._ops import op_shape

__all__ = ["RTensor", "Region", "Src"]

# Where a region input comes from at run time: ("key", value key) or ("const", array).
Src = tuple[str, Any]


@dataclasses.dataclass(frozen=True, eq=False)
class RTensor:
    """A tensor of a region: ``("in", k)`` or ``("op", j)`` and its kernel shape."""

    region: int
    ref: tuple[str, int]
    shape: tuple[int, ...]


class Region:
    """Inputs, ops and outputs of one superoptimizable region (see the module docstring)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.inputs: list[tuple[Src, TensorSpec]] = []
        self.ops: list[tuple[str, tuple[tuple[str, int], ...], dict[str, Any]]] = []
        self.outputs: list[tuple[RTensor, int, tuple[int, ...], tuple[int, ...]]] = []
        self._exported: set[int] = set()

    def new_input(self, src: Src, shape: tuple[int, ...], dtype: str) -> RTensor:
        self.inputs.append((src, TensorSpec(shape=tuple(shape), dtype=dtype)))
        return RTensor(self.index, ("in", len(self.inputs) - 1), tuple(shape))

    def op(self, kind: str, xs: list[RTensor], attrs: dict[str, Any] | None = None) -> RTensor:
        shape = op_shape(kind, [x.shape for x in xs], attrs or {})
        self.ops.append((kind, tuple(x.ref for x in xs), dict(attrs or {})))
        return RTensor(self.index, ("op", len(self.ops) - 1), shape)

    def output(self, t: RTensor, key: int, dims: tuple[int, ...], shape: tuple[int, ...]) -> None:
        """Marks ``t`` as the value ``key`` (logical ``shape``, data dims ``dims``), once."""
        if key not in self._exported:
            self._exported.add(key)
            self.outputs.append((t, key, dims, shape))

    def build(self) -> tuple[KernelGraph, tuple[Src, ...]] | None:
        """The pruned kernel graph and its inputs' sources; None when it has no op."""
        live_ops: set[int] = set()
        stack = [t.ref for t, *_ in self.outputs]
        while stack:
            kind, i = stack.pop()
            if kind == "op" and i not in live_ops:
                live_ops.add(i)
                stack.extend(self.ops[i][1])
        if not live_ops:
            return None
        used_in = sorted(
            {i for j in live_ops for kind, i in self.ops[j][1] if kind == "in"}
            | {t.ref[1] for t, *_ in self.outputs if t.ref[0] == "in"}
        )
        ids: dict[tuple[str, int], int] = {("in", k): n for n, k in enumerate(used_in)}
        ops = []
        for j in sorted(live_ops):
            kind, refs, attrs = self.ops[j]
            ids[("op", j)] = len(ids)
            ops.append(KernelOp(kind, tuple(ids[r] for r in refs), make_attrs(attrs)))
        graph = KernelGraph(
            tuple(self.inputs[k][1] for k in used_in),
            tuple(ops),
            tuple(ids[t.ref] for t, *_ in self.outputs),
        ).validate()
        return graph, tuple(self.inputs[k][0] for k in used_in)


def const_dtype(arr: np.ndarray, default: str) -> str:
    """The kernel dtype a constant input gets (its own float dtype, float64 as float32)."""
    name = np.dtype(arr.dtype).name
    return {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32"}.get(
        name, "float32" if name == "float64" else default
    )
