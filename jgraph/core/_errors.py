"""User-input errors and the validators that raise them.

Every subpackage validates its configs at the API boundary, before tracing, with
these helpers so that messages have one shape: the owner and field, the value
received, what is allowed, and how to fix it. The CLI turns `ConfigError` into a
one-line message and exit status 2; any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

__all__ = [
    "ConfigError",
    "check_choice",
    "check_int",
    "check_number",
]


class ConfigError(ValueError):
    """Bad user input (a config field, a CLI flag, a file's contents).

    A subclass of `ValueError` so that callers who catch `ValueError` keep working.

    Attributes:
        field: the dotted name of the offending field, e.g. ``"DGMSConfig.bits"``.
        value: the value received.
        fix: a short instruction that tells the user what to do instead.
    """

    def __init__(self, field: str, value: Any, problem: str, fix: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        self.fix = fix
        super().__init__(f"{field}={value!r}: {problem}; fix: {fix}")


def check_int(
    field: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    fix: str | None = None,
) -> int:
    """Checks that ``value`` is an int (not a bool) within ``[minimum, maximum]``.

    Args:
        field: dotted field name used in the message.
        value: the value to check.
        minimum: smallest allowed value, inclusive; None for no bound.
        maximum: largest allowed value, inclusive; None for no bound.
        fix: replaces the generated fix hint.

    Returns:
        ``value``, so the call can be used inline.

    Raises:
        ConfigError: with the field, the value and the allowed range.

    Example:
        >>> check_int("PipelineConfig.num_stages", 4, minimum=1)
        4
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            field, value, f"must be an int, got {type(value).__name__}", fix or "pass an integer"
        )
    _check_bounds(field, value, minimum, maximum, fix)
    return value


def check_number(
    field: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
    fix: str | None = None,
) -> float:
    """Checks that ``value`` is a finite real number within bounds.

    Args:
        field: dotted field name used in the message.
        value: the value to check (int or float; bool is rejected).
        minimum: lower bound; None for none.
        maximum: upper bound, inclusive; None for none.
        strict_minimum: if True the lower bound is exclusive (``value > minimum``).
        fix: replaces the generated fix hint.

    Returns:
        ``float(value)``.

    Raises:
        ConfigError: with the field, the value and the allowed range.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(
            field, value, f"must be a number, got {type(value).__name__}", fix or "pass a number"
        )
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(field, value, "must be finite", fix or "pass a finite number")
    if strict_minimum and minimum is not None and not value > minimum:
        raise ConfigError(field, value, f"must be > {minimum}", fix or f"use a value > {minimum}")
    _check_bounds(field, value, None if strict_minimum else minimum, maximum, fix)
    return float(value)


def check_choice(field: str, value: Any, choices: Collection[Any]) -> Any:
    """Checks that ``value`` is one of ``choices``; the message lists them all.

    Example:
        >>> check_choice("ScheduleConfig.kind", "1f1b", ("1f1b", "gpipe"))
        '1f1b'
    """
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ConfigError(field, value, f"not one of {listed}", f"choose one of {listed}")
    return value


def _check_bounds(
    field: str, value: float, minimum: float | None, maximum: float | None, fix: str | None
) -> None:
    if minimum is not None and value < minimum:
        hint = f"use a value >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        raise ConfigError(field, value, f"must be >= {minimum}", fix or hint)
    if maximum is not None and value > maximum:
        hint = f"use a value <= {maximum}" + (f" and >= {minimum}" if minimum is not None else "")
        raise ConfigError(field, value, f"must be <= {maximum}", fix or hint)
