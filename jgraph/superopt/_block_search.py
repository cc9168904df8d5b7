"""The block level of the μGraph search: closed block-graph structures on given operands.

A depth-first enumeration of block ops in canonical order over degree-free
abstract expressions (tile sizes are not known yet), closing block graphs whose
sinks all follow a for-loop accumulator. The kernel-level searcher
(`jgraph.superopt._kernel_search`) owns a `BlockSearch`, hands it what it needs
as a `BlockContext`, sizes the structures it returns
(`jgraph.superopt._tiling.schedules`) and checks their exact expressions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

from jgraph.superopt._absexpr import Expr, block_expr, erase
from jgraph.superopt._canonical import canonical_key
from jgraph.superopt._config import SearchConfig
from jgraph.superopt._ir import Op, make_attrs
from jgraph.superopt._ops import ACCUMULATORS, BINARY, COMMUTATIVE
from jgraph.superopt._tiling import shape_consistent

__all__ = ["BlockContext", "BlockSearch", "Structure"]


class Structure(NamedTuple):
    """A closed block graph before sizing: its ops, its sinks and their expressions."""

    ops: tuple[Op, ...]
    sinks: tuple[int, ...]  # block-tensor ids, saved in this order
    exprs: tuple[Expr, ...]  # the sinks' degree-free abstract expressions


# eq=False: it holds callables and the shared counters; identity is the only sensible equality.
@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class BlockContext:
    """What the block level takes from the kernel-level search, in one place.

    Attributes:
        config: the bounds (``max_block_ops``, ``max_block_outputs``) and the
            live-operand rule.
        vocab: block-op kinds, tried in this order (part of the search's move order).
        dimx: the ``dimx`` values tried for ``accum_redtox_ld``.
        pruned: the search's pruning counters; the block level adds to them.
        tick: counts one search state; raises to stop the search at its budget.
        contains: whether a degree-free expression is a subexpression of a reference
            output modulo the axioms (counts its own misses in ``pruned``).
        equivalent: whether a degree-free expression is equivalent to some reference
            output (counts its own misses in ``pruned``).
    """

    config: SearchConfig
    vocab: tuple[str, ...]
    dimx: tuple[int, ...]
    pruned: dict[str, int]
    tick: Callable[[], None]
    contains: Callable[[Expr], bool]
    equivalent: Callable[[Expr], bool]


class BlockSearch:
    """Block-level enumeration for one search, with its structure cache."""

    def __init__(self, context: BlockContext) -> None:
        self.ctx = context
        self._cache: dict[Any, list[Structure]] = {}

    def structures(
        self, in_exprs: list[Expr], in_shapes: tuple[tuple[int, ...], ...], need: int | None
    ) -> list[Structure]:
        """Closed block-graph structures on these operands (cached).

        ``need`` (the last kernel op): exactly that many outputs, each (degree-free)
        equivalent to a reference output.
        """
        # Structures depend on the shapes only through which dims are equal (the
        # unification in `shape_consistent`) and the ranks, so the cache is keyed
        # by that pattern: kernels whose operands differ only in sizes (e.g. partials
        # concatenated over different split counts) share one block-level DFS.
        sizes: dict[int, int] = {}
        pattern = tuple(tuple(sizes.setdefault(d, len(sizes)) for d in s) for s in in_shapes)
        ekey = (tuple(erase(e) for e in in_exprs), pattern, need)
        if ekey not in self._cache:
            out: list[Structure] = []
            ex = [erase(e) for e in in_exprs]
            cfg = self.ctx.config
            max_out = cfg.max_block_outputs if need is None else need
            if max_out <= cfg.max_block_outputs:
                self._block(
                    ex, list(in_shapes), [], ex, [False] * len(ex), None, out, max_out,
                    need is not None,
                )  # fmt: skip
            if need is not None:
                out = [s for s in out if all(self.ctx.equivalent(e) for e in s.exprs)]
            self._cache[ekey] = out
        return self._cache[ekey]

    def _block(
        self,
        in_ex: list,
        in_shapes: list,
        ops: list[Op],
        ex: list,
        post: list[bool],
        last: Any,
        out: list[Structure],
        max_out: int,
        exact_out: bool,
    ) -> None:
        ctx = self.ctx
        ctx.tick()
        n_in = len(in_ex)
        consumed = {i for op in ops for i in op.inputs}
        sinks = [t for t in range(len(ex)) if t not in consumed]
        if (
            ops
            and all(t >= n_in and post[t] for t in sinks)
            and (len(sinks) == max_out if exact_out else len(sinks) <= max_out)
        ):
            out.append(Structure(tuple(ops), tuple(sinks), tuple(ex[t] for t in sinks)))
        room = ctx.config.max_block_ops - n_in - len(ops) - 1
        # each further op lowers the sink count by at most one (it reads <= 2 tensors)
        if room <= 0 or len(sinks) - room > max_out:
            return
        n = len(ex)
        sink_set = set(sinks)
        floor = last[0][0] if last is not None else -1  # the largest input of the last op
        live_only = ctx.config.require_live_operand
        # operand tuples whose key can exceed the last op's (canonical order) ...
        unary = [(i,) for i in range(max(floor, 0), n)]
        binary = [(i, j) for i in range(n) for j in range(n) if max(i, j) >= floor]
        ctx.pruned["canonical"] += (n - len(unary)) + (n * n - len(binary))
        if live_only:  # ... that read a tensor nothing has read yet (jgraph heuristic)
            n_u, n_b = len(unary), len(binary)
            unary = [t for t in unary if t[0] in sink_set]
            binary = [t for t in binary if t[0] in sink_set or t[1] in sink_set]
            ctx.pruned["live_operand"] += (n_u - len(unary)) + (n_b - len(binary))
        skipped = 0
        for kind in ctx.vocab:
            two = kind in BINARY or kind in ("matmul", "accum_rescale")
            is_acc = kind in ACCUMULATORS
            operands: list[tuple[int, ...]] = list(binary if two else unary)
            for ins in operands:
                if kind in COMMUTATIVE and ins[0] > ins[1]:
                    continue
                if kind == "accum_redtox_ld" and ins[0] >= n_in:
                    continue  # folds concatenated partials, which arrive as kernel inputs
                if is_acc:
                    if any(post[i] for i in ins):
                        continue
                    phase = True
                else:
                    phase = post[ins[0]]
                    if two and post[ins[1]] != phase:
                        continue
                for attrs in self._battrs(kind, len(in_shapes[0])):
                    key = canonical_key(ins, kind, attrs)
                    if last is not None and key <= last:
                        skipped += 1
                        continue
                    e = self._bexpr(kind, [ex[i] for i in ins])
                    if (e, phase) in zip(ex, post, strict=True):
                        ctx.pruned["duplicate"] += 1
                        continue
                    if not ctx.contains(e):
                        continue
                    new_ops = [*ops, Op(kind, ins, attrs)]
                    if not shape_consistent(in_shapes, new_ops):
                        ctx.pruned["shape_or_memory"] += 1
                        continue
                    self._block(
                        in_ex, in_shapes, new_ops, [*ex, e], [*post, phase], key, out,
                        max_out, exact_out,
                    )  # fmt: skip
        ctx.pruned["canonical"] += skipped

    def _battrs(self, kind: str, rank: int) -> list[Any]:
        if kind == "accum_redtox_ld":
            return [make_attrs({"dimx": d}) for d in self.ctx.dimx]
        if kind in ("reduce_sum", "reduce_max"):
            return [make_attrs({"dim": d}) for d in range(rank)]
        return [()]

    @staticmethod
    def _bexpr(kind: str, ins: list[Expr]) -> Expr:
        if kind == "accum_sum":  # degree-free: identity (frange may be 1); see _absexpr
            return ins[0]
        return block_expr(kind, ins, [(1,)] * len(ins), {"dimx": 1}, 0, erased=True)
