"""Checks that a `StagePlan` is well formed, and that it fits a graph and a cluster.

A plan is what a runtime executes, and it often comes from a file, so nothing in it
is taken on trust: `read_plan` parses a plan's JSON dict field by field (a missing
field, a string where a list of ints belongs, NaN times and the like each raise a
`ConfigError` that names the field); `check_plan` checks the plan against itself
(stages partition their nodes and devices, the stage DAG is acyclic and in
topological order, the schedule runs every micro-batch once per stage and respects
the DAG); `check_plan_fits` checks it against the `ModelGraph` and `ClusterConfig`
it is about to run on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from jgraph.core import ConfigError, check_choice, check_int, check_number
from jgraph.pipeline._config import SCHEDULE_KINDS
from jgraph.pipeline._schedule import Schedule, longest_path_to_sink

if TYPE_CHECKING:
    from jgraph.pipeline._config import ClusterConfig
    from jgraph.pipeline._graph import ModelGraph
    from jgraph.pipeline._plan import StagePlan

__all__ = ["check_plan", "check_plan_fits", "parse_json", "read_plan"]

_REPLAN = "re-plan (jgraph pipeline plan, or plan_pipeline) instead of editing the file"


def parse_json(text: str) -> Mapping[str, Any]:
    """The JSON object of a plan file; anything else is a `ConfigError`."""
    try:
        d = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise ConfigError(
            "StagePlan JSON", str(text)[:40], f"is not JSON ({exc})", _REPLAN
        ) from None
    if not isinstance(d, dict):
        raise ConfigError("StagePlan JSON", type(d).__name__, "is not a JSON object", _REPLAN)
    return d


class _Fields:
    """Typed access to one JSON object's fields; each error names ``where.field``."""

    def __init__(self, d: Any, where: str) -> None:
        if not isinstance(d, Mapping):
            raise ConfigError(where, _short(d), "is not a JSON object", _REPLAN)
        self.d, self.where = d, where

    def raw(self, key: str) -> Any:
        if key not in self.d:
            raise ConfigError(f"{self.where}.{key}", None, "is missing", _REPLAN)
        return self.d[key]

    def integer(self, key: str, *, minimum: int | None = None) -> int:
        return check_int(f"{self.where}.{key}", self.raw(key), minimum=minimum, fix=_REPLAN)

    def number(
        self, key: str, *, minimum: float | None = 0.0, maximum: float | None = None
    ) -> float:
        return check_number(
            f"{self.where}.{key}", self.raw(key), minimum=minimum, maximum=maximum, fix=_REPLAN
        )

    def text(self, key: str) -> str:
        value = self.raw(key)
        if not isinstance(value, str):
            raise ConfigError(f"{self.where}.{key}", _short(value), "must be a string", _REPLAN)
        return value

    def items(self, key: str) -> list[Any]:
        return _as_list(self.raw(key), f"{self.where}.{key}")

    def ints(self, key: str, *, minimum: int | None = None) -> tuple[int, ...]:
        field = f"{self.where}.{key}"
        return tuple(
            check_int(f"{field}[{i}]", v, minimum=minimum, fix=_REPLAN)
            for i, v in enumerate(self.items(key))
        )

    def pairs(self, key: str, kind: type) -> tuple[tuple[Any, Any], ...]:
        out = []
        for i, pair in enumerate(self.items(key)):
            field = f"{self.where}.{key}[{i}]"
            pair = _as_list(pair, field)
            if len(pair) != 2 or not all(
                isinstance(p, kind) and not isinstance(p, bool) for p in pair
            ):
                raise ConfigError(
                    field, _short(pair), f"must be a pair of {kind.__name__}s", _REPLAN
                )
            out.append((pair[0], pair[1]))
        return tuple(out)


def _as_list(value: Any, field: str) -> list[Any]:
    # A string is iterable but never a list here: `devices: "abc"` must not read as 3 devices.
    if not isinstance(value, list | tuple):
        raise ConfigError(field, _short(value), "must be a JSON list", _REPLAN)
    return list(value)


def _short(value: Any) -> Any:
    text = repr(value)
    return value if len(text) <= 60 else text[:57] + "..."


