"""Argument parsing shared by every subcommand: one-line errors and typed flags.

Each argument type names the fix in its message; `Parser.error` raises
`UsageError`, which `jgraph.cli.main` prints as one line with exit status 2.

Paths are checked where they are parsed (`output_dir`, `output_file`,
`input_path`, `existing_dir`): a file where a folder is needed, the reverse, a
missing input or a folder that cannot be created is reported before any work
starts. `make_output_dir` then creates an output folder at the start of a
handler and proves it writable; the static checks cannot see everything (root
ignores permission bits, and some file systems refuse writes anyway).

Numbers: `int_in` takes an upper bound wherever memory or time follows from a
flag; each bound is set where the flag is defined, with the reason next to it.
Negative numbers such as ``-5GB`` or ``-inf`` are read as values, so that the
type rejects them with a message instead of argparse calling them a missing
argument.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, overload

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "LibraryChoices",
    "Parser",
    "UsageError",
    "bits",
    "existing_dir",
    "flag_error",
    "input_path",
    "int_in",
    "make_output_dir",
    "non_empty",
    "non_negative_float",
    "non_negative_int",
    "output_dir",
    "output_file",
    "port",
    "positive_float",
    "positive_int",
    "probe_output_file",
    "regex",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# Anything that starts like a number, including "-5GB", "-.5", "-inf" and "-nan",
# is a value, not an option (argparse's default only takes "-5" and "-.5"). No
# jgraph option looks like a negative number, so nothing is lost. The pattern
# spans the whole string, so argparse may call match or fullmatch on it.
_NEGATIVE_NUMBER = re.compile(r"^-(\.?\d|inf|nan).*$", re.IGNORECASE | re.DOTALL)


class UsageError(Exception):
    """A bad command line, reported as one line with exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors that point at ``--help`` instead of printing usage."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message} (see '{self.prog} --help')")


def _short(text: str) -> str:
    """``text`` stripped, its middle elided beyond 200 characters (paths keep both ends)."""
    text = text.strip()
    return text if len(text) <= 200 else f"{text[:100]}...{text[-97:]}"


def _show(text: str) -> str:
    """``repr(text)``, shortened: a message stays one readable line whatever was passed."""
    return repr(_short(text))


def _int_at_least(text: str, minimum: int, note: str = "") -> int:
    try:
        value = int(text)
    except ValueError:
        if text.strip().lstrip("+-").isdigit():  # more digits than int() takes (4300)
            raise argparse.ArgumentTypeError(
                f"{_short(text)} is far too large; pass a smaller number"
            ) from None
        raise argparse.ArgumentTypeError(f"{_show(text)} is not an integer; pass e.g. 8") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{_short(text)} must be >= {minimum}{note}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str, note: str = "") -> int:
    """An integer >= 0; ``note`` says what 0 means (e.g. " (0 keeps every size)")."""
    return _int_at_least(text, 0, note)


def int_in(minimum: int, maximum: int, why: str) -> Callable[[str], int]:
    """An argument type for integers in ``[minimum, maximum]``.

    Args:
        minimum: smallest allowed value.
        maximum: largest allowed value.
        why: the reason for the upper bound, shown when a value exceeds it.

    Returns:
        A function from the flag's text to the int, for ``add_argument(type=...)``.

    Example:
        >>> int_in(1, 64, "the verifier's inputs grow with it")("8")
        8
    """

    def parse(text: str) -> int:
        value = _int_at_least(text, minimum)
        if value > maximum:
            raise argparse.ArgumentTypeError(
                f"{_short(text)} is above the limit {maximum} ({why}); pass {minimum}-{maximum}"
            )
        return value

    parse.__name__ = f"int_{minimum}_{maximum}"
    return parse


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{_show(text)} is not a number; pass e.g. 1.5") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{_show(text)} is not a finite number; pass e.g. 1.5")
    return value


def positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{_short(text)} must be a finite number > 0")
    return value


def non_negative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{_short(text)} must be a finite number >= 0")
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


def non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is empty; pass a non-empty value")
    return text


def regex(text: str) -> str:
    """A Python regular expression, compiled once here so that a typo fails before any work."""
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(
            f"{_show(text)} is not a regular expression ({exc}); escape special characters "
            r"with a backslash, e.g. 'layer\.1'"
        ) from None
    return text


_NAME_MAX, _PATH_MAX = 255, 4096  # bytes, Linux (ext4, xfs, tmpfs, ...)


