"""`jgraph serve`: co-serve LLM inference and LoRA finetuning over HTTP (FlexLLM)."""

from __future__ import annotations

import argparse

from jgraph.cli._args import existing_dir, non_empty, not_built, port

MODELS = ("tiny", "small")


def _model(text: str) -> str:
    """``--model``: a bundled size or a local checkpoint folder (checked before any work)."""
    if text in MODELS:
        return text
    try:
        return str(existing_dir(text))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither {' nor '.join(map(repr, MODELS))} nor an existing checkpoint "
            "folder; pass tiny, small or the folder of a local HF checkpoint"
        ) from None


def register(sub: argparse._SubParsersAction) -> None:
    help_ = "co-serve LLM inference and LoRA finetuning over HTTP (FlexLLM)"
    p = sub.add_parser("serve", help=help_, description=help_)
    p.set_defaults(handler=run)
    p.add_argument("--host", type=non_empty, default="127.0.0.1")
    p.add_argument("--port", type=port, default=8000)
    p.add_argument(
        "--model",
        type=_model,
        default="tiny",
        help="'tiny', 'small' or a local HF checkpoint dir",
    )


def run(args: argparse.Namespace) -> int:
    del args
    return not_built("the co-serving HTTP server", "issues #5 and later")
