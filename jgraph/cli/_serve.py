"""`jgraph serve`: co-serve LLM inference and LoRA finetuning over HTTP (FlexLLM)."""

from __future__ import annotations

import argparse

from jgraph.cli._args import LibraryChoices, existing_dir, non_empty, not_built, port

# The library owns the named model shapes; read only when --model is checked.
PRESETS = LibraryChoices("jgraph.coserve.model", "MODEL_PRESETS")


def _model(text: str) -> str:
    """``--model``: a named model shape or a local checkpoint folder (checked before any work)."""
    if text in PRESETS:
        return text
    try:
        return str(existing_dir(text))
    except argparse.ArgumentTypeError:
        names = ", ".join(PRESETS)
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a model shape ({names}) nor an existing checkpoint folder; "
            "pass one of those names or the folder of a local HF checkpoint"
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
        help="a named model shape (jgraph.coserve.model.MODEL_PRESETS) or a local HF "
        "checkpoint dir",
    )


def run(args: argparse.Namespace) -> int:
    del args
    return not_built("the co-serving HTTP server", "issues #5 and later")
