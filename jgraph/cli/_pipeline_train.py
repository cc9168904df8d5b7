"""`jgraph pipeline train`: plan a Flax module graph, then train it pipelined."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from jgraph.cli._args import EXIT_OK, flag_error, int_in, make_output_dir, positive_float

_STEPS = int_in(1, 1_000_000, "a step count")
_EVERY = int_in(1, 1_000_000, "a step count")
_PROCESSES = int_in(1, 1024, "one process per host")
_PROCESS_ID = int_in(0, 1023, "below --num-processes")
_SEED = int_in(0, 2**31 - 1, "a PRNG seed")


def register_train_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("train (jgraph pipeline train --model mmt-tiny)")
    g.add_argument("--steps", type=_STEPS, default=20, help="optimizer steps (default 20)")
    g.add_argument("--lr", type=positive_float, default=3e-3, help="Adam learning rate")
    g.add_argument("--seed", type=_SEED, default=0, help="parameter and data seed")
    g.add_argument("--plan", dest="plan_file", metavar="FILE",
                   help="train this saved plan (jgraph pipeline plan's JSON) instead of planning")  # fmt: skip
    g.add_argument("--checkpoint-every", type=_EVERY, default=10, help="steps between saves")
    g.add_argument("--resume", action="store_true", help="continue the run in --out/checkpoints")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (multi-process)")
    g.add_argument("--num-processes", type=_PROCESSES, default=1, help="processes in the run")
    g.add_argument("--process-id", type=_PROCESS_ID, default=0, help="this process's index")
    g.add_argument("--check-reference", action="store_true",
                   help="also compute the first step's loss on one device and compare")  # fmt: skip


def run_train(args: argparse.Namespace) -> int:
    from jgraph.pipeline.models import MODULE_MODEL_NAMES

    if args.model not in MODULE_MODEL_NAMES:
        raise flag_error(
            "--model",
            f"train needs a Flax module model ({', '.join(MODULE_MODEL_NAMES)}); "
            f"{args.model or args.graph} is a costed graph without weights",
        )
    if args.process_id >= args.num_processes:
        raise flag_error("--process-id", f"must be below --num-processes={args.num_processes}")
    if args.num_processes > 1 and not args.coordinator:
        raise flag_error("--coordinator", "is needed with --num-processes > 1 (host:port)")
    if args.coordinator and not re.fullmatch(r"[\w.\-\[\]:]+:\d{1,5}", args.coordinator):
        raise flag_error("--coordinator", f"{args.coordinator!r} is not host:port")
    if args.devices % args.num_processes:
        raise flag_error("--devices", "must be a multiple of --num-processes")
    make_output_dir(args.out, "--out")
    from jgraph.pipeline.runtime import start_devices

    start_devices(devices=args.devices, coordinator=args.coordinator,
                  num_processes=args.num_processes, process_id=args.process_id)  # fmt: skip

    import jax
    import numpy as np
    import optax

    from jgraph.core import atomic_write_json, atomic_write_text, format_table
    from jgraph.pipeline import ClusterConfig, PlannerConfig, StagePlan, compile
    from jgraph.pipeline.models import module_model, module_model_loss, synthetic_batch
    from jgraph.pipeline.profiling import apply_module_graph, init_module_graph
    from jgraph.pipeline.report import plan_rows
    from jgraph.pipeline.runtime import TrainConfig, plan_module_graph, train

    lead = jax.process_index() == 0
    mg = module_model(args.model, branches=args.branches)
    loss_fn = module_model_loss(args.model)
    if args.plan_file:
        try:
            text = Path(args.plan_file).read_text()
        except OSError as exc:
            raise flag_error("--plan", f"cannot read {args.plan_file}: {exc}") from exc
        plan = StagePlan.from_json(text)
    else:
        cluster = ClusterConfig(num_devices=args.devices, memory_bytes=args.memory)
        config = PlannerConfig(
            schedule=args.schedule, micro_batch_sizes=tuple(args.micro_batch or ())
        )
        plan = plan_module_graph(
            mg, cluster=cluster, config=config, batch=args.batch, planner=args.planner
        )
    prog = compile(plan, mg, loss_fn, optax.adam(args.lr))
    key = jax.random.key(args.seed)
    sample, _ = synthetic_batch(mg, args.model, 2, key=key)
    params = init_module_graph(mg, sample, key=key)

    def data(step: int):
        return synthetic_batch(mg, args.model, plan.batch_size, key=jax.random.fold_in(key, step))

    if lead:
        lay = prog.layout
        print(
            f"{plan.planner} plan of {mg.name} on {plan.num_devices} devices "
            f"({jax.process_count()} process(es), {jax.default_backend()}): {len(plan.stages)} "
            f"stages, depth {plan.depth}, micro-batch {plan.micro_batch_size} x "
            f"{plan.num_microbatches}, {plan.schedule.kind}"
        )
        print(format_table(plan_rows(plan)))
        print(
            f"mesh {lay.rows} x {lay.cols} (stage x data), {lay.num_ticks} ticks, "
            f"{lay.permutes_per_tick} collective-permutes per tick"
        )
    ckpt = args.out / "checkpoints"
    result = train(
        prog, params, data,
        TrainConfig(steps=args.steps, checkpoint_dir=ckpt, checkpoint_every=args.checkpoint_every,
                    resume=args.resume),
    )  # fmt: skip
    hist = result.history
    if lead:
        shown = hist[:: max(1, len(hist) // 10)]
        for h in shown + [h for h in hist[-1:] if h not in shown]:
            print(f"step {h['step']:>5}  loss {h['loss']:.5f}")
        if hist:
            print(f"loss {hist[0]['loss']:.5f} -> {hist[-1]['loss']:.5f} over {len(hist)} steps "
                  f"(resumed from step {result.resumed_from})")  # fmt: skip
        else:
            print(f"nothing to do: the run in {ckpt} already reached step {result.resumed_from}")
    if args.check_reference and lead and result.resumed_from == 0 and hist:
        inputs, targets = data(0)
        ref = float(jax.jit(lambda p: loss_fn(apply_module_graph(mg, p, inputs), targets))(params))
        first = hist[0]["loss"]
        print(f"first step: pipelined loss {first:.6f}, one-device loss {ref:.6f} "
              f"(|diff| {abs(first - ref):.2e})")  # fmt: skip
        if not np.isclose(first, ref, rtol=1e-4, atol=1e-5):  # the gradient tolerance, f32
            print("MISMATCH between the pipelined and the one-device loss")
            return 1
    if lead:
        atomic_write_text(args.out / f"{mg.name}_plan.json", plan.to_json() + "\n")
        atomic_write_json(args.out / f"{mg.name}_train.json", {
            "plan": plan.to_dict()["summary"], "history": hist,
            "resumed_from": result.resumed_from, "processes": jax.process_count(),
        })  # fmt: skip
        print(f"wrote {args.out / f'{mg.name}_train.json'} and checkpoints in {ckpt}")
    return EXIT_OK
