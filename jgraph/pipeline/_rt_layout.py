"""The static layout of a pipelined train step: where every tensor goes, tick by tick.

Everything a runtime step does is decided here, in numpy, before tracing: the
step itself only indexes these tables by tick and by its own mesh row.

**Mesh.** Axes ``(STAGE, DATA)`` of shape ``(R, D)`` with ``D = gcd`` of every
stage's data-parallel degree (and the device count): device ``g`` of the plan
sits at row ``g // D``, column ``g % D``. A stage with ``d`` replicas owns
``d / D`` consecutive rows (the plan places stages on aligned device ranges), so
uniform data parallelism is a plain ``psum`` over ``DATA`` and ragged degrees
add a ring over the stage's rows. Rows no stage owns idle.

**Samples.** A micro-batch of ``b`` samples is cut into ``D`` column blocks;
within a column, a stage with ``k`` rows gives each row ``b / (D k)`` samples
(``b / d``, its replica's share). Transfers therefore never leave a column.

**Wire.** Each tensor crossing stages (a node's output read by another stage)
moves as contiguous row ranges ("pieces") of a flat buffer; forward pieces carry
activations, backward pieces carry their cotangents back. All pieces are
edge-coloured (König: max degree colours) so that every colour is one
`lax.ppermute` (a partial permutation) over ``STAGE``, run every tick; a
device's table entry says which piece it sends and where a received one lands.

**Slots.** A stage keeps its inputs from other stages for each micro-batch from
arrival until its backward (stage-input rematerialisation), and the cotangents
of its outputs from their first arrival until its backward; slots are assigned
by interval colouring of those lifetimes, so a stage never holds more than the
schedule makes live.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from jgraph.core import ConfigError
from jgraph.pipeline._plan import StagePlan

__all__ = ["Layout", "Piece", "StageIO", "build_layout", "colour_pieces"]


@dataclasses.dataclass(frozen=True)
class StageIO:
    """One stage's nodes and the tensors it exchanges (per replica, flat offsets)."""

    nodes: tuple[str, ...]
    ext_in: tuple[str, ...]  # nodes of other stages this stage reads
    ext_out: tuple[str, ...]  # own nodes other stages read
    in_off: tuple[int, ...]  # offset of each ext_in tensor in the input slot
    out_off: tuple[int, ...]  # offset of each ext_out tensor in the output/cotangent slot
    rows: int  # samples per replica (b / d)
    first_row: int  # first mesh row
    num_rows: int  # mesh rows (d / D)
    has_loss: bool

    @property
    def in_size(self) -> int:
        return self.in_off[-1] if self.in_off else 0

    @property
    def out_size(self) -> int:
        return self.out_off[-1] if self.out_off else 0


@dataclasses.dataclass(frozen=True)
class Piece:
    """A contiguous element range moved from one mesh row to another."""

    src_row: int
    dst_row: int
    src_stage: int
    dst_stage: int
    backward: bool  # a cotangent (sent when the source stage runs B) or an activation (F)
    src_off: int
    dst_off: int
    length: int


@dataclasses.dataclass(frozen=True)
class Layout:
    """Static tables of one pipelined step (see the module docstring)."""

    rows: int  # R
    cols: int  # D
    row_stage: np.ndarray  # [R] stage of each row, -1 idle
    row_q: np.ndarray  # [R] row index within its stage
    stages: tuple[StageIO, ...]
    pieces: tuple[Piece, ...]
    perms: tuple[tuple[tuple[int, int], ...], ...]  # per colour: (src_row, dst_row) pairs
    wire: int  # elements per ppermute payload
    in_slots: int
    cot_slots: int
    slot_in_size: int
    slot_out_size: int
    # Per tick tables, [T, R] (or [T, R, C] per colour).
    op: np.ndarray  # 0 idle, 1 F, 2 B
    mb: np.ndarray  # micro-batch, 0 when idle
    in_slot: np.ndarray  # the input slot this op reads (0 when none)
    cot_slot: np.ndarray  # the cotangent slot B reads
    send_off: np.ndarray  # [T, R, C]
    send_len: np.ndarray  # [T, R, C] 0 = nothing sent
    recv_kind: np.ndarray  # [T, R, C] 0 none, 1 input slot, 2 cotangent slot
    recv_slot: np.ndarray  # [T, R, C]
    recv_off: np.ndarray  # [T, R, C]
    stage_in_slots: tuple[int, ...]  # slots each stage needs (its live inputs at most)
    stage_cot_slots: tuple[int, ...]
    ring_perms: tuple[tuple[tuple[int, int], ...], ...]  # DP ring rounds over STAGE
    ring_active: np.ndarray  # [rounds, R] bool

    @property
    def num_ticks(self) -> int:
        return int(self.op.shape[0])

    @property
    def permutes_per_tick(self) -> int:
        return len(self.perms)


