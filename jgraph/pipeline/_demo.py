"""The pipeline part of `jgraph demo`: GraphPipe vs sequential planners at paper scale."""

from __future__ import annotations

import logging
from pathlib import Path

from jgraph.core import DemoReport, atomic_write_json
from jgraph.pipeline._api import plan_pipeline
from jgraph.pipeline._config import ClusterConfig
from jgraph.pipeline._errors import NoPlanError
from jgraph.pipeline._models import candle_uno, mmt
from jgraph.pipeline._plan import StagePlan
from jgraph.pipeline._planners import PLANNER_NAMES
from jgraph.pipeline._report import write_plan_png

__all__ = ["demo"]

log = logging.getLogger(__name__)


def demo(out_dir: Path) -> DemoReport:
    """Plans MMT and CANDLE-Uno on 32 simulated V100s with every planner.

    Writes the GraphPipe plans (JSON) and their stage graph + Gantt chart (PNG)
    under ``out_dir``. All throughputs are simulated with the shared cost model.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    cluster = ClusterConfig(num_devices=32)
    rows: list[tuple[str, str]] = []
    artifacts: list[Path] = []
    ratios = {}
    for graph in (mmt(), candle_uno()):
        plans: dict[str, StagePlan] = {}
        for planner in PLANNER_NAMES:
            label = f"{graph.name} / {planner}"
            try:
                plans[planner] = plan_pipeline(graph, cluster, batch=128, planner=planner)
            except NoPlanError as exc:
                rows.append((label, no_plan_text(exc)))
                continue
            rows.append((label, _plan_text(plans[planner])))
        gp = plans["graphpipe"]
        seq = max((p for k, p in plans.items() if k != "graphpipe"), key=lambda p: p.throughput)
        ratios[graph.name] = gp.throughput / seq.throughput
        artifacts.append(
            atomic_write_json(out_dir / f"{graph.name}_graphpipe_32dev.json", gp.to_dict())
        )
        artifacts.append(write_plan_png(gp, out_dir / f"{graph.name}_graphpipe_32dev.png"))
    headline = (
        "GraphPipe on 32 V100-spec devices (simulated): "
        + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
        + " the throughput of the best sequential-pipeline plan"
    )
    return DemoReport(headline=headline, rows=tuple(rows), artifacts=tuple(artifacts))


def no_plan_text(exc: NoPlanError) -> str:
    """The whole reason a planner found no plan, and the fix (a table wraps long values)."""
    # Some problems already begin with "no plan: "; say it once.
    return f"no plan: {exc.problem.removeprefix('no plan: ')}; fix: {exc.fix}"


def _plan_text(p: StagePlan) -> str:
    return (
        f"{p.throughput:8.1f} samples/s (simulated), depth {p.depth:2d}, "
        f"micro-batch {p.micro_batch_size}, {p.max_memory_bytes / 1e9:.1f} GB/device, "
        f"search {p.search_s:.2f}s"
    )
