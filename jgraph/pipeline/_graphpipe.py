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

Speed: every contiguous range of a node's children is priced once per
micro-batch size in one vectorised call (`CostModel.stage_arrays`); per target
the fewest devices of all ranges come from one array expression; the suffix
tables of a node are filled in one sweep, last to first, with all split points
of a suffix evaluated as one batched numpy operation; the root's tables keep
only downstream depth 0, the one row the answer reads.
"""

from __future__ import annotations

import bisect
import logging

import numpy as np

from jgraph.pipeline._cost import CostModel
from jgraph.pipeline._sp import Canon, SPNode, SPTree, decompose
from jgraph.pipeline._sp_tables import SPTables

__all__ = ["GraphPipeSearch"]

log = logging.getLogger(__name__)


class GraphPipeSearch:
    """GraphPipe's search for one cost model and mini-batch size.

    Example:
        >>> from jgraph.pipeline import ClusterConfig, PlannerConfig, CostModel
        >>> from jgraph.pipeline.models import mmt
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
        run = SPTables(self, micro_batch)
        if run.solve(float("inf")) is None:
            return []
        # The unbounded probe priced every stage that fits in memory, so at the
        # largest of their TPS values every one of them meets the target: that
        # probe is feasible exactly when the unbounded one is (no extra probe).
        targets = sorted(run.candidate_tps())
        rows: dict[int, np.ndarray] = {}
        states: dict[int, tuple[dict, dict, dict, dict]] = {}

        def row(k: int) -> np.ndarray:
            if k not in rows:
                run.solve(targets[k])
                rows[k] = run.suffix(self.root, 0)[0].copy()
                states[k] = (run.tables, run.base_tables, run.base_dmin, run.series_dmin)
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
            run.tables, run.base_tables, run.base_dmin, run.series_dmin = states[k]
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
        return SPTables(self, micro_batch).solve(float("inf")) is not None


def _sorted_tree(node: SPNode, canon: Canon) -> SPNode:
    """Orders parallel children by canonical id so identical branches are adjacent."""
    if node.kind == "leaf":
        return node
    kids = tuple(_sorted_tree(c, canon) for c in node.children)
    if node.kind == "parallel":
        kids = tuple(sorted(kids, key=lambda c: canon.range_id(c, 0, max(len(c.children) - 1, 0))))
    return SPNode(kind=node.kind, children=kids, members=node.members)