def read_plan(d: Mapping[str, Any]) -> dict[str, Any]:
    """The `StagePlan` constructor arguments read from its JSON dict, each field checked.

    Raises:
        ConfigError: a field is missing or has the wrong type or range; names it.
    """
    from jgraph.pipeline._plan import Stage

    f = _Fields(d, "StagePlan")
    stages = []
    for i, raw in enumerate(f.items("stages")):
        s = _Fields(raw, f"StagePlan.stages[{i}]")
        nodes = s.items("nodes")
        for j, name in enumerate(nodes):
            if not isinstance(name, str):
                raise ConfigError(f"{s.where}.nodes[{j}]", _short(name), "must be a name", _REPLAN)
        stages.append(
            Stage(
                index=s.integer("index", minimum=0),
                nodes=tuple(nodes),
                devices=s.ints("devices", minimum=0),
                fwd_s=s.number("fwd_s"),
                bwd_s=s.number("bwd_s"),
                allreduce_s=s.number("allreduce_s"),
                tps=s.number("tps"),
                memory_bytes=s.number("memory_bytes"),
                peak_in_flight=s.integer("peak_in_flight", minimum=0),
                depth=s.integer("depth", minimum=1),
            )
        )
    return {
        "planner": f.text("planner"),
        "model": f.text("model"),
        "batch_size": f.integer("batch_size", minimum=1),
        "micro_batch_size": f.integer("micro_batch_size", minimum=1),
        "num_devices": f.integer("num_devices", minimum=1),
        "memory_limit_bytes": f.number("memory_limit_bytes", minimum=0.0),
        "stages": tuple(stages),
        "edges": f.pairs("edges", int),
        "schedule": _read_schedule(f.raw("schedule")),
        "iteration_s": f.number("iteration_s"),
        "bubble_fraction": f.number("bubble_fraction", maximum=1.0),
        "added_edges": f.pairs("added_edges", str),
        "search_s": f.number("search_s"),
    }


def _read_schedule(raw: Any) -> Schedule:
    f = _Fields(raw, "StagePlan.schedule")
    kind = check_choice("StagePlan.schedule.kind", f.raw("kind"), SCHEDULE_KINDS)
    succs = tuple(
        tuple(check_int(f"StagePlan.schedule.succs[{i}][]", j, minimum=0, fix=_REPLAN) for j in
              _as_list(s, f"StagePlan.schedule.succs[{i}]"))
        for i, s in enumerate(f.items("succs"))
    )  # fmt: skip
    order = []
    for i, seq in enumerate(f.items("order")):
        ops = []
        for t in _as_list(seq, f"StagePlan.schedule.order[{i}]"):
            if not (isinstance(t, str) and t[:1] in ("F", "B") and t[1:].isdigit()):
                raise ConfigError(
                    f"StagePlan.schedule.order[{i}]", _short(t), "must be 'F<k>' or 'B<k>'", _REPLAN
                )
            ops.append((t[0], int(t[1:])))
        order.append(tuple(ops))
    ops_table = [_as_list(r, f"StagePlan.schedule.ops[{t}]") for t, r in enumerate(f.items("ops"))]
    mb_table = [
        _as_list(r, f"StagePlan.schedule.microbatch[{t}]")
        for t, r in enumerate(f.items("microbatch"))
    ]
    return Schedule(
        kind=kind,
        num_microbatches=f.integer("num_microbatches", minimum=1),
        succs=succs,
        order=tuple(order),
        ops=tuple(tuple(r) for r in ops_table),
        microbatch=tuple(tuple(r) for r in mb_table),
    )


