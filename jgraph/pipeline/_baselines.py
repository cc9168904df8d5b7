"""Sequential-pipeline baselines on the same cost model: PipeDream, Piper, GPipe.

All three produce a *chain* of stages (sequential pipeline parallelism, SPP),
the search space GraphPipe's paper compares against:

* **PipeDream-style**: a DP over a topological linearisation of the DAG;
  stages are contiguous ranges. ``f(j, m, l)`` = the smallest bottleneck TPS of
  the first ``j`` nodes on ``m`` devices when the next stage has depth ``l``
  (depth sets the 1F1B in-flight count, hence memory). We run it on the
  breadth-first and the depth-first linearisation and keep both candidates.
* **Piper-style**: the same DP over *downsets* (predecessor-closed node sets) of
  the DAG, so a stage may take any convex slice of several branches; the stage
  order is still a chain. The number of downsets grows as ``m^n`` for ``n``
  branches of ``m`` layers; above ``PlannerConfig.piper_max_downsets`` the
  planner reports no plan, as Piper's code aborts on wide graphs.
* **GPipe (uniform)**: ``S`` stages with equal numbers of layers on ``D / S``
  devices each, GPipe schedule.
"""

from __future__ import annotations

import numpy as np

from jgraph.pipeline._cost import CostModel

__all__ = ["downsets", "gpipe_uniform", "linearisations", "pipedream_dp", "piper_dp"]

INF = float("inf")


def linearisations(cm: CostModel) -> list[list[int]]:
    """Breadth-first (Kahn) and depth-first topological orders, as node indices."""
    bfs = list(range(len(cm.nodes)))  # cm numbers nodes in Kahn order
    indeg = [len(p) for p in cm.preds]
    stack = [v for v in reversed(bfs) if indeg[v] == 0]
    dfs: list[int] = []
    while stack:
        v = stack.pop()
        dfs.append(v)
        for w in reversed(cm.succs[v]):
            indeg[w] -= 1
            if indeg[w] == 0:
                stack.append(w)
    return [bfs] if dfs == bfs else [bfs, dfs]


def _degrees(b: int, devices: int) -> list[int]:
    out, d = [], 1
    while d <= min(b, devices):
        if b % d == 0:
            out.append(d)
        d *= 2
    return out


def _chain_dp(
    cm: CostModel,
    prefixes: list[np.ndarray],
    pairs: list[tuple[np.ndarray, np.ndarray]],
    b: int,
    batch: int,
    *,
    max_depth: int | None = None,
) -> tuple[list[list[int]], list[int]] | None:
    """Min-bottleneck chain partition over a lattice of prefixes (shared by both DPs).

    ``prefixes[p]`` is a boolean node mask; ``pairs[p]`` = (indices q of the
    sub-prefixes of p, stage masks p \\ q). Prefix 0 must be the empty set and
    the last one the whole graph. ``f[p, l, m]`` = smallest bottleneck TPS of
    prefix p on at most m devices when the stage after it has depth l.
    ``max_depth`` bounds the number of stages. Returns (stages, degrees) or None.
    """
    D = cm.cluster.num_devices
    m = batch // b
    K = min(m, D)
    limit = max_depth if max_depth is not None else D
    degrees = _degrees(b, D)
    cap = cm.cluster.memory_bytes
    gpipe = cm.config.schedule == "gpipe"
    ells = np.arange(K + 1)
    nxt = np.minimum(K, ells + 1)  # depth of a stage whose successor has depth l
    in_flight = np.full(K + 1, m) if gpipe else np.minimum(m, nxt)
    allowed = ells + 1 <= limit  # [l]
    P = len(prefixes)
    f = np.full((P, K + 1, D + 1), INF)
    f[0] = 0.0
    arg_q = np.full((P, K + 1, D + 1), -1, dtype=np.int64)
    arg_d = np.zeros((P, K + 1, D + 1), dtype=np.int64)
    for p in range(1, P):
        qs, masks = pairs[p]
        if len(qs) == 0:
            continue
        tps, static, act, work = cm.stage_arrays(masks, micro_batch=b, batch=batch, degrees=degrees)
        up = f[qs][:, nxt, :]  # [pairs, l, m]: earlier stages see this stage's depth
        best = np.full((K + 1, D + 1), INF)
        bq = np.full((K + 1, D + 1), -1, dtype=np.int64)
        bd = np.zeros((K + 1, D + 1), dtype=np.int64)
        for t, d in enumerate(degrees):
            # [pairs, l]: fits in memory with this stage's in-flight count.
            ok = (
                static[:, t, None] + in_flight[None, :] * act[:, t, None] + work[:, t, None]
            ) <= cap
            ok &= allowed[None, :]
            if not ok.any():
                continue
            cand = np.full((len(qs), K + 1, D + 1), INF)
            cand[:, :, d:] = np.maximum(tps[:, t, None, None], up[:, :, : D + 1 - d])
            cand[~ok] = INF
            i = cand.argmin(axis=0)  # [l, m]
            v = np.take_along_axis(cand, i[None], axis=0)[0]
            better = v < best
            best = np.where(better, v, best)
            bq = np.where(better, qs[i], bq)
            bd = np.where(better, d, bd)
        f[p], arg_q[p], arg_d[p] = best, bq, bd
    last = P - 1
    if not np.isfinite(f[last, 0, D]):
        return None
    stages: list[list[int]] = []
    degs: list[int] = []
    p, ell, dev = last, 0, D
    while p != 0:
        q, d = int(arg_q[p, ell, dev]), int(arg_d[p, ell, dev])
        stages.append(np.nonzero(prefixes[p] & ~prefixes[q])[0].tolist())
        degs.append(d)
        p, ell, dev = q, int(nxt[ell]), dev - d
    return stages[::-1], degs[::-1]


