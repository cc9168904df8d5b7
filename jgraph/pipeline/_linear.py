"""GraphPipe's linear candidates: contiguous ranges of a topological order, run as a stage DAG.

A chain of stages is a stage DAG too, so GraphPipe's search space must hold
every plan a sequential (PipeDream-style) planner can return. The SP-tree DP
alone does not: a stage there is one SP range (or a join fold), so it cannot
put a series prefix together with part of a parallel composition
(``n0 -> {n1, n2} -> out`` on two devices wants ``{n0, n1}, {n2, out}``), and
the edges added to make a graph series-parallel constrain every SP plan.

`LinearSearch` searches the sequential space with GraphPipe's method: for a
target time per sample ``T`` a DP finds the fewest devices that run an order
as contiguous stages, each with TPS <= T that fits in memory, and ``T`` is
bisected over the sorted TPS values of all single-stage candidates (exact: the
optimum is one of them, the same as the PipeDream-style DP's). The DP runs
from the sink:

    N[q, s] = fewest devices that run positions q.. as exactly s stages
            = min_p  dmin(q..p, depth s) + N[p + 1, s - 1]

where the first stage of the suffix has depth ``s`` along the chain (its 1F1B
in-flight count ``min(M, s)`` sets its memory) and ``dmin`` is its smallest
data-parallel degree meeting the target and memory. Counting stages exactly
gives every stage cap from one table: the plan with at most ``c`` stages
takes the best ``s <= c``. Each ``s`` is one vectorised min-plus step over all
``(q, p)`` pairs. A probe stops at the first ``s`` that fits (the shallowest
plan), or once no longer plan can fit: every split into ``s`` last stages and
the stages before them needs more than ``D`` devices, the latter at least
their work over ``T`` (`LinearSearch._node_work`).

Candidates per order and micro-batch size follow `GraphPipeSearch.best`: the
shallowest plan at the smallest feasible target and at the next few
(``PlannerConfig.rerank_top``), and for each stage cap 1, 2, 4, ... below
that plan's stage count, the smallest target within the cap (shallower
pipelines fill and drain faster). Partitions with the same bottleneck differ
in their other stages, which the simulator weighs through fill and drain, so
each target offers two: the shortest first stage at each step, and the least
total TPS (`_OrderTables.reconstruct`). Both take the fewest devices; the
spare ones go to the slowest stages that speed up.

Stages are priced on the true data edges (`CostModel.stage_arrays`) and the
chain depth bounds a stage's depth in the stage DAG, so the memory check is
conservative. Contiguous ranges of a topological order are convex, so the
planner assembles these candidates as a stage DAG on their data dependencies
(no added edges, not a chain): stages that do not depend on each other run
concurrently. The orders are the two `linearisations` the PipeDream-style
planner walks (breadth-first and depth-first), so both search the same
partitions with the same optimal bottleneck per stage cap (a test checks it
against `pipedream_dp`). Among partitions with equal bottleneck the two
planners pick by different rules, and the simulator ranks what each offers:
GraphPipe is not slower on any random graph tried, but that is not a proof.
"""

from __future__ import annotations

import bisect

import numpy as np

from jgraph.pipeline._baselines import linearisations
from jgraph.pipeline._cost import CostModel
from jgraph.pipeline._sp_tables import _powers_of_two

__all__ = ["LinearSearch"]

INF = 10**9