def _path(text: str, what: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is empty; pass {what}")
    path = Path(text).expanduser()
    if len(os.fsencode(path)) > _PATH_MAX or any(
        len(os.fsencode(part)) > _NAME_MAX for part in path.parts
    ):
        raise argparse.ArgumentTypeError(
            f"{_show(text)} is too long (at most {_NAME_MAX} bytes a name, {_PATH_MAX} in all); "
            "pass a shorter path"
        )
    return path


def _kind(path: Path, text: str) -> str:
    """'dir', 'file' (anything else that exists) or 'missing'; other stat errors are usage errors."""
    try:
        return "dir" if stat.S_ISDIR(os.stat(path).st_mode) else "file"
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError as exc:
        raise argparse.ArgumentTypeError(
            f"{_show(text)} cannot be read ({exc.strerror}); check the path and its permissions"
        ) from None


def _creatable(path: Path, text: str, what: str) -> None:
    """Checks that ``path`` (absent) can be created: its nearest existing ancestor is a
    writable folder. Root passes the permission check; `make_output_dir` tries for real."""
    ancestor = path.absolute().parent
    kind = _kind(ancestor, text)
    while kind == "missing" and ancestor != ancestor.parent:
        ancestor = ancestor.parent
        kind = _kind(ancestor, text)
    if kind != "dir":
        raise argparse.ArgumentTypeError(
            f"{_show(text)} cannot be created because {_show(str(ancestor))} is a file; "
            f"pass {what} outside it"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(
            f"{_show(text)} cannot be created: no write permission in {_show(str(ancestor))}; "
            f"pass {what} you can write to"
        )


def output_dir(text: str) -> Path:
    """A folder to write into: an existing folder, or a path where one can be created."""
    what = "a folder (created if missing)"
    path = _path(text, what)
    kind = _kind(path, text)
    if kind == "file":
        raise argparse.ArgumentTypeError(f"{_show(text)} is a file, not a folder; pass {what}")
    if kind == "missing":
        _creatable(path, text, what)
    elif not os.access(path, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(
            f"{_show(text)} is not writable; pass a folder you can write to"
        )
    return path


def output_file(text: str) -> Path:
    """A file to write: not a folder, and creatable (its folder is created if missing)."""
    what = "a file path"
    path = _path(text, what)
    kind = _kind(path, text)
    if kind == "dir":
        raise argparse.ArgumentTypeError(
            f"{_show(text)} is a folder; pass the path of a file (in it or elsewhere)"
        )
    if kind == "missing":
        _creatable(path, text, what)
    elif not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"{_show(text)} is not writable; pass another path")
    return path


def input_path(text: str) -> Path:
    """An existing, readable file or folder (which of the two is the caller's check)."""
    path = _path(text, "an existing file or folder")
    if _kind(path, text) == "missing":
        raise argparse.ArgumentTypeError(
            f"{_show(text)} does not exist; pass an existing file or folder"
        )
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{_show(text)} is not readable; check its permissions")
    return path


def existing_dir(text: str) -> Path:
    path = _path(text, "an existing folder")
    if _kind(path, text) != "dir":
        raise argparse.ArgumentTypeError(
            f"{_show(text)} is not a directory; pass an existing folder"
        )
    return path


def flag_error(flag: str, message: str) -> UsageError:
    """A bad flag found in a handler, after parsing: one line, shaped like `main`'s errors.

    Example:
        >>> str(flag_error("--out", "cannot write to '/sys/x'"))
        "jgraph: error: argument --out: cannot write to '/sys/x'"
    """
    return UsageError(f"jgraph: error: argument {flag}: {message}")


def _write_probe(folder: Path) -> None:
    # Root passes every permission check: only a real write finds a read-only or
    # special file system (such as /sys, which refuses even root).
    with tempfile.TemporaryFile(dir=folder):
        pass


def make_output_dir(path: Path, flag: str) -> Path:
    """Creates ``path`` and proves it writable; call at the start of a handler.

    Args:
        path: the folder (already checked by `output_dir`).
        flag: the flag it came from, named in the error.

    Returns:
        ``path``.

    Raises:
        UsageError: the folder cannot be created or written.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        _write_probe(path)
    except OSError as exc:
        raise flag_error(
            flag,
            f"cannot write to {_show(str(path))} ({exc.strerror or exc}); "
            "pass a folder you can write to",
        ) from None
    return path


def probe_output_file(path: Path, flag: str) -> Path:
    """Proves that a file can be created at ``path`` without leaving anything behind.

    A temporary file is created and removed in the nearest existing folder on the
    way to ``path``; call at the start of a handler that writes ``path`` later.

    Raises:
        UsageError: that folder refuses writes (see `make_output_dir`).
    """
    folder = path.absolute().parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        _write_probe(folder)
    except OSError as exc:
        raise flag_error(
            flag,
            f"cannot write {_show(str(path))} ({exc.strerror or exc} in {_show(str(folder))}); "
            "pass a path you can write to",
        ) from None
    return path


class LibraryChoices(Sequence[str]):
    """A flag's choices, owned by the library and read from it on first use.

    The CLI never keeps its own copy of a vocabulary (models, planners, programs):
    ``LibraryChoices("jgraph.quant.recipes", "MODEL_NAMES")`` is that tuple. The
    import waits until argparse validates the flag or prints help, so building the
    parser (every ``jgraph`` call) does not import JAX-heavy subsystems it will not
    run. ``name`` may also name a function that returns the tuple (for a list the
    library computes, such as the demo's parts). Give the argument a ``metavar``:
    argparse's default one iterates choices while the parser is built.
    """

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name
        self._values: tuple[str, ...] | None = None

    def values(self) -> tuple[str, ...]:
        """The owner's tuple, imported once."""
        if self._values is None:
            import importlib

            owned = getattr(importlib.import_module(self.module), self.name)
            self._values = tuple(owned() if callable(owned) else owned)
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
