"""Argument parsing shared by every subcommand: one-line errors and typed flags.

Each argument type names the fix in its message; `Parser.error` raises
`UsageError`, which `jgraph.cli.main` prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn, overload

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "LibraryChoices",
    "Parser",
    "UsageError",
    "bits",
    "existing_dir",
    "not_built",
    "port",
    "positive_float",
    "positive_int",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad command line, reported as one line with exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors that point at ``--help`` instead of printing usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message} (see '{self.prog} --help')")


def _int_at_least(text: str, minimum: int, note: str = "") -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; pass e.g. 8") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}{note}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str, note: str = "") -> int:
    """An integer >= 0; ``note`` says what 0 means (e.g. " (0 keeps every size)")."""
    return _int_at_least(text, 0, note)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; pass e.g. 600") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number > 0")
    return value


def port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port; use 1-65535")
    return value


def bits(text: str) -> int:
    value = positive_int(text)
    if value > 8:
        raise argparse.ArgumentTypeError(f"{value} bits is out of range; DGMS uses 1-8 bits")
    return value


def existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a directory; pass an existing folder")
    return path


def not_built(what: str, issue: str) -> int:
    """Reports a subcommand whose subsystem is not built yet; exit status 1."""
    print(f"jgraph: {what} is not built yet ({issue}); see README.md for what works today")
    return EXIT_FAILED


class LibraryChoices(Sequence[str]):
    """A flag's choices, owned by the library and read from it on first use.

    The CLI never keeps its own copy of a vocabulary (models, planners, programs):
    ``LibraryChoices("jgraph.quant.recipes", "MODEL_NAMES")`` is that tuple. The
    import waits until argparse validates the flag or prints help, so building the
    parser (every ``jgraph`` call) does not import JAX-heavy subsystems it will not
    run. Give the argument a ``metavar``: argparse's default one iterates choices
    while the parser is built.
    """

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name
        self._values: tuple[str, ...] | None = None

    def values(self) -> tuple[str, ...]:
        """The owner's tuple, imported once."""
        if self._values is None:
            import importlib

            self._values = tuple(getattr(importlib.import_module(self.module), self.name))
        return self._values

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self.values()[index]

    def __len__(self) -> int:
        return len(self.values())

    def __iter__(self) -> Iterator[str]:
        return iter(self.values())

    def __contains__(self, value: object) -> bool:
        return value in self.values()

    def __repr__(self) -> str:
        return f"LibraryChoices({self.module}.{self.name})"
