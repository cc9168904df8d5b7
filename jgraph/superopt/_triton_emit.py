"""Triton source for one graph-defined kernel (a block graph), for jax-triton.

Pallas-Triton cannot lower tiles whose sides are not powers of two, batched
block matmuls or concat. Like Mirage's own Triton transpiler, this emitter pads
every tile to power-of-two sides and masks (`jgraph.superopt._triton_pad`), so
any block schedule the search finds can run. The emitted ``@triton.jit``
function has the interpreter's semantics (`jgraph.superopt._interp`):

* one program per block of the block graph's grid (``tl.program_id`` per axis);
  pointer arithmetic from the ``imap``/``omap`` cuts over row-major contiguous
  tensors (strides from the shapes, int32 offsets);
* loads are masked (``other=0``) and widened to float32; loads and ops that do
  not depend on the for-loop iteration are hoisted before the loop;
* ``for i in range(frange)`` (a real loop) loads iteration ``i``'s chunk of each
  ``fmap`` dim, runs the loop body and folds it into float32 carries;
* after the loop the epilogue runs once and each output saver does one masked
  store, cast to the storage dtype (float32 for partial results,
  `jgraph.superopt._tiling.partial_outputs`);
* matmuls are ``tl.dot`` with float32 accumulation, on 16-bit operands when the
  storage is 16-bit and with ``input_precision="ieee"`` otherwise.

Padded lanes are replaced by the neutral element before every reduction along
a padded dim (`jgraph.superopt._triton_ops`), so they never reach real lanes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jgraph.core import ConfigError
from jgraph.superopt._ir import BlockGraph, Triple
from jgraph.superopt._ops import ACCUMULATORS
from jgraph.superopt._tiling import partial_outputs
from jgraph.superopt._triton_ops import (
    Tiles,
    acc_final,
    acc_init,
    acc_step,
    arange,
    op_lines,
    valid,
)
from jgraph.superopt._triton_pad import padded_tiles

__all__ = ["STORAGE_DTYPES", "TritonSource", "emit_block", "storage_name"]

# storage dtype -> the Triton dtype of 16-bit dot operands (None: float32 dots)
_DOT_DTYPE = {"float32": None, "float16": "tl.float16", "bfloat16": "tl.bfloat16"}
STORAGE_DTYPES = tuple(_DOT_DTYPE)
_MAX_OFFSET = 2**31 - 1  # int32 pointer offsets
_IND = "    "


@dataclasses.dataclass(frozen=True)
class TritonSource:
    """The Triton kernel of one block graph at concrete shapes.

    Attributes:
        source: Python source of one ``@triton.jit`` function (deterministic).
            Its parameters are the input pointers, then the output pointers.
        fn_name: the function's name.
        grid: the launch grid (the block graph's three grid axes).
        in_shapes: the input shapes it was emitted for (row-major, contiguous).
        out_shapes: one shape per output saver.
        out_dtypes: per output: the storage dtype, float32 for partial results.
        constexprs: ``tl.constexpr`` keyword arguments of the launch (sizes are
            literals in the source, so this is empty today).
    """

    source: str
    fn_name: str
    grid: tuple[int, ...]
    in_shapes: tuple[tuple[int, ...], ...]
    out_shapes: tuple[tuple[int, ...], ...]
    out_dtypes: tuple[str, ...]
    constexprs: dict[str, Any] = dataclasses.field(default_factory=dict)


def storage_name(storage: Any) -> str:
    """The dtype name of ``storage`` (a name, numpy or JAX dtype), checked.

    Raises:
        ConfigError: not one of `STORAGE_DTYPES`.
    """
    try:
        name = storage if isinstance(storage, str) else np.dtype(storage).name
    except TypeError:
        name = repr(storage)
    if name not in _DOT_DTYPE:
        raise ConfigError(
            "storage", storage, "is not a float storage dtype", f"use {STORAGE_DTYPES}"
        )
    return name


def _strides(shape: Sequence[int]) -> list[int]:
    out, s = [], 1
    for d in reversed(shape):
        out.append(s)
        s *= d
    return out[::-1]


def _offsets(shape: Sequence[int], pad: Sequence[int], grid: Triple, dmap: Triple) -> str:
    """Element offsets of a block's padded tile: program ids per ``dmap`` cut, then lanes."""
    terms = []
    for j, (d, stride) in enumerate(zip(shape, _strides(shape), strict=True)):
        lane = arange(len(shape), j, pad[j])
        base = [
            f"pid{a}" if d == grid[a] else f"pid{a} * {d // grid[a]}"
            for a in range(3)
            if grid[a] > 1 and dmap[a] == j
        ]
        e = f"({base[0]} + {lane})" if base else lane
        terms.append(e if stride == 1 else f"{e} * {stride}")
    return " + ".join(terms)


class _Writer:
    """The kernel body: prologue, hoisted part, loop, epilogue and stores."""

    def __init__(self, block: BlockGraph, tiles: Tiles, post: list[bool],
                 in_shapes: Sequence[tuple[int, ...]]) -> None:  # fmt: skip
        self.block, self.tiles, self.post, self.in_shapes = block, tiles, post, in_shapes
        self.n_in = len(block.inputs)
        varying = [b.fmap != -1 for b in block.inputs]
        for op in block.ops:
            varying.append(op.kind not in ACCUMULATORS and any(varying[i] for i in op.inputs))
        self.varying = varying
        self.used = {o.src for o in block.outputs}  # what the outputs depend on
        for j in reversed(range(len(block.ops))):
            if self.n_in + j in self.used:
                self.used.update(block.ops[j].inputs)

    def _load(self, k: int) -> str:
        b, tile = self.block.inputs[k], self.tiles.real[k]
        chunk = ""
        if b.fmap != -1:  # iteration i's chunk of the loop dim
            chunk = f" + i * {tile[b.fmap] * _strides(self.in_shapes[k])[b.fmap]}"
        m = valid(self.tiles, k, range(len(tile)))
        mask = f", mask={m}, other=0.0" if m else ""
        return f"t{k} = tl.load(in{k} + off{k}{chunk}{mask}).to(tl.float32)"

    def _op(self, t: int) -> list[str]:
        op = self.block.ops[t - self.n_in]
        names = [f"t{i}" for i in op.inputs]
        return op_lines(self.tiles, op.kind, f"t{t}", t, op.inputs, names, op.attr)

    def body(self, out_shapes: Sequence[tuple[int, ...]], out_dtypes: Sequence[str]) -> list[str]:
        block, tiles, n_in = self.block, self.tiles, self.n_in
        pids = [f"pid{a} = tl.program_id({a})" for a in range(3) if block.grid[a] > 1]
        pre: list[str] = []  # pointer offsets, loop-invariant loads and ops (hoisted), carries
        loop: list[str] = []
        post: list[str] = []
        for k, b in enumerate(block.inputs):
            if k in self.used:
                off = _offsets(self.in_shapes[k], tiles.pad[k], block.grid, b.imap)
                pre.append(f"off{k} = {off}")
                (loop if b.fmap != -1 else pre).append(self._load(k))
        for j, op in enumerate(block.ops):
            t = n_in + j
            if t not in self.used:
                continue
            if op.kind in ACCUMULATORS:
                names = [f"t{i}" for i in op.inputs]
                pre += acc_init(tiles, op.kind, f"acc{t}", t, op.inputs)
                loop += acc_step(tiles, op.kind, f"acc{t}", t, op.inputs, names, op.attr)
                n = tiles.real[op.inputs[0]][-1]
                post += acc_final(op.kind, f"t{t}", f"acc{t}", block.frange, n)
            elif self.post[t]:
                post += self._op(t)
            else:
                (loop if self.varying[t] else pre).extend(self._op(t))
        for o, (out, shape) in enumerate(zip(block.outputs, out_shapes, strict=True)):
            post.append(f"offo{o} = {_offsets(shape, tiles.pad[out.src], block.grid, out.omap)}")
            m = valid(tiles, out.src, range(len(shape)))
            cast = "" if out_dtypes[o] == "float32" else f".to(tl.{out_dtypes[o]})"
            post.append(f"tl.store(out{o} + offo{o}, t{out.src}{cast}{f', mask={m}' if m else ''})")
        masks = [f"{name} = {expr}" for expr, name in tiles.masks.items()]
        loop_lines = [f"for i in range({block.frange}):"] + [_IND + x for x in loop]
        return pids + masks + pre + loop_lines + post


def emit_block(
    block: BlockGraph,
    in_shapes: Sequence[tuple[int, ...]],
    *,
    storage: Any,
    name: str,
    mask_reductions: bool = True,
) -> TritonSource:
    """Writes the Triton kernel of one graph-defined kernel (module docs).

    Args:
        block: the block graph.
        in_shapes: its operands' shapes, in the block graph's input order.
        storage: the device-memory dtype (`STORAGE_DTYPES`; a name or a dtype).
        name: the kernel function's name (a Python identifier; shows in profiles).
        mask_reductions: replace padded lanes before reductions. Always True,
            except in the test that shows what the masking prevents.

    Returns:
        The `TritonSource`.

    Raises:
        ShapeError: the block graph does not fit ``in_shapes``.
        ConfigError: a bad ``storage`` or ``name``.
        NotImplementedError: concat, a matmul tile with several batch dims > 1,
            or a tensor too large for int32 offsets.

    Example:
        >>> from jgraph.superopt.programs import get_program, handwritten
        >>> prog = get_program("rmsnorm_linear", scale=16)
        >>> block = handwritten("rmsnorm_linear", prog).ops[0].block
        >>> src = emit_block(block, prog.shapes, storage="float16", name="k0")
        >>> src.grid, src.out_shapes, src.out_dtypes
        ((128, 1, 1), ((2, 384),), ('float16',))
        >>> "for i in range(32):" in src.source
        True
    """
    storage = storage_name(storage)
    if not name.isidentifier():
        raise ConfigError("name", name, "is not a Python identifier", "use letters, digits and _")
    shapes = tuple(tuple(int(d) for d in s) for s in in_shapes)
    tiles, post, out_shapes = block.infer(shapes)
    if any(op.kind == "concat" for op in block.ops):
        raise NotImplementedError("the Triton emitter has no concat yet")
    too_big = [s for s in (*shapes, *out_shapes) if math.prod(s) > _MAX_OFFSET]
    if too_big:
        raise NotImplementedError(f"tensors of {too_big} elements need int64 offsets")
    padded = padded_tiles(tiles, len(shapes), block.ops)
    tt = Tiles(tiles, padded, _DOT_DTYPE[storage], mask_reductions)
    partial = partial_outputs(block, shapes)
    out_dtypes = tuple("float32" if p else storage for p in partial)
    body = _Writer(block, tt, post, shapes).body(out_shapes, out_dtypes)
    params = [f"in{k}" for k in range(len(shapes))] + [f"out{o}" for o in range(len(out_shapes))]
    head = [
        f"# jgraph μGraph kernel: grid {block.grid}, frange {block.frange}, storage {storage}",
        f"# tiles {tiles[: len(shapes)]} padded to {padded[: len(shapes)]}",
        "@triton.jit",
        f"def {name}({', '.join(params)}):",
    ]
    return TritonSource(
        source="\n".join(head + [_IND + x for x in body]) + "\n",
        fn_name=name,
        grid=tuple(block.grid),
        in_shapes=shapes,
        out_shapes=tuple(tuple(s) for s in out_shapes),
        out_dtypes=out_dtypes,
    )
