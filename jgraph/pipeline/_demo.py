"""The pipeline part of `jgraph demo`: GraphPipe vs sequential planners at paper scale,
then a small multi-branch Transformer planned and trained pipelined on this machine."""

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
    train_rows, train_line, train_art = _train_demo(out_dir)
    rows.extend(train_rows)
    artifacts.extend(train_art)
    return DemoReport(
        headline=headline + "; " + train_line, rows=tuple(rows), artifacts=tuple(artifacts)
    )


def _train_demo(out_dir: Path) -> tuple[list[tuple[str, str]], str, list[Path]]:
    """Profiles, plans and trains mmt-tiny for a few pipelined steps on up to 8 devices,
    and checks the first step's loss against the same model on one device."""
    import jax
    import optax

    from jgraph.pipeline._config import PlannerConfig
    from jgraph.pipeline._module_apply import apply_module_graph, init_module_graph
    from jgraph.pipeline._module_models import module_model, module_model_loss, synthetic_batch
    from jgraph.pipeline._profile import profile_module_graph
    from jgraph.pipeline._runtime import compile
    from jgraph.pipeline._train import TrainConfig, train

    devices = min(8, len(jax.devices()))
    mg = module_model("mmt-tiny")
    loss_fn = module_model_loss("mmt-tiny")
    costed = profile_module_graph(mg, micro_batches=(1, 4))
    # mmt-tiny fits one device, where data parallelism alone wins: give each device a
    # third of the weights + Adam state (or the least split that fits) to make the
    # planner build a pipeline, with micro-batch 8 (4 micro-batches of the batch of 32).
    config = PlannerConfig(micro_batch_sizes=(8,))
    static = sum(n.param_bytes for n in costed.nodes) * config.optimizer_bytes_per_param_byte
    for share in (3, 2, 1.5, 1):
        cluster = ClusterConfig(num_devices=devices, memory_bytes=static / share)
        try:
            plan = plan_pipeline(costed, cluster, config, batch=32)
            break
        except NoPlanError:
            if share == 1:
                raise
    prog = compile(plan, mg, loss_fn, optax.adam(3e-3))
    key = jax.random.key(0)
    inputs, targets = synthetic_batch(mg, "mmt-tiny", plan.batch_size, key=key)
    params = init_module_graph(mg, inputs, key=key)
    ref = float(jax.jit(lambda p: loss_fn(apply_module_graph(mg, p, inputs), targets))(params))
    result = train(prog, params, lambda step: (inputs, targets), TrainConfig(steps=8))
    losses = [h["loss"] for h in result.history]
    lay = prog.layout
    rows = [
        (
            f"mmt-tiny pipelined on {devices} {jax.default_backend()} device(s)",
            f"{len(plan.stages)} stages, depth {plan.depth}, micro-batch "
            f"{plan.micro_batch_size} x {plan.num_microbatches} ({plan.schedule.kind}), mesh "
            f"{lay.rows}x{lay.cols}, {lay.permutes_per_tick} ppermutes/tick, each device "
            f"{cluster.memory_bytes / 1e6:.2f} MB (planned)",
        ),
        (
            "  loss over 8 steps",
            f"{losses[0]:.4f} -> {losses[-1]:.4f}; first step vs one device: "
            f"{losses[0]:.6f} vs {ref:.6f} (|diff| {abs(losses[0] - ref):.1e})",
        ),
    ]
    art = [atomic_write_json(out_dir / "mmt-tiny_train.json", {
        "plan": plan.to_dict(), "losses": losses, "reference_first_loss": ref,
    })]  # fmt: skip
    line = (
        f"mmt-tiny trained pipelined ({len(plan.stages)} stages), loss {losses[0]:.3f} -> "
        f"{losses[-1]:.3f}, first step matches one device to {abs(losses[0] - ref):.0e}"
    )
    return rows, line, art


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
