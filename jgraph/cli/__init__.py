"""The `jgraph` command line: the only argv parser in jgraph.

One module per subcommand (`_demo`, `_pipeline`, `_superopt`, `_serve`,
`_quant`, `_export`), each with ``register(subparsers)`` and a handler that
turns flags into the subsystem's config dataclasses and calls its public API.
Errors in user input (a bad flag, a `ConfigError` from a config's validation)
print one line that names the fix and exit with status 2, without a traceback;
anything else is a bug and keeps its traceback.

Exit status: 0 success, 1 a part of the work failed or is not built yet,
2 bad input.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from jgraph._version import __version__
from jgraph.cli import _demo, _export, _pipeline, _quant, _serve, _superopt
from jgraph.cli._args import EXIT_OK, EXIT_USAGE, Parser, UsageError
from jgraph.core import ConfigError

__all__ = ["main"]

_SUBCOMMANDS = (_demo, _pipeline, _superopt, _serve, _quant, _export)


def _build_parser() -> Parser:
    parser = Parser(
        prog="jgraph",
        description="jgraph: graph pipeline parallelism, μGraph superoptimization, "
        "LLM co-serving with LoRA finetuning, and DGMS weight sharing on JAX.",
    )
    parser.add_argument("--version", action="version", version=f"jgraph {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in _SUBCOMMANDS:
        module.register(sub)
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
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"jgraph: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
