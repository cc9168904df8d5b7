"""`jgraph serve`: co-serve LLM inference and LoRA finetuning over HTTP (FlexLLM)."""

from __future__ import annotations

import argparse

from jgraph.cli._args import not_built, port


def register(sub: argparse._SubParsersAction) -> None:
    help_ = "co-serve LLM inference and LoRA finetuning over HTTP (FlexLLM)"
    p = sub.add_parser("serve", help=help_, description=help_)
    p.set_defaults(handler=run)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port, default=8000)
    p.add_argument("--model", default="tiny", help="'tiny', 'small' or a local HF checkpoint dir")


def run(args: argparse.Namespace) -> int:
    del args
    return not_built("the co-serving HTTP server", "issues #5 and later")
