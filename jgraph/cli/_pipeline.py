"""`jgraph pipeline plan|train`: plan graph pipeline parallelism (GraphPipe), then train."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from jgraph.cli._args import (
    EXIT_OK,
    LibraryChoices,
    flag_error,
    input_path,
    int_in,
    make_output_dir,
    non_negative_float,
    output_dir,
    positive_float,
)
from jgraph.cli._pipeline_train import register_train_flags, run_train

# The library owns these names; read when a flag is validated or its help printed.
MODELS = LibraryChoices("jgraph.pipeline.models", "ALL_MODEL_NAMES")
PLANNERS = LibraryChoices("jgraph.pipeline.planners", "PLANNER_NAMES")
SCHEDULES = LibraryChoices("jgraph.pipeline.planners", "SCHEDULE_KINDS")

_UNITS = {
    "": 1e9,
    "k": 1e3,
    "kb": 1e3,
    "m": 1e6,
    "mb": 1e6,
    "g": 1e9,
    "gb": 1e9,
    "t": 1e12,
    "tb": 1e12,
}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def memory_size(text: str) -> float:
    """'16GB', '16GiB', '512MB' or a bare number of GB -> bytes."""
    m = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size; pass e.g. 16GB or 32GiB")
    value = float(m.group(1)) * _UNITS[unit]
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"{text.strip()[:60]} must be > 0 and finite; pass e.g. 16GB or 32GiB"
        )
    return value


# Upper bounds where memory or time follows from a flag (measured on one busy CPU core).
# The simulated schedule holds 2 ops per micro-batch per stage, so memory and time grow
# with batch / micro-batch x stages: micro-batch 1 on 64 devices at batch 2**16 (2**22)
# took ~1 min and 1.5 GB, and batch 10**15 ran out of memory. `_check_schedule_size` caps
# the product at 2**20 (that worst case then takes ~7 s and 0.45 GB), with stages at most
# min(devices, nodes) and micro-batch 1 unless --micro-batch is set (the planner may pick it).
_MAX_SCHEDULE_OPS = 2**20
_BATCH = int_in(1, 2**20, "the simulated schedule holds every micro-batch")
_DEVICES = int_in(1, 4096, "ClusterConfig's limit")
_PER_NODE = int_in(1, 4096, "at most the largest --devices")
# Planning time (the series-parallel decomposition) grows steeply with branches: 64 (323
# nodes) plan in 8-23 s, 128 in 16 s when a plan fits and ~2 min when none does.
_BRANCHES = int_in(1, 64, "planning time grows steeply with the number of branches")
# The Piper DP compares pairs of downsets: MMT with a cap of 20000 ran > 200 s and 0.5 GB.
_DOWNSETS = int_in(1, 10_000, "the Piper-style DP is quadratic in the number of downsets")


def register(sub: argparse._SubParsersAction) -> None:
    help_ = "plan graph pipeline parallelism (GraphPipe)"
    p = sub.add_parser(
        "pipeline",
        help=help_,
        description=help_ + ". Every throughput printed is simulated with the cost model.",
    )
    p.set_defaults(handler=run)
    p.add_argument(
        "action",
        nargs="?",
        choices=("plan", "train"),
        default="plan",
        help="plan (default), or train a Flax module model (--model mmt-tiny) pipelined",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model",
        choices=MODELS,
        metavar="MODEL",
        help="a paper model (costed, plan only) or a Flax *-tiny model (profiled here; "
        "plan or train): %(choices)s",
    )
    source.add_argument(
        "--graph",
        type=_graph_file,
        metavar="FILE",
        help="your own costed graph instead: a ModelGraph JSON file (README: 'your own graph')",
    )
    p.add_argument(
        "--branches", type=_BRANCHES, help="branches of a multi-branch --model (default: its own)"
    )
    p.add_argument("--devices", type=_DEVICES, default=8, help="number of devices")
    p.add_argument(
        "--memory",
        "--memory-gb",
        dest="memory",
        type=memory_size,
        default=16e9,
        help="memory per device, e.g. 16GB (bare numbers are GB; default 16GB, a V100)",
    )
    p.add_argument("--batch", type=_BATCH, default=128, help="global mini-batch size")
    p.add_argument(
        "--planner",
        choices=PLANNERS,
        metavar="PLANNER",
        default="graphpipe",
        help="one of %(choices)s",
    )
    p.add_argument("--compare", action="store_true", help="also run every baseline planner")
    p.add_argument(
        "--schedule", choices=SCHEDULES, metavar="KIND", default="1f1b", help="one of %(choices)s"
    )
    p.add_argument(
        "--micro-batch",
        type=_BATCH,
        action="append",
        help="only this micro-batch size (repeatable)",
    )
    p.add_argument("--devices-per-node", type=_PER_NODE, default=4)
    p.add_argument(
        "--peak-tflops", type=positive_float, help="per device (default: V100 FP32, 15.7)"
    )
    p.add_argument("--hbm-gbps", type=positive_float, help="memory bandwidth GB/s (default 900)")
    p.add_argument(
        "--intra-gbps", type=positive_float, help="intra-node link GB/s (default 50, NVLink 2)"
    )
    p.add_argument(
        "--inter-gbps", type=positive_float, help="inter-node link GB/s (default 12.5, EDR IB)"
    )
    p.add_argument(
        "--intra-alpha-us", type=non_negative_float, help="intra-node latency in us (default 5)"
    )
    p.add_argument(
        "--inter-alpha-us", type=non_negative_float, help="inter-node latency in us (default 10)"
    )
    p.add_argument("--piper-max-downsets", type=_DOWNSETS, default=2000)
    p.add_argument(
        "--out", type=output_dir, default=Path("."), help="folder for the plan JSON and PNG"
    )
    p.add_argument("--no-png", action="store_true", help="skip the Gantt chart")
    register_train_flags(p)


def _graph_file(text: str) -> Path:
    path = input_path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; pass a ModelGraph JSON file")
    return path


def _load_graph(args: argparse.Namespace) -> Any:
    """The graph to plan: a paper model by name, or the user's ModelGraph JSON file."""
    from jgraph.core import ConfigError
    from jgraph.pipeline import ModelGraph
    from jgraph.pipeline.models import MODULE_MODEL_NAMES, module_model, paper_model
    from jgraph.pipeline.profiling import profile_module_graph

    if args.model in MODULE_MODEL_NAMES:  # a Flax model: profiled on this backend (cached)
        return profile_module_graph(module_model(args.model, branches=args.branches))
    if args.graph is None:
        return paper_model(args.model, branches=args.branches)  # analytic: milliseconds
    try:
        return ModelGraph.from_json(args.graph.read_text())
    except (ConfigError, UnicodeDecodeError) as exc:
        raise flag_error("--graph", str(exc)) from None


