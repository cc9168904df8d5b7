"""`jgraph superopt`: search μGraphs for a tensor program (Mirage)."""

from __future__ import annotations

import argparse

from jgraph.cli._args import Parser, not_built, positive_float, positive_int

PROGRAMS = ("gqa", "qknorm", "rmsnorm_linear", "lora", "gated_mlp", "ntrans")


def register(sub: argparse._SubParsersAction) -> None:
    help_ = "search μGraphs for a tensor program (Mirage)"
    p = sub.add_parser("superopt", help=help_, description=help_)
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser, required=True)
    run_p = actions.add_parser("run", help="superoptimize a benchmark program")
    run_p.set_defaults(handler=run)
    run_p.add_argument("--program", choices=PROGRAMS, required=True)
    run_p.add_argument("--batch", type=positive_int, default=8)
    run_p.add_argument("--time-limit", type=positive_float, default=600.0, help="seconds")


def run(args: argparse.Namespace) -> int:
    del args
    return not_built("the μGraph superoptimizer", "issue #4")