class _OrderTables:
    """Stage costs of every contiguous range of one order at one micro-batch size.

    Args:
        cm: the cost model.
        order: a topological order (node indices).
        micro_batch, batch: ``b`` and ``B``.
        degrees: the data-parallel degrees to price (powers of two dividing ``b``).
        priced: `CostModel.stage_arrays` of the ranges ``np.triu_indices(n)``.
        node_work: per node, the least device-seconds per sample of its compute
            (`LinearSearch._node_work`), for the DP's early exit.
    """

    def __init__(
        self,
        cm: CostModel,
        order: list[int],
        *,
        micro_batch: int,
        batch: int,
        degrees: list[int],
        priced: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        node_work: np.ndarray,
    ) -> None:
        n = len(order)
        self.n, self.order = n, order
        self.D = cm.cluster.num_devices
        self.S = min(self.D, n)  # every stage takes a device
        m = batch // micro_batch
        nd = len(degrees)
        self.degree_ext = np.array([*degrees, INF], dtype=np.int64)
        starts, ends = np.triu_indices(n)
        tps, static, act, work = priced
        self.tps = np.full((n, n, nd), np.inf)
        self.tps[starts, ends] = tps
        # In-flight micro-batches of a stage of depth s = 1..S: M under GPipe,
        # min(M, s) under 1F1B. Memory falls as the degree grows, so the
        # degrees that fit are a suffix: `fit` holds the index of the first
        # ([range, count]; nd: none), per distinct count.
        cap = cm.cluster.memory_bytes
        if cm.config.schedule == "gpipe":
            of_depth = np.zeros(self.S, dtype=np.int64)
            fit = (static + m * act + work > cap).sum(axis=1)[:, None]
        else:
            K = min(m, self.S)
            of_depth = np.minimum(m, np.arange(1, self.S + 1)) - 1
            most = _most_in_flight(static, act, work, cap, K)  # [range, degree]
            fit = (most[:, :, None] < np.arange(1, K + 1)).sum(axis=1)
        # Memory grows with the count, so equal columns are adjacent: counts
        # with the same first fitting degrees share one column (all of them
        # when memory never binds), and `dmin` gathers per column.
        change = (fit[:, 1:] != fit[:, :-1]).any(axis=0)
        keep = np.concatenate([[True], change])
        first_fit = np.full((n, n, int(keep.sum())), nd, dtype=np.int64)
        first_fit[starts, ends] = fit[:, keep]
        # Per column, flat positions of (q, p, first fitting degree) in a
        # [q, p, degree + 1] table: `dmin` gathers one column with one `take`.
        flat = (np.arange(n * n) * (nd + 1)).reshape(n, n, 1) + first_fit
        self._gather = np.ascontiguousarray(flat.transpose(2, 0, 1))
        self.column = np.concatenate([[0], np.cumsum(keep)[of_depth] - 1])  # by depth s = 0..S
        fits_once = np.arange(nd)[None, :] >= fit[:, :1]
        self.targets = np.unique(tps[fits_once & np.isfinite(tps)])
        # Device-seconds per sample of positions 0..q-1 (q = 1..n-1), at least.
        self._prefix_work = np.cumsum(node_work[order])[:-1] * (1 - 1e-9)
        # TPS of range (q, p) at degree index t: flat [q, p, t] with t = nd: inf.
        self._tps_flat = np.concatenate([self.tps, np.full((n, n, 1), np.inf)], axis=2).ravel()
        self._range_base = (np.arange(n * n) * (nd + 1)).reshape(n, n)
        self._degree_index = np.zeros(self.D + 1, dtype=np.int64)  # degree -> index
        self._degree_index[degrees] = np.arange(nd)
        # The last target, its first-degree table, and the columns gathered so far.
        self._probe: tuple[float, np.ndarray, list[np.ndarray | None]] | None = None

    def dmin(self, target: float, column: int) -> np.ndarray:
        """Smallest degree of each range q..p meeting ``target`` and memory: ``[q, p]``.

        ``column`` is the memory column of the stage's depth (``self.column``).
        The table behind it is built once per target; a column is gathered
        only when the DP reaches a depth that reads it.
        """
        if self._probe is None or self._probe[0] != target:
            n, nd = self.n, len(self.degree_ext) - 1
            # Degrees grow with the index: the suffix minimum over the degrees
            # meeting the target is the first of them from each index on.
            meets = np.where(self.tps <= target, self.degree_ext[:nd], INF)
            first = np.full((n, n, nd + 1), INF, dtype=np.int64)
            first[..., :nd] = np.minimum.accumulate(meets[..., ::-1], axis=2)[..., ::-1]
            self._probe = (target, first.reshape(-1), [None] * len(self._gather))
        _, first_flat, columns = self._probe
        got = columns[column]
        if got is None:
            got = columns[column] = first_flat.take(self._gather[column])
        return got

    def solve(self, target: float, cap: int) -> tuple[int | None, int, np.ndarray]:
        """The shallowest plan of at most ``cap`` stages at ``target``.

        Returns ``(s, reach, N)``: ``s`` the fewest stages of a plan on ``D``
        devices (None if none up to ``reach``), ``reach`` the stage count up to
        which that is known (``S`` once longer plans are ruled out), and the
        table ``N[q, s']`` (fewest devices of positions q.. as exactly s'
        stages; ``>= INF``: none, or past the last s' filled).
        """
        n, D = self.n, self.D
        # Devices the stages before position q need at least: each takes one,
        # and a stage on d devices with TPS <= target does at most d / target
        # device-seconds of work per sample.
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero target: inf or nan
            before = np.fmax(1.0, np.ceil(self._prefix_work / target))  # fmax drops nan
        N = np.full((n + 1, self.S + 1), INF, dtype=np.int64)
        N[n, 0] = 0
        for s in range(1, min(cap, self.S) + 1):
            # Sums past INF stay below INF * (S + 1): no clamp needed.
            row = (self.dmin(target, self.column[s]) + N[None, 1:, s - 1]).min(axis=1)
            N[:n, s] = row
            if row[0] <= D:
                return s, s, N
            # A longer plan ends with s stages from some q >= 1 and has stages
            # before q: once every such split needs more than D devices, no
            # longer plan fits.
            if (before + row[1:]).min(initial=INF) > D:
                return None, self.S, N
        return None, min(cap, self.S), N

    def reconstruct(
        self, target: float, s: int, *, least_total: bool
    ) -> tuple[list[list[int]], list[int]]:
        """A plan of exactly ``s`` stages at ``target`` on the fewest devices.

        Partitions with the same bottleneck differ in the other stages, and
        those still fill and drain the pipeline; which simulates faster
        depends on where the slack sits. With ``least_total`` the plan has the
        least total TPS among the fewest-device ones, else the shortest first
        stage at each step. Spare devices then go to `_spend_spare`.
        """
        n, nd = self.n, len(self.degree_ext) - 1
        devices = np.full((n + 1, s + 1), INF, dtype=np.int64)
        devices[n, 0] = 0
        total = np.full((n + 1, s + 1), np.inf)
        total[n, 0] = 0.0
        pick = np.zeros((n, s + 1), dtype=np.int64)
        rows = np.arange(n)
        for k in range(1, s + 1):
            d = self.dmin(target, self.column[k])
            with_rest = d + devices[None, 1:, k - 1]
            if not least_total:
                pick[:, k] = with_rest.argmin(axis=1)
                devices[:n, k] = with_rest[rows, pick[:, k]]
                continue
            fewest = with_rest.min(axis=1)
            # The TPS of each range at its chosen degree (inf where none).
            index = np.where(d < INF, self._degree_index[np.minimum(d, self.D)], nd)
            tps = self._tps_flat.take(self._range_base + index)
            cost = np.where(with_rest == fewest[:, None], tps + total[None, 1:, k - 1], np.inf)
            pick[:, k] = cost.argmin(axis=1)
            devices[:n, k] = fewest
            total[:n, k] = cost[rows, pick[:, k]]
        assert devices[0, s] <= self.D, "reconstructing an infeasible plan (a bug)"
        spans: list[tuple[int, int]] = []
        degrees: list[int] = []
        q = 0
        for k in range(s, 0, -1):
            p = int(pick[q, k])
            spans.append((q, p))
            degrees.append(int(self.dmin(target, self.column[k])[q, p]))
            q = p + 1
        assert q == self.n, "reconstruction must cover the order (a bug)"
        return [self.order[i : j + 1] for i, j in spans], self._spend_spare(spans, degrees)

    def _spend_spare(self, spans: list[tuple[int, int]], degrees: list[int]) -> list[int]:
        """Doubles the degree of the slowest stage that gets faster, while devices are spare.

        The DP leaves devices idle when the target is met with fewer. Unlike
        `fill_leftover_devices`, which stops at the bottleneck, this also
        speeds up the other stages: their fill and drain count in the
        simulated iteration.
        """
        index = {int(d): t for t, d in enumerate(self.degree_ext[:-1])}
        spare = self.D - sum(degrees)
        while True:
            best, pick = -1.0, -1
            for k, ((i, j), d) in enumerate(zip(spans, degrees, strict=True)):
                up = index.get(2 * d)
                if up is None or d > spare or self.tps[i, j, up] >= self.tps[i, j, index[d]]:
                    continue
                if self.tps[i, j, index[d]] > best:
                    best, pick = float(self.tps[i, j, index[d]]), k
            if pick < 0:
                return degrees
            spare -= degrees[pick]
            degrees[pick] *= 2