def check_plan(plan: StagePlan) -> None:
    """Checks a plan against itself; see the module docstring.

    Raises:
        ConfigError: the first inconsistency found, naming the field.
    """
    B, b, S = plan.batch_size, plan.micro_batch_size, len(plan.stages)
    if S == 0:
        raise ConfigError("StagePlan.stages", [], "is empty", _REPLAN)
    if B % b:
        raise ConfigError(
            "StagePlan.micro_batch_size", b, f"does not divide batch_size {B}", _REPLAN
        )
    owner: dict[str, int] = {}
    device_owner: dict[int, int] = {}
    for i, st in enumerate(plan.stages):
        where = f"StagePlan.stages[{i}]"
        if st.index != i:
            raise ConfigError(f"{where}.index", st.index, f"must be its position {i}", _REPLAN)
        if not st.nodes:
            raise ConfigError(f"{where}.nodes", [], "is empty", _REPLAN)
        if not st.devices:
            raise ConfigError(f"{where}.devices", [], "is empty", _REPLAN)
        for n in st.nodes:
            if n in owner:
                raise ConfigError(
                    f"{where}.nodes", n, f"is also in stage {owner[n]}: a node runs once", _REPLAN
                )
            owner[n] = i
        for dev in st.devices:
            if dev >= plan.num_devices:
                raise ConfigError(
                    f"{where}.devices",
                    dev,
                    f"is out of range for num_devices={plan.num_devices}",
                    _REPLAN,
                )
            if dev in device_owner:
                other = "this stage" if device_owner[dev] == i else f"stage {device_owner[dev]}"
                raise ConfigError(f"{where}.devices", dev, f"is also used by {other}", _REPLAN)
            device_owner[dev] = i
        if b % len(st.devices):
            raise ConfigError(
                f"{where}.devices",
                len(st.devices),
                f"data-parallel degree does not divide micro_batch_size {b}",
                _REPLAN,
            )
        if st.memory_bytes > plan.memory_limit_bytes * (1 + 1e-9):
            raise ConfigError(
                f"{where}.memory_bytes",
                st.memory_bytes,
                f"exceeds memory_limit_bytes {plan.memory_limit_bytes:.4g}",
                _REPLAN,
            )
    if not plan.iteration_s > 0:
        raise ConfigError("StagePlan.iteration_s", plan.iteration_s, "must be > 0", _REPLAN)
    for k, (i, j) in enumerate(plan.edges):
        if not (0 <= i < j < S):
            raise ConfigError(
                f"StagePlan.edges[{k}]",
                [i, j],
                f"must go from a stage to a later one (stages are in topological order, 0..{S - 1});"
                " a backward or self edge would make a cycle",
                _REPLAN,
            )
    if len(set(plan.edges)) != len(plan.edges):
        raise ConfigError("StagePlan.edges", list(plan.edges), "repeat an edge", _REPLAN)
    _check_schedule(plan)


def _check_schedule(plan: StagePlan) -> None:
    sched, S = plan.schedule, len(plan.stages)
    M = plan.batch_size // plan.micro_batch_size
    if sched.num_microbatches != M:
        raise ConfigError(
            "StagePlan.schedule.num_microbatches",
            sched.num_microbatches,
            f"must be batch_size / micro_batch_size = {M}",
            _REPLAN,
        )
    succs: list[list[int]] = [[] for _ in range(S)]
    for i, j in plan.edges:
        succs[i].append(j)
    if [sorted(s) for s in sched.succs] != [sorted(s) for s in succs]:
        raise ConfigError(
            "StagePlan.schedule.succs", _short(sched.succs), "must match StagePlan.edges", _REPLAN
        )
    if len(sched.order) != S:
        raise ConfigError(
            "StagePlan.schedule.order", len(sched.order), f"must list {S} stages", _REPLAN
        )
    depth = longest_path_to_sink(tuple(tuple(s) for s in succs))
    peaks = sched.peak_in_flight()
    want = sorted([("F", k) for k in range(M)] + [("B", k) for k in range(M)])
    for i, seq in enumerate(sched.order):
        field = f"StagePlan.schedule.order[{i}]"
        if sorted(seq) != want:
            raise ConfigError(
                field, _short(seq), f"must run F0..F{M - 1} and B0..B{M - 1} once each", _REPLAN
            )
        at = {op: t for t, op in enumerate(seq)}  # one pass: M can be large
        if any(at[("B", k)] < at[("F", k)] for k in range(M)):
            raise ConfigError(field, _short(seq), "runs a backward before its forward", _REPLAN)
        st = plan.stages[i]
        if st.depth != depth[i] or st.peak_in_flight != peaks[i]:
            raise ConfigError(
                f"StagePlan.stages[{i}]",
                {"depth": st.depth, "peak_in_flight": st.peak_in_flight},
                f"disagree with the schedule (depth {depth[i]}, peak_in_flight {peaks[i]})",
                _REPLAN,
            )
    _check_tick_table(sched, S)


