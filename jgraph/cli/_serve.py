"""`jgraph serve`: co-serve LLM inference and LoRA finetuning over HTTP (FlexLLM), with an
OpenAI-compatible API (completions, chat, models, files, finetuning jobs)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re

from jgraph.cli._args import (
    EXIT_OK,
    LibraryChoices,
    existing_dir,
    flag_error,
    make_output_dir,
    non_empty,
    output_dir,
    port,
)

# The library owns the named model shapes; read only when --model is checked.
PRESETS = LibraryChoices("jgraph.coserve.model", "MODEL_PRESETS")
# Same spelling as jgraph.coserve.serve.API_KEY_ENV (test_cli_serve checks they agree); kept
# here so that building the parser imports no subsystem.
API_KEY_ENV = "JGRAPH_API_KEY"


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


def _adapter(text: str) -> tuple[str, str]:
    """``--adapter NAME=PATH``: a PEFT adapter folder served as model ``NAME``."""
    name, sep, path = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}", name):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NAME=PATH; pass e.g. my-adapter=/path/to/peft_folder (NAME: "
            "letters, digits, '.', '_', '-', '/', at most 64)"
        )
    return name, str(existing_dir(path))


def register(sub: argparse._SubParsersAction) -> None:
    help_ = "co-serve LLM inference and LoRA finetuning over HTTP (FlexLLM, OpenAI API)"
    p = sub.add_parser("serve", help=help_, description=help_)
    p.set_defaults(handler=run)
    p.add_argument("--host", type=non_empty, default="127.0.0.1", help="bind address")
    p.add_argument("--port", type=port, default=8000)
    p.add_argument(
        "--model",
        type=_model,
        default="tiny",
        help="a named model shape (jgraph.coserve.model.MODEL_PRESETS, random init with the "
        "byte tokenizer) or a local HF checkpoint dir",
    )
    p.add_argument(
        "--adapter",
        type=_adapter,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve the PEFT LoRA adapter in PATH as model NAME (repeatable)",
    )
    p.add_argument(
        "--state-dir",
        type=output_dir,
        help="uploaded files, job records and fine-tuned adapters, kept across restarts "
        "(default: $XDG_STATE_HOME/jgraph/serve or ~/.local/state/jgraph/serve)",
    )
    p.add_argument(
        "--api-key",
        type=non_empty,
        help=f"require 'Authorization: Bearer KEY' on every route (default: ${API_KEY_ENV})",
    )


def run(args: argparse.Namespace) -> int:
    if args.state_dir is not None:
        make_output_dir(args.state_dir, "--state-dir")
    names = [n for n, _ in args.adapter]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise flag_error("--adapter", f"{sorted(dup)} given twice; name each adapter once")
    from jgraph.coserve.serve import ServeConfig, serve

    config = ServeConfig(
        model=args.model,
        adapters=tuple(args.adapter),
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
    )
    if args.state_dir is not None:
        config = dataclasses.replace(config, state_dir=str(args.state_dir))
    serve(config)
    return EXIT_OK