# The library's advice names config fields; this command names its flags instead.
_FLAG_NAMES = (
    (re.compile(r"ClusterConfig\.memory_bytes >= \S+ \(([^ ]+) GB\)"), r"--memory \1GB"),
    (re.compile(r"ClusterConfig\.memory_bytes"), "--memory"),
    (re.compile(r"ClusterConfig\.num_devices"), "--devices"),
    (re.compile(r"PlannerConfig\.micro_batch_sizes"), "--micro-batch"),
    (re.compile(r"PlannerConfig\.piper_max_downsets"), "--piper-max-downsets"),
    (re.compile(r"\(batch=\)"), "(--batch)"),
)


def _in_flags(fix: str) -> str:
    """A `NoPlanError` fix with this command's flags in place of the library's names."""
    for pattern, flag in _FLAG_NAMES:
        fix = pattern.sub(flag, fix)
    return fix


def _check_schedule_size(args: argparse.Namespace, num_nodes: int) -> None:
    # A pipeline has at most one stage per node and per device.
    stages = min(args.devices, num_nodes)
    micro = min(args.micro_batch or [1])
    ops = args.batch // micro * stages
    if ops > _MAX_SCHEDULE_OPS:
        raise flag_error(
            "--batch",
            f"{args.batch} / --micro-batch {micro} x {stages} stages (at most min(--devices, "
            f"the graph's {num_nodes} nodes)) = {ops} is above the limit {_MAX_SCHEDULE_OPS} "
            "(the simulated schedule's memory grows with it); pass a smaller --batch or "
            "--devices, or a larger --micro-batch",
        )