def _check_tick_table(sched: Schedule, S: int) -> None:
    """Each stage's ticks replay its order, and the table respects the stage DAG."""
    when: dict[tuple[str, int, int], int] = {}
    seen: list[list[tuple[str, int]]] = [[] for _ in range(S)]
    if len(sched.microbatch) != len(sched.ops):
        raise ConfigError("StagePlan.schedule.microbatch", len(sched.microbatch),
                          f"must have as many ticks as ops ({len(sched.ops)})", _REPLAN)  # fmt: skip
    for t, (ops, mbs) in enumerate(zip(sched.ops, sched.microbatch, strict=True)):
        if len(ops) != S or len(mbs) != S:
            raise ConfigError(
                f"StagePlan.schedule.ops[{t}]", _short(ops), f"must have {S} entries", _REPLAN
            )
        for i, (op, k) in enumerate(zip(ops, mbs, strict=True)):
            if op == "" and k == -1:
                continue
            if op not in ("F", "B") or isinstance(k, bool) or not isinstance(k, int):
                raise ConfigError(f"StagePlan.schedule.ops[{t}][{i}]", _short((op, k)),
                                  "must be 'F'/'B' with a micro-batch, or '' with -1", _REPLAN)  # fmt: skip
            seen[i].append((op, k))
            when[(op, i, k)] = t
    for i in range(S):
        if tuple(seen[i]) != sched.order[i]:
            raise ConfigError(f"StagePlan.schedule.ops[:][{i}]", _short(seen[i]),
                              "must replay StagePlan.schedule.order", _REPLAN)  # fmt: skip
    for i, succ in enumerate(sched.succs):
        for j in succ:
            for k in range(sched.num_microbatches):
                if when[("F", j, k)] <= when[("F", i, k)] or when[("B", i, k)] <= when[("B", j, k)]:
                    raise ConfigError(
                        "StagePlan.schedule.ops",
                        f"stages {i}->{j}, micro-batch {k}",
                        "runs a stage before the stage it depends on",
                        _REPLAN,
                    )


def check_plan_fits(plan: StagePlan, graph: ModelGraph, cluster: ClusterConfig) -> None:
    """Checks a plan against the graph and cluster it is about to run on.

    Raises:
        ConfigError: a node missing from the plan or unknown to the graph, a graph
            edge the stage DAG does not order, or a cluster other than the one planned.
    """
    known = set(graph.topological_order)
    placed = plan.node_to_stage
    unknown = sorted(set(placed) - known)
    if unknown:
        raise ConfigError(
            "StagePlan.stages[].nodes", unknown[:10], f"are not nodes of graph {graph.name!r}",
            "pass the graph this plan was made for, or re-plan for this one",
        )  # fmt: skip
    missing = sorted(known - set(placed))
    if missing:
        raise ConfigError(
            "StagePlan.stages[].nodes", missing[:10], f"nodes of graph {graph.name!r} in no stage",
            "pass the graph this plan was made for, or re-plan for this one",
        )  # fmt: skip
    reach = _reachability(len(plan.stages), plan.edges)
    for u, v in graph.edges():
        su, sv = placed[u], placed[v]
        if su != sv and sv not in reach[su]:
            raise ConfigError(
                "StagePlan.edges", f"{u} (stage {su}) -> {v} (stage {sv})",
                "the stage DAG does not carry this graph edge",
                "re-plan for this graph",
            )  # fmt: skip
    rank = {n: i for i, n in enumerate(graph.topological_order)}
    for st in plan.stages:
        if list(st.nodes) != sorted(st.nodes, key=rank.__getitem__):
            raise ConfigError(
                f"StagePlan.stages[{st.index}].nodes", list(st.nodes)[:10],
                "are not in the graph's topological order", "re-plan for this graph",
            )  # fmt: skip
    for u, v in plan.added_edges:
        if u not in known or v not in known:
            raise ConfigError(
                "StagePlan.added_edges", [u, v], f"names a node not in graph {graph.name!r}",
                "re-plan for this graph",
            )  # fmt: skip
    if plan.num_devices != cluster.num_devices:
        raise ConfigError(
            "StagePlan.num_devices", plan.num_devices,
            f"was planned for another cluster (ClusterConfig.num_devices={cluster.num_devices})",
            "re-plan for this cluster",
        )  # fmt: skip
    if plan.memory_limit_bytes > cluster.memory_bytes * (1 + 1e-9):
        raise ConfigError(
            "StagePlan.memory_limit_bytes", plan.memory_limit_bytes,
            f"is more than this cluster's ClusterConfig.memory_bytes={cluster.memory_bytes:.4g}",
            "re-plan for this cluster",
        )  # fmt: skip


def _reachability(n: int, edges: Sequence[tuple[int, int]]) -> list[set[int]]:
    """Stages reachable from each stage (edges go forward, i < j: one reverse pass)."""
    succs: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        succs[a].append(b)
    reach: list[set[int]] = [set() for _ in range(n)]
    for i in reversed(range(n)):
        for j in succs[i]:
            reach[i] |= {j} | reach[j]
    return reach
