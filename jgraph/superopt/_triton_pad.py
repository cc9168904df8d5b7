"""Power-of-two padded tile shapes for the Triton emitter (`jgraph.superopt._triton_emit`).

Triton blocks have power-of-two sides, and ``tl.dot`` needs at least 16 along
each of its operands' last two dims. Every tile dim is therefore padded to the
next power of two, and dims that reach a matmul to at least 16. Dims that must
stay equal (the operands of an element-wise op, a matmul's contraction, batch,
row and column dims, what an accumulator or a reduction keeps) are unified, so
one padded size serves them all. A dim of real size 1 stays 1: it broadcasts,
and padding it would break the broadcast (a matmul with such a dim is emitted
without ``tl.dot``).
"""

from __future__ import annotations

from collections.abc import Sequence

from jgraph.core.pallas import TRITON_MIN_DOT, next_pow2
from jgraph.superopt._ir import Op
from jgraph.superopt._ops import BINARY, UNARY
from jgraph.superopt._tiling import _UF

__all__ = ["padded_tiles"]

_SAME = (*UNARY, "rms_norm", "accum_sum", "accum_max")
_LD = ("accum_sum_ld", "accum_mean_ld", "accum_rms_ld", "accum_redtox_ld")


def padded_tiles(
    tiles: Sequence[tuple[int, ...]], n_inputs: int, ops: Sequence[Op]
) -> list[tuple[int, ...]]:
    """The padded shape of every block tensor (inputs first, then one per op).

    Args:
        tiles: the real tile shapes (`BlockGraph.infer`).
        n_inputs: how many of them are input iterators.
        ops: the block ops, in order.

    Returns:
        One padded shape per tile: equal rank, each dim 1 if its real size is 1,
        else the next power of two (at least `TRITON_MIN_DOT` for dims that reach a matmul).

    Example:
        >>> from jgraph.superopt._ir import Op
        >>> padded_tiles([(2, 8), (8, 3), (2, 3)], 2, [Op("matmul", (0, 1))])
        [(16, 16), (16, 16), (16, 16)]
    """
    uf = _UF()
    dot: set[tuple[int, int]] = set()

    def tie(a: int, ja: int, b: int, jb: int) -> None:
        if tiles[a][ja] == tiles[b][jb] != 1:
            uf.union((a, ja), (b, jb))

    for n, op in enumerate(ops):
        t, ins = n_inputs + n, op.inputs
        rank = len(tiles[t])
        if op.kind in _SAME or op.kind in BINARY or op.kind == "accum_rescale":
            for x in ins:
                for j in range(rank):
                    tie(x, j, t, j)
        elif op.kind == "matmul":
            a, b = ins
            for j in range(rank - 2):
                tie(a, j, t, j)
                tie(b, j, t, j)
            tie(a, rank - 2, t, rank - 2)
            tie(b, rank - 1, t, rank - 1)
            tie(a, rank - 1, b, rank - 2)
            dot.update({(a, rank - 2), (a, rank - 1), (b, rank - 2), (b, rank - 1)})
        elif op.kind in _LD:
            for j in range(rank - 1):
                tie(ins[0], j, t, j)
        elif op.kind in ("reduce_sum", "reduce_max"):
            d = op.attr.get("dim", rank - 1) % rank
            for j in range(rank):
                if j != d:
                    tie(ins[0], j, t, j)
        # concat: no ties (the emitter rejects it)
    floor = {uf.find(s) for s in dot}
    return [
        tuple(
            1 if d == 1 else max(next_pow2(d), TRITON_MIN_DOT if uf.find((t, j)) in floor else 1)
            for j, d in enumerate(tile)
        )
        for t, tile in enumerate(tiles)
    ]
