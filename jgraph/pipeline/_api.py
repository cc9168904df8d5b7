"""`plan_pipeline`: one entry point for GraphPipe and the sequential baselines.

Every planner sees the same `CostModel`, sweeps the same micro-batch sizes,
hands its candidates to the same assembler (placement, schedule, simulator),
and is judged by the same simulated iteration time. When no plan fits, the
error names the smallest per-device memory with which the planner would have
found one, and the node that alone exceeds a device's memory when there is one
(then only more memory helps). Its advice names config fields, never CLI flags.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from jgraph.core import check_choice, check_int
from jgraph.pipeline._config import ClusterConfig, PlannerConfig
from jgraph.pipeline._cost import CostModel
from jgraph.pipeline._errors import NoPlanError
from jgraph.pipeline._graph import ModelGraph
from jgraph.pipeline._plan import StagePlan, assemble_plan, fill_leftover_devices
from jgraph.pipeline._planners import PLANNER_NAMES, PlannerName, make_planner

__all__ = ["plan_pipeline", "smallest_fitting_memory"]

log = logging.getLogger(__name__)


def micro_batch_candidates(batch: int, config: PlannerConfig) -> list[int]:
    if config.micro_batch_sizes:
        bad = [b for b in config.micro_batch_sizes if batch % b]
        if bad:
            raise NoPlanError(
                "PlannerConfig.micro_batch_sizes",
                bad,
                f"must divide the mini-batch size {batch}",
                "use divisors of the batch",
            )
        return sorted(set(config.micro_batch_sizes))
    out, b = [], 1
    while b <= batch:
        if batch % b == 0:
            out.append(b)
        b *= 2
    return out


def plan_pipeline(
    graph: ModelGraph,
    cluster: ClusterConfig,
    config: PlannerConfig | None = None,
    *,
    batch: int,
    planner: PlannerName = "graphpipe",
) -> StagePlan:
    """Plans pipeline-parallel training of ``graph`` on ``cluster``.

    Args:
        graph: the model DAG with costs (`mmt`, `dlrm`, ..., or `profile_module_graph`).
        cluster: devices, memory per device and the machine model.
        config: planner knobs; ``None`` uses the defaults (sync 1F1B). The GPipe
            baseline always uses the GPipe schedule.
        batch: mini-batch size ``B``.
        planner: ``"graphpipe"`` or a baseline: ``"pipedream"``, ``"piper"``, ``"gpipe"``.

    Returns:
        The plan with the smallest simulated iteration time among the
        planner's candidates (every micro-batch size, best few targets).

    Raises:
        ConfigError: bad arguments, or ``NoPlanError`` (a `ConfigError`) when
            nothing fits (naming the smallest per-device memory that would) or
            the Piper-style planner hits its state cap.

    Example:
        >>> from jgraph.pipeline import ClusterConfig
        >>> from jgraph.pipeline.models import synthetic_branches
        >>> p = plan_pipeline(synthetic_branches(4, layers=2), ClusterConfig(num_devices=8), batch=64)
        >>> p.devices_used <= 8 and p.max_memory_bytes <= p.memory_limit_bytes
        True
    """
    config = config or PlannerConfig()
    check_choice("plan_pipeline.planner", planner, PLANNER_NAMES)
    check_int("plan_pipeline.batch", batch, minimum=1)
    if planner == "gpipe" and config.schedule != "gpipe":
        config = dataclasses.replace(config, schedule="gpipe")
    start = time.perf_counter()
    cm = CostModel(graph, cluster, config)
    chosen = make_planner(planner, cm, batch=batch)
    best: StagePlan | None = None
    # Large micro-batches first: they usually give the best plans early, and
    # GraphPipe then skips targets that cannot beat them.
    for b in sorted(micro_batch_candidates(batch, config), reverse=True):
        bound = best.iteration_s if best is not None else float("inf")
        for stages, degrees, order_edges in chosen.candidates(b, bound_s=bound):
            degrees = fill_leftover_devices(cm, stages, degrees, micro_batch=b, batch=batch)
            got = assemble_plan(
                cm, stages, degrees, micro_batch=b, batch=batch, planner=chosen.name,
                order_edges=order_edges, chain=chosen.chain,
                bound_s=best.iteration_s if best is not None else float("inf"),
            )  # fmt: skip
            if got is None:
                continue  # its lower bound already loses to the best plan
            plan, _ = got
            if plan.max_memory_bytes > cluster.memory_bytes * (1 + 1e-9):
                log.debug("%s b=%d candidate over memory after assembly; dropped", planner, b)
                continue
            if best is None or (plan.iteration_s, plan.devices_used) < (
                best.iteration_s,
                best.devices_used,
            ):
                best = plan
    if best is None:
        raise _no_plan(cm, batch=batch, planner=planner)
    return dataclasses.replace(best, search_s=time.perf_counter() - start)


def _no_plan(cm: CostModel, *, batch: int, planner: PlannerName) -> NoPlanError:
    """Why nothing fits, with advice in library terms (the CLI names its flags itself).

    When one node alone exceeds a device's memory, more devices or a smaller
    batch cannot help: data parallelism does not shard weights, so the advice
    is more memory per device. Otherwise it names the smallest memory that
    fits, more devices and a smaller batch.
    """
    graph, cluster, config = cm.graph, cm.cluster, cm.config
    mem = cluster.memory_bytes
    need = smallest_fitting_memory(graph, cluster, config, batch=batch, planner=planner)
    big = _heaviest_node(cm, batch=batch)
    if big is not None and big[1] > mem:
        name, least = big
        return NoPlanError(
            "ClusterConfig.memory_bytes",
            f"{mem / 1e9:.3g} GB",
            f"node {name!r} of model {graph.name!r} alone needs at least {least / 1e9:.3g} GB "
            f"({least:.0f} bytes) per device (weights and optimizer state, plus one sample's "
            f"activations and buffers), above the {mem / 1e9:.3g} GB per device; data "
            "parallelism does not shard weights; the smallest per-device memory that fits is "
            f"{need / 1e9:.3g} GB",
            f"use more memory per device, ClusterConfig.memory_bytes >= {need:.3g} "
            f"({need / 1e9:.3g} GB), or a smaller model",
        )
    smaller = "a smaller batch (batch=)"
    if config.micro_batch_sizes:
        smaller += " or smaller PlannerConfig.micro_batch_sizes"
    return NoPlanError(
        "ClusterConfig.memory_bytes",
        f"{mem / 1e9:.3g} GB",
        f"model {graph.name!r} (batch {batch}) does not fit on {cluster.num_devices} "
        f"device{'s' if cluster.num_devices != 1 else ''} "
        f"with the {planner} planner; the smallest per-device memory that fits is "
        f"{need / 1e9:.3g} GB",
        f"use ClusterConfig.memory_bytes >= {need:.3g} ({need / 1e9:.3g} GB), more devices "
        f"(ClusterConfig.num_devices), or {smaller}",
    )


def _heaviest_node(cm: CostModel, *, batch: int) -> tuple[str, float] | None:
    """(name, bytes) of the node needing the most memory when alone on one device.

    The bytes are a lower bound for any stage holding the node: its weights,
    gradients and optimizer state (not sharded by data parallelism) plus the
    activations and workspace of one sample with one micro-batch in flight.
    ``None`` for an empty graph.
    """
    best: tuple[str, float] | None = None
    for v, node in enumerate(cm.nodes):
        least = cm.stage_cost([v], devices=1, micro_batch=1, batch=batch).memory(1)
        if best is None or least > best[1]:
            best = (node.name, least)
    return best


def smallest_fitting_memory(
    graph: ModelGraph,
    cluster: ClusterConfig,
    config: PlannerConfig,
    *,
    batch: int,
    planner: PlannerName = "graphpipe",
    rel_tol: float = 0.01,
) -> float:
    """Smallest per-device memory (bytes, within ``rel_tol``) at which the planner finds a plan."""

    def ok(mem: float) -> bool:
        cm = CostModel(graph, dataclasses.replace(cluster, memory_bytes=mem), config)
        chosen = make_planner(planner, cm, batch=batch)
        return any(chosen.fits(b) for b in micro_batch_candidates(batch, config))

    hi = max(cluster.memory_bytes, 1e6)
    while not ok(hi):
        hi *= 2
        if hi > 1e18:
            raise NoPlanError(
                "plan_pipeline.batch", batch, "does not fit at any memory size", "check the graph"
            )
    lo = hi / 2 if hi > cluster.memory_bytes else 0.0
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi
