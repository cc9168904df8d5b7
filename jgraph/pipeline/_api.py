"""`plan_pipeline`: one entry point for GraphPipe and the sequential baselines.

Every planner sees the same `CostModel`, sweeps the same micro-batch sizes,
hands its candidates to the same assembler (placement, schedule, simulator),
and is judged by the same simulated iteration time. When no plan fits, the
error names the smallest per-device memory with which the planner would have
found one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Literal

from jgraph.core import check_choice, check_int
from jgraph.pipeline._baselines import (
    NoPlanError,
    downsets,
    gpipe_uniform,
    linearisations,
    pipedream_dp,
    piper_dp,
)
from jgraph.pipeline._config import ClusterConfig, PlannerConfig
from jgraph.pipeline._cost import CostModel
from jgraph.pipeline._graph import ModelGraph
from jgraph.pipeline._graphpipe import GraphPipeSearch
from jgraph.pipeline._plan import StagePlan, assemble_plan, fill_leftover_devices

__all__ = ["PLANNERS", "Planner", "plan_pipeline"]

log = logging.getLogger(__name__)

Planner = Literal["graphpipe", "pipedream", "piper", "gpipe"]
PLANNERS: tuple[str, ...] = ("graphpipe", "pipedream", "piper", "gpipe")

Candidates = list[tuple[list[list[int]], list[int]]]


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


def _candidates(
    planner: str, cm: CostModel, batch: int
) -> tuple[Callable[[int, float], Candidates], Callable[[int], bool]]:
    """(candidates for micro-batch b under an iteration bound, does anything fit at b).

    Only GraphPipe uses the bound (to skip bisection targets that cannot win).
    """
    if planner == "graphpipe":
        search = GraphPipeSearch(cm, batch=batch)

        def gp(b: int, bound: float = float("inf")) -> Candidates:
            return search.best(micro_batch=b, bound_s=bound)

        gp.added_edges = search.added_edges  # type: ignore[attr-defined]
        return gp, lambda b: search.fits(micro_batch=b)
    if planner == "pipedream":
        orders = linearisations(cm)

        # Like GraphPipe's re-ranked targets, the sequential DP also offers
        # shallower pipelines (depth caps) to the simulator: fill and drain
        # can outweigh a slightly better bottleneck.
        caps: list[int | None] = [None]
        cap = 2
        while cap < min(cm.cluster.num_devices, len(cm.nodes)):
            caps.append(cap)
            cap *= 2

        def pd(b: int, bound: float = float("inf")) -> Candidates:
            out = []
            for o in orders:
                for c in caps:
                    got = pipedream_dp(cm, b, batch, o, max_depth=c)
                    if got is not None and got not in out:
                        out.append(got)
            return out

        return pd, lambda b: any(pipedream_dp(cm, b, batch, o) is not None for o in orders)
    if planner == "piper":
        ideals = downsets(cm, cm.config.piper_max_downsets)
        if ideals is None:
            raise NoPlanError(
                "PlannerConfig.piper_max_downsets",
                cm.config.piper_max_downsets,
                f"no plan: the Piper-style planner hit its state cap (graph {cm.graph.name!r} has "
                "more downsets than that)",
                "raise the cap (search time and memory grow with it) or use the graphpipe planner",
            )

        def pp(b: int, bound: float = float("inf")) -> Candidates:
            got = piper_dp(cm, b, batch, ideals)
            return [got] if got is not None else []

        return pp, lambda b: bool(pp(b))

    def uniform(b: int, bound: float = float("inf")) -> Candidates:
        out = []
        s = 1
        while s <= cm.cluster.num_devices:
            got = gpipe_uniform(cm, b, s)
            if got is not None:
                out.append(got)
            s *= 2
        return out

    def gp_fits(b: int) -> bool:
        for stages, degrees in uniform(b):
            got = assemble_plan(
                cm, stages, degrees, micro_batch=b, batch=batch, planner="gpipe", chain=True
            )
            if got is not None and got[0].max_memory_bytes <= cm.cluster.memory_bytes:
                return True
        return False

    return uniform, gp_fits


def plan_pipeline(
    graph: ModelGraph,
    cluster: ClusterConfig,
    config: PlannerConfig | None = None,
    *,
    batch: int,
    planner: Planner = "graphpipe",
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
    check_choice("plan_pipeline.planner", planner, PLANNERS)
    check_int("plan_pipeline.batch", batch, minimum=1)
    if planner == "gpipe" and config.schedule != "gpipe":
        config = dataclasses.replace(config, schedule="gpipe")
    start = time.perf_counter()
    cm = CostModel(graph, cluster, config)
    make, _fits = _candidates(planner, cm, batch)
    added = getattr(make, "added_edges", ())
    best: StagePlan | None = None
    # Large micro-batches first: they usually give the best plans early, and
    # GraphPipe then skips targets that cannot beat them.
    for b in sorted(micro_batch_candidates(batch, config), reverse=True):
        bound = best.iteration_s if best is not None else float("inf")
        for stages, degrees in make(b, bound):
            degrees = fill_leftover_devices(cm, stages, degrees, micro_batch=b, batch=batch)
            got = assemble_plan(
                cm, stages, degrees, micro_batch=b, batch=batch, planner=planner,
                order_edges=added, chain=planner != "graphpipe",
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
        need = smallest_fitting_memory(graph, cluster, config, batch=batch, planner=planner)
        raise NoPlanError(
            "ClusterConfig.memory_bytes",
            f"{cluster.memory_bytes / 1e9:.3g} GB",
            f"model {graph.name!r} (batch {batch}) does not fit on {cluster.num_devices} devices "
            f"with the {planner} planner; the smallest per-device memory that fits is "
            f"{need / 1e9:.3g} GB",
            f"use >= {need / 1e9:.3g} GB per device (--memory {need / 1e9:.3g}GB), more devices, "
            "or a smaller batch",
        )
    return dataclasses.replace(best, search_s=time.perf_counter() - start)


def smallest_fitting_memory(
    graph: ModelGraph,
    cluster: ClusterConfig,
    config: PlannerConfig,
    *,
    batch: int,
    planner: Planner = "graphpipe",
    rel_tol: float = 0.01,
) -> float:
    """Smallest per-device memory (bytes, within ``rel_tol``) at which the planner finds a plan."""

    def ok(mem: float) -> bool:
        cm = CostModel(graph, dataclasses.replace(cluster, memory_bytes=mem), config)
        _, fits = _candidates(planner, cm, batch)
        return any(fits(b) for b in micro_batch_candidates(batch, config))

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
