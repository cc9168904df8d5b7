"""Bounded depth-first μGraph search with abstract-expression pruning (spec §a.2).

This is the searcher behind `jgraph.superopt.search` (`jgraph.superopt._search`),
which adds the reference candidate, the ranking and the cache around `run_search`.

Kernel level: a state is a partial kernel graph. Each step adds a pre-defined op
or a graph-defined kernel, in canonical order (`canonical_key` must increase,
so each DAG is generated once), and keeps it only if every new tensor's
abstract expression is a subexpression of a reference output's modulo the
axioms (`Oracle`). When the sinks match the reference outputs in number and in
abstract expression, the candidate is checked by the `Verifier`; verified
candidates are recorded and never extended.

A graph-defined kernel is built structure first: its operands are enumerated
(subsets of the available tensors, never hard-coded), then a block-level DFS
(`jgraph.superopt._block_search`) over block ops in canonical order with degree-free
expressions (tile sizes are not known yet) closes block graphs whose sinks are
all after a for-loop accumulator, then `schedules` derives grids, maps and loop
ranges from the shapes, and the exact expressions (with sum degrees) are
checked again.

Bounds: kernel ops, graph-defined kernels, block ops (with iterators and
savers), block inputs/outputs; plus a time and a state budget. The op
vocabulary is the reference's own ops plus the ops whose expression head
occurs in the reference's expressions (any other op would be pruned by the
oracle anyway). Anytime: the best verified candidate so far is kept, and the
reference itself (all pre-defined ops: the plain XLA candidate) is always in
the result, so a search never returns nothing.

What keeps it fast (none of it changes which μGraphs are in the space):

* iterative deepening on the kernel count with exact lookahead: the last op
  must read every unread input and leave exactly as many sinks as the
  reference has outputs, each *equivalent* (not just a subexpression) to one of
  them, so the last kernel's block structures are filtered by that before any
  schedule is derived;
* block structures per (operand expressions, pattern of equal dims) and
  schedules per (shapes, structure) are cached, so deeper iterations reuse them;
* moves are generated lazily, by decreasing progress: a state's moves are
  grouped (one pre-defined op, or one block structure whose schedules are not
  derived yet) by the progress of their degree-free expressions, and a level's
  schedules are derived only when the search reaches it, so a deep first move
  (e.g. QKNorm's split-KV kernel with both norms fused) is descended into before
  every other structure's schedules exist. Progress is the number of distinct
  subexpressions the move newly computes (recomputing ``e`` in ``div(e, e)``
  earns nothing), then the new expressions' size; within a level, model cost
  breaks ties. Order only: every move is still explored;
* the verifier's first field test runs incrementally: kernel outputs are cached
  along the DFS path, so a candidate costs one kernel evaluation, and only
  those that pass it get the full `Verifier.check`.

Two jgraph heuristics (not in Mirage) shrink the space and can be switched off:
``SearchConfig.require_live_operand`` (every new op reads an unread tensor) and
``SearchConfig.sizes_per_mapping`` (top-k grid/loop sizes per map assignment;
0 keeps all). The benchmark's ablation measures both.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from jgraph.core import progress
from jgraph.superopt._absexpr import Expr, Oracle, block_expr, erase, graph_exprs, kernel_expr
from jgraph.superopt._block_search import BlockContext, BlockSearch, Structure
from jgraph.superopt._candidate import Candidate, SearchStats
from jgraph.superopt._canonical import HEAD_OF, canonical_key, expr_heads, expr_size
from jgraph.superopt._config import SearchConfig
from jgraph.superopt._cost import CostModel
from jgraph.superopt._interp import apply_op, run_block
from jgraph.superopt._ir import KernelGraph, KernelOp, Op, make_attrs
from jgraph.superopt._ops import BINARY, COMMUTATIVE, ShapeError, op_shape
from jgraph.superopt._ring import FieldZeroDivisionError, NonLaxError
from jgraph.superopt._tiling import schedules
from jgraph.superopt._verify import Verifier

__all__ = ["run_search"]

log = logging.getLogger(__name__)


class _StopSearchError(Exception):
    pass


def _subterms(e: Expr, out: set[Expr], skip: set[Expr] | None = None) -> None:
    """Adds the distinct subexpressions of ``e`` not in ``skip`` to ``out``."""
    if e in out or (skip is not None and e in skip):
        return
    out.add(e)
    for a in e[1:]:
        if isinstance(a, tuple):
            _subterms(a, out, skip)


def _subterm_set(exprs: Sequence[Expr]) -> set[Expr]:
    out: set[Expr] = set()
    for e in exprs:
        _subterms(e, out)
    return out


class _Searcher:
    """One search's state: the reference, the budgets, the counters and what was found.

    The block level is a `BlockSearch` it owns (``self.blocks``); everything that
    level reads from here is listed in its `BlockContext`.
    """

    def __init__(self, reference: KernelGraph, config: SearchConfig, verifier: Verifier) -> None:
        self.ref, self.cfg, self.verifier = reference, config, verifier
        self.n_in, self.n_out = len(reference.inputs), len(reference.outputs)
        exprs = graph_exprs(reference)
        self.targets = [exprs[o] for o in reference.outputs]
        self.pruning = config.pruning
        self.oracle = Oracle(self.targets)
        self.eoracle = Oracle([erase(t) for t in self.targets]) if config.pruning else None
        # The oracles that prune: None when pruning is off (everything passes).
        self._exact_pruner = self.oracle if config.pruning else None
        self._erased_pruner = self.eoracle
        heads: set[str] = set()
        for t in self.targets:
            expr_heads(t, heads)
        ref_kinds = {op.kind for op in reference.ops}
        elem = [k for k, h in HEAD_OF.items() if h in heads or k in ref_kinds]
        self.kvocab = [k for k in ("matmul", "rms_norm", "reduce_sum") if k in ref_kinds] + elem
        bvocab = list(elem)
        if {"sum", "mul"} <= heads:
            bvocab.insert(0, "matmul")
        if {"div", "rms"} <= heads:
            bvocab.append("rms_norm")
        bvocab.append("accum_sum")
        if "sum" in heads:
            bvocab += ["accum_sum_ld", "accum_redtox_ld"]
        if "rms" in heads or {"sqrt", "sum", "sq"} <= heads:  # rms(n, x) = sqrt(sum(n, sq(x)))
            bvocab.append("accum_rms_ld")
        if "max" in heads:
            bvocab += ["accum_max", "reduce_max"]
        self.cost_model = CostModel()
        # Candidates costing more than 1.5x the XLA candidate are not verified
        # (unless verify_all): they can never be the answer.
        self.best_us = 1.5 * self.cost_model(reference).estimated_us
        self.start = time.perf_counter()
        self.states = 0
        self.pruned = dict.fromkeys(
            (
                "canonical",
                "abstract_expression",
                "shape_or_memory",
                "duplicate",
                "cost_bound",
                "lookahead",
                "live_operand",
            ),
            0,
        )
        self.rejected: dict[str, int] = {}
        self.found: list[Candidate] = []
        self.seen: set[KernelGraph] = set()
        self.first_s: float | None = None
        self.depth = config.max_kernel_ops
        self._sched_cache: dict[Any, list[Any]] = {}
        self._fp_path: list[tuple[KernelOp, list[Any]]] = []
        self.blocks = BlockSearch(
            BlockContext(
                config=config,
                vocab=tuple(bvocab),
                dimx=tuple(sorted({reference.shapes[o][-1] for o in reference.outputs})),
                pruned=self.pruned,
                tick=self._tick,
                contains=functools.partial(self._contains, self._erased_pruner),
                equivalent=functools.partial(self._equivalent, self._erased_pruner),
            )
        )

    # -- budget -----------------------------------------------------------------------
    def _tick(self) -> None:
        self.states += 1
        if self.states > self.cfg.max_states or (
            time.perf_counter() - self.start > self.cfg.time_limit_s
        ):
            raise _StopSearchError

    # -- abstract-expression pruning --------------------------------------------------
    def _contains(self, oracle: Oracle | None, e: Expr) -> bool:
        """Whether ``e`` is a subexpression of a reference output (``oracle`` None: pruning off)."""
        if oracle is None:
            return True
        hit = oracle.contains(e)
        if not hit:
            self.pruned["abstract_expression"] += 1
        return hit

    def _equivalent(self, oracle: Oracle | None, e: Expr) -> bool:
        """Whether ``e`` is equivalent to some reference output (the last op's outputs must be)."""
        if oracle is None:
            return True
        hit = any(oracle.equivalent(e, k) for k in range(self.n_out))
        if not hit:
            self.pruned["abstract_expression"] += 1
        return hit

    def _ok(self, e: Expr) -> bool:
        return self._contains(self._exact_pruner, e)

    def _final_ok(self, e: Expr) -> bool:
        return self._equivalent(self._exact_pruner, e)

    # -- kernel level -----------------------------------------------------------------
    def run(self, show_progress: bool | None) -> bool:
        shapes = [s.shape for s in self.ref.inputs]
        exprs: list[Expr] = [("var", i) for i in range(self.n_in)]
        try:
            # Iterative deepening on the kernel count: one-kernel candidates are
            # verified first, and their cost then bounds every deeper prefix. The
            # depth also tells each level how many ops may follow (lookahead).
            for depth in range(1, self.cfg.max_kernel_ops + 1):
                self.depth = depth
                seen, levels = self._levels([], shapes, exprs, None, 0)
                for level in progress(
                    levels,
                    description=f"μGraph search (<= {depth} kernels)",
                    total=len(levels),
                    enabled=show_progress,
                ):
                    for move in self._level_moves([], seen, level):
                        self._descend([], shapes, exprs, 0, move)
        except _StopSearchError:
            return False
        return True

    def _descend(
        self, ops: list[KernelOp], shapes: list, exprs: list, n_custom: int, move: Any
    ) -> None:
        key, op, new_shapes, new_exprs = move
        self._kernel(
            [*ops, op], shapes + new_shapes, exprs + new_exprs, key,
            n_custom + (op.kind == "customized"),
        )  # fmt: skip

    def _kernel(
        self, ops: list[KernelOp], shapes: list, exprs: list, last: Any, n_custom: int
    ) -> None:
        self._tick()
        consumed = {i for op in ops for i in op.inputs}
        sinks = [t for t in range(self.n_in, len(shapes)) if t not in consumed]
        if len(ops) == self.depth:
            if len(sinks) == self.n_out and all(i in consumed for i in range(self.n_in)):
                self._try(ops, sinks, exprs)
            return
        if sinks and not self.cfg.verify_all:
            partial = KernelGraph(self.ref.inputs, tuple(ops), tuple(sinks))
            if self.cost_model(partial).estimated_us >= self.best_us:
                self.pruned["cost_bound"] += 1
                return
        seen, levels = self._levels(ops, shapes, exprs, last, n_custom)
        for level in levels:
            for move in self._level_moves(ops, seen, level):
                self._descend(ops, shapes, exprs, n_custom, move)

    def _levels(
        self, ops: list[KernelOp], shapes: list, exprs: list, last: Any, n_custom: int
    ) -> tuple[set[Expr], list[list[Callable[[], list[Any]]]]]:
        """The moves from a state as groups, by decreasing progress (generated lazily),
        with the state's subexpressions (what progress is measured against).

        A group is one pre-defined op, or one block-graph structure of a
        graph-defined kernel whose schedules (the expensive part: grids, maps,
        loop ranges and exact expressions) are derived only when its level is
        reached. Progress is known before that from the degree-free expressions.
        """
        seen = _subterm_set(exprs)
        groups = [
            (self._progress(move[3], seen), lambda m=move: [m])
            for move in self._predefined_moves(ops, shapes, exprs, last)
        ]
        if n_custom < self.cfg.max_customized:
            erased_seen = _subterm_set([erase(e) for e in exprs])
            rest = self.depth - len(ops) - 1
            for ins, key, struct, in_shapes in self._custom_structures(ops, shapes, exprs, last):
                groups.append(
                    (
                        self._progress(struct.exprs, erased_seen),
                        lambda a=(ins, key, struct, in_shapes): list(
                            self._scheduled(exprs, *a, rest=rest)
                        ),
                    )
                )
        groups.sort(key=lambda g: (-g[0][0], -g[0][1]))  # stable: canonical order in a level
        return seen, [[g for _, g in lv] for _, lv in itertools.groupby(groups, lambda g: g[0])]

    @staticmethod
    def _progress(new: Sequence[Expr], seen: set[Expr]) -> tuple[int, int]:
        """How much of the program a move newly computes, as a sort key (larger first).

        First the distinct subexpressions of the new tensors that no available
        tensor has (``seen``: the available tensors' subexpressions), so
        recomputing a subterm earns nothing (e.g. ``div(e, e)``); ties are
        broken by the new expressions' total size.
        """
        fresh: set[Expr] = set()
        for e in new:
            _subterms(e, fresh, seen)
        return len(fresh), sum(expr_size(e) for e in new)

    def _level_moves(
        self, ops: list[KernelOp], seen: set[Expr], level: list[Callable[[], list[Any]]]
    ) -> list[Any]:
        """One progress level's moves: most (exact) progress first, then cheapest.

        Cost is the model cost of the prefix with the move. Only the order
        changes: every move is still explored.
        """
        moves = [m for group in level for m in group()]

        def key(move: Any) -> tuple[int, int, float]:
            new_ops = (*ops, move[1])
            n = len(self.ref.inputs) + sum(o.n_outputs for o in new_ops)
            g = KernelGraph(self.ref.inputs, new_ops, tuple(range(n - move[1].n_outputs, n)))
            fresh, size = self._progress(move[3], seen)
            try:
                return -fresh, -size, self.cost_model(g).estimated_us
            except ShapeError:
                return -fresh, -size, float("inf")

        return sorted(moves, key=key)

    def _try(self, ops: list[KernelOp], sinks: list[int], exprs: list) -> bool:
        order = None
        for perm in itertools.permutations(sinks):
            if not self.pruning or all(
                self.oracle.equivalent(exprs[s], k) for k, s in enumerate(perm)
            ):
                order = perm
                break
        if order is None:
            self.pruned["abstract_expression"] += 1
            return False
        graph = KernelGraph(self.ref.inputs, tuple(ops), tuple(order))
        if graph in self.seen:
            self.pruned["duplicate"] += 1
            return False
        self.seen.add(graph)
        try:
            cost = self.cost_model(graph)
        except ShapeError:
            self.pruned["shape_or_memory"] += 1
            return False
        if not self.cfg.verify_all and cost.estimated_us >= self.best_us:
            self.pruned["cost_bound"] += 1
            return False
        left = self.cfg.time_limit_s - (time.perf_counter() - self.start)
        if left < self.verifier.setup_seconds:  # a check would overrun the time limit
            raise _StopSearchError
        if self._quick_reject(ops, sinks):
            self.rejected["field"] = self.rejected.get("field", 0) + 1
            return False
        verdict = self.verifier.check(graph)
        if not verdict.ok:
            self.rejected[verdict.stage] = self.rejected.get(verdict.stage, 0) + 1
            return False
        if verdict.permutation != tuple(range(self.n_out)):
            inv = [0] * self.n_out
            for i, p in enumerate(verdict.permutation):
                inv[i] = graph.outputs[p]
            graph = dataclasses.replace(graph, outputs=tuple(inv))
        found_s = time.perf_counter() - self.start
        self.found.append(
            Candidate(
                graph=graph, cost=cost, verdict=verdict, found_s=found_s, found_states=self.states
            )
        )
        self.best_us = min(self.best_us, cost.estimated_us)
        if self.first_s is None:
            self.first_s = time.perf_counter() - self.start
        log.info("verified candidate %d: %.2f us (model)", len(self.found), cost.estimated_us)
        return True

    def _quick_reject(self, ops: list[KernelOp], sinks: list[int]) -> bool:
        """The verifier's first field test, with kernel outputs cached along the DFS path.

        Exactly the first test of `Verifier.check` (same ring, inputs and
        schedule semantics), but a prefix shared by many candidates is evaluated
        once. True means the candidate fails it (``check`` would reject it too).
        """
        test = self.verifier.first_test()
        if test is None:
            return False
        ring, ins, ref = test
        path = self._fp_path
        k = 0
        while k < len(path) and k < len(ops) and path[k][0] is ops[k]:
            k += 1
        del path[k:]
        vals = list(ins)
        for _, new in path:
            vals.extend(new)
        try:
            for op in ops[k:]:
                args = [vals[i] for i in op.inputs]
                if op.block is not None:
                    new = run_block(op.block, args, ring)
                else:
                    new = [apply_op(op.kind, args, op.attr, ring)]
                path.append((op, new))
                vals.extend(new)
        except NonLaxError:
            return True
        except FieldZeroDivisionError:
            return False  # improbable; let the full check resample
        return not any(
            all(ring.equal(vals[p[i]], r) for i, r in enumerate(ref))
            for p in itertools.permutations(sinks)
        )

    def _lookahead(self, ops: list[KernelOp], n: int) -> tuple[set[int], set[int], int, Any]:
        """Unread inputs, sinks, ops left after this one, and the exact lookahead test.

        After this op, ``rest`` ops remain; each reads at most ``cap`` tensors and
        leaves at least one sink, so the inputs nobody read yet must fit in
        ``rest * cap`` reads and the sinks must be reducible to the reference's
        output count. The last op must read every unread input and leave exactly
        that many sinks, each of which must be *equivalent* (not just a
        subexpression) to a reference output modulo the axioms.
        """
        consumed = {i for op in ops for i in op.inputs}
        live = {t for t in range(n) if t not in consumed}  # sinks and unread inputs
        unread = {t for t in live if t < self.n_in}
        sinks = live - unread
        rest = self.depth - len(ops) - 1
        cap = max(2, self.cfg.max_block_inputs if self.cfg.max_customized else 2)

        def fits(ins: Sequence[int], n_new: int) -> bool:
            left_unread = len(unread.difference(ins))
            left_sinks = len(sinks.difference(ins)) + n_new
            if rest == 0:
                return left_unread == 0 and left_sinks == self.n_out
            return left_unread <= rest * cap and left_sinks - rest * (cap - 1) <= self.n_out

        return unread, sinks, rest, fits

    def _predefined_moves(
        self, ops: list[KernelOp], shapes: list, exprs: list, last: Any
    ) -> Iterator[Any]:
        """Pre-defined kernel ops from a state, in canonical order, pruned."""
        n = len(shapes)
        unread, sinks, rest, fits = self._lookahead(ops, n)
        live = unread | sinks
        for kind in self.kvocab:
            arity = 2 if kind in BINARY or kind == "matmul" else 1
            for ins in itertools.product(range(n), repeat=arity):
                if kind in COMMUTATIVE and ins[0] > ins[1]:
                    continue
                if self.cfg.require_live_operand and not live.intersection(ins):
                    self.pruned["live_operand"] += 1
                    continue
                if not fits(ins, 1):
                    self.pruned["lookahead"] += 1
                    continue
                dims = range(len(shapes[ins[0]])) if kind == "reduce_sum" else [None]
                for d in dims:
                    attrs = make_attrs({"dim": d} if d is not None else None)
                    key = canonical_key(ins, kind, attrs)
                    if last is not None and key <= last:
                        self.pruned["canonical"] += 1
                        continue
                    try:
                        shape = op_shape(kind, [shapes[i] for i in ins], dict(attrs))
                    except ShapeError:
                        self.pruned["shape_or_memory"] += 1
                        continue
                    e = kernel_expr(
                        kind, [exprs[i] for i in ins], [shapes[i] for i in ins], dict(attrs)
                    )
                    if e in exprs:
                        self.pruned["duplicate"] += 1
                        continue
                    if self._ok(e) and (rest or self._final_ok(e)):
                        yield key, KernelOp(kind, tuple(ins), attrs), [shape], [e]

    def _custom_structures(
        self, ops: list[KernelOp], shapes: list, exprs: list, last: Any
    ) -> Iterator[tuple[tuple[int, ...], Any, Structure, tuple[tuple[int, ...], ...]]]:
        """Graph-defined kernels from a state: operand subsets and block structures, unsized."""
        n = len(shapes)
        unread, sinks, rest, fits = self._lookahead(ops, n)
        live = unread | sinks
        for size in range(1, min(self.cfg.max_block_inputs, n) + 1):
            for ins in itertools.combinations(range(n), size):
                if self.cfg.require_live_operand and not live.intersection(ins):
                    self.pruned["live_operand"] += 1
                    continue
                key = canonical_key(ins, "customized")
                if last is not None and key <= last:
                    self.pruned["canonical"] += 1
                    continue
                if rest == 0 and unread.difference(ins):
                    self.pruned["lookahead"] += 1
                    continue
                need = self.n_out - len(sinks.difference(ins)) if rest == 0 else None
                if need is not None and need < 1:
                    self.pruned["lookahead"] += 1
                    continue
                in_shapes = tuple(tuple(shapes[i]) for i in ins)
                for struct in self.blocks.structures([exprs[i] for i in ins], in_shapes, need):
                    if not fits(ins, len(struct.sinks)):
                        self.pruned["lookahead"] += 1
                        continue
                    yield ins, key, struct, in_shapes

    def _scheduled(
        self,
        exprs: list,
        ins: tuple[int, ...],
        key: Any,
        struct: Structure,
        in_shapes: tuple[tuple[int, ...], ...],
        *,
        rest: int,
    ) -> Iterator[Any]:
        """The moves of one block structure: its schedules, with exact expressions checked."""
        in_exprs = [exprs[i] for i in ins]
        for block, tiles, outs in self._schedules(in_shapes, struct.ops, struct.sinks):
            self._tick()
            bex = list(in_exprs)
            for bop in block.ops:
                bex.append(
                    block_expr(bop.kind, [bex[i] for i in bop.inputs],
                               [tiles[i] for i in bop.inputs], bop.attr, block.frange)
                )  # fmt: skip
            new = [bex[o.src] for o in block.outputs]
            if any(e in exprs for e in new):
                self.pruned["duplicate"] += 1
                continue
            if all(self._ok(e) and (rest or self._final_ok(e)) for e in new):
                yield key, KernelOp("customized", ins, (), block), list(outs), new

    def _schedules(
        self, in_shapes: tuple[tuple[int, ...], ...], ops: tuple[Op, ...], sinks: tuple[int, ...]
    ) -> list[tuple[Any, list[tuple[int, ...]], list[tuple[int, ...]]]]:
        """`schedules` of a structure with tile and output shapes, cached per (shapes, structure)."""
        key = (in_shapes, ops, sinks)
        hit = self._sched_cache.get(key)
        if hit is None:
            hit = []
            for block in schedules(
                in_shapes, ops, sinks, smem_budget=self.cfg.smem_budget,
                sizes_per_mapping=self.cfg.sizes_per_mapping, maps=self.cfg.maps,
            ):  # fmt: skip
                try:
                    tiles, _, outs = block.infer(in_shapes)
                except ShapeError:
                    self.pruned["shape_or_memory"] += 1
                    continue
                hit.append((block, tiles, outs))
            self._sched_cache[key] = hit
        return hit


def run_search(
    reference: KernelGraph,
    config: SearchConfig,
    verifier: Verifier,
    *,
    show_progress: bool | None = None,
) -> tuple[list[Candidate], SearchStats]:
    """Runs the bounded search; returns the verified candidates (unsorted) and statistics."""
    s = _Searcher(reference, config, verifier)
    vs0 = verifier.seconds
    exhausted = s.run(show_progress)
    stats = SearchStats(
        states=s.states,
        seconds=time.perf_counter() - s.start,
        pruned=dict(s.pruned),
        verified=len(s.found),
        rejected={"verifier_" + k: v for k, v in s.rejected.items()},
        verify_seconds=verifier.seconds - vs0,
        oracle_queries=s.oracle.queries + (s.eoracle.queries if s.eoracle else 0),
        exhausted=exhausted,
        time_to_first_s=s.first_s,
    )
    return s.found, stats