def run(args: argparse.Namespace) -> int:
    if args.action == "train":
        return run_train(args)
    make_output_dir(args.out, "--out")
    import dataclasses

    from jgraph.core import atomic_write_text, format_table
    from jgraph.pipeline import ClusterConfig, NoPlanError, PlannerConfig, plan_pipeline
    from jgraph.pipeline.planners import PLANNER_NAMES
    from jgraph.pipeline.report import plan_rows, write_plan_png

    graph = _load_graph(args)
    _check_schedule_size(args, len(graph.nodes))
    overrides = {
        "peak_flops": args.peak_tflops * 1e12 if args.peak_tflops else None,
        "memory_bandwidth": args.hbm_gbps * 1e9 if args.hbm_gbps else None,
        "intra_bandwidth": args.intra_gbps * 1e9 if args.intra_gbps else None,
        "inter_bandwidth": args.inter_gbps * 1e9 if args.inter_gbps else None,
        "intra_alpha_s": args.intra_alpha_us * 1e-6 if args.intra_alpha_us is not None else None,
        "inter_alpha_s": args.inter_alpha_us * 1e-6 if args.inter_alpha_us is not None else None,
    }
    cluster = ClusterConfig(
        num_devices=args.devices,
        memory_bytes=args.memory,
        devices_per_node=args.devices_per_node,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    config = PlannerConfig(
        schedule=args.schedule,
        micro_batch_sizes=tuple(args.micro_batch or ()),
        piper_max_downsets=args.piper_max_downsets,
    )
    try:
        plan = plan_pipeline(graph, cluster, config, batch=args.batch, planner=args.planner)
    except NoPlanError as exc:
        raise NoPlanError(exc.field, exc.value, exc.problem, _in_flags(exc.fix)) from exc
    print(
        f"{plan.planner} plan for {graph.name} on {cluster.num_devices} x {cluster.name}, "
        f"{cluster.memory_bytes / 1e9:.3g} GB each, batch {plan.batch_size}"
    )
    print(format_table(plan_rows(plan)))
    print(
        f"throughput {plan.throughput:.1f} samples/s (simulated), iteration "
        f"{plan.iteration_s * 1e3:.1f} ms, micro-batch {plan.micro_batch_size} x "
        f"{plan.num_microbatches}, depth {plan.depth}, bubble {plan.bubble_fraction:.1%}, "
        f"max memory {plan.max_memory_bytes / 1e9:.2f} GB/device, devices used "
        f"{plan.devices_used}/{cluster.num_devices}, search {plan.search_s:.2f}s"
    )
    if plan.added_edges:
        print(f"added {len(plan.added_edges)} dependency edge(s) to make the graph series-parallel")
    # A user's graph name may hold path separators or spaces: keep file names plain.
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", graph.name).strip("._") or "graph"
    stem = f"{safe}_{plan.planner}_{cluster.num_devices}dev"
    json_path = atomic_write_text(args.out / f"{stem}.json", plan.to_json() + "\n")
    print(f"wrote {json_path}")
    if not args.no_png:
        print(f"wrote {write_plan_png(plan, args.out / f'{stem}.png')}")
    if args.compare:
        rows: list[dict[str, object]] = []
        # Why a planner found no plan, in full: a table cell would cut it.
        reasons: list[str] = []
        for name in PLANNER_NAMES:
            try:
                other = (
                    plan
                    if name == plan.planner
                    else plan_pipeline(
                        graph, cluster, dataclasses.replace(config), batch=args.batch, planner=name
                    )
                )
            except NoPlanError as exc:
                reasons.append(f"{name}: {exc.problem}; fix: {_in_flags(exc.fix)}")
                rows.append(
                    {"planner": name, "samples_per_s_sim": "no plan", "note": f"[{len(reasons)}]"}
                )
                continue
            rows.append(
                {
                    "planner": name,
                    "samples_per_s_sim": other.throughput,
                    "vs_this": other.throughput / plan.throughput,
                    "depth": other.depth,
                    "micro_batch": other.micro_batch_size,
                    "search_s": other.search_s,
                    "note": "",
                }
            )
        print(
            format_table(
                rows,
                [
                    "planner",
                    "samples_per_s_sim",
                    "vs_this",
                    "depth",
                    "micro_batch",
                    "search_s",
                    "note",
                ],
            )
        )
        for k, reason in enumerate(reasons, start=1):
            print(f"[{k}] {reason}")
    return EXIT_OK
