"""The `jgraph` command line: the only argv parser in jgraph.

Each subcommand is a thin layer that turns flags into the subsystem's config
dataclasses and calls its public API. Errors in user input (a bad flag, a
`ConfigError` from a config's validation) print one line that names the fix and
exit with status 2, without a traceback; anything else is a bug and keeps its
traceback.

Exit status: 0 success, 1 a part of the work failed or is not built yet,
2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from jgraph._version import __version__
from jgraph.core import ConfigError

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

SUPEROPT_PROGRAMS = ("gqa", "qknorm", "rmsnorm_linear", "lora", "gated_mlp", "ntrans")
PIPELINE_MODELS = ("mmt", "dlrm", "candle_uno", "transformer", "synthetic")
QUANT_MODELS = ("resnet20", "mlp")
QUANT_DATASETS = ("digits",)


class _UsageError(Exception):
    """A bad command line, reported as one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that point at ``--help`` instead of printing usage."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: error: {message} (see '{self.prog} --help')")


# -- argument types: each names the fix in its message ----------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; pass e.g. 8") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; pass e.g. 600") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number > 0")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port; use 1-65535")
    return value


def _bits(text: str) -> int:
    value = _positive_int(text)
    if value > 8:
        raise argparse.ArgumentTypeError(f"{value} bits is out of range; DGMS uses 1-8 bits")
    return value


def _existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a directory; pass an existing folder")
    return path


# -- subcommand handlers ----------------------------------------------------------


def _not_built(what: str, issue: str) -> int:
    print(f"jgraph: {what} is not built yet ({issue}); see README.md for what works today")
    return EXIT_FAILED


def _cmd_demo(args: argparse.Namespace) -> int:
    import jax
    from rich.console import Console
    from rich.table import Table

    from jgraph._demo import run_demo

    console = Console(soft_wrap=True)  # paths must stay copy-pasteable in logs
    console.print(
        f"[bold]jgraph {__version__}[/] demo on jax {jax.__version__}, "
        f"backend {jax.default_backend()} ({len(jax.devices())} device(s))"
    )
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="jgraph-demo-"))
    outcomes = run_demo(out_dir, only=args.only or ())
    failed = False
    for o in outcomes:
        console.rule(f"{o.part.title} [dim]({o.part.name})[/]")
        if o.status == "not_built":
            console.print(f"not built yet: {o.part.issue}")
        elif o.status == "failed":
            failed = True
            console.print(f"[red]FAILED[/] after {o.seconds:.1f}s: {o.error}")
        else:
            assert o.report is not None
            console.print(f"{o.report.headline} [dim]({o.seconds:.1f}s)[/]")
            if o.report.rows:
                table = Table(show_header=False, box=None, padding=(0, 2))
                for label, value in o.report.rows:
                    table.add_row(label, value)
                console.print(table)
            for path in o.report.artifacts:
                console.print(f"  wrote {path}")
    built = sum(o.status == "ok" for o in outcomes)
    console.print(f"\n{built}/{len(outcomes)} parts ran; artifacts under {out_dir}")
    return EXIT_FAILED if failed else EXIT_OK


def _cmd_pipeline(args: argparse.Namespace) -> int:
    del args
    return _not_built("the pipeline planner", "issue #3")


def _cmd_superopt(args: argparse.Namespace) -> int:
    del args
    return _not_built("the μGraph superoptimizer", "issue #4")


def _cmd_serve(args: argparse.Namespace) -> int:
    del args
    return _not_built("the co-serving HTTP server", "issues #5 and later")


def _cmd_quant(args: argparse.Namespace) -> int:
    del args
    return _not_built("DGMS training", "issue #6")


def _cmd_export_tflite(args: argparse.Namespace) -> int:
    del args
    return _not_built("TFLite export", "a later issue")


# -- parser -------------------------------------------------------------------------


def _build_parser() -> _Parser:
    parser = _Parser(
        prog="jgraph",
        description="jgraph: graph pipeline parallelism, μGraph superoptimization, "
        "LLM co-serving with LoRA finetuning, and DGMS weight sharing on JAX.",
    )
    parser.add_argument("--version", action="version", version=f"jgraph {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_: str) -> _Parser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        return p

    from jgraph._demo import PARTS

    p = add("demo", _cmd_demo, "CPU tour of the four subsystems")
    p.add_argument(
        "--only",
        action="append",
        choices=[part.name for part in PARTS],
        help="run only this part (repeatable)",
    )
    p.add_argument("--out", type=Path, help="folder for artifacts (default: a new temp folder)")

    p = add("pipeline", _cmd_pipeline, "plan graph pipeline parallelism (GraphPipe)")
    p.add_argument("--model", choices=PIPELINE_MODELS, required=True, help="model to partition")
    p.add_argument("--devices", type=_positive_int, default=8, help="number of devices")
    p.add_argument("--memory-gb", type=_positive_float, default=16.0, help="memory per device")
    p.add_argument("--batch", type=_positive_int, default=256, help="global mini-batch size")

    p = add("superopt", _cmd_superopt, "search μGraphs for a tensor program (Mirage)")
    ss = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    run = ss.add_parser("run", help="superoptimize a benchmark program")
    run.add_argument("--program", choices=SUPEROPT_PROGRAMS, required=True)
    run.add_argument("--batch", type=_positive_int, default=8)
    run.add_argument("--time-limit", type=_positive_float, default=600.0, help="seconds")

    p = add("serve", _cmd_serve, "co-serve LLM inference and LoRA finetuning over HTTP (FlexLLM)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--model", default="tiny", help="'tiny', 'small' or a local HF checkpoint dir")

    p = add("quant", _cmd_quant, "DGMS weight sharing")
    qs = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    train = qs.add_parser("train", help="train full precision, then DGMS")
    train.add_argument("--model", choices=QUANT_MODELS, default="resnet20")
    train.add_argument("--bits", type=_bits, default=4)
    train.add_argument("--dataset", choices=QUANT_DATASETS, default="digits")
    train.add_argument("--out", type=Path, default=Path("runs/quant"))

    p = add("export-tflite", _cmd_export_tflite, "export a DGMS checkpoint to .tflite")
    p.add_argument("--checkpoint", type=_existing_dir, required=True)
    p.add_argument("--out", type=Path, required=True, help="destination .tflite file")
    return parser


def _configure_logging(verbosity: int) -> None:
    from rich.logging import RichHandler

    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = RichHandler(show_path=False, rich_tracebacks=False)
    logging.basicConfig(level=level, format="%(name)s: %(message)s", handlers=[handler], force=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `jgraph` command line.

    Args:
        argv: arguments without the program name; None reads ``sys.argv``.

    Returns:
        The exit status (0 ok, 1 failed or not built, 2 bad input).

    Example:
        A bad flag is one line on stderr and status 2:

        >>> main(["pipeline", "--model", "resnet"])
        2
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.error("choose a command: demo, pipeline, superopt, serve, quant, export-tflite")
        _configure_logging(args.verbose)
        return int(args.handler(args))
    except SystemExit as exc:  # --help and --version exit through argparse
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except _UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"jgraph: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
