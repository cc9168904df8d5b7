"""Discrete-event simulation of one training iteration of a scheduled stage DAG.

Each stage executes its ops in the schedule's order; an op starts when the
stage is free and its dependencies have finished (``F(i,k)`` after ``F(p,k)``
of every predecessor, ``B(i,k)`` after ``B(j,k)`` of every successor). Op
durations come from the cost model (transfers are part of them, see `_cost`).
After its last backward a stage all-reduces its gradients over its
data-parallel group; the iteration ends when the last stage is done. Fill and
drain bubbles therefore appear exactly, unlike in the bottleneck-TPS objective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from jgraph.pipeline._schedule import Schedule

__all__ = ["SimResult", "iteration_lower_bound", "simulate"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimResult:
    """What one simulated iteration looks like (seconds).

    Attributes:
        iteration_s: makespan of the iteration, all-reduces included.
        busy_s: per stage, time spent computing/communicating.
        idle_s: per stage, ``iteration_s - busy_s``.
        peak_in_flight: per stage, most micro-batches stashed at once.
        bubble_fraction: device-weighted idle share of the iteration.
        timeline: per stage, ``(op, microbatch, start, end)`` (``op`` F, B or AR).
    """

    iteration_s: float
    busy_s: tuple[float, ...]
    idle_s: tuple[float, ...]
    peak_in_flight: tuple[int, ...]
    bubble_fraction: float
    timeline: tuple[tuple[tuple[str, int, float, float], ...], ...]


def simulate(
    schedule: Schedule,
    fwd_s: Sequence[float],
    bwd_s: Sequence[float],
    *,
    allreduce_s: Sequence[float] | None = None,
    devices: Sequence[int] | None = None,
) -> SimResult:
    """Simulates ``schedule`` with per-stage forward/backward durations.

    Args:
        schedule: the schedule (its per-stage order and stage DAG are used).
        fwd_s: seconds of one forward of one micro-batch, per stage.
        bwd_s: seconds of one backward, per stage.
        allreduce_s: per stage, gradient all-reduce seconds at the end (default 0).
        devices: per stage device count, to weight the bubble fraction (default 1).

    Returns:
        A `SimResult`.

    Example:
        Two stages, F = 1 s and B = 2 s, 2 micro-batches: (M + S - 1) (F + B) = 9 s.

        >>> from jgraph.pipeline import make_schedule
        >>> simulate(make_schedule("1f1b", [[1], []], 2), [1.0, 1.0], [2.0, 2.0]).iteration_s
        9.0
    """
    n = schedule.num_stages
    ar = list(allreduce_s) if allreduce_s is not None else [0.0] * n
    devs = list(devices) if devices is not None else [1] * n
    if not (len(fwd_s) == len(bwd_s) == len(ar) == len(devs) == n):
        raise ValueError(f"simulate: need {n} values per stage")
    preds, succs = schedule.preds, schedule.succs
    end: dict[tuple[str, int, int], float] = {}
    free = [0.0] * n
    pos = [0] * n
    timeline: list[list[tuple[str, int, float, float]]] = [[] for _ in range(n)]
    remaining = sum(len(o) for o in schedule.order)
    while remaining:
        progressed = False
        for i, seq in enumerate(schedule.order):
            while pos[i] < len(seq):
                op, k = seq[pos[i]]
                deps = (
                    [("F", p, k) for p in preds[i]]
                    if op == "F"
                    else [("B", j, k) for j in succs[i]]
                )
                if any(d not in end for d in deps):
                    break
                start = max([free[i], *(end[d] for d in deps)])
                stop = start + (fwd_s[i] if op == "F" else bwd_s[i])
                end[(op, i, k)] = stop
                free[i] = stop
                timeline[i].append((op, k, start, stop))
                pos[i] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise RuntimeError(f"simulation deadlocked (a bug): positions {pos}")
    for i in range(n):
        if ar[i] > 0:
            timeline[i].append(("AR", -1, free[i], free[i] + ar[i]))
            free[i] += ar[i]
    total = max(free)
    m = schedule.num_microbatches
    busy = [m * (fwd_s[i] + bwd_s[i]) + ar[i] for i in range(n)]
    weighted = sum(d * b for d, b in zip(devs, busy, strict=True))
    bubble = 1.0 - weighted / (sum(devs) * total) if total > 0 else 0.0
    return SimResult(
        iteration_s=total,
        busy_s=tuple(busy),
        idle_s=tuple(total - b for b in busy),
        peak_in_flight=schedule.peak_in_flight(),
        bubble_fraction=bubble,
        timeline=tuple(tuple(t) for t in timeline),
    )


def iteration_lower_bound(
    succs: Sequence[Sequence[int]],
    fwd_s: Sequence[float],
    bwd_s: Sequence[float],
    num_microbatches: int,
    allreduce_s: Sequence[float] | None = None,
) -> float:
    """A bound no schedule of this stage DAG can beat, without simulating it.

    Stage ``i`` cannot start before the forwards on its longest chain of
    ancestors have run once, then runs ``M`` forwards and backwards itself,
    and after its last backward the backwards of its ancestors (and an
    all-reduce at the end of that chain) still follow. The planner skips the
    simulation of candidates whose bound already loses to the best plan.

    Args:
        succs: successors of each stage, stages numbered topologically.
        fwd_s: forward seconds per micro-batch, per stage.
        bwd_s: backward seconds per micro-batch, per stage.
        num_microbatches: ``M``.
        allreduce_s: per stage all-reduce seconds (default 0).

    Returns:
        Seconds; ``<= simulate(...).iteration_s`` for any schedule kind.

    Example:
        >>> iteration_lower_bound([[1], []], [1.0, 1.0], [2.0, 2.0], 2)  # simulated: 9 s
        9.0
    """
    n = len(succs)
    ar = list(allreduce_s) if allreduce_s is not None else [0.0] * n
    preds: list[list[int]] = [[] for _ in range(n)]
    for i, ss in enumerate(succs):
        for j in ss:
            if j <= i:
                raise ValueError("iteration_lower_bound: stages must be numbered topologically")
            preds[j].append(i)
    fill, tail = [0.0] * n, [0.0] * n
    for i in range(n):
        fill[i] = max((fill[p] + fwd_s[p] for p in preds[i]), default=0.0)
        tail[i] = max([ar[i], *(bwd_s[p] + tail[p] for p in preds[i])])
    return max(fill[i] + num_microbatches * (fwd_s[i] + bwd_s[i]) + tail[i] for i in range(n))