def colour_pieces(edges: Sequence[tuple[int, int]]) -> list[int]:
    """Colours directed edges so no two of a colour share a source or a destination.

    Bipartite edge colouring (senders on one side, receivers on the other) with
    exactly ``max degree`` colours, by flipping alternating paths (König).
    """
    if not edges:
        return []
    deg: dict[tuple[str, int], int] = {}
    for s, d in edges:
        deg[("s", s)] = deg.get(("s", s), 0) + 1
        deg[("d", d)] = deg.get(("d", d), 0) + 1
    ncol = max(deg.values())
    # at[vertex][colour] = edge index using that colour at the vertex
    at: dict[tuple[str, int], dict[int, int]] = {v: {} for v in deg}
    colour = [-1] * len(edges)

    def free(v: tuple[str, int]) -> int:
        return next(c for c in range(ncol) if c not in at[v])

    for e, (s, d) in enumerate(edges):
        u, v = ("s", s), ("d", d)
        a, b = free(u), free(v)
        if a != b and a in at[v]:
            # Flip the a/b alternating path starting at v along colour a: afterwards
            # a is free at v (u is not on that path since b is free at u).
            path, x, c = [], v, a
            while c in at[x]:
                f = at[x][c]
                path.append(f)
                fs, fd = edges[f]
                x = ("d", fd) if x == ("s", fs) else ("s", fs)
                c = b if c == a else a
            for f in path:
                fs, fd = edges[f]
                del at[("s", fs)][colour[f]]
                del at[("d", fd)][colour[f]]
            for f in path:
                fs, fd = edges[f]
                colour[f] = b if colour[f] == a else a
                at[("s", fs)][colour[f]] = f
                at[("d", fd)][colour[f]] = f
        colour[e] = a
        at[u][a] = e
        at[v][a] = e
    return colour


def _intervals_to_slots(intervals: dict[int, tuple[int, int]]) -> tuple[dict[int, int], int]:
    """Interval colouring: micro-batch -> slot; an interval ``[start, end]`` may reuse a
    slot freed at ``end <= start`` (a slot is cleared before the tick's receives)."""
    free_at: list[int] = []  # per slot, the tick it frees
    slot: dict[int, int] = {}
    for k, (start, end) in sorted(intervals.items(), key=lambda kv: (kv[1][0], kv[0])):
        for j, f in enumerate(free_at):
            if f <= start:
                slot[k], free_at[j] = j, end
                break
        else:
            slot[k] = len(free_at)
            free_at.append(end)
    return slot, len(free_at)


