"""The DP over the SP tree for one micro-batch size and bottleneck target.

`GraphPipeSearch` (in `_graphpipe`, whose docstring states the recurrences)
bisects on the target; `SPTables` answers each probe: the table
``N_R[l, v]`` of every suffix range ``R`` of every SP node (fewest devices,
``INF`` when impossible), and the reconstruction of the stages behind an entry.

What the tables read from the search is the `SearchContext` protocol (the cost
model, the mini-batch size, the sorted SP tree and its canonical range ids);
they never write to it: every cache they fill is their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from jgraph.pipeline._cost import CostModel
from jgraph.pipeline._sp import Canon, SPNode

__all__ = ["INF", "SPTables", "SearchContext", "TableKey"]

INF = 10**9

# A table's key: the canonical id of a range (equal ranges share one table), the
# root's suffixes as ("root", id) (they keep one row), or a join fold as
# ("fold", id of the folded branches, id of the series elements after the join).
TableKey = int | tuple[str, int] | tuple[str, int, int]


class SearchContext(Protocol):
    """What `SPTables` reads from the search that creates it (read-only).

    Attributes:
        cm: the cost model (graph, cluster, planner config).
        batch: the mini-batch size ``B``.
        root: the SP tree's root, parallel children sorted by canonical id so
            identical branches are adjacent.
        canon: canonical ids of the tree's child ranges.
    """

    @property
    def cm(self) -> CostModel: ...

    @property
    def batch(self) -> int: ...

    @property
    def root(self) -> SPNode: ...

    @property
    def canon(self) -> Canon: ...


class SPTables:
    """The DP tables of one micro-batch size; range costs cached across targets."""

    def __init__(self, search: SearchContext, micro_batch: int) -> None:
        self.search = search
        cm = search.cm
        self.cm = cm
        self.b = micro_batch
        self.m = search.batch // micro_batch
        self.D = cm.cluster.num_devices
        self.K = min(self.m, self.D)
        self.degrees = [d for d in _powers_of_two(min(micro_batch, self.D)) if micro_batch % d == 0]
        self.gpipe = cm.config.schedule == "gpipe"
        self.base_costs: dict[TableKey, tuple[np.ndarray, ...]] = {}
        self.base_tables: dict[TableKey, np.ndarray] = {}
        self.base_dmin: dict[TableKey, np.ndarray] = {}
        self.tables: dict[TableKey, np.ndarray] = {}
        self.min_work: dict[TableKey, float] = {}
        # Per node (by id): the table keys of its suffixes i..end, kept across targets.
        self.suffix_keys: dict[int, list[TableKey]] = {}
        # Per series node (canonical id): costs of every contiguous range of its
        # children, [i, p, degree] (kept across targets), and per target the
        # fewest devices of each range as one stage, [i, p, l].
        self.series_costs: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.series_dmin: dict[int, np.ndarray] = {}
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
        self, key: TableKey, node: SPNode, i: int, j: int, members: list[int] | None = None
    ) -> np.ndarray:
        """One-stage table of a range: fewest devices per downstream depth (INF if none)."""
        got = self.base_tables.get(key)
        if got is not None:
            return got
        arrays = self.base_costs.get(key)
        if arrays is None and node.kind != "leaf" and isinstance(key, int):
            self._series_costs(node)  # prices every range of the node at once
            arrays = self.base_costs[key]
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
                    batch=self.search.batch,
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
        """Children i..p as the first group of a split: child i on its own (any child of a
        parallel node, a composite child of a series node), decomposed further; else one stage."""
        if i == p and (node.kind == "parallel" or node.children[i].kind != "leaf"):
            return self.suffix(node.children[i], 0)
        return self._base(self.search.canon.range_id(node, i, p), node, i, p)

    def suffix(self, node: SPNode, i: int) -> np.ndarray:
        """Table of children i..end of ``node`` (a leaf: the node itself)."""
        last = max(len(node.children) - 1, 0)
        if node.kind != "leaf" and i == last:
            return self.suffix(node.children[i], 0)
        key = self._table_key(node, i, last)
        got = self.tables.get(key)
        if got is not None:
            return got
        if node.kind == "series":
            self._sweep(node)
        elif node.kind == "parallel":
            self._sweep_parallel(node)
        else:
            self.tables[key] = self._base(key, node, i, last)
        return self.tables[key]

    def _sweep_inputs(
        self, node: SPNode
    ) -> tuple[np.ndarray, np.ndarray, list[TableKey], np.ndarray]:
        """(fewest devices [i, p, l], min work [i, p], suffix table keys, stop [i, p]).

        ``stop[i, p]`` is the first ``q >= p`` for which children i..q as one
        stage fit nowhere: a bigger group is heavier still, so a scan stops there.
        """
        last = len(node.children) - 1
        dmin_all = self._series_dmin(node)
        _, _, min_work = self._series_costs(node)
        keys = self.suffix_keys.get(id(node))
        if keys is None:
            keys = [self._table_key(node, i, last) for i in range(last + 1)]
            self.suffix_keys[id(node)] = keys
        dead = (dmin_all >= INF).all(axis=2)
        stop = np.where(dead, np.arange(last + 1)[None, :], last)
        stop = np.minimum.accumulate(stop[:, ::-1], axis=1)[:, ::-1]
        return dmin_all, min_work, keys, stop

    def _sweep_parallel(self, node: SPNode) -> None:
        """Tables of every suffix i..end of a parallel node, last to first.

        Children i..p as one stage (p > i) or child i decomposed on its own
        (p = i), beside the suffix p+1..: both see the same downstream depth
        and share the source bound, so the tables add. All ``p`` of one ``i``
        are one batched sum.
        """
        last = len(node.children) - 1
        dmin_all, min_work, keys, stop = self._sweep_inputs(node)
        done = np.empty((last + 1, self.K + 1, self.K + 1), dtype=np.int64)
        done[last] = self.suffix(node.children[last], 0)
        for i in range(last - 1, -1, -1):
            got = self.tables.get(keys[i])
            if got is not None:
                done[i] = got
                continue
            vals = np.where(self.depth_ok, dmin_all[i, last, :, None], INF)
            if self.target == float("inf") or min_work[i, last] <= self.target * self.D:
                first = self._group(node, i, i)
                # A bigger first group is a heavier stage: infeasible too.
                if first.min() < INF:
                    np.minimum(vals, np.minimum(first + done[i + 1], INF), out=vals)
                    end = int(stop[i, i + 1]) if i + 1 < last else i + 1
                    if i + 1 < end:
                        groups = np.where(self.depth_ok, dmin_all[i, i + 1 : end, :, None], INF)
                        cand = np.minimum(groups + done[i + 2 : end + 1], INF)
                        np.minimum(vals, cand.min(axis=0), out=vals)
            self.tables[keys[i]] = vals
            done[i] = vals

    def _table_key(self, node: SPNode, i: int, last: int) -> TableKey:
        rid = self.search.canon.range_id(node, i, last)
        # The root's suffixes are only ever read at downstream depth 0: one row.
        return ("root", rid) if node is self.search.root else rid

    def _series_costs(self, node: SPNode) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tps [i, p, d], first fitting degree [i, p, l], min work [i, p]) of every range i..p.

        Works for series and parallel nodes (children i..p as one stage).

        One vectorised pricing per node and micro-batch size. Each range's
        arrays are also stored under its canonical id in ``base_costs`` (or
        taken from there when another node priced an equal range first), so
        every code path compares the very same floats against the target.
        """
        canon = self.search.canon
        last = len(node.children) - 1
        nid = canon.range_id(node, 0, last)
        got = self.series_costs.get(nid)
        if got is not None:
            return got
        L, nd, n = last + 1, len(self.degrees), len(self.cm.nodes)
        starts, ends = np.triu_indices(L)  # every range i..p, p >= i
        keys = [
            canon.range_id(node, i, p) for i, p in zip(starts.tolist(), ends.tolist(), strict=True)
        ]
        todo = np.array([k not in self.base_costs for k in keys], dtype=bool)
        tps = np.full((L, L, nd), np.inf)
        static, act, work = (np.full((L, L, nd), np.inf) for _ in range(3))
        min_work = np.full((L, L), np.inf)
        if todo.any():
            # Range membership from prefix counts over the children.
            child = np.zeros((L + 1, n), dtype=np.int64)
            for c, kid in enumerate(node.children):
                child[c + 1, list(kid.members)] = 1
            cum = np.cumsum(child, axis=0)
            ti, tp = starts[todo], ends[todo]
            sets = (cum[tp + 1] - cum[ti]) > 0
            priced = self.cm.stage_arrays(
                sets, micro_batch=self.b, batch=self.search.batch, degrees=self.degrees
            )
            for full, part in zip((tps, static, act, work), priced, strict=True):
                full[ti, tp] = part
            # Lower bound on device-seconds per sample (best micro-batch, no comm).
            x = 1
            while x <= self.b:
                f, g = self.cm.node_times(x)
                min_work[ti, tp] = np.minimum(min_work[ti, tp], (sets @ (f + g)) / x)
                x *= 2
        for r, k in enumerate(keys):
            i, p = int(starts[r]), int(ends[r])
            # Equal ranges priced in one call may differ in the last bits (the
            # matrix products sum rows in different orders): the first range
            # of a key sets its floats for all of them.
            if todo[r] and k not in self.base_costs:
                self.base_costs[k] = tuple(a[i, p].copy() for a in (tps, static, act, work))
                self.min_work.setdefault(k, float(min_work[i, p]))
            else:  # priced by an equal range: use those very floats
                tps[i, p], static[i, p], act[i, p], work[i, p] = self.base_costs[k]
                min_work[i, p] = self.min_work.get(k, 0.0)
        # Same expression as `_base`, so the same floats decide "fits". Memory
        # only falls as the degree grows (fewer samples per device), so the
        # degrees that fit are a suffix: keep the index of the first.
        mem = (
            static[:, :, None, :]
            + self.in_flight[None, None, :, None] * act[:, :, None, :]
            + work[:, :, None, :]
        )
        first_fit = (mem > self.cm.cluster.memory_bytes).sum(axis=3)  # [i, p, l]; nd: none
        out = (tps, first_fit, min_work)
        self.series_costs[nid] = out
        return out

    def _series_dmin(self, node: SPNode) -> np.ndarray:
        """Fewest devices of each range i..p as one stage, per downstream depth: [i, p, l]."""
        nid = self.search.canon.range_id(node, 0, len(node.children) - 1)
        got = self.series_dmin.get(nid)
        if got is None:
            tps, first_fit, _ = self._series_costs(node)
            nd = len(self.degrees)
            # nxt[..., t] = the first degree index >= t that meets the target.
            nxt = np.full((*tps.shape[:2], nd + 1), nd)
            fast = tps <= self.target
            for t in range(nd - 1, -1, -1):
                nxt[..., t] = np.where(fast[..., t], t, nxt[..., t + 1])
            idx = np.take_along_axis(nxt, first_fit, axis=2)  # [i, p, l]
            got = np.append(self.degree_arr, INF)[idx]
            self.series_dmin[nid] = got
        return got

    def _sweep(self, node: SPNode) -> None:
        """Tables of every suffix i..end of a series node, last to first.

        For each ``i`` the candidates "children i..p as one stage, then the
        suffix p+1.." for all ``p`` are evaluated in one batched running
        minimum (`_series_after_stage` over a stack), so a chain of ``n``
        nodes costs ``n`` numpy passes per target instead of ``n^2``.
        """
        last = len(node.children) - 1
        rows = 1 if node is self.search.root else self.K + 1
        dmin_all, min_work, keys, stop = self._sweep_inputs(node)
        depth_ok = self.depth_ok[:rows]
        done = np.empty((last + 1, rows, self.K + 1), dtype=np.int64)
        done[last] = self.suffix(node.children[last], 0)[:rows]
        for i in range(last - 1, -1, -1):
            key = keys[i]
            got = self.tables.get(key)
            if got is not None:
                done[i] = got
                continue
            # Children i..end as one stage (the same values `_base` gives).
            vals = np.where(depth_ok, dmin_all[i, last, :rows, None], INF)
            child = node.children[i]
            feasible = self.target == float("inf") or min_work[i, last] <= self.target * self.D
            start, blocked = i, False
            if feasible and child.kind != "leaf":
                first = self.suffix(child, 0)
                # A single stage holding this child is heavier still: infeasible too.
                blocked = bool(first.min() >= INF)
                if not blocked and done[i + 1].min() < INF:
                    np.minimum(vals, self._combine("series", first, done[i + 1]), out=vals)
                start = i + 1
            end = int(stop[i, start]) if start < last else start
            if feasible and not blocked and start < end:
                d = dmin_all[i, start:end]  # [P, l]: children i..p as one stage
                rest = done[start + 1 : end + 1]  # [P, rows, u]
                np.minimum(vals, self._series_after_stage(d, rest).min(axis=0), out=vals)
            if child.kind == "parallel":
                for cand, *_ in self._folds(node, i):
                    np.minimum(vals, cand[:rows], out=vals)
            self.tables[key] = vals
            done[i] = vals

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
        canon = self.search.canon
        dep = np.minimum(np.arange(K + 1) + 1, K)
        self._price_folds(node, i)
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

    def _price_folds(self, node: SPNode, i: int) -> None:
        """Prices every fold of `_folds` for (node, i) in one vectorised call."""
        par, last, canon = node.children[i], len(node.children) - 1, self.search.canon
        keys: list[TableKey] = []
        rows: list[list[int]] = []
        for q in range(i + 1, last + 1):
            tail = self._members(node, i + 1, q)
            for k in range(len(par.children) - 1):
                key = ("fold", canon.range_id(par, 0, k), canon.range_id(node, i + 1, q))
                if key not in self.base_costs:
                    keys.append(key)
                    rows.append(self._members(par, 0, k) + tail)
        if not keys:
            return
        sets = np.zeros((len(keys), len(self.cm.nodes)), dtype=bool)
        for r, members in enumerate(rows):
            sets[r, members] = True
        priced = self.cm.stage_arrays(
            sets, micro_batch=self.b, batch=self.search.batch, degrees=self.degrees
        )
        for r, fold_key in enumerate(keys):
            self.base_costs[fold_key] = tuple(a[r] for a in priced)

    @staticmethod
    def _series_after_stage(dmin: np.ndarray, rest: np.ndarray) -> np.ndarray:
        """`_combine` for single-stage first groups in O(K^2) instead of O(K^3).

        ``dmin`` is ``[..., u]`` and ``rest`` ``[..., l, u]`` (leading axes
        batch several groups). The stage's table is ``dmin[u]`` where
        ``v >= min(K, u + 1)``, so ``min_u rest[l, u] + first[u, v]`` is a
        running minimum over ``u < v`` (and ``u = K`` for ``v = K``).
        """
        run = np.minimum.accumulate(rest + dmin[..., None, :], axis=-1)  # min over u <= w
        out = np.full_like(rest, INF)
        out[..., 1:] = run[..., :-1]
        out[..., -1] = run[..., -1]
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
        self.series_dmin = {}
        vals = self.suffix(self.search.root, 0)
        ok = np.nonzero(vals[0] <= self.D)[0]
        if len(ok) == 0:
            return None
        return 0, int(ok[0])

    def reconstruct(self, ell: int, v: int) -> tuple[list[list[int]], list[int]]:
        stages: list[list[int]] = []
        degrees: list[int] = []
        for members, d in self._emit_suffix(self.search.root, 0, ell, v):
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
        base = self._base(self.search.canon.range_id(node, i, last), node, i, last)
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
        if (
            node.kind != "leaf"
            and i == p
            and not (node.kind == "series" and node.children[i].kind == "leaf")
        ):
            yield from self._emit_suffix(node.children[i], 0, ell, v)
        else:
            yield self._members(node, i, p), int(self._group(node, i, p)[ell, v])


def _powers_of_two(limit: int) -> list[int]:
    out, d = [], 1
    while d <= limit:
        out.append(d)
        d *= 2
    return out
