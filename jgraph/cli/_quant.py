"""`jgraph quant`: DGMS weight sharing."""

from __future__ import annotations

import argparse
from pathlib import Path

from jgraph.cli._args import Parser, bits, not_built

MODELS = ("resnet20", "mlp")
DATASETS = ("digits",)


def register(sub: argparse._SubParsersAction) -> None:
    help_ = "DGMS weight sharing"
    p = sub.add_parser("quant", help=help_, description=help_)
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser, required=True)
    train = actions.add_parser("train", help="train full precision, then DGMS")
    train.set_defaults(handler=run)
    train.add_argument("--model", choices=MODELS, default="resnet20")
    train.add_argument("--bits", type=bits, default=4)
    train.add_argument("--dataset", choices=DATASETS, default="digits")
    train.add_argument("--out", type=Path, default=Path("runs/quant"))


def run(args: argparse.Namespace) -> int:
    del args
    return not_built("DGMS training", "issue #6")
