"""`jgraph pipeline`: plan graph pipeline parallelism (GraphPipe)."""

from __future__ import annotations

import argparse

from jgraph.cli._args import not_built, positive_float, positive_int

MODELS = ("mmt", "dlrm", "candle_uno", "transformer", "synthetic")


def register(sub: argparse._SubParsersAction) -> None:
    help_ = "plan graph pipeline parallelism (GraphPipe)"
    p = sub.add_parser("pipeline", help=help_, description=help_)
    p.set_defaults(handler=run)
    p.add_argument("--model", choices=MODELS, required=True, help="model to partition")
    p.add_argument("--devices", type=positive_int, default=8, help="number of devices")
    p.add_argument("--memory-gb", type=positive_float, default=16.0, help="memory per device")
    p.add_argument("--batch", type=positive_int, default=256, help="global mini-batch size")


def run(args: argparse.Namespace) -> int:
    del args
    return not_built("the pipeline planner", "issue #3")
