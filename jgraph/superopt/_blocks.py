"""The block level of the μGraph search: closed block-graph structures on given operands.

A depth-first enumeration of block ops in canonical order over degree-free
abstract expressions (tile sizes are not known yet), closing block graphs whose
sinks all follow a for-loop accumulator. `BlockSearch` is mixed into the
kernel-level searcher (`jgraph.superopt._search`), which sizes the structures
(`jgraph.superopt._tiling.schedules`) and checks their exact expressions.
"""

from __future__ import annotations

from typing import Any

from jgraph.superopt._absexpr import Expr, block_expr, erase
from jgraph.superopt._canonical import canonical_key
from jgraph.superopt._config import SearchConfig
from jgraph.superopt._ir import Op, make_attrs
from jgraph.superopt._ops import ACCUMULATORS, BINARY, COMMUTATIVE
from jgraph.superopt._tiling import shape_consistent

__all__ = ["BlockSearch"]


class BlockSearch:
    """Block-level enumeration; the kernel-level searcher provides the attributes below."""

    cfg: SearchConfig
    pruned: dict[str, int]
    bvocab: list[str]
    dimx: list[int]
    _struct_cache: dict[Any, list[Any]]

    def _tick(self) -> None:
        raise NotImplementedError

    def _ok(self, e: Expr, erased: bool = False) -> bool:
        raise NotImplementedError

    def _final_ok(self, e: Expr, erased: bool = False) -> bool:
        raise NotImplementedError

    def _structures(
        self, in_exprs: list[Expr], in_shapes: tuple[tuple[int, ...], ...], need: int | None
    ) -> list[tuple[tuple[Op, ...], tuple[int, ...], tuple[Expr, ...]]]:
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
        if ekey not in self._struct_cache:
            out: list[tuple[tuple[Op, ...], tuple[int, ...], tuple[Expr, ...]]] = []
            ex = [erase(e) for e in in_exprs]
            max_out = self.cfg.max_block_outputs if need is None else need
            if max_out <= self.cfg.max_block_outputs:
                self._block(
                    ex, list(in_shapes), [], ex, [False] * len(ex), None, out, max_out,
                    need is not None,
                )  # fmt: skip
            if need is not None:
                out = [s for s in out if all(self._final_ok(e, erased=True) for e in s[2])]
            self._struct_cache[ekey] = out
        return self._struct_cache[ekey]

    def _block(
        self,
        in_ex: list,
        in_shapes: list,
        ops: list[Op],
        ex: list,
        post: list[bool],
        last: Any,
        out: list,
        max_out: int,
        exact_out: bool,
    ) -> None:
        self._tick()
        n_in = len(in_ex)
        consumed = {i for op in ops for i in op.inputs}
        sinks = [t for t in range(len(ex)) if t not in consumed]
        if (
            ops
            and all(t >= n_in and post[t] for t in sinks)
            and (len(sinks) == max_out if exact_out else len(sinks) <= max_out)
        ):
            out.append((tuple(ops), tuple(sinks), tuple(ex[t] for t in sinks)))
        room = self.cfg.max_block_ops - n_in - len(ops) - 1
        # each further op lowers the sink count by at most one (it reads <= 2 tensors)
        if room <= 0 or len(sinks) - room > max_out:
            return
        n = len(ex)
        sink_set = set(sinks)
        floor = last[0][0] if last is not None else -1  # the largest input of the last op
        live_only = self.cfg.require_live_operand
        # operand tuples whose key can exceed the last op's (canonical order) ...
        unary = [(i,) for i in range(max(floor, 0), n)]
        binary = [(i, j) for i in range(n) for j in range(n) if max(i, j) >= floor]
        self.pruned["canonical"] += (n - len(unary)) + (n * n - len(binary))
        if live_only:  # ... that read a tensor nothing has read yet (jgraph heuristic)
            n_u, n_b = len(unary), len(binary)
            unary = [t for t in unary if t[0] in sink_set]
            binary = [t for t in binary if t[0] in sink_set or t[1] in sink_set]
            self.pruned["live_operand"] += (n_u - len(unary)) + (n_b - len(binary))
        skipped = 0
        for kind in self.bvocab:
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
                        self.pruned["duplicate"] += 1
                        continue
                    if not self._ok(e, erased=True):
                        continue
                    new_ops = [*ops, Op(kind, ins, attrs)]
                    if not shape_consistent(in_shapes, new_ops):
                        self.pruned["shape_or_memory"] += 1
                        continue
                    self._block(
                        in_ex, in_shapes, new_ops, [*ex, e], [*post, phase], key, out,
                        max_out, exact_out,
                    )  # fmt: skip
        self.pruned["canonical"] += skipped

    def _battrs(self, kind: str, rank: int) -> list[Any]:
        if kind == "accum_redtox_ld":
            return [make_attrs({"dimx": d}) for d in self.dimx]
        if kind in ("reduce_sum", "reduce_max"):
            return [make_attrs({"dim": d}) for d in range(rank)]
        return [()]

    @staticmethod
    def _bexpr(kind: str, ins: list[Expr]) -> Expr:
        if kind == "accum_sum":  # degree-free: identity (frange may be 1); see _absexpr
            return ins[0]
        return block_expr(kind, ins, [(1,)] * len(ins), {"dimx": 1}, 0, erased=True)
