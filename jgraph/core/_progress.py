"""Progress bars for long work (searches, training loops, sweeps).

Library code reports progress through `progress`, never with prints. Bars draw
on stderr with rich, only when stderr is a terminal (so CI logs and pipes stay
clean) unless forced; ``JGRAPH_PROGRESS=0``/``1`` overrides the detection.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["progress", "progress_enabled"]

T = TypeVar("T")


def progress_enabled() -> bool:
    """Whether progress bars draw: ``JGRAPH_PROGRESS`` if set, else stderr is a tty."""
    env = os.environ.get("JGRAPH_PROGRESS")
    if env is not None:
        return env not in ("0", "", "false", "no")
    return sys.stderr.isatty()


def progress(
    iterable: Iterable[T],
    *,
    description: str,
    total: int | None = None,
    enabled: bool | None = None,
) -> Iterator[T]:
    """Yields from ``iterable`` while drawing a progress bar on stderr.

    Args:
        iterable: the work items.
        description: what is being done, shown left of the bar.
        total: number of items, if ``iterable`` has no ``len``.
        enabled: force the bar on or off; None means `progress_enabled()`.

    Yields:
        The items of ``iterable``, unchanged.

    Example:
        >>> sum(progress(range(4), description="adding", enabled=False))
        6
    """
    if not (progress_enabled() if enabled is None else enabled):
        yield from iterable
        return
    # rich is imported lazily: most calls run with bars off (tests, CI, pipes).
    from rich.console import Console
    from rich.progress import track

    yield from track(iterable, description=description, total=total, console=Console(stderr=True))
