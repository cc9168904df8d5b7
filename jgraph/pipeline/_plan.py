"""`StagePlan`: what a planner hands to a runtime, and how one is assembled.

A plan is the stage DAG (which nodes each stage runs, on which devices), the
uniform micro-batch size and count, the schedule table, and the simulated
iteration time and per-device memory. It is frozen and round-trips through
JSON (`StagePlan.to_json` / `StagePlan.from_json`), so a later runtime can load
it without re-planning.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from jgraph.core import ConfigError
from jgraph.pipeline._config import ClusterConfig
from jgraph.pipeline._cost import CostModel, StageCost
from jgraph.pipeline._graph import ModelGraph
from jgraph.pipeline._plan_check import check_plan, check_plan_fits, parse_json, read_plan
from jgraph.pipeline._schedule import Schedule, _topo, make_schedule
from jgraph.pipeline._simulate import SimResult, iteration_lower_bound, simulate

__all__ = ["SCHEMA_VERSION", "Stage", "StagePlan", "assemble_plan"]

SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage:
    """One pipeline stage.

    Attributes:
        index: position in the plan (stages are numbered in a topological order).
        nodes: model-graph node names, in topological order.
        devices: global device ids (a contiguous, size-aligned range; data
            parallel when > 1).
        fwd_s, bwd_s: predicted seconds per micro-batch, transfers included.
        allreduce_s: predicted gradient all-reduce seconds per iteration.
        tps: predicted time per sample (the partitioner's objective).
        memory_bytes: predicted peak bytes per device of this stage.
        peak_in_flight: micro-batches stashed at once under the schedule.
        depth: ``L_i``, stages on the longest path to a sink.
    """

    index: int
    nodes: tuple[str, ...]
    devices: tuple[int, ...]
    fwd_s: float
    bwd_s: float
    allreduce_s: float
    tps: float
    memory_bytes: float
    peak_in_flight: int
    depth: int

    @property
    def data_parallel(self) -> int:
        return len(self.devices)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StagePlan:
    """A graph-pipeline-parallel training plan (frozen; JSON round-trip).

    Attributes:
        planner: which planner produced it (graphpipe, pipedream, piper, gpipe).
        model: the model graph's name.
        batch_size: mini-batch size ``B``.
        micro_batch_size: ``b`` (uniform over stages); ``num_microbatches = B / b``.
        num_devices: devices in the cluster (some may be left idle).
        memory_limit_bytes: the per-device memory the plan had to fit.
        stages: the stages, topologically ordered.
        edges: stage DAG edges ``(i, j)``: ``i`` precedes ``j`` in forward.
        schedule: the micro-batch schedule (tick table included).
        iteration_s: simulated seconds per training iteration.
        bubble_fraction: simulated device-weighted idle share.
        added_edges: ``(u, v)`` node pairs added to make the DAG series-parallel.
        search_s: planner wall-clock seconds (0 if not measured).
    """

    planner: str
    model: str
    batch_size: int
    micro_batch_size: int
    num_devices: int
    memory_limit_bytes: float
    stages: tuple[Stage, ...]
    edges: tuple[tuple[int, int], ...]
    schedule: Schedule
    iteration_s: float
    bubble_fraction: float
    added_edges: tuple[tuple[str, str], ...] = ()
    search_s: float = 0.0

    @property
    def num_microbatches(self) -> int:
        return self.batch_size // self.micro_batch_size

    @property
    def throughput(self) -> float:
        """Simulated samples per second."""
        return self.batch_size / self.iteration_s

    @property
    def depth(self) -> int:
        return max(s.depth for s in self.stages)

    @property
    def node_to_stage(self) -> dict[str, int]:
        return {n: s.index for s in self.stages for n in s.nodes}

    @property
    def max_memory_bytes(self) -> float:
        return max(s.memory_bytes for s in self.stages)

    @property
    def bottleneck_tps(self) -> float:
        return max(s.tps for s in self.stages)

    @property
    def devices_used(self) -> int:
        return sum(s.data_parallel for s in self.stages)

    def simulation(self) -> SimResult:
        """Re-runs the simulator on the plan's own stage times (the Gantt chart's data)."""
        return simulate(
            self.schedule,
            [s.fwd_s for s in self.stages],
            [s.bwd_s for s in self.stages],
            allreduce_s=[s.allreduce_s for s in self.stages],
            devices=[s.data_parallel for s in self.stages],
        )

    def to_dict(self) -> dict[str, Any]:
        d = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("stages", "schedule", "edges", "added_edges")
        }
        d["schema_version"] = SCHEMA_VERSION
        d["stages"] = [
            {**dataclasses.asdict(s), "nodes": list(s.nodes), "devices": list(s.devices)}
            for s in self.stages
        ]
        d["edges"] = [list(e) for e in self.edges]
        d["added_edges"] = [list(e) for e in self.added_edges]
        d["schedule"] = self.schedule.to_dict()
        d["summary"] = {
            "throughput_samples_per_s_simulated": self.throughput,
            "num_microbatches": self.num_microbatches,
            "depth": self.depth,
            "max_memory_bytes": self.max_memory_bytes,
            "node_to_stage": self.node_to_stage,
        }
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StagePlan:
        """Reads and checks a plan (`to_dict`'s layout); see `from_json`."""
        version = d.get("schema_version") if isinstance(d, Mapping) else None
        if version != SCHEMA_VERSION:
            raise ConfigError(
                "StagePlan.schema_version",
                version,
                f"this jgraph reads plan schema {SCHEMA_VERSION}",
                "re-plan with this jgraph version",
            )
        plan = cls(**read_plan(d))
        check_plan(plan)
        return plan

    @classmethod
    def from_json(cls, text: str) -> StagePlan:
        """Reads a plan file's text, checking every field and the plan's consistency.

        Raises:
            ConfigError: naming the first bad field (a missing or mistyped field, a
                node or device in two stages, a device out of range, a cycle, a
                micro-batch size that does not divide the batch, a schedule that
                skips a micro-batch or breaks a dependency, non-finite times, ...).
        """
        return cls.from_dict(parse_json(text))

    def validate(self, graph: ModelGraph, cluster: ClusterConfig) -> StagePlan:
        """Checks that this plan can run ``graph`` on ``cluster``; returns the plan.

        Every node of the graph is in exactly one stage and no stage names another
        node; every graph edge between stages is ordered by the stage DAG; nodes in
        a stage follow the graph's topological order; the cluster has the plan's
        device count and at least its per-device memory. A runtime calls this
        before tracing.

        Raises:
            ConfigError: naming the field and what to do.

        Example:
            >>> from jgraph.pipeline import ClusterConfig, plan_pipeline
            >>> from jgraph.pipeline.models import mmt
            >>> g, c = mmt(branches=2, layers=1), ClusterConfig(num_devices=4)
            >>> plan = plan_pipeline(g, c, batch=16)
            >>> StagePlan.from_json(plan.to_json()).validate(g, c) == plan
            True
        """
        check_plan(self)
        check_plan_fits(self, graph, cluster)
        return self


def fill_leftover_devices(
    cm: CostModel,
    stages: list[list[int]],
    degrees: list[int],
    *,
    micro_batch: int,
    batch: int,
) -> list[int]:
    """Doubles the data parallelism of the slowest stage while spare devices allow it."""
    degrees = list(degrees)
    spare = cm.cluster.num_devices - sum(degrees)

    def tps(i: int, d: int) -> float:
        return cm.stage_cost(stages[i], devices=d, micro_batch=micro_batch, batch=batch).tps

    current = [tps(i, d) for i, d in enumerate(degrees)]
    while spare > 0:
        i = max(range(len(stages)), key=current.__getitem__)
        d = degrees[i]
        if d > spare or micro_batch % (2 * d):
            break
        better = tps(i, 2 * d)
        if better >= current[i]:
            break
        degrees[i], current[i], spare = 2 * d, better, spare - d
    return degrees


def assemble_plan(
    cm: CostModel,
    stages: Sequence[Sequence[int]],
    degrees: Sequence[int],
    *,
    micro_batch: int,
    batch: int,
    planner: str,
    order_edges: Sequence[tuple[int, int]] = (),
    chain: bool = False,
    search_s: float = 0.0,
    bound_s: float = float("inf"),
) -> tuple[StagePlan, SimResult] | None:
    """Builds, places, schedules and simulates a plan from node-index groups.

    Args:
        cm: the cost model (holds the graph, cluster and planner config).
        stages: node indices (topological numbering of ``cm``) of each stage.
        degrees: data-parallel degree of each stage.
        micro_batch: uniform micro-batch size ``b`` (a multiple of every degree).
        batch: mini-batch size ``B`` (a multiple of ``b``).
        planner: name recorded in the plan.
        order_edges: extra dependency edges (node indices) the planner assumed.
        chain: sequential pipeline (SPP): stage ``i`` feeds stage ``i + 1`` in the
            given order, as PipeDream/Piper/GPipe runtimes execute it, whatever
            the data dependencies.
        search_s: planner wall time to record.
        bound_s: skip scheduling and simulating when `iteration_lower_bound`
            shows the plan cannot finish an iteration faster than this.

    Returns:
        ``(plan, simulation)``, or None when the bound rules the plan out.
    """
    names = cm.graph.topological_order
    owner: dict[int, int] = {}
    for s, members in enumerate(stages):
        for v in members:
            owner[v] = s
    if sorted(owner) != list(range(len(names))) or sum(map(len, stages)) != len(names):
        raise ValueError("assemble_plan: stages must partition the graph's nodes")
    raw_edges = {
        (owner[u], owner[v])
        for v in range(len(names))
        for u in [*cm.preds[v], *(a for a, b in order_edges if b == v)]
        if owner[u] != owner[v]
    }
    if chain:
        raw_edges |= {(i, i + 1) for i in range(len(stages) - 1)}
    succ: list[list[int]] = [[] for _ in stages]
    for a, b in raw_edges:
        succ[a].append(b)
    try:
        topo = _topo(succ)
    except ValueError:
        raise ValueError(f"assemble_plan: {planner} produced non-convex stages (a bug)") from None
    # Stable topological numbering: earliest node first among ready stages.
    topo = _stable_topo(succ, [min(m) for m in stages])
    renum = {old: new for new, old in enumerate(topo)}
    stages = [sorted(stages[old]) for old in topo]
    degrees = [degrees[old] for old in topo]
    owner = {v: renum[s] for v, s in owner.items()}
    edges = sorted({(renum[a], renum[b]) for a, b in raw_edges})
    succs = [[b for a, b in edges if a == i] for i in range(len(stages))]

    per_node = cm.cluster.devices_per_node
    # Buddy placement: groups in decreasing size (ties in stage order) start at
    # multiples of their power-of-two size, so a data-parallel group never
    # straddles a node boundary it could fit inside (its all-reduce then runs on
    # the fast link, as the partitioner assumed).
    starts = [0] * len(stages)
    cursor = 0
    for i in sorted(range(len(stages)), key=lambda i: (-degrees[i], i)):
        starts[i] = cursor
        cursor += degrees[i]
    devs = [tuple(range(starts[i], starts[i] + degrees[i])) for i in range(len(stages))]
    host = [{d // per_node for d in ds} for ds in devs]

    costs: list[StageCost] = []
    for i, members in enumerate(stages):
        inside = set(members)
        cut_in: dict[int, float] = {}
        in_links: dict[int, bool] = {}
        cut_out: list[float] = []
        out_links: list[bool] = []
        for v in members:
            for u in cm.preds[v]:
                if u not in inside:
                    cut_in[u] = cm.out[u]
                    in_links[u] = len(host[owner[u]] | host[i]) > 1
            for w in cm.succs[v]:
                if w not in inside:
                    cut_out.append(cm.out[v])
                    out_links.append(len(host[owner[w]] | host[i]) > 1)
        c = cm.stage_cost_from_sums(
            list(members), list(cut_in.values()), cut_out, devices=degrees[i], micro_batch=micro_batch,
            batch=batch, inter_node=False, in_links=[in_links[u] for u in cut_in],
            out_links=out_links,
        )  # fmt: skip
        if len(host[i]) > 1 and degrees[i] <= per_node:
            # The group straddles two nodes: its all-reduce runs on the slow link.
            param = float(cm.param[members].sum())
            alpha, bw = cm.cluster.link(True)
            d = degrees[i]
            c = dataclasses.replace(
                c, allreduce_s=2 * (d - 1) * alpha + 2 * (d - 1) / d * param / bw
            )
        costs.append(c)

    m = batch // micro_batch
    if bound_s < float("inf"):
        fwd, bwd, ar = ([getattr(c, f) for c in costs] for f in ("fwd_s", "bwd_s", "allreduce_s"))
        if iteration_lower_bound(succs, fwd, bwd, m, ar) > bound_s:
            return None
    schedule = make_schedule(cm.config.schedule, succs, m)
    sim = simulate(
        schedule,
        [c.fwd_s for c in costs],
        [c.bwd_s for c in costs],
        allreduce_s=[c.allreduce_s for c in costs],
        devices=degrees,
    )
    depth = schedule.depth
    out_stages = tuple(
        Stage(
            index=i,
            nodes=tuple(names[v] for v in stages[i]),
            devices=devs[i],
            fwd_s=c.fwd_s,
            bwd_s=c.bwd_s,
            allreduce_s=c.allreduce_s,
            tps=(c.fwd_s + c.bwd_s) / micro_batch + c.allreduce_s / batch,
            memory_bytes=c.memory(sim.peak_in_flight[i]),
            peak_in_flight=sim.peak_in_flight[i],
            depth=depth[i],
        )
        for i, c in enumerate(costs)
    )
    plan = StagePlan(
        planner=planner,
        model=cm.graph.name,
        batch_size=batch,
        micro_batch_size=micro_batch,
        num_devices=cm.cluster.num_devices,
        memory_limit_bytes=cm.cluster.memory_bytes,
        stages=out_stages,
        edges=tuple(edges),
        schedule=schedule,
        iteration_s=sim.iteration_s,
        bubble_fraction=sim.bubble_fraction,
        added_edges=tuple((names[u], names[v]) for u, v in order_edges),
        search_s=search_s,
    )
    return plan, sim


def _stable_topo(succ: Sequence[Sequence[int]], key: Sequence[int]) -> list[int]:
    import heapq

    indeg = [0] * len(succ)
    for s in succ:
        for j in s:
            indeg[j] += 1
    heap = [(key[i], i) for i in range(len(succ)) if indeg[i] == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        _, i = heapq.heappop(heap)
        order.append(i)
        for j in succ[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                heapq.heappush(heap, (key[j], j))
    return order
