"""Benchmark: the pipeline runtime's GraphPipe plan vs the best sequential plan, on 8 CPU devices.

For a multi-branch Transformer (MMT-like) and a CANDLE-Uno-like model, both plans
of the same profiled graph run through `jgraph.pipeline.compile` on the same 8
fake CPU devices. Reported per plan:

* compiled per-device memory from XLA's ``memory_analysis`` (arguments + temporaries);
* collective-permutes per tick (the transfer colouring) and in the compiled HLO;
* peak live activations per stage, counted by the runtime (micro-batches in flight,
  and input slots holding data) next to the schedule's warm-up bound;
* predicted vs measured per-stage balance: each stage's forward+backward time from
  the profile-based cost model vs timed alone on one device (max / mean of stages);
* the first step's pipelined loss vs the one-device reference loss.

The models are tiny, so each device gets a third of the model's weights + Adam
state as its memory (otherwise one data-parallel stage wins and there is no
pipeline to compare), and micro-batches are fixed at batch / 8.

CPU step times are printed but are NO SPEED CLAIM: the 8 devices are fake, share
this machine's cores, and a ppermute is a memcpy. The "simulated" column is the
planner's cost-model iteration time.

    python scripts/bench_pipeline_runtime.py --out results.json
    python scripts/bench_pipeline_runtime.py --smoke --out smoke.json
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from typing import Any

DEVICES = 8


def _stage_balance(mg: Any, plan: Any, params: Any, inputs: Any) -> tuple[float, float]:
    """(predicted, measured) max/mean of per-stage forward+backward time per micro-batch."""
    import jax
    import numpy as np

    from jgraph.core import time_call

    mods = {n.name: n for n in mg.nodes}
    measured, predicted = [], []
    b = plan.micro_batch_size
    # Every node's output on the first b samples, once: stages read their inputs from it.
    full = {k: v[:b] for k, v in inputs.items()}
    for n in mg.nodes:
        full[n.name] = n.module.apply(params[n.name], *(full[u] for u in n.inputs))
    for st in plan.stages:
        rows = b // st.data_parallel
        order = [v for v in st.nodes if v in mods]
        if not order:
            continue
        ext = {u: full[u][:rows] for v in order for u in mods[v].inputs if u not in order}

        def fwd(p, e, order=order):
            loc = dict(e)
            for v in order:
                loc[v] = mods[v].module.apply(p[v], *(loc[u] for u in mods[v].inputs))
            return [loc[v] for v in order]

        def fb(p, e, fwd=fwd):
            outs, pull = jax.vjp(fwd, p, e)
            return pull([np.ones(o.shape, o.dtype) for o in outs])

        sp = {v: params[v] for v in order}
        t = time_call(jax.jit(fb), sp, ext, warmup=1, repeats=5).median
        measured.append(t)
        predicted.append(st.fwd_s + st.bwd_s)

    def spread(xs: list[float]) -> float:
        return max(xs) / statistics.mean(xs) if xs else 1.0

    return spread(predicted), spread(measured)


def run_plan(name: str, mg: Any, plan: Any, steps: int) -> dict[str, Any]:
    import jax
    import optax

    from jgraph.pipeline import compile
    from jgraph.pipeline.models import module_model_loss, synthetic_batch
    from jgraph.pipeline.profiling import apply_module_graph, init_module_graph

    loss_fn = module_model_loss(name)
    key = jax.random.key(0)
    inputs, targets = synthetic_batch(mg, name, plan.batch_size, key=key)
    params = init_module_graph(mg, inputs, key=key)
    prog = compile(plan, mg, loss_fn, optax.adam(1e-3))
    state = prog.init(params)
    compiled = prog.lower(state, inputs, targets).compile()
    mem = compiled.memory_analysis()
    hlo = compiled.as_text()
    permutes_hlo = len(re.findall(r"collective-permute(?:-start)?\(", hlo))
    ref = float(jax.jit(lambda p: loss_fn(apply_module_graph(mg, p, inputs), targets))(params))
    times = []
    first = None
    for _ in range(steps):
        t = time.perf_counter()
        state, metrics = prog.step(state, inputs, targets)
        loss = float(metrics["loss"])
        times.append(time.perf_counter() - t)
        first = loss if first is None else first
    peaks = metrics["peak_in_flight"]
    live = metrics["peak_live_inputs"]
    lay = prog.layout
    per_stage_peak = [int(peaks[io.first_row, 0]) for io in lay.stages]
    per_stage_live = [int(live[io.first_row, 0]) for io in lay.stages]
    bound = [min(plan.num_microbatches, st.depth) for st in plan.stages]
    if plan.schedule.kind == "gpipe":
        bound = [plan.num_microbatches] * len(plan.stages)
    pred, meas = _stage_balance(mg, plan, params, inputs)
    return {
        "model": name,
        "planner": plan.planner,
        "stages": len(plan.stages),
        "depth": plan.depth,
        "micro_batch": plan.micro_batch_size,
        "M": plan.num_microbatches,
        "mesh": f"{lay.rows}x{lay.cols}",
        "permutes_per_tick": lay.permutes_per_tick,
        "permutes_in_hlo": permutes_hlo,  # the tick body's plus the DP ring's
        "ticks": lay.num_ticks,
        "peak_in_flight": per_stage_peak,
        "warmup_bound": bound,
        "within_bound": all(p <= b for p, b in zip(per_stage_peak, bound, strict=True)),
        "peak_live_inputs": per_stage_live,
        "device_args_bytes": int(mem.argument_size_in_bytes),
        "device_temp_bytes": int(mem.temp_size_in_bytes),
        "device_bytes": int(mem.argument_size_in_bytes + mem.temp_size_in_bytes),
        "balance_predicted": pred,
        "balance_measured": meas,
        "loss_pipelined": first,
        "loss_reference": ref,
        "loss_abs_diff": abs(first - ref),
        "iteration_s_simulated": plan.iteration_s,
        "cpu_step_ms_no_claim": 1e3 * statistics.median(times[1:] if len(times) > 1 else times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 2 steps (CI)")
    parser.add_argument("--out", default="bench_pipeline_runtime.json")
    args = parser.parse_args()

    from jgraph.pipeline.runtime import start_devices

    start_devices(devices=DEVICES)
    from jgraph.core import format_table, write_results
    from jgraph.pipeline import ClusterConfig, NoPlanError, PlannerConfig, plan_pipeline
    from jgraph.pipeline.models import module_model
    from jgraph.pipeline.profiling import profile_module_graph

    cases = (
        [("mmt-tiny", {"branches": 2, "layers": 1}), ("candle-uno-tiny", {"branches": 2})]
        if args.smoke
        else [("mmt-tiny", {"branches": 4, "layers": 2}), ("candle-uno-tiny", {"branches": 4})]
    )
    batch = 16 if args.smoke else 64
    steps = 2 if args.smoke else 6
    rows = []
    for name, kw in cases:
        mg = module_model(name, **kw)
        costed = profile_module_graph(
            mg, micro_batches=(1, 2, 4, 8), repeats=1 if args.smoke else 3
        )
        # Tiny models fit one device, where plain data parallelism wins; a per-device
        # memory of a third of the model's weights + Adam state (or the least split
        # that fits the largest node) forces a real pipeline,
        # and a fixed micro-batch gives M = 8 micro-batches (warm-up bounds matter).
        config = PlannerConfig(micro_batch_sizes=(batch // 8,))
        static = sum(n.param_bytes for n in costed.nodes) * config.optimizer_bytes_per_param_byte
        for share in (3, 2.5, 2, 1.5, 1):  # a third, or the least split that plans fit
            cluster = ClusterConfig(num_devices=DEVICES, memory_bytes=static / share)
            plans = {}
            for p in ("graphpipe", "pipedream", "gpipe"):
                try:
                    plans[p] = plan_pipeline(costed, cluster, config, batch=batch, planner=p)
                except NoPlanError:
                    continue
            if "graphpipe" in plans and len(plans) > 1:
                break
        gp = plans.pop("graphpipe")
        seq = max(plans.values(), key=lambda p: p.throughput)
        for plan in (gp, seq):
            rows.append(run_plan(name, mg, plan, steps))
    cols = [
        "model", "planner", "stages", "depth", "M", "mesh", "permutes_per_tick",
        "permutes_in_hlo", "peak_in_flight", "warmup_bound", "peak_live_inputs", "device_bytes",
        "balance_predicted", "balance_measured", "loss_abs_diff", "iteration_s_simulated",
        "cpu_step_ms_no_claim",
    ]  # fmt: skip
    print(format_table(rows, cols))
    for name in dict(cases):
        g, s = [r for r in rows if r["model"] == name]
        print(
            f"{name}: GraphPipe vs best sequential ({s['planner']}): per-device memory "
            f"{g['device_bytes'] / s['device_bytes']:.2f}x, permutes/tick "
            f"{g['permutes_per_tick']} vs {s['permutes_per_tick']}, max peak in flight "
            f"{max(g['peak_in_flight'])} vs {max(s['peak_in_flight'])}, simulated speed-up "
            f"{s['iteration_s_simulated'] / g['iteration_s_simulated']:.2f}x "
            "(CPU step times: fake devices, no speed claim)"
        )
    path = write_results(args.out, name="bench_pipeline_runtime", rows=rows, smoke=args.smoke)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
