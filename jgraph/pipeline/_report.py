"""Human-readable views of a plan: a stage table and a PNG (stage DAG + schedule Gantt)."""

from __future__ import annotations

import io
import os
from pathlib import Path

from jgraph.core import atomic_write_bytes
from jgraph.pipeline._plan import StagePlan

__all__ = ["plan_rows", "write_plan_png"]


def _short(nodes: tuple[str, ...], limit: int = 3) -> str:
    shown = ", ".join(nodes[:limit])
    return shown + (f", ... ({len(nodes)} nodes)" if len(nodes) > limit else "")


def plan_rows(plan: StagePlan) -> list[dict[str, object]]:
    """One row per stage: nodes, devices, time per sample, in-flight count, memory."""
    succ = {i: [b for a, b in plan.edges if a == i] for i in range(len(plan.stages))}
    return [
        {
            "stage": s.index,
            "nodes": _short(s.nodes),
            "devices": f"{s.devices[0]}-{s.devices[-1]}"
            if len(s.devices) > 1
            else str(s.devices[0]),
            "depth": s.depth,
            "next": ",".join(map(str, succ[s.index])) or "-",
            "tps_ms": s.tps * 1e3,
            "in_flight": s.peak_in_flight,
            "mem_GB": s.memory_bytes / 1e9,
        }
        for s in plan.stages
    ]


def write_plan_png(plan: StagePlan, path: str | os.PathLike[str]) -> Path:
    """Draws the stage DAG (left) and the simulated schedule as a Gantt chart (right).

    Returns:
        The PNG's path (written atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim = plan.simulation()
    n = len(plan.stages)
    fig, (ax_g, ax_t) = plt.subplots(
        1, 2, figsize=(14, max(3.0, 0.35 * n + 1.5)), gridspec_kw={"width_ratios": [1, 3]}
    )
    # Stage DAG: x = distance from the sinks (depth), y spreads stages of equal depth.
    depth = [s.depth for s in plan.stages]
    top = max(depth)
    slots: dict[int, int] = {}
    pos = {}
    for s in plan.stages:
        k = slots.get(s.depth, 0)
        slots[s.depth] = k + 1
        pos[s.index] = (top - s.depth, -k)
    for a, b in plan.edges:
        (x0, y0), (x1, y1) = pos[a], pos[b]
        ax_g.annotate(
            "", xy=(x1, y1), xytext=(x0, y0), arrowprops={"arrowstyle": "->", "color": "0.5"}
        )
    for s in plan.stages:
        x, y = pos[s.index]
        ax_g.scatter([x], [y], s=300, color=f"C{s.index % 10}", zorder=3)
        ax_g.text(x, y, str(s.index), ha="center", va="center", fontsize=8, zorder=4)
    ax_g.set_title(f"stage graph (depth {plan.depth})")
    ax_g.set_axis_off()
    ax_g.margins(0.2)
    colors = {"F": "tab:blue", "B": "tab:orange", "AR": "tab:green"}
    for i, ops in enumerate(sim.timeline):
        for op, _, start, end in ops:
            ax_t.barh(
                i,
                (end - start) * 1e3,
                left=start * 1e3,
                color=colors[op],
                edgecolor="white",
                lw=0.3,
            )
    ax_t.set_yticks(
        range(n), [f"stage {i} (x{s.data_parallel})" for i, s in enumerate(plan.stages)]
    )
    ax_t.invert_yaxis()
    ax_t.set_xlabel("simulated time (ms)")
    ax_t.set_title(
        f"{plan.planner} on {plan.model}: {plan.throughput:.1f} samples/s (simulated), "
        f"b={plan.micro_batch_size}, M={plan.num_microbatches}, bubble {plan.bubble_fraction:.0%}"
    )
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax_t.legend(handles, ["forward", "backward", "all-reduce"], loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
