"""Fusion moves: whole-region graph-defined kernels built from the reference's own ops.

The enumerating search (`jgraph.superopt._kernel_search`) builds block graphs op by
op and reaches fused kernels of a few ops (Mirage's benchmarks). Captured layer code
is longer: a LayerNorm is 10-14 primitive ops, attention 8 with two matmuls. These
moves construct whole-region kernels directly, from the dataflow of the reference:

* **one pass per row block** (``frange`` 1): every reference op becomes a block op
  and each output is saved; the grid may split only *parallel* dimension classes
  (never one a reduction or contraction reads), so every block sees whole rows;
* **a for-loop over a reduced class** ``c`` (the matmul contraction or a reduced
  row): ops reading ``c`` run per iteration, the op that removes ``c`` (a matmul
  contraction, ``reduce_sum``) is followed by ``accum_sum``, and everything after runs
  after the loop. A loop-invariant tensor used after the loop (a bias, an epsilon)
  is carried over as ``accum_sum(x · 1/F)`` (x in real arithmetic; a few float32 ulps
  when accumulated, which the float screen checks like any other rounding).
  A ``reduce_max`` over ``c`` whose exponentials are only summed or contracted
  becomes the online-softmax accumulator (see `_looped`);
* **rewrites that enable the loop** (`jgraph.superopt._rewrite`): per-row factors
  move past the matmul that contracts the row (``(x·r)@W = (x@W)·r``), so RMSNorm +
  Linear can loop over the hidden dimension.

Schedules (grid sizes, maps, loop range) come from `jgraph.superopt._tiling.schedules`,
as for the enumerated structures; every candidate is verified by the same `Verifier`
and ranked by the same cost model, so a move can only add verified candidates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

from jgraph.superopt._ir import BlockGraph, KernelGraph, KernelOp, Op, make_attrs
from jgraph.superopt._ops import BINARY, BLOCK_OPS, UNARY
from jgraph.superopt._tiling import _UF, schedules

__all__ = ["FusionMove", "dim_classes", "fusion_moves"]

# The placeholder factor of a carried loop invariant; replaced by 1/F once F is known.
_CARRY = "carry"


@dataclasses.dataclass(frozen=True)
class FusionMove:
    """One fused-kernel structure: block ops, saved sinks, the loop class and input classes."""

    name: str
    ops: tuple[Op, ...]
    sinks: tuple[int, ...]
    loop: int | None  # the loop's dimension class (None: frange 1)
    in_classes: tuple[tuple[int, ...], ...]  # per block input: each dim's class (-1: size 1)
    reduced: frozenset[int]  # classes the grid may not split


def dim_classes(
    in_shapes: Sequence[tuple[int, ...]], ops: Sequence[Op]
) -> tuple[list[list[int]], set[int]]:
    """Dimension classes of every tensor (``-1`` for a size-1 dim) and the reduced classes.

    Two dims are in one class when an op carries one to the other (element-wise
    operands of equal size, matmul rows/columns/batch, the kept dims of a reduction)
    or contracts them together (matmul ``k``). A class is *reduced* when a
    reduction, a contraction or a row norm reads it: splitting it across blocks
    would give partial results.
    """
    from jgraph.superopt._ops import op_shape

    shapes = [tuple(s) for s in in_shapes]
    uf = _UF()
    reduced: list[tuple[int, int]] = []
    for op in ops:
        ins = [shapes[i] for i in op.inputs]
        out = op_shape(op.kind, ins, op.attr)
        t = len(shapes)
        shapes.append(out)
        if op.kind in UNARY or op.kind in BINARY:
            for i, s in zip(op.inputs, ins, strict=True):
                for j, d in enumerate(s):
                    if d == out[j]:
                        uf.union((i, j), (t, j))
        elif op.kind == "matmul":
            a, b = op.inputs
            r = len(out)
            for j in range(r - 2):
                uf.union((a, j), (t, j))
                uf.union((b, j), (t, j))
            uf.union((a, r - 2), (t, r - 2))
            uf.union((b, r - 1), (t, r - 1))
            uf.union((a, r - 1), (b, r - 2))
            reduced.append((a, r - 1))
        elif op.kind in ("reduce_sum", "reduce_max"):
            (x,) = op.inputs
            d = op.attr.get("dim", len(out) - 1) % len(out)
            for j in range(len(out)):
                if j != d:
                    uf.union((x, j), (t, j))
            reduced.append((x, d))
        elif op.kind == "rms_norm":
            (x,) = op.inputs
            for j in range(len(out)):
                uf.union((x, j), (t, j))
            reduced.append((x, len(out) - 1))
        elif op.kind == "concat":
            d = op.attr.get("dim", len(out) - 1) % len(out)
            for i in op.inputs:
                for j in range(len(out)):
                    if j != d:
                        uf.union((i, j), (t, j))
        else:
            raise ValueError(f"no fusion rule for {op.kind}")
    roots: dict[Any, int] = {}
    classes = []
    for t, s in enumerate(shapes):
        row = []
        for j, d in enumerate(s):
            row.append(-1 if d == 1 else roots.setdefault(uf.find((t, j)), len(roots)))
        classes.append(row)
    red = {roots[uf.find(r)] for r in reduced if uf.find(r) in roots}
    return classes, red


def _blockable(ref: KernelGraph) -> bool:
    return bool(ref.ops) and all(
        op.block is None and op.kind in BLOCK_OPS and op.kind != "concat" for op in ref.ops
    )


def _row_pass(
    n_in: int, ops: Sequence[Op], outputs: Sequence[int]
) -> tuple[tuple[Op, ...], tuple[int, ...]]:
    """Every op in the loop body, then ``accum_sum`` (frange 1: a copy) per output."""
    body = list(ops)
    sinks = []
    for o in outputs:
        body.append(Op("accum_sum", (o,)))
        sinks.append(n_in + len(body) - 1)
    return tuple(body), tuple(sinks)


def _looped(
    n_in: int, ops: Sequence[Op], outputs: Sequence[int], classes: list[list[int]], c: int
) -> tuple[tuple[Op, ...], tuple[int, ...]] | None:
    """The loop-over-class-``c`` structure of ``ops`` (None: not expressible this way).

    Phases of the reference's tensors: ``loop`` (per iteration; carries ``c`` or
    derives from a tensor that does), ``inv`` (loop-invariant: only inputs without
    ``c``), ``post`` (after an accumulator), and for the online softmax ``max`` (an
    iteration's row max over ``c``), ``shift`` (``x - max``) and ``rel`` (a tensor
    relative to the iteration's max, linear in ``exp(x - max)``). A reduction or
    contraction over ``c`` of a ``loop`` tensor is accumulated with ``accum_sum``, of
    a ``rel`` tensor with ``accum_rescale`` by the iteration's max (so every
    iteration is rescaled to the running max, Flash-attention style). Whether the
    unknown common factor cancels after the loop is the verifier's question.
    """
    body: list[Op] = []
    new_id: dict[int, int] = {k: k for k in range(n_in)}
    phase: dict[int, str] = {k: ("loop" if c in classes[k] else "inv") for k in range(n_in)}
    carried: dict[int, int] = {}
    max_of: dict[int, int] = {}  # shift/rel tensor -> the (new) id of its iteration max

    def emit(op: Op) -> int:
        body.append(op)
        return n_in + len(body) - 1

    def post_of(t: int) -> int | None:
        if phase[t] == "post":
            return new_id[t]
        if phase[t] == "inv":  # carried over: accum_sum(t / F) = t
            if t not in carried:
                scaled = emit(Op("mul_scalar", (new_id[t],), make_attrs({_CARRY: 1})))
                carried[t] = emit(Op("accum_sum", (scaled,)))
            return carried[t]
        return None

    for k, op in enumerate(ops):
        t = n_in + k
        ph = [phase[i] for i in op.inputs]
        ins = tuple(new_id[i] for i in op.inputs)
        has_c = c in classes[t]
        closing = op.kind in ("matmul", "reduce_sum") and not has_c
        kinds = set(ph)
        if kinds <= {"inv"}:
            new_id[t], phase[t] = emit(Op(op.kind, ins, op.attrs)), "inv"
        elif "post" in kinds:
            if kinds - {"post", "inv"}:
                return None  # a per-iteration tensor after the loop: needs whole rows
            post = [post_of(i) for i in op.inputs]
            new_id[t] = emit(Op(op.kind, tuple(p for p in post if p is not None), op.attrs))
            phase[t] = "post"
        elif op.kind == "reduce_max" and kinds == {"loop"} and not has_c:
            new_id[t], phase[t] = emit(Op(op.kind, ins, op.attrs)), "max"
        elif op.kind == "sub" and ph == ["loop", "max"] and has_c:
            new_id[t], phase[t] = emit(Op(op.kind, ins, op.attrs)), "shift"
            max_of[t] = new_id[op.inputs[1]]
        elif op.kind == "exp" and ph == ["shift"]:
            new_id[t], phase[t] = emit(Op(op.kind, ins, op.attrs)), "rel"
            max_of[t] = max_of[op.inputs[0]]
        elif "rel" in kinds:
            rels = {max_of[i] for i, p in zip(op.inputs, ph, strict=True) if p == "rel"}
            linear = op.kind in ("mul", "matmul", "reduce_sum", "mul_scalar") or (
                op.kind in ("div",) and ph[1] != "rel"
            )
            if kinds - {"rel", "loop", "inv"} or len(rels) != 1 or not linear:
                return None
            if op.kind == "mul" and ph.count("rel") > 1:
                return None  # exp(x-m)^2 is relative to 2m
            (m,) = rels
            part = emit(Op(op.kind, ins, op.attrs))
            if closing:
                new_id[t], phase[t] = emit(Op("accum_rescale", (part, m))), "post"
            elif has_c:
                new_id[t], phase[t] = part, "rel"
                max_of[t] = m
            else:
                return None
        elif kinds - {"loop", "inv"}:
            return None  # a max or a shift used any other way
        elif closing:
            part = emit(Op(op.kind, ins, op.attrs))
            new_id[t], phase[t] = emit(Op("accum_sum", (part,))), "post"
        elif has_c:
            new_id[t], phase[t] = emit(Op(op.kind, ins, op.attrs)), "loop"
        else:
            return None
    sinks = []
    for o in outputs:
        p = post_of(o)
        if p is None:
            return None
        sinks.append(p)
    if len(set(sinks)) != len(sinks):
        return None
    return tuple(body), tuple(sinks)


def fusion_moves(ref: KernelGraph) -> list[FusionMove]:
    """The fused-kernel structures of ``ref`` (empty when an op has no block form).

    Example:
        >>> from jgraph.superopt._builder import new_kernel_graph
        >>> g = new_kernel_graph()
        >>> x = g.new_input((8, 32))
        >>> e = g.exp(x)
        >>> g.mark_output(g.div(e, g.reduction(e, 1)))
        >>> [m.name for m in fusion_moves(g.graph)]
        ['row_pass']
    """
    from jgraph.superopt._rewrite import cse, hoist_row_factors

    if not _blockable(ref):
        return []
    n_in = len(ref.inputs)
    in_shapes = [tuple(s.shape) for s in ref.inputs]
    ops, outs = cse(n_in, [Op(op.kind, op.inputs, op.attrs) for op in ref.ops], ref.outputs)
    classes, reduced = dim_classes(in_shapes, ops)
    body, sinks = _row_pass(n_in, ops, outs)
    in_cls = tuple(tuple(classes[k]) for k in range(n_in))
    out = [FusionMove("row_pass", body, sinks, None, in_cls, frozenset(reduced))]
    seen = {(body, sinks)}
    variants = [("loop", ops, outs, classes, reduced)]
    hoisted = hoist_row_factors(n_in, in_shapes, ops, outs)
    if hoisted is not None:
        variants.append(("hoisted_loop", *hoisted, *dim_classes(in_shapes, hoisted[0])))
    for variant, vops, vouts, vclasses, vreduced in variants:
        for c in sorted(vreduced):
            built = _looped(n_in, vops, vouts, vclasses, c)
            if built is None or built in seen:
                continue
            seen.add(built)
            v_in = tuple(tuple(vclasses[k]) for k in range(n_in))
            out.append(FusionMove(variant, built[0], built[1], c, v_in, frozenset(vreduced)))
    return out


def fused_graphs(
    ref: KernelGraph, *, smem_budget: int, sizes_per_mapping: int, maps: Any
) -> Iterator[tuple[str, KernelGraph]]:
    """Single-kernel candidates of ``ref``: each `fusion_moves` structure, scheduled."""
    n_in = len(ref.inputs)
    in_shapes = [tuple(s.shape) for s in ref.inputs]
    for move in fusion_moves(ref):
        loop_dim = None
        if move.loop is not None:
            loop_dim = next(
                ((k, cls.index(move.loop)) for k, cls in enumerate(move.in_classes) if move.loop in cls),
                None,
            )  # fmt: skip
            if loop_dim is None:
                continue

        def split_ok(k: int, j: int, move: FusionMove = move) -> bool:
            return move.in_classes[k][j] not in move.reduced

        for block in schedules(
            in_shapes, move.ops, move.sinks, smem_budget=smem_budget,
            sizes_per_mapping=sizes_per_mapping, maps=maps, split_ok=split_ok, loop_dim=loop_dim, small_tiles=True,
        ):  # fmt: skip
            if not _fits_move(block, move):
                continue
            yield (
                move.name,
                KernelGraph(
                    ref.inputs,
                    (KernelOp("customized", tuple(range(n_in)), (), _fill_carry(block)),),
                    tuple(n_in + k for k in range(len(move.sinks))),
                ),
            )


def _fits_move(block: BlockGraph, move: FusionMove) -> bool:
    """The schedule splits only parallel classes over the grid and loops over ``move.loop``."""
    if (move.loop is None) != (block.frange == 1):
        return False
    for cls, b in zip(move.in_classes, block.inputs, strict=True):
        for g, d in zip(block.grid, b.imap, strict=True):
            if g > 1 and d != -1 and cls[d] in move.reduced:
                return False
        if move.loop is not None and b.fmap != (cls.index(move.loop) if move.loop in cls else -1):
            return False
    return True


def _fill_carry(block: BlockGraph) -> BlockGraph:
    if not any(_CARRY in op.attr for op in block.ops):
        return block
    ops = tuple(
        Op(op.kind, op.inputs, make_attrs({"scalar": 1.0 / block.frange}))
        if _CARRY in op.attr
        else op
        for op in block.ops
    )
    return dataclasses.replace(block, ops=ops)
