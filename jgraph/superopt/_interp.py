"""One μGraph interpreter, generic over the number system (`FloatRing`, `ModRing`).

It executes the exact block schedule of every graph-defined kernel: each input
iterator is cut into the tiles every block loads at every for-loop iteration
(vectorized over the grid: block tensors carry leading ``(gx, gy, gz)`` axes, and
loop tensors a further ``F`` axis), the loop body runs on all iterations' tiles,
the accumulators fold the iterations in order ``i = 0 .. F-1``, the epilogue runs
once, and the output savers place each block's tile at its ``omap`` offset. The
verifier runs it over a finite field; the float64 run is the numerical
reference, including for the Pallas lowering.

Accumulators (``n`` = the tile's last dim, ``F`` = the for-loop range):

* ``accum_sum``: ``Σ_i x_i``; ``accum_sum_ld``: ``Σ_i Σ_last x_i`` (last dim 1);
  ``accum_mean_ld``: that sum ``/(F·n)``; ``accum_rms_ld``: ``sqrt(Σ_i Σ_last x_i² / (F·n))``;
* ``accum_redtox_ld`` (``dimx``): ``Σ_i`` of the last dim folded to ``dimx`` by strided
  sums, ``out[d] = Σ_k x[k·dimx + d]`` (what reduces concatenated split-KV partials);
* ``accum_max``: running element-wise max;
* ``accum_rescale(x, m)``: the online-softmax accumulator. ``m_i`` is the row max of
  iteration ``i``; it keeps ``M = max_k m_k`` and ``acc = Σ_k x_k·exp(m_k − M)`` via
  ``M' = max(M, m_i)``, ``acc' = acc·exp(M − M') + x_i·exp(m_i − M')``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from jgraph.superopt._ir import BlockGraph, KernelGraph, Triple
from jgraph.superopt._ops import ACCUMULATORS, scalar_of
from jgraph.superopt._ring import FloatRing, ModRing
from jgraph.superopt._tiling import partial_outputs

__all__ = ["apply_op", "evaluate", "run_block"]

Ring = FloatRing | ModRing


def _ones(ring: Ring, x: Any) -> Any:
    return ring.struct(ring.xp.ones_like, x)


def apply_op(
    kind: str, ins: Sequence[Any], attrs: dict[str, Any], ring: Ring, lead: int = 0
) -> Any:
    """Applies one non-customized op; values carry ``lead`` leading batch (grid/loop) axes."""
    x = ins[0]
    if kind == "exp":
        return ring.exp(x)
    if kind == "square":
        return ring.mul(x, x)
    if kind == "sqrt":
        return ring.sqrt(x)
    if kind == "rsqrt":
        return ring.div(_ones(ring, x), ring.sqrt(x))
    if kind in ("silu", "gelu", "gelu_exact", "relu"):
        return ring.nonalg(kind, x)
    if kind == "mul_scalar":
        return ring.scale(x, scalar_of(attrs))
    if kind in ("add", "sub", "mul", "div"):
        return getattr(ring, kind)(x, ins[1])
    if kind == "pow":
        return ring.nonalg("pow", x, ins[1])
    if kind == "matmul":
        return ring.matmul(x, ins[1])
    rank = len(x.shape) - lead
    if kind in ("reduce_sum", "reduce_max"):
        axis = lead + attrs.get("dim", rank - 1) % rank
        return ring.sum(x, axis) if kind == "reduce_sum" else ring.max_reduce(x, axis)
    if kind == "rms_norm":
        n = x.shape[-1]
        ms = ring.scale(ring.sum(ring.mul(x, x), len(x.shape) - 1), Fraction(1, n))
        return ring.div(x, ring.sqrt(ms))
    if kind == "concat":
        axis = lead + attrs.get("dim", rank - 1) % rank
        # operands may be replicated (size 1) along different grid/loop axes
        shp = [max(v.shape[a] for v in ins) for a in range(lead)]
        ins = [
            ring.struct(functools.partial(_broadcast, ring, (*shp, *v.shape[lead:])), v)
            for v in ins
        ]
        return ring.concat(ins, axis)
    raise ValueError(f"the interpreter has no op {kind!r}")


def _load(ring: Ring, x: Any, grid: Triple, imap: Triple, fmap: int, frange: int) -> Any:
    """Tiles of ``x`` as ``[gx, gy, gz, F, *tile]`` (replicated axes are broadcast views)."""
    shape = x.shape
    split, labels = [], []
    for j, d in enumerate(shape):
        axes = [a for a in range(3) if grid[a] > 1 and imap[a] == j]
        if axes:
            split.append(grid[axes[0]])
            labels.append(("g", axes[0]))
            d //= grid[axes[0]]
        if fmap == j:
            split.append(frange)
            labels.append(("f", 0))
            d //= frange
        split.append(d)
        labels.append(("s", j))
    order = [("g", 0), ("g", 1), ("g", 2), ("f", 0)] + [("s", j) for j in range(len(shape))]
    perm = [labels.index(k) for k in order if k in labels]
    tile = [split[labels.index(("s", j))] for j in range(len(shape))]
    padded = [
        split[labels.index(k)] if k in labels else 1 for k in order[:4]
    ] + tile  # size-1 axes where the input does not vary

    # Replicated axes stay size 1 and broadcast in each op, so a block op whose
    # operands are all replicated along an axis is computed once, not per block.
    def f(v: np.ndarray) -> np.ndarray:
        return v.reshape(split).transpose(perm).reshape(padded)

    return ring.struct(f, x)


def _store(ring: Ring, x: Any, grid: Triple, omap: Triple) -> Any:
    """Places ``[gx, gy, gz, *tile]`` block tiles into the output tensor."""
    tile = x.shape[3:]
    x = ring.struct(lambda v: ring.xp.broadcast_to(v, (*grid, *tile)), x)
    perm, out = [a for a in range(3) if grid[a] == 1 or omap[a] == -1], []
    for j, t in enumerate(tile):
        axes = [a for a in range(3) if grid[a] > 1 and omap[a] == j]
        perm += [*axes, 3 + j]
        out.append(t * (grid[axes[0]] if axes else 1))
    return ring.struct(lambda v: v.transpose(perm).reshape(out), x)


def _acc_ring(ring: Ring) -> Ring:
    return (
        FloatRing(ring.acc_dtype, ring.acc_dtype, ring.xp) if isinstance(ring, FloatRing) else ring
    )


def _max(ring: Ring, a: Any, b: Any) -> Any:
    return ring.nonalg("max", a, b)


def _accumulate(
    kind: str, xs: Sequence[Any], attrs: dict[str, Any], ring: Ring, frange: int
) -> Any:
    r = _acc_ring(ring)

    def it(v: Any, i: int) -> Any:  # iteration i (a size-1 loop axis: loop-invariant)
        return r.to_acc(ring.struct(lambda a: a[:, :, :, i if a.shape[3] > 1 else 0], v))

    x = xs[0]
    n = x.shape[-1]
    last = len(x.shape) - 2  # the tile's last axis once the loop axis is sliced away
    if kind == "accum_rescale":
        big_m, acc = it(xs[1], 0), it(x, 0)
        for i in range(1, frange):
            m_i, x_i = it(xs[1], i), it(x, i)
            new_m = _max(r, big_m, m_i)
            acc = r.add(
                r.mul(acc, r.exp(r.sub(big_m, new_m))), r.mul(x_i, r.exp(r.sub(m_i, new_m)))
            )
            big_m = new_m
        return acc

    def step(v: Any) -> Any:
        if kind in ("accum_sum", "accum_max"):
            return v
        if kind in ("accum_sum_ld", "accum_mean_ld"):
            return r.sum(v, last)
        if kind == "accum_rms_ld":
            return r.sum(r.mul(v, v), last)
        if kind == "accum_redtox_ld":
            dimx = attrs["dimx"]
            folded = r.struct(lambda a: a.reshape((*a.shape[:-1], n // dimx, dimx)), v)
            return r.struct(lambda a: a.squeeze(-2), r.sum(folded, last))
        raise ValueError(f"unknown accumulator {kind!r}")

    acc = step(it(x, 0))
    for i in range(1, frange):
        v = step(it(x, i))
        acc = _max(r, acc, v) if kind == "accum_max" else r.add(acc, v)
    if kind == "accum_mean_ld":
        acc = r.scale(acc, Fraction(1, frange * n))
    elif kind == "accum_rms_ld":
        acc = r.sqrt(r.scale(acc, Fraction(1, frange * n)))
    return acc  # in the accumulation dtype; the output saver casts


def run_block(block: BlockGraph, ins: Sequence[Any], ring: Ring) -> list[Any]:
    """Runs one graph-defined kernel on its operands; returns its output tensors.

    Device-memory tensors are in the ring's storage dtype; on chip, a block
    computes in its accumulation dtype (float32 for a float16 ring), as a
    Pallas kernel with float32 matmuls and accumulators does: loaded tiles are
    widened, and the output savers round to the storage dtype, except savers of
    partial results (`partial_outputs`), which keep float32 as split-KV
    kernels store their partials.
    """
    in_shapes = [tuple(v.shape) for v in ins]
    _, post, _ = block.infer(in_shapes)
    r = _acc_ring(ring)
    vals = [
        r.to_acc(_load(ring, v, block.grid, b.imap, b.fmap, block.frange))
        for v, b in zip(ins, block.inputs, strict=True)
    ]
    for op in block.ops:
        args = [vals[i] for i in op.inputs]
        if op.kind in ACCUMULATORS:
            vals.append(_accumulate(op.kind, args, op.attr, ring, block.frange))
        else:
            vals.append(apply_op(op.kind, args, op.attr, r, 3 if post[op.inputs[0]] else 4))
    partial = partial_outputs(block, in_shapes)
    return [
        _store(ring, vals[o.src] if keep else ring.from_acc(vals[o.src]), block.grid, o.omap)
        for o, keep in zip(block.outputs, partial, strict=True)
    ]


def evaluate(graph: KernelGraph, inputs: Sequence[Any], ring: Ring | None = None) -> list[Any]:
    """Runs a μGraph on ring values (numpy arrays for `FloatRing`); returns its outputs.

    Args:
        graph: the μGraph.
        inputs: one value per graph input, in the ring's representation.
        ring: the number system; float64 by default.

    Returns:
        The output values, in ``graph.outputs`` order.

    Example:
        >>> import numpy as np
        >>> from jgraph.superopt._ir import KernelGraph, KernelOp, TensorSpec
        >>> g = KernelGraph((TensorSpec(shape=(2, 3)),), (KernelOp("exp", (0,)),), (1,))
        >>> float(evaluate(g, [np.zeros((2, 3))])[0].sum())
        6.0
    """
    ring = ring or FloatRing()
    graph.validate()
    # Float overflow is an outcome the float screen checks for, not an error.
    with np.errstate(all="ignore"):
        return _evaluate(graph, inputs, ring)


def _evaluate(graph: KernelGraph, inputs: Sequence[Any], ring: Ring) -> list[Any]:
    vals = list(inputs)
    for op in graph.ops:
        args = [vals[i] for i in op.inputs]
        if op.kind == "customized":
            assert op.block is not None
            vals.extend(run_block(op.block, args, ring))
        else:
            vals.append(apply_op(op.kind, args, op.attr, ring))
    return [vals[o] for o in graph.outputs]


def _broadcast(ring: Any, shape: tuple[int, ...], a: Any) -> Any:
    return ring.xp.broadcast_to(a, shape)
