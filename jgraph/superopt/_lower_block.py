"""One graph-defined kernel (a block graph) as one ``pl.pallas_call`` (spec §c.2, Option A).

* Grid: the block graph's grid axes of size > 1, in order (``pl.program_id``).
* Inputs: a `pl.BlockSpec` per operand whose block is the operand's per-block part
  (``imap`` cuts; a replicated axis is absent from the index map, so every program
  along it reads the same block). The for-loop dim stays whole in the block: the
  kernel runs ``lax.fori_loop`` over the ``frange`` iterations and loads iteration
  ``i``'s chunk with ``pl.ds(i * chunk, chunk)``, the pattern of JAX's Pallas GPU
  attention. Index maps return block indices.
* Body: loads are widened to float32; ops that read only loop-invariant tiles are
  hoisted before the loop; the loop body computes the rest and folds it into
  float32 carries (one per accumulator, two for the online-softmax rescale);
  after the loop the epilogue runs once and each output saver does one store,
  cast to the storage dtype (float32 for partial results, as the interpreter).
  Element-wise chains are plain jnp ops in the body, so Triton/Mosaic fuse them in
  registers (Mirage's thread-level fusion).
* Outputs: a `pl.BlockSpec` per saver from ``omap``, disjoint by construction.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jgraph.superopt import _lower_ops as ops
from jgraph.superopt._ir import BlockGraph, Triple
from jgraph.superopt._ops import ACCUMULATORS
from jgraph.superopt._tiling import partial_outputs

__all__ = ["block_call"]


def _spec(shape: Sequence[int], grid: Triple, axes: tuple[int, ...], dmap: Triple) -> Any:
    """The BlockSpec of a tensor cut along ``dmap`` (grid axis -> dim) over the active ``axes``."""
    block = list(shape)
    owner: dict[int, int] = {}  # data dim -> position of its grid axis in the Pallas grid
    for pos, a in enumerate(axes):
        d = dmap[a]
        if d != -1:
            block[d] //= grid[a]
            owner[d] = pos

    def index_map(*pids: Any) -> tuple[Any, ...]:
        return tuple(pids[owner[j]] if j in owner else 0 for j in range(len(shape)))

    return pl.BlockSpec(tuple(block), index_map)


class _Load:
    """An input tile, read (and widened) only when an op needs it."""

    def __init__(self, ref: Any, index: tuple[Any, ...]) -> None:
        self.ref, self.index = ref, index
        self._v: jax.Array | None = None

    def value(self) -> jax.Array:
        if self._v is None:
            self._v = self.ref[self.index].astype(jnp.float32)
        return self._v


def _kernel(*refs: Any, block: BlockGraph, tiles: list[tuple[int, ...]], post: list[bool],
            dot_dtype: Any) -> None:  # fmt: skip
    n_in = len(block.inputs)
    # With poisoned outputs the aliased poison operands sit between inputs and outputs.
    in_refs, out_refs = refs[:n_in], refs[len(refs) - len(block.outputs) :]
    frange = block.frange
    varying = [b.fmap != -1 for b in block.inputs]
    for op in block.ops:
        varying.append(op.kind not in ACCUMULATORS and any(varying[i] for i in op.inputs))

    def get(env: dict[int, Any], t: int) -> jax.Array:
        v = env[t]
        return v.value() if isinstance(v, _Load) else v

    # Loop-invariant tiles and the ops on them run once, before the loop.
    inv: dict[int, Any] = {}
    for k, b in enumerate(block.inputs):
        if b.fmap == -1:
            inv[k] = _Load(in_refs[k], tuple(slice(None) for _ in tiles[k]))
    for j, op in enumerate(block.ops):
        t = n_in + j
        if not post[t] and not varying[t] and op.kind not in ACCUMULATORS:
            inv[t] = ops.apply(op.kind, [get(inv, i) for i in op.inputs], op.attr, dot_dtype)
    accs = [(n_in + j, op) for j, op in enumerate(block.ops) if op.kind in ACCUMULATORS]

    def body(i: Any, carry: tuple[Any, ...]) -> tuple[Any, ...]:
        env = dict(inv)
        for k, b in enumerate(block.inputs):
            if b.fmap != -1:
                c = tiles[k][b.fmap]
                idx = tuple(
                    pl.ds(i * c, c) if d == b.fmap else slice(None) for d in range(len(tiles[k]))
                )
                env[k] = _Load(in_refs[k], idx)
        for j, op in enumerate(block.ops):
            t = n_in + j
            if varying[t]:
                env[t] = ops.apply(op.kind, [get(env, x) for x in op.inputs], op.attr, dot_dtype)
        return tuple(
            ops.accumulate_step(op.kind, c, [get(env, x) for x in op.inputs], op.attr)
            for (_, op), c in zip(accs, carry, strict=True)
        )

    init = tuple(ops.init_accumulator(op.kind, tiles[t], tiles[op.inputs[-1]]) for t, op in accs)
    # One iteration needs no loop (and keeps static, aligned slices).
    carry = body(0, init) if frange == 1 else jax.lax.fori_loop(0, frange, body, init)
    done: dict[int, jax.Array] = {}
    for (t, op), c in zip(accs, carry, strict=True):
        done[t] = ops.finalize(op.kind, c, frange, tiles[op.inputs[0]][-1])
    for j, op in enumerate(block.ops):
        t = n_in + j
        if post[t] and op.kind not in ACCUMULATORS:
            done[t] = ops.apply(op.kind, [done[x] for x in op.inputs], op.attr, dot_dtype)
    for o, ref in zip(block.outputs, out_refs, strict=True):
        ref[...] = done[o.src].astype(ref.dtype)


def block_call(
    block: BlockGraph,
    args: Sequence[jax.Array],
    *,
    storage: Any,
    compiler_params: Any,
    interpret: bool,
    name: str,
    poison: bool = False,
) -> list[jax.Array]:
    """Runs one graph-defined kernel as a ``pallas_call``; returns its output tensors.

    Args:
        block: the block graph (validated by its kernel graph).
        args: the kernel's operands, in the block graph's input order.
        storage: the device-memory dtype; 16-bit storage makes matmuls 16-bit with
            float32 accumulation.
        compiler_params: the backend's compiler params (None in interpret mode).
        interpret: run with the Pallas interpreter (CPU).
        name: the kernel's name (shows in profiles).
        poison: start every output as NaN (aliased input buffers), so a test sees
            any element no program writes.

    Returns:
        The outputs, in saver order: ``storage`` dtype, or float32 for partials.
    """
    in_shapes = [tuple(a.shape) for a in args]
    tiles, post, out_shapes = block.infer(in_shapes)
    partial = partial_outputs(block, in_shapes)
    axes = tuple(a for a in range(3) if block.grid[a] > 1)
    grid = tuple(block.grid[a] for a in axes)
    dot_dtype = ops.dot_dtype(storage)
    # The fmap dim's block holds every iteration's chunk: undo the loop cut.
    blocks_in = [
        _spec(s, block.grid, axes, b.imap) for s, b in zip(in_shapes, block.inputs, strict=True)
    ]
    out_specs = [
        _spec(s, block.grid, axes, o.omap) for s, o in zip(out_shapes, block.outputs, strict=True)
    ]
    out_types = [
        jax.ShapeDtypeStruct(s, jnp.float32 if p else storage)
        for s, p in zip(out_shapes, partial, strict=True)
    ]
    kernel = functools.partial(_kernel, block=block, tiles=tiles, post=post, dot_dtype=dot_dtype)
    extra, aliases = [], {}
    if poison:
        extra = [jnp.full(t.shape, jnp.nan, t.dtype) for t in out_types]
        aliases = {len(args) + k: k for k in range(len(extra))}
    call = pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=blocks_in + (out_specs if poison else []),
        out_specs=out_specs,
        out_shape=out_types,
        input_output_aliases=aliases,
        interpret=interpret,
        compiler_params=None if interpret else compiler_params,
        name=name,
    )
    return list(call(*args, *extra))
