"""Bounded depth-first μGraph search with abstract-expression pruning (spec §a.2).

Kernel level: a state is a partial kernel graph. Each step adds a pre-defined op
or a graph-defined kernel, in canonical order (`canonical_key` must increase,
so each DAG is generated once), and keeps it only if every new tensor's
abstract expression is a subexpression of a reference output's modulo the
axioms (`Oracle`). When the sinks match the reference outputs in number and in
abstract expression, the candidate is checked by the `Verifier`; verified
candidates are recorded and never extended.

A graph-defined kernel is built structure first: its operands are enumerated
(subsets of the available tensors, never hard-coded), then a block-level DFS
over block ops in canonical order with degree-free expressions (tile sizes are
not known yet) closes block graphs whose sinks are all after a for-loop
accumulator, then `schedules` derives grids, maps and loop ranges from the
shapes, and the exact expressions (with sum degrees) are checked again.

Bounds: kernel ops, graph-defined kernels, block ops (with iterators and
savers), block inputs/outputs; plus a time and a state budget. The op
vocabulary is the reference's own ops plus the ops whose expression head
occurs in the reference's expressions (any other op would be pruned by the
oracle anyway). Anytime: the best verified candidate so far is kept, and the
reference itself (all pre-defined ops: the plain XLA candidate) is always in
the result, so a search never returns nothing.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from jgraph.core import progress
from jgraph.superopt._absexpr import Expr, Oracle, block_expr, erase, graph_exprs, kernel_expr
from jgraph.superopt._config import SearchConfig
from jgraph.superopt._cost import Cost, CostModel
from jgraph.superopt._ir import KernelGraph, KernelOp, Op, make_attrs
from jgraph.superopt._ops import ACCUMULATORS, BINARY, COMMUTATIVE, ShapeError, op_shape
from jgraph.superopt._tiling import schedules, shape_consistent
from jgraph.superopt._verify import Verdict, Verifier

__all__ = ["Candidate", "SearchStats", "canonical_key", "enumerate_dags", "run_search"]

log = logging.getLogger(__name__)

_ALL_KINDS = (
    "matmul", "exp", "sqrt", "silu", "gelu", "relu", "add", "mul", "div", "pow", "rms_norm",
    "reduce_sum", "reduce_max", "accum_sum", "accum_sum_ld", "accum_rms_ld", "accum_redtox_ld",
    "accum_max", "accum_rescale", "customized",
)  # fmt: skip
_RANK = {k: i for i, k in enumerate(_ALL_KINDS)}
_HEAD_OF = {"exp": "exp", "sqrt": "sqrt", "silu": "silu", "gelu": "gelu", "relu": "relu",
            "add": "add", "mul": "mul", "div": "div", "pow": "pow"}  # fmt: skip


def canonical_key(inputs: Sequence[int], kind: str, attrs: Any = ()) -> tuple[Any, ...]:
    """The order key of an op: inputs largest-first, then as given, then kind and attributes.

    A consumer of tensor ``t`` always has a larger key than ``t``'s producer, so
    the strictly increasing sequence of keys is exactly one topological order of
    each DAG.
    """
    return (tuple(sorted(inputs, reverse=True)), tuple(inputs), _RANK.get(kind, 99), repr(attrs))


class _StopSearchError(Exception):
    pass


@dataclasses.dataclass(frozen=True, kw_only=True)
class Candidate:
    """A verified μGraph with its model cost; ``label`` is ``"xla"`` for the reference."""

    graph: KernelGraph
    cost: Cost
    verdict: Verdict
    label: str = "search"
    found_s: float = 0.0  # seconds into the search when it was verified


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchStats:
    """What the search did: states, time, pruning breakdown, verification counts."""

    states: int
    seconds: float
    pruned: dict[str, int]
    verified: int
    rejected: dict[str, int]
    verify_seconds: float
    oracle_queries: int
    exhausted: bool
    time_to_first_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _heads(e: Expr, out: set[str]) -> None:
    out.add(e[0])
    if e[0] in ("sum", "rms", "max"):
        _heads(e[2], out)
    elif e[0] != "var":
        for a in e[1:]:
            if isinstance(a, tuple):
                _heads(a, out)


class _Searcher:
    def __init__(self, reference: KernelGraph, config: SearchConfig, verifier: Verifier) -> None:
        self.ref, self.cfg, self.verifier = reference, config, verifier
        self.n_in, self.n_out = len(reference.inputs), len(reference.outputs)
        exprs = graph_exprs(reference)
        self.targets = [exprs[o] for o in reference.outputs]
        self.pruning = config.pruning
        self.oracle = Oracle(self.targets)
        self.eoracle = Oracle([erase(t) for t in self.targets]) if config.pruning else None
        heads: set[str] = set()
        for t in self.targets:
            _heads(t, heads)
        ref_kinds = {op.kind for op in reference.ops}
        elem = [k for k, h in _HEAD_OF.items() if h in heads or k in ref_kinds]
        self.kvocab = [k for k in ("matmul", "rms_norm", "reduce_sum") if k in ref_kinds] + elem
        self.bvocab = list(elem)
        if {"sum", "mul"} <= heads:
            self.bvocab.insert(0, "matmul")
        if {"div", "rms"} <= heads:
            self.bvocab.append("rms_norm")
        self.bvocab.append("accum_sum")
        if "sum" in heads:
            self.bvocab += ["accum_sum_ld", "accum_redtox_ld"]
        if "rms" in heads or {"sqrt", "sum", "mul"} <= heads:  # rms(n, x) = sqrt(sum(n, x·x))
            self.bvocab.append("accum_rms_ld")
        if "max" in heads:
            self.bvocab += ["accum_max", "reduce_max"]
        self.dimx = sorted({reference.shapes[o][-1] for o in reference.outputs})
        self.cost_model = CostModel()
        # Candidates costing more than 1.5x the XLA candidate are not verified
        # (unless verify_all): they can never be the answer.
        self.best_us = 1.5 * self.cost_model(reference).estimated_us
        self.start = time.perf_counter()
        self.states = 0
        self.pruned = dict.fromkeys(
            ("canonical", "abstract_expression", "shape_or_memory", "duplicate", "cost_bound"), 0
        )
        self.rejected: dict[str, int] = {}
        self.found: list[Candidate] = []
        self.seen: set[KernelGraph] = set()
        self.first_s: float | None = None
        self.depth = config.max_kernel_ops
        self._struct_cache: dict[Any, list[tuple[tuple[Op, ...], tuple[int, ...]]]] = {}

    # -- budget -----------------------------------------------------------------------
    def _tick(self) -> None:
        self.states += 1
        if self.states > self.cfg.max_states or (
            time.perf_counter() - self.start > self.cfg.time_limit_s
        ):
            raise _StopSearchError

    def _ok(self, e: Expr, erased: bool = False) -> bool:
        if not self.pruning:
            return True
        hit = (self.eoracle if erased else self.oracle).contains(e)  # type: ignore[union-attr]
        if not hit:
            self.pruned["abstract_expression"] += 1
        return hit

    # -- kernel level -----------------------------------------------------------------
    def run(self, show_progress: bool | None) -> bool:
        shapes = [s.shape for s in self.ref.inputs]
        exprs: list[Expr] = [("var", i) for i in range(self.n_in)]
        try:
            moves = self._sorted_moves([], list(self._kernel_moves([], shapes, exprs, None, 0)))
            # Iterative deepening on the kernel count: one-kernel candidates are
            # verified first, and their cost then bounds every deeper prefix.
            for depth in range(1, self.cfg.max_kernel_ops + 1):
                self.depth = depth
                for move in progress(
                    moves,
                    description=f"μGraph search (<= {depth} kernels)",
                    total=len(moves),
                    enabled=show_progress,
                ):
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
        moves = list(self._kernel_moves(ops, shapes, exprs, last, n_custom))
        for move in self._sorted_moves(ops, moves):
            self._descend(ops, shapes, exprs, n_custom, move)

    def _sorted_moves(self, ops: list[KernelOp], moves: list[Any]) -> list[Any]:
        """Cheapest first (model cost of the prefix with the move), so good candidates come early."""

        def cost(move: Any) -> float:
            new_ops = (*ops, move[1])
            n = len(self.ref.inputs) + sum(o.n_outputs for o in new_ops)
            g = KernelGraph(self.ref.inputs, new_ops, tuple(range(n - move[1].n_outputs, n)))
            try:
                return self.cost_model(g).estimated_us
            except ShapeError:
                return float("inf")

        return sorted(moves, key=cost)

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
        self.found.append(Candidate(graph=graph, cost=cost, verdict=verdict, found_s=found_s))
        self.best_us = min(self.best_us, cost.estimated_us)
        if self.first_s is None:
            self.first_s = time.perf_counter() - self.start
        log.info("verified candidate %d: %.2f us (model)", len(self.found), cost.estimated_us)
        return True

    def _kernel_moves(
        self, ops: list[KernelOp], shapes: list, exprs: list, last: Any, n_custom: int
    ) -> Iterator[Any]:
        n = len(shapes)
        consumed = {i for op in ops for i in op.inputs}
        live = {t for t in range(n) if t not in consumed}  # sinks and unused inputs
        for kind in self.kvocab:
            arity = 2 if kind in BINARY or kind == "matmul" else 1
            for ins in itertools.product(range(n), repeat=arity):
                if kind in COMMUTATIVE and ins[0] > ins[1]:
                    continue
                if not live.intersection(ins):
                    self.pruned["canonical"] += 1
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
                    if self._ok(e):
                        yield key, KernelOp(kind, tuple(ins), attrs), [shape], [e]
        if n_custom >= self.cfg.max_customized:
            return
        for size in range(1, min(self.cfg.max_block_inputs, n) + 1):
            for ins in itertools.combinations(range(n), size):
                if not live.intersection(ins):
                    self.pruned["canonical"] += 1
                    continue
                key = canonical_key(ins, "customized")
                if last is not None and key <= last:
                    self.pruned["canonical"] += 1
                    continue
                in_shapes = [tuple(shapes[i]) for i in ins]
                in_exprs = [exprs[i] for i in ins]
                for struct_ops, sinks in self._structures(in_exprs, in_shapes):
                    for block in schedules(
                        in_shapes, struct_ops, sinks, smem_budget=self.cfg.smem_budget,
                        sizes_per_mapping=self.cfg.sizes_per_mapping, maps=self.cfg.maps,
                    ):  # fmt: skip
                        self._tick()
                        try:
                            tiles, _, outs = block.infer(in_shapes)
                        except ShapeError:
                            self.pruned["shape_or_memory"] += 1
                            continue
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
                        if all(self._ok(e) for e in new):
                            yield key, KernelOp("customized", tuple(ins), (), block), outs, new

    # -- block level ------------------------------------------------------------------
    def _structures(
        self, in_exprs: list[Expr], in_shapes: list[tuple[int, ...]]
    ) -> list[tuple[tuple[Op, ...], tuple[int, ...]]]:
        ekey = (tuple(erase(e) for e in in_exprs), tuple(in_shapes))
        if ekey not in self._struct_cache:
            out: list[tuple[tuple[Op, ...], tuple[int, ...]]] = []
            ex = [erase(e) for e in in_exprs]
            self._block(ex, list(in_shapes), [], ex, [False] * len(ex), None, out)
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
    ) -> None:
        self._tick()
        n_in = len(in_ex)
        consumed = {i for op in ops for i in op.inputs}
        sinks = [t for t in range(len(ex)) if t not in consumed]
        if (
            ops
            and all(t >= n_in and post[t] for t in sinks)
            and len(sinks) <= self.cfg.max_block_outputs
        ):
            out.append((tuple(ops), tuple(sinks)))
        room = self.cfg.max_block_ops - n_in - len(ops) - 1
        unconsumed_in = sum(1 for t in range(n_in) if t not in consumed)
        pre_sinks = sum(1 for t in sinks if not post[t])
        if room <= 0 or unconsumed_in > 2 * room or pre_sinks > room + 1:
            return
        n = len(ex)
        sink_set = set(sinks)
        floor = last[0][0] if last is not None else -1  # the largest input of the last op
        ranks = [len(s) for s in in_shapes]
        for kind in self.bvocab:
            arity = 2 if kind in BINARY or kind in ("matmul", "accum_rescale") else 1
            for ins in itertools.product(range(n), repeat=arity):
                if kind in COMMUTATIVE and ins[0] > ins[1]:
                    continue
                if max(ins) < floor:
                    continue  # its key cannot exceed the last op's (canonical order)
                if not any(i in sink_set for i in ins):
                    self.pruned["canonical"] += 1
                    continue
                if kind == "accum_redtox_ld" and ins[0] >= n_in:
                    continue  # folds concatenated partials, which arrive as kernel inputs
                phases = {post[i] for i in ins}
                if kind in ACCUMULATORS:
                    if phases != {False}:
                        continue
                    phase = True
                elif len(phases) != 1:
                    continue
                else:
                    phase = phases.pop()
                if kind == "accum_redtox_ld":
                    attr_opts = [{"dimx": d} for d in self.dimx]
                elif kind in ("reduce_sum", "reduce_max"):
                    attr_opts = [{"dim": d} for d in range(ranks[0])]
                else:
                    attr_opts = [{}]
                for a in attr_opts:
                    attrs = make_attrs(a)
                    key = canonical_key(ins, kind, attrs)
                    if last is not None and key <= last:
                        self.pruned["canonical"] += 1
                        continue
                    e = self._bexpr(kind, [ex[i] for i in ins])
                    if (e, phase) in zip(ex, post, strict=True):
                        self.pruned["duplicate"] += 1
                        continue
                    if not self._ok(e, erased=True):
                        continue
                    new_ops = [*ops, Op(kind, tuple(ins), attrs)]
                    if not shape_consistent(in_shapes, new_ops):
                        self.pruned["shape_or_memory"] += 1
                        continue
                    self._block(in_ex, in_shapes, new_ops, [*ex, e], [*post, phase], key, out)

    @staticmethod
    def _bexpr(kind: str, ins: list[Expr]) -> Expr:
        if kind == "accum_sum":  # degree-free: identity (frange may be 1); see _absexpr
            return ins[0]
        return block_expr(kind, ins, [(1,)] * len(ins), {"dimx": 1}, 0, erased=True)


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


def enumerate_dags(
    n_inputs: int, arities: dict[str, int], max_ops: int
) -> list[tuple[tuple[str, tuple[int, ...]], ...]]:
    """All op sequences up to ``max_ops`` whose `canonical_key` strictly increases.

    The same canonical rule the search applies (without its pruning), exposed so
    that tests can check that it yields every DAG exactly once. An op is
    ``(kind, input ids)``; tensor ids are inputs first, then ops in order.
    """
    out: list[tuple[tuple[str, tuple[int, ...]], ...]] = []

    def rec(seq: list[tuple[str, tuple[int, ...]]], last: Any) -> None:
        if seq:
            out.append(tuple(seq))
        if len(seq) == max_ops:
            return
        n = n_inputs + len(seq)
        for kind, arity in arities.items():
            for ins in itertools.product(range(n), repeat=arity):
                if kind in COMMUTATIVE and ins[0] > ins[1]:
                    continue
                key = canonical_key(ins, kind)
                if last is None or key > last:
                    rec([*seq, (kind, ins)], key)

    rec([], None)
    return out
