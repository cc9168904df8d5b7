"""The GraphPipe partitioner: binary search on bottleneck TPS + a DP over the SP tree.

For a micro-batch size ``b`` (``M = B / b`` micro-batches) and a target time
per sample ``T``, the DP answers "can the graph be cut into stages, each with
TPS <= T that fits in memory, on the devices we have?". Its table for a range
``R`` of the SP tree (one node, or contiguous children of a series or parallel
composition) is

    N_R[l, v] = fewest devices that run R as stages with TPS <= T and fitting
                memory, when the stage after R's sink has depth l and R's
                source stages have depth <= v  (depths capped at min(M, D))

with the three cases of GraphPipe §5 plus one:

1. **one stage**: all of R on ``d`` devices (data parallel, ``d | b``); its
   depth is ``l + 1`` and its in-flight count ``min(M, l + 1)`` (1F1B) sets its
   activation memory;
2. **series split** ``R = A ; B``: the downstream part first,
   ``N[l, v] = min_u N_B[l, u] + N_A[u, v]`` (A's stages sit before B's source
   stage of depth ``u``);
3. **parallel split** ``R = A | B``: both halves see the same downstream depth
   and share the source bound (the shared source takes the larger in-flight
   count): ``N[l, v] = N_A[l, v] + N_B[l, v]``.

and, for a series range that starts with a parallel composition,

4. **join folding**: whole branches ``0..k`` share one stage with the series
   elements right after the join (the paper's case study folds the concat into
   a branch's last stage); the remaining branches feed that stage, so they see
   its depth downstream. Without it a small join/head would always need a
   device of its own.

Depth ``v`` plays the role of the paper's in-flight count of the source stage.
Tables are numpy arrays, so a split costs one min-plus product. A range is
split into a first group (one child, decomposed further, or several children
as one stage) and the rest, so only suffix ranges need tables. ``T`` is
searched by bisection over the sorted TPS values of all single-stage
candidates (the optimum is one of them, so the search is exact); the best few
feasible targets per micro-batch size go to the simulator for re-ranking.
Ranges with equal canonical ids (identical branches) share one table.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from jgraph.pipeline._cost import CostModel
from jgraph.pipeline._sp import Canon, SPNode, SPTree, decompose

__all__ = ["GraphPipeSearch"]

log = logging.getLogger(__name__)

INF = 10**9


class GraphPipeSearch:
    """GraphPipe's search for one cost model and mini-batch size.

    Example:
        >>> from jgraph.pipeline import ClusterConfig, PlannerConfig, CostModel, mmt
        >>> cm = CostModel(mmt(branches=2, layers=2), ClusterConfig(num_devices=4), PlannerConfig())
        >>> stages, degrees = GraphPipeSearch(cm, batch=32).best(micro_batch=4)[0]
        >>> sum(degrees) <= 4
        True
    """

    def __init__(self, cm: CostModel, *, batch: int) -> None:
        self.cm = cm
        self.batch = batch
        n = len(cm.nodes)
        self.tree: SPTree = decompose(n, cm.preds)
        self.canon = Canon([nd.signature() for nd in cm.nodes], list(cm.out), self.tree)
        self.root = _sorted_tree(self.tree.root, self.canon)
        self.canon = Canon([nd.signature() for nd in cm.nodes], list(cm.out), self.tree)

    @property
    def added_edges(self) -> tuple[tuple[int, int], ...]:
        return self.tree.added_edges

    # -- one micro-batch size -------------------------------------------------

    def best(
        self, *, micro_batch: int, bound_s: float = float("inf")
    ) -> list[tuple[list[list[int]], list[int]]]:
        """Plans (stage node lists, degrees) worth simulating at this micro-batch size.

        Candidates: the smallest feasible bottleneck target and the next few
        (``PlannerConfig.rerank_top``), plus, for each depth cap 1, 2, 4, ...
        below the best plan's depth, the smallest target reachable within that
        depth: shallower pipelines have shorter fill and drain, which the
        simulator weighs. An iteration takes at least ``batch * TPS`` of its
        bottleneck stage, so targets with ``batch * T >= bound_s`` (the best
        simulated iteration so far) are skipped. Returns ``[]`` when nothing
        fits in memory at this micro-batch size.
        """
        run = _Run(self, micro_batch)
        if run.solve(float("inf")) is None:
            return []
        targets = sorted(run.candidate_tps())
        if run.solve(targets[-1]) is None:
            targets.append(float("inf"))
        rows: dict[int, np.ndarray] = {}
        states: dict[int, tuple[dict, dict, dict]] = {}

        def row(k: int) -> np.ndarray:
            if k not in rows:
                run.solve(targets[k])
                rows[k] = run.suffix(self.root, 0)[0].copy()
                states[k] = (run.tables, run.base_tables, run.base_dmin)
            return rows[k]

        def first_feasible(lo: int, hi: int, depth_cap: int) -> int | None:
            """Smallest k in [lo, hi) whose plan fits D devices within depth_cap."""
            if lo >= hi or (row(hi - 1)[: depth_cap + 1] > run.D).all():
                return None
            while lo < hi - 1:
                mid = (lo + hi - 1) // 2
                if (row(mid)[: depth_cap + 1] <= run.D).any():
                    hi = mid + 1
                else:
                    lo = mid + 1
            return lo

        limit = bisect.bisect_left(targets, bound_s / self.batch)
        k0 = first_feasible(0, min(limit, len(targets)), run.K)
        if k0 is None:
            return []
        plans: list[tuple[list[list[int]], list[int]]] = []
        seen = set()

        def add(k: int, depth_cap: int) -> bool:
            feasible = np.nonzero(row(k)[: depth_cap + 1] <= run.D)[0]
            if len(feasible) == 0:
                return False
            run.target = targets[k]
            run.tables, run.base_tables, run.base_dmin = states[k]
            stages, degrees = run.reconstruct(0, int(feasible[0]))
            key = tuple(tuple(s) for s in sorted(stages))
            if key in seen:
                return False
            seen.add(key)
            plans.append((stages, degrees))
            return True

        k, found = k0, 0
        stop = min(limit, len(targets), k0 + 3 * self.cm.config.rerank_top)
        while k < stop and found < self.cm.config.rerank_top:
            found += add(k, run.K)
            k += 1
        best_depth = int(np.nonzero(row(k0) <= run.D)[0][0])
        cap = 1
        while cap < best_depth:
            kc = first_feasible(k0, min(limit, len(targets)), cap)
            if kc is not None:
                add(kc, cap)
            cap *= 2
        log.debug("graphpipe b=%d: %d targets, %d plans", micro_batch, len(targets), len(plans))
        return plans

    def fits(self, *, micro_batch: int) -> bool:
        """Whether any plan at this micro-batch size fits in memory (no TPS bound)."""
        return _Run(self, micro_batch).solve(float("inf")) is not None


def _sorted_tree(node: SPNode, canon: Canon) -> SPNode:
    """Orders parallel children by canonical id so identical branches are adjacent."""
    if node.kind == "leaf":
        return node
    kids = tuple(_sorted_tree(c, canon) for c in node.children)
    if node.kind == "parallel":
        kids = tuple(sorted(kids, key=lambda c: canon.range_id(c, 0, max(len(c.children) - 1, 0))))
    return SPNode(kind=node.kind, children=kids, members=node.members)


class _Run:
    """Tables of one (micro-batch) search; base-case costs cached across targets."""

    def __init__(self, search: GraphPipeSearch, micro_batch: int) -> None:
        self.s = search
        cm = search.cm
        self.cm = cm
        self.b = micro_batch
        self.m = search.batch // micro_batch
        self.D = cm.cluster.num_devices
        self.K = min(self.m, self.D)
        self.degrees = [d for d in _powers_of_two(min(micro_batch, self.D)) if micro_batch % d == 0]
        self.gpipe = cm.config.schedule == "gpipe"
        self.base_costs: dict[Any, tuple[np.ndarray, ...]] = {}
        self.base_tables: dict[Any, np.ndarray] = {}
        self.base_dmin: dict[Any, np.ndarray] = {}
        self.tables: dict[int, np.ndarray] = {}
        self.min_work: dict[int, float] = {}
        K = self.K
        self.degree_arr = np.array(self.degrees, dtype=np.int64)
        depth = np.minimum(np.arange(K + 1) + 1, K)  # a stage's depth per downstream depth l
        self.in_flight = np.full(K + 1, self.m) if self.gpipe else np.minimum(self.m, depth)
        self.depth_ok = np.arange(K + 1)[None, :] >= depth[:, None]  # [l, v]: v >= depth
        self.target = float("inf")

    def candidate_tps(self) -> set[float]:
        return {float(t) for arrays in self.base_costs.values() for t in arrays[0]}

    def _members(self, node: SPNode, i: int, j: int) -> list[int]:
        if node.kind == "leaf":
            return [node.node]
        return [v for c in node.children[i : j + 1] for v in c.members]

    def _base(
        self, key: Any, node: SPNode, i: int, j: int, members: list[int] | None = None
    ) -> np.ndarray:
        """One-stage table of a range: fewest devices per downstream depth (INF if none)."""
        got = self.base_tables.get(key)
        if got is not None:
            return got
        arrays = self.base_costs.get(key)
        if arrays is None:
            if members is None:
                members = self._members(node, i, j)
            cut_in, cut_out = self.cm.cut(members)
            costs = [
                self.cm.stage_cost_from_sums(
                    members,
                    cut_in,
                    cut_out,
                    devices=d,
                    micro_batch=self.b,
                    batch=self.s.batch,
                    inter_node=self.cm._multi_node,
                )
                for d in self.degrees
            ]
            arrays = tuple(
                np.array([getattr(c, f) for c in costs])
                for f in ("tps", "static_bytes", "activation_bytes_per_mb", "workspace_bytes")
            )
            self.base_costs[key] = arrays
        tps, static, act, work = arrays
        # [l, d]: memory with this stage's in-flight count when downstream depth is l.
        mem = static[None, :] + self.in_flight[:, None] * act[None, :] + work[None, :]
        ok = (tps[None, :] <= self.target) & (mem <= self.cm.cluster.memory_bytes)
        first = ok.argmax(axis=1)
        dmin = np.where(ok.any(axis=1), self.degree_arr[first], INF)
        vals = np.where(self.depth_ok, dmin[:, None], INF)
        self.base_tables[key] = vals
        self.base_dmin[key] = dmin
        return vals

    def _group(self, node: SPNode, i: int, p: int) -> np.ndarray:
        """Children i..p as the first group of a split: child i's own table, or one stage."""
        return self._group_with_dmin(node, i, p)[0]

    def _group_with_dmin(
        self, node: SPNode, i: int, p: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The group's table and, when it is a single stage, its devices per downstream depth."""
        if node.kind != "leaf" and i == p:
            child = node.children[i]
            if child.kind == "leaf":
                key = self.s.canon.range_id(child, 0, 0)
                return self._base(key, child, 0, 0), self.base_dmin[key]
            return self.suffix(child, 0), None
        key = self.s.canon.range_id(node, i, p)
        return self._base(key, node, i, p), self.base_dmin[key]

    def suffix(self, node: SPNode, i: int) -> np.ndarray:
        """Table of children i..end of ``node`` (a leaf: the node itself)."""
        last = max(len(node.children) - 1, 0)
        if node.kind != "leaf" and i == last:
            return self.suffix(node.children[i], 0)
        key = self.s.canon.range_id(node, i, last)
        got = self.tables.get(key)
        if got is not None:
            return got
        vals = self._base(key, node, i, last).copy()  # the base table is cached: no aliasing
        if node.kind != "leaf" and self._may_fit(key, node, i, last):
            for p in range(i, last):
                first, dmin = self._group_with_dmin(node, i, p)
                if first.min() >= INF:
                    # A bigger first group is a heavier stage: infeasible too.
                    break
                rest = self.suffix(node, p + 1)
                if rest.min() >= INF:
                    continue
                if node.kind == "series" and dmin is not None:
                    cand = self._series_after_stage(dmin, rest)
                else:
                    cand = self._combine(node.kind, first, rest)
                np.minimum(vals, cand, out=vals)
        if node.kind == "series" and node.children[i].kind == "parallel":
            for cand, *_ in self._folds(node, i):
                np.minimum(vals, cand, out=vals)
        self.tables[key] = vals
        return vals

    def _folds(
        self, node: SPNode, i: int
    ) -> Iterator[tuple[np.ndarray, int, int, np.ndarray, np.ndarray]]:
        """Join folding: whole branches 0..k of the parallel child i share one stage
        with the series elements i+1..q after the join (as the paper's case study
        folds the concat into a branch's last stage); the other branches feed it.

        Yields (table of children i..end, q, k, merged-stage dmin, G) where
        ``G[u, v]`` is the table of the fold when the stage after it has depth u.
        """
        par = node.children[i]
        last = len(node.children) - 1
        K = self.K
        canon = self.s.canon
        dep = np.minimum(np.arange(K + 1) + 1, K)
        for q in range(i + 1, last + 1):
            tail = self._members(node, i + 1, q)
            for k in range(len(par.children) - 1):
                key = ("fold", canon.range_id(par, 0, k), canon.range_id(node, i + 1, q))
                self._base(key, node, i, q, members=self._members(par, 0, k) + tail)
                dmin = self.base_dmin[key]
                if dmin.min() >= INF:
                    break  # folding more branches only makes the stage heavier
                others = self.suffix(par, k + 1)
                fold = np.where(self.depth_ok, dmin[:, None] + others[dep, :], INF)
                fold = np.minimum(fold, INF)
                if q == last:
                    yield fold, q, k, dmin, fold
                else:
                    rest = self.suffix(node, q + 1)
                    yield self._combine("series", fold, rest), q, k, dmin, fold

    def _may_fit(self, key: int, node: SPNode, i: int, j: int) -> bool:
        """False when even perfectly balanced stages would need more than D devices."""
        if self.target == float("inf"):
            return True
        work = self.min_work.get(key)
        if work is None:
            work = self.cm.min_tps_per_sample(self._members(node, i, j), self.b)
            self.min_work[key] = work
        return work <= self.target * self.D

    @staticmethod
    def _series_after_stage(dmin: np.ndarray, rest: np.ndarray) -> np.ndarray:
        """`_combine` for a single-stage first group in O(K^2) instead of O(K^3).

        The stage's table is ``dmin[u]`` where ``v >= min(K, u + 1)``, so
        ``min_u rest[l, u] + first[u, v]`` is a running minimum over ``u < v``
        (and ``u = K`` for ``v = K``).
        """
        run = np.minimum.accumulate(rest + dmin[None, :], axis=1)  # [l, w]: min over u <= w
        out = np.full_like(rest, INF)
        out[:, 1:] = run[:, :-1]
        out[:, -1] = run[:, -1]
        return np.minimum(out, INF)

    @staticmethod
    def _combine(kind: str, first: np.ndarray, rest: np.ndarray) -> np.ndarray:
        if kind == "series":
            # first (upstream) sits before rest's source stage of depth u.
            return np.minimum((rest[:, :, None] + first[None, :, :]).min(axis=1), INF)
        return np.minimum(first + rest, INF)

    def solve(self, target: float) -> tuple[int, int] | None:
        """Root (l=0, v) of the shallowest plan within the device budget, or None."""
        self.target = target
        self.tables = {}
        self.base_tables = {}
        self.base_dmin = {}
        vals = self.suffix(self.s.root, 0)
        ok = np.nonzero(vals[0] <= self.D)[0]
        if len(ok) == 0:
            return None
        return 0, int(ok[0])

    def reconstruct(self, ell: int, v: int) -> tuple[list[list[int]], list[int]]:
        stages: list[list[int]] = []
        degrees: list[int] = []
        for members, d in self._emit_suffix(self.s.root, 0, ell, v):
            stages.append(members)
            degrees.append(d)
        return stages, degrees

    def _emit_suffix(
        self, node: SPNode, i: int, ell: int, v: int
    ) -> Iterator[tuple[list[int], int]]:
        last = max(len(node.children) - 1, 0)
        if node.kind != "leaf" and i == last:
            yield from self._emit_suffix(node.children[i], 0, ell, v)
            return
        want = int(self.suffix(node, i)[ell, v])
        assert want < INF, "reconstructing an infeasible state"
        base = self._base(self.s.canon.range_id(node, i, last), node, i, last)
        if base[ell, v] == want:
            yield self._members(node, i, last), want
            return
        for p in range(i, last):
            first, rest = self._group(node, i, p), self.suffix(node, p + 1)
            if node.kind == "series":
                total = rest[ell, :] + first[:, v]
                u = int(total.argmin())
                if total[u] == want:
                    yield from self._emit_suffix(node, p + 1, ell, u)
                    yield from self._emit_group(node, i, p, u, v)
                    return
            elif first[ell, v] + rest[ell, v] == want:
                yield from self._emit_group(node, i, p, ell, v)
                yield from self._emit_suffix(node, p + 1, ell, v)
                return
        if node.kind == "series" and node.children[i].kind == "parallel":
            par = node.children[i]
            for cand, q, k, dmin, fold in self._folds(node, i):
                if cand[ell, v] != want:
                    continue
                members = self._members(par, 0, k) + self._members(node, i + 1, q)
                if q == last:
                    u_fold = ell
                else:
                    total = self.suffix(node, q + 1)[ell, :] + fold[:, v]
                    u_fold = int(total.argmin())
                    yield from self._emit_suffix(node, q + 1, ell, u_fold)
                depth = min(self.K, u_fold + 1)
                yield members, int(dmin[u_fold])
                yield from self._emit_suffix(par, k + 1, depth, v)
                return
        raise AssertionError("no choice reproduces the DP value (a bug)")

    def _emit_group(
        self, node: SPNode, i: int, p: int, ell: int, v: int
    ) -> Iterator[tuple[list[int], int]]:
        if node.kind != "leaf" and i == p:
            yield from self._emit_suffix(node.children[i], 0, ell, v)
        else:
            yield self._members(node, i, p), int(self._group(node, i, p)[ell, v])


def _powers_of_two(limit: int) -> list[int]:
    out, d = [], 1
    while d <= limit:
        out.append(d)
        d *= 2
    return out


def describe_tree(search: GraphPipeSearch) -> dict[str, Any]:
    names = search.cm.graph.topological_order
    return {
        "tree": search.root.describe(names),
        "added_edges": [(names[u], names[v]) for u, v in search.added_edges],
    }