def pipedream_dp(
    cm: CostModel, b: int, batch: int, order: list[int], *, max_depth: int | None = None
) -> tuple[list[list[int]], list[int]] | None:
    """PipeDream-style DP: contiguous ranges of the linear ``order`` (at most ``max_depth``)."""
    n = len(order)
    prefixes = []
    for j in range(n + 1):
        mask = np.zeros(len(cm.nodes), dtype=bool)
        mask[order[:j]] = True
        prefixes.append(mask)
    pairs = [(np.zeros(0, dtype=np.int64), np.zeros((0, n), dtype=bool))]
    for j in range(1, n + 1):
        qs = np.arange(j, dtype=np.int64)
        pairs.append((qs, np.stack([prefixes[j] & ~prefixes[i] for i in range(j)])))
    return _chain_dp(cm, prefixes, pairs, b, batch, max_depth=max_depth)


def downsets(cm: CostModel, limit: int) -> list[int] | None:
    """All predecessor-closed node sets as bitmasks, by size; None if more than ``limit``."""
    n = len(cm.nodes)
    pred_mask = [sum(1 << u for u in ps) for ps in cm.preds]
    seen = {0}
    frontier = [0]
    out = [0]
    while frontier:
        nxt = []
        for s in frontier:
            for v in range(n):
                if not s >> v & 1 and pred_mask[v] & s == pred_mask[v]:
                    t = s | 1 << v
                    if t not in seen:
                        seen.add(t)
                        nxt.append(t)
                        out.append(t)
                        if len(out) > limit:
                            return None
        frontier = nxt
    return out


def piper_dp(
    cm: CostModel, b: int, batch: int, ideals: list[int]
) -> tuple[list[list[int]], list[int]] | None:
    """Piper-style DP over downsets (``ideals`` from `downsets`)."""
    n = len(cm.nodes)
    bits = np.array([[s >> v & 1 for v in range(n)] for s in ideals], dtype=bool)
    pairs = [(np.zeros(0, dtype=np.int64), np.zeros((0, n), dtype=bool))]
    for p in range(1, len(ideals)):
        sub = ~(bits & ~bits[p]).any(axis=1)
        sub[p] = False
        qs = np.nonzero(sub)[0]
        pairs.append((qs, bits[p][None, :] & ~bits[qs]))
    return _chain_dp(cm, list(bits), pairs, b, batch)


def gpipe_uniform(cm: CostModel, b: int, stages: int) -> tuple[list[list[int]], list[int]] | None:
    """``stages`` stages with equal counts of compute nodes (BFS order), ``D / stages`` devices each."""
    D = cm.cluster.num_devices
    d = D // stages
    if d < 1 or b % d:
        return None
    compute = [v for v in range(len(cm.nodes)) if cm.nodes[v].kind not in ("input", "junction")]
    if stages > len(compute):
        return None
    bounds = [round(k * len(compute) / stages) for k in range(stages + 1)]
    owner = {}
    for s in range(stages):
        for v in compute[bounds[s] : bounds[s + 1]]:
            owner[v] = s
    groups: list[list[int]] = [[] for _ in range(stages)]
    for v in range(len(cm.nodes)):
        if v not in owner:  # zero-cost inputs join their first consumer's stage
            owner[v] = min(owner.get(w, stages - 1) for w in cm.succs[v]) if cm.succs[v] else 0
        groups[owner[v]].append(v)
    return groups, [d] * stages
