"""The result type every subsystem's part of `jgraph demo` returns.

Each subpackage exposes ``demo(out_dir: Path) -> DemoReport``; the runner in
`jgraph._demo` times it and the CLI renders the rows. Library code never prints:
a part puts what a user would care about in ``rows`` and writes files (PNG,
JSON, .tflite) under ``out_dir``, listing them in ``artifacts``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

__all__ = ["DemoReport"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoReport:
    """What one subsystem's demo part shows.

    Attributes:
        headline: one sentence with the result a user would care about.
        rows: (label, value) pairs shown as a table under the headline.
        artifacts: files the part wrote (plots, JSON, models).
    """

    headline: str
    rows: tuple[tuple[str, str], ...] = ()
    artifacts: tuple[Path, ...] = ()