def build_layout(
    plan: StagePlan,
    *,
    node_inputs: dict[str, tuple[str, ...]],
    elems: dict[str, int],
    sink: str,
    graph_inputs: frozenset[str],
) -> Layout:
    """Lays out ``plan``'s tensors, transfers, slots and tick tables.

    Args:
        plan: a checked plan.
        node_inputs: node -> the nodes and graph inputs it reads, for every node.
        elems: per-sample elements of each (non-input) node's output.
        sink: the node the loss reads.
        graph_inputs: graph-input names (read from the resident batch, never sent).
    """
    n_dev = plan.num_devices
    cols = math.gcd(n_dev, *(st.data_parallel for st in plan.stages))
    rows_total = n_dev // cols
    b = plan.micro_batch_size
    if b % cols:
        raise ConfigError(
            "StagePlan.micro_batch_size", b, f"is not a multiple of the data-parallel width {cols}",
            "re-plan: every stage's data-parallel degree must divide the micro-batch",
        )  # fmt: skip
    owner = plan.node_to_stage
    consumers: dict[str, list[str]] = {}
    for v, ins in node_inputs.items():
        for u in ins:
            consumers.setdefault(u, []).append(v)
    row_stage = np.full(rows_total, -1, np.int32)
    row_q = np.zeros(rows_total, np.int32)
    stage_io: list[StageIO] = []
    for st in plan.stages:
        first, d = min(st.devices), st.data_parallel
        if first % cols or b % d:
            raise ConfigError(
                f"StagePlan.stages[{st.index}].devices", list(st.devices),
                f"cannot be laid out on a mesh of {rows_total}x{cols} with micro-batch {b}",
                "re-plan: stage device ranges must be aligned to their size and divide b",
            )  # fmt: skip
        r0, k = first // cols, d // cols
        row_stage[r0 : r0 + k] = st.index
        row_q[r0 : r0 + k] = np.arange(k)
        mine = [v for v in st.nodes if v not in graph_inputs]
        ext_in = sorted(
            {u for v in mine for u in node_inputs[v] if u not in graph_inputs} - set(mine),
            key=list(owner).index,
        )
        ext_out = [u for u in mine if any(owner[w] != st.index for w in consumers.get(u, ()))]
        rows = b // d
        in_off = list(np.cumsum([0] + [rows * elems[u] for u in ext_in]))
        out_off = list(np.cumsum([0] + [rows * elems[u] for u in ext_out]))
        stage_io.append(
            StageIO(
                nodes=tuple(mine), ext_in=tuple(ext_in), ext_out=tuple(ext_out),
                in_off=tuple(int(x) for x in in_off), out_off=tuple(int(x) for x in out_off),
                rows=rows, first_row=r0, num_rows=k, has_loss=sink in mine,
            )
        )  # fmt: skip

    pieces: list[Piece] = []
    for t, dst in enumerate(stage_io):
        for j, u in enumerate(dst.ext_in):
            s = owner[u]
            src = stage_io[s]
            i = src.ext_out.index(u)
            e = elems[u]
            for qs in range(src.num_rows):
                for qt in range(dst.num_rows):
                    lo = max(qs * src.rows, qt * dst.rows)
                    hi = min((qs + 1) * src.rows, (qt + 1) * dst.rows)
                    if lo >= hi:
                        continue
                    so = src.out_off[i] + (lo - qs * src.rows) * e
                    do = dst.in_off[j] + (lo - qt * dst.rows) * e
                    ln = (hi - lo) * e
                    rs, rt = src.first_row + qs, dst.first_row + qt
                    pieces.append(Piece(rs, rt, s, t, False, so, do, ln))
                    pieces.append(Piece(rt, rs, t, s, True, do, so, ln))
    colours = colour_pieces([(p.src_row, p.dst_row) for p in pieces])
    ncol = max(colours, default=-1) + 1
    perms = tuple(
        tuple(
            sorted((p.src_row, p.dst_row) for p, c in zip(pieces, colours, strict=True) if c == col)
        )
        for col in range(ncol)
    )
    wire = max((p.length for p in pieces), default=1)

    sched = plan.schedule
    ops = np.array([[{"": 0, "F": 1, "B": 2}[o] for o in r] for r in sched.ops], np.int32)
    mbs = np.array(sched.microbatch, np.int32)
    n_ticks, n_st, m = ops.shape[0], len(stage_io), plan.num_microbatches
    tick_of = {}
    for tt in range(n_ticks):
        for s in range(n_st):
            if ops[tt, s]:
                tick_of[(int(ops[tt, s]), s, int(mbs[tt, s]))] = tt
    # Slot lifetimes: inputs live from the first arrival to the stage's B; output
    # cotangents from the first successor's B to the stage's B.
    in_slot_of: list[dict[int, int]] = []
    cot_slot_of: list[dict[int, int]] = []
    n_in, n_cot = [], []
    for s, io in enumerate(stage_io):
        srcs = {owner[u] for u in io.ext_in}
        dsts = {owner[w] for u in io.ext_out for w in consumers.get(u, ()) if owner[w] != s}
        a: dict[int, int] = {}
        c: dict[int, int] = {}
        na = nc = 0
        if srcs:
            iv = {k: (min(tick_of[(1, p, k)] for p in srcs), tick_of[(2, s, k)]) for k in range(m)}
            a, na = _intervals_to_slots(iv)
        if dsts:
            cv = {k: (min(tick_of[(2, q, k)] for q in dsts), tick_of[(2, s, k)]) for k in range(m)}
            c, nc = _intervals_to_slots(cv)
        in_slot_of.append(a)
        cot_slot_of.append(c)
        n_in.append(na)
        n_cot.append(nc)

    op = np.zeros((n_ticks, rows_total), np.int32)
    mb = np.zeros((n_ticks, rows_total), np.int32)
    in_slot = np.zeros((n_ticks, rows_total), np.int32)
    cot_slot = np.zeros((n_ticks, rows_total), np.int32)
    for r in range(rows_total):
        s = int(row_stage[r])
        if s < 0:
            continue
        for tt in range(n_ticks):
            if ops[tt, s]:
                k = int(mbs[tt, s])
                op[tt, r], mb[tt, r] = ops[tt, s], k
                in_slot[tt, r] = in_slot_of[s].get(k, 0)
                cot_slot[tt, r] = cot_slot_of[s].get(k, 0)
    shape = (n_ticks, rows_total, max(ncol, 1))
    send_off, send_len = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    recv_kind, recv_slot, recv_off = (np.zeros(shape, np.int32) for _ in range(3))
    for p, col in zip(pieces, colours, strict=True):
        want = 2 if p.backward else 1
        for tt in range(n_ticks):
            if ops[tt, p.src_stage] != want:
                continue
            k = int(mbs[tt, p.src_stage])
            send_off[tt, p.src_row, col], send_len[tt, p.src_row, col] = p.src_off, p.length
            recv_off[tt, p.dst_row, col] = p.dst_off
            if p.backward:
                recv_kind[tt, p.dst_row, col] = 2
                recv_slot[tt, p.dst_row, col] = cot_slot_of[p.dst_stage][k]
            else:
                recv_kind[tt, p.dst_row, col] = 1
                recv_slot[tt, p.dst_row, col] = in_slot_of[p.dst_stage][k]

    rounds = max((io.num_rows for io in stage_io), default=1) - 1
    ring_perms, ring_active = [], np.zeros((rounds, rows_total), bool)
    for j in range(rounds):
        pairs = []
        for io in stage_io:
            if io.num_rows > j + 1:
                k = io.num_rows
                pairs += [(io.first_row + q, io.first_row + (q + 1) % k) for q in range(k)]
                ring_active[j, io.first_row : io.first_row + k] = True
        ring_perms.append(tuple(pairs))

    return Layout(
        rows=rows_total, cols=cols, row_stage=row_stage, row_q=row_q, stages=tuple(stage_io),
        pieces=tuple(pieces), perms=perms, wire=int(wire), in_slots=max(max(n_in), 1),
        cot_slots=max(max(n_cot), 1), slot_in_size=max(io.in_size for io in stage_io),
        slot_out_size=max(io.out_size for io in stage_io), op=op, mb=mb, in_slot=in_slot,
        cot_slot=cot_slot, send_off=send_off, send_len=send_len, recv_kind=recv_kind,
        recv_slot=recv_slot, recv_off=recv_off, stage_in_slots=tuple(n_in),
        stage_cot_slots=tuple(n_cot), ring_perms=tuple(ring_perms), ring_active=ring_active,
    )  # fmt: skip