class LinearSearch:
    """Contiguous partitions of the breadth- and depth-first orders, for one cost model and ``B``.

    Example:
        >>> from jgraph.pipeline import ClusterConfig, PlannerConfig, CostModel
        >>> from jgraph.pipeline.models import mmt
        >>> cm = CostModel(mmt(branches=2, layers=2), ClusterConfig(num_devices=4), PlannerConfig())
        >>> stages, degrees = LinearSearch(cm, batch=32).best(micro_batch=4)[0]
        >>> sum(degrees) <= 4
        True
    """

    def __init__(self, cm: CostModel, *, batch: int) -> None:
        self.cm = cm
        self.batch = batch
        self.orders = linearisations(cm)

    def best(
        self, *, micro_batch: int, bound_s: float = float("inf")
    ) -> list[tuple[list[list[int]], list[int]]]:
        """Plans (stage node lists, degrees) worth simulating at this micro-batch size.

        ``[]`` when nothing fits in memory or no target beats ``bound_s`` (the
        best simulated iteration so far: an iteration takes at least
        ``batch * TPS`` of its bottleneck stage).
        """
        work = self._node_work(micro_batch)
        # The bottleneck of any plan (shaved by a relative 1e-9 against rounding).
        floor = float(work.sum()) / self.cm.cluster.num_devices * (1 - 1e-9)
        if floor * self.batch >= bound_s:
            return []  # no plan at this micro-batch size can beat the bound
        plans: list[tuple[list[list[int]], list[int]]] = []
        for tables in self._tables(micro_batch):
            for plan in self._best_of(tables, bound_s, floor):
                if plan not in plans:
                    plans.append(plan)
        return plans

    def fits(self, *, micro_batch: int) -> bool:
        """Whether any contiguous partition fits in memory at this micro-batch size."""
        return any(t.solve(float("inf"), t.S)[0] is not None for t in self._tables(micro_batch))

    def _tables(self, micro_batch: int) -> list[_OrderTables]:
        """Every order's tables; all ranges priced in one vectorised call."""
        D = self.cm.cluster.num_devices
        degrees = [d for d in _powers_of_two(min(micro_batch, D)) if micro_batch % d == 0]
        sets = []
        for order in self.orders:
            n = len(order)
            starts, ends = np.triu_indices(n)
            pos = np.zeros((n + 1, len(self.cm.nodes)), dtype=np.int64)
            pos[np.arange(1, n + 1), order] = 1
            cum = np.cumsum(pos, axis=0)
            sets.append((cum[ends + 1] - cum[starts]) > 0)
        priced = self.cm.stage_arrays(
            np.concatenate(sets), micro_batch=micro_batch, batch=self.batch, degrees=degrees
        )
        work_of_nodes = self._node_work(micro_batch)
        out, start = [], 0
        for order, rows in zip(self.orders, sets, strict=True):
            tps, static, act, work = (a[start : start + len(rows)] for a in priced)
            start += len(rows)
            out.append(
                _OrderTables(
                    self.cm,
                    order,
                    micro_batch=micro_batch,
                    batch=self.batch,
                    degrees=degrees,
                    priced=(tps, static, act, work),
                    node_work=work_of_nodes,
                )
            )
        return out

    def _node_work(self, micro_batch: int) -> np.ndarray:
        """Per node, the least device-seconds per sample its compute takes.

        On ``d`` devices a node's forward and backward run ``b / d`` samples
        each: ``d * (fwd + bwd) / b`` device-seconds per sample, at its
        cheapest degree. Communication and all-reduces only add to a stage's
        time, so a stage with TPS ``T`` on ``d`` devices holds at most
        ``d * T`` of it: the stages of a plan need at least ``sum / T``
        devices, and its bottleneck is at least ``sum / D``.
        """
        D = self.cm.cluster.num_devices
        work = np.full(len(self.cm.nodes), np.inf)
        for d in _powers_of_two(min(micro_batch, D)):
            if micro_batch % d == 0:
                f, g = self.cm.node_times(micro_batch // d)
                work = np.minimum(work, d * (f + g) / micro_batch)
        return work

    def _best_of(
        self, tables: _OrderTables, bound_s: float, floor: float
    ) -> list[tuple[list[list[int]], list[int]]]:
        targets = tables.targets.tolist()
        S = tables.S
        lo = bisect.bisect_left(targets, floor)
        limit = min(bisect.bisect_left(targets, bound_s / self.batch), len(targets))
        # Per target index: (stage count of the shallowest plan or None, the
        # stage count up to which that is known, the DP table).
        probes: dict[int, tuple[int | None, int, np.ndarray]] = {}

        def shallowest(k: int, cap: int) -> int | None:
            """Fewest stages of a plan within ``cap`` stages at target k (None: none)."""
            got = probes.get(k)
            if got is None or (got[0] is None and got[1] < min(cap, S)):
                got = tables.solve(targets[k], cap)
                probes[k] = got
            s = got[0]
            return s if s is not None and s <= cap else None

        def first_feasible(lo: int, hi: int, cap: int) -> int | None:
            """Smallest k in [lo, hi) with a plan of at most ``cap`` stages."""
            # The fewest stages only fall as the target grows, so every probe
            # so far brackets the answer: start from the tightest bracket.
            for k, (s, reach, _) in probes.items():
                if lo <= k < hi:
                    if s is not None and s <= cap:
                        hi = k + 1
                    elif s is not None or reach >= min(cap, S):
                        lo = max(lo, k + 1)
            if lo >= hi or shallowest(hi - 1, cap) is None:
                return None
            while lo < hi - 1:
                mid = (lo + hi - 1) // 2
                if shallowest(mid, cap) is not None:
                    hi = mid + 1
                else:
                    lo = mid + 1
            return lo

        k0 = first_feasible(lo, limit, S)
        if k0 is None:
            return []
        plans: list[tuple[list[list[int]], list[int]]] = []

        def add(k: int, cap: int) -> bool:
            s = shallowest(k, cap)
            if s is None:
                return False
            found = False
            for least_total in (False, True):
                plan = tables.reconstruct(targets[k], s, least_total=least_total)
                if plan not in plans:
                    plans.append(plan)
                    found = True
            return found

        rerank = self.cm.config.rerank_top
        k, found = k0, 0
        stop = min(limit, k0 + 3 * rerank)
        while k < stop and found < rerank:
            found += add(k, S)
            k += 1
        fewest = shallowest(k0, S)
        assert fewest is not None
        cap = 1
        while cap < fewest:
            kc = first_feasible(k0, limit, cap)
            if kc is not None:
                add(kc, cap)
            cap *= 2
        return plans


def _most_in_flight(
    static: np.ndarray, act: np.ndarray, work: np.ndarray, cap: float, limit: int
) -> np.ndarray:
    """Largest count ``c <= limit`` with ``static + c * act + work <= cap`` (0: none), elementwise.

    Divides for an estimate, then settles the boundary with that very
    expression, so "fits" means what it means everywhere else.
    """

    def fits(c: np.ndarray) -> np.ndarray:
        return static + c * act + work <= cap

    with np.errstate(divide="ignore", invalid="ignore"):
        guess = np.floor((cap - static - work) / act)
    guess = np.where(act > 0, guess, np.where(static + work <= cap, limit, 0))
    most = np.clip(np.nan_to_num(guess, nan=0.0), 0, limit).astype(np.int64)
    for _ in range(2):  # rounding moves the estimate by at most one
        most -= (most >= 1) & ~fits(most)
        most += (most < limit) & fits(most + 1)
    return most
