"""Micro-batch schedules for a stage DAG, as data a runtime can execute.

DAG-aware synchronous 1F1B (GraphPipe §6): stage ``i`` runs
``W_i = min(M, L_i)`` warm-up forwards, where ``L_i`` is the number of stages on
the longest path from ``i`` to a sink (counting ``i``), then alternates one
backward and one forward, then drains its backwards. ``F(i, k)`` waits for
``F(p, k)`` of every predecessor ``p``; ``B(i, k)`` waits for ``F(i, k)`` and for
``B(j, k)`` of every successor ``j``. GPipe runs all forwards, then all
backwards.

A `Schedule` holds the per-stage op order and the tick table obtained by
running every op in one unit tick as early as its dependencies allow:
``ops[t][s]`` is ``"F"``, ``"B"`` or ``""`` (idle) and ``microbatch[t][s]`` the
micro-batch (``-1`` when idle). A runtime's scan body indexes these by tick and
stage (`Schedule.as_arrays`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jgraph.core import check_choice, check_int
from jgraph.pipeline._config import SCHEDULE_KINDS, ScheduleKind

__all__ = ["Schedule", "longest_path_to_sink", "make_schedule"]

OP_CODES = {"": 0, "F": 1, "B": 2}


def longest_path_to_sink(succs: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """``L_i``: stages on the longest path from ``i`` to a sink, counting ``i``."""
    n = len(succs)
    depth = [0] * n
    order = _topo(succs)
    for i in reversed(order):
        depth[i] = 1 + max((depth[j] for j in succs[i]), default=0)
    return tuple(depth)


def _topo(succs: Sequence[Sequence[int]]) -> list[int]:
    n = len(succs)
    indeg = [0] * n
    for s in succs:
        for j in s:
            indeg[j] += 1
    ready = [i for i in range(n) if indeg[i] == 0]
    order = []
    while ready:
        i = ready.pop()
        order.append(i)
        for j in succs[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(j)
    if len(order) != n:
        raise ValueError("stage graph has a cycle")
    return order


@dataclasses.dataclass(frozen=True, kw_only=True)
class Schedule:
    """A static micro-batch schedule of a stage DAG (pure data, JSON round-trip).

    Attributes:
        kind: ``"1f1b"`` or ``"gpipe"``.
        num_microbatches: ``M``.
        succs: successors of each stage (the stage DAG).
        order: per stage, its ops in execution order as ``(op, microbatch)``.
        ops: ``[tick][stage]`` op letter (``"F"``, ``"B"``, ``""`` idle).
        microbatch: ``[tick][stage]`` micro-batch index, ``-1`` when idle.
    """

    kind: ScheduleKind
    num_microbatches: int
    succs: tuple[tuple[int, ...], ...]
    order: tuple[tuple[tuple[str, int], ...], ...]
    ops: tuple[tuple[str, ...], ...]
    microbatch: tuple[tuple[int, ...], ...]

    @property
    def num_stages(self) -> int:
        return len(self.succs)

    @property
    def num_ticks(self) -> int:
        return len(self.ops)

    @property
    def depth(self) -> tuple[int, ...]:
        """``L_i`` per stage."""
        return longest_path_to_sink(self.succs)

    @property
    def preds(self) -> tuple[tuple[int, ...], ...]:
        out: list[list[int]] = [[] for _ in self.succs]
        for i, s in enumerate(self.succs):
            for j in s:
                out[j].append(i)
        return tuple(tuple(sorted(p)) for p in out)

    def warmup(self) -> tuple[int, ...]:
        """Forwards each stage runs before its first backward."""
        counts = []
        for seq in self.order:
            k = 0
            while k < len(seq) and seq[k][0] == "F":
                k += 1
            counts.append(k)
        return tuple(counts)

    def peak_in_flight(self) -> tuple[int, ...]:
        """Most micro-batches whose forward ran and backward did not, per stage."""
        peaks = []
        for seq in self.order:
            live = peak = 0
            for op, _ in seq:
                live += 1 if op == "F" else -1
                peak = max(peak, live)
            peaks.append(peak)
        return tuple(peaks)

    def as_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(op_code [ticks, stages] int8: 0 idle, 1 F, 2 B; microbatch [ticks, stages] int32)``."""
        code = np.array([[OP_CODES[o] for o in row] for row in self.ops], dtype=np.int8)
        mb = np.array(self.microbatch, dtype=np.int32)
        return code.reshape(self.num_ticks, self.num_stages), mb.reshape(
            self.num_ticks, self.num_stages
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "num_microbatches": self.num_microbatches,
            "succs": [list(s) for s in self.succs],
            "order": [[f"{op}{k}" for op, k in seq] for seq in self.order],
            "ops": [list(r) for r in self.ops],
            "microbatch": [list(r) for r in self.microbatch],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Schedule:
        return cls(
            kind=d["kind"],
            num_microbatches=int(d["num_microbatches"]),
            succs=tuple(tuple(int(j) for j in s) for s in d["succs"]),
            order=tuple(tuple((t[0], int(t[1:])) for t in seq) for seq in d["order"]),
            ops=tuple(tuple(r) for r in d["ops"]),
            microbatch=tuple(tuple(int(x) for x in r) for r in d["microbatch"]),
        )


def stage_order(kind: ScheduleKind, depth: int, m: int) -> tuple[tuple[str, int], ...]:
    """One stage's op order: 1F1B with ``min(m, depth)`` warm-up forwards, or GPipe."""
    if kind == "gpipe":
        return tuple([("F", k) for k in range(m)] + [("B", k) for k in range(m)])
    w = min(m, depth)
    seq: list[tuple[str, int]] = [("F", k) for k in range(w)]
    for k in range(m - w):
        seq += [("B", k), ("F", w + k)]
    seq += [("B", k) for k in range(m - w, m)]
    return tuple(seq)


def make_schedule(
    kind: ScheduleKind, succs: Sequence[Sequence[int]], num_microbatches: int
) -> Schedule:
    """Builds the schedule of a stage DAG and its unit-tick table.

    Args:
        kind: ``"1f1b"`` (DAG-aware, warm-up ``min(M, L_i)``) or ``"gpipe"``.
        succs: successors of each stage.
        num_microbatches: ``M >= 1``; ``M`` below the depth is fine.

    Returns:
        The `Schedule`.

    Example:
        >>> s = make_schedule("1f1b", [[1], []], 3)  # a 2-stage chain
        >>> s.warmup(), s.ops[:3]
        ((2, 1), (('F', ''), ('F', 'F'), ('', 'B')))
    """
    check_choice("make_schedule.kind", kind, SCHEDULE_KINDS)
    check_int("make_schedule.num_microbatches", num_microbatches, minimum=1)
    succ = tuple(tuple(sorted(set(s))) for s in succs)
    depth = longest_path_to_sink(succ)
    order = tuple(stage_order(kind, depth[i], num_microbatches) for i in range(len(succ)))
    preds: list[list[int]] = [[] for _ in succ]
    for i, s in enumerate(succ):
        for j in s:
            preds[j].append(i)
    done_at: dict[tuple[str, int, int], int] = {}  # (op, stage, mb) -> tick it ran
    pos = [0] * len(succ)
    ops: list[tuple[str, ...]] = []
    mbs: list[tuple[int, ...]] = []
    remaining = sum(len(o) for o in order)
    tick = 0
    while remaining:
        row_op, row_mb = [""] * len(succ), [-1] * len(succ)
        for i, seq in enumerate(order):
            if pos[i] == len(seq):
                continue
            op, k = seq[pos[i]]
            deps = [("F", p, k) for p in preds[i]] if op == "F" else [("B", j, k) for j in succ[i]]
            if all(done_at.get(d, tick) < tick for d in deps):
                row_op[i], row_mb[i] = op, k
        ran = [i for i in range(len(succ)) if row_op[i]]
        if not ran:
            raise RuntimeError(f"schedule deadlocked at tick {tick} (a bug): positions {pos}")
        for i in ran:
            done_at[(row_op[i], i, row_mb[i])] = tick
            pos[i] += 1
        remaining -= len(ran)
        ops.append(tuple(row_op))
        mbs.append(tuple(row_mb))
        tick += 1
    return Schedule(
        kind=kind, num_microbatches=num_microbatches, succs=succ, order=order, ops=tuple(ops),
        microbatch=tuple(mbs),
    )  # fmt: skip
