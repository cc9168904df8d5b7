"""What every benchmark script in `scripts/` shares: timing, provenance, output.

A benchmark reports the baseline and the candidate from the same run with their
ratio, as medians over repeats after warm-up, and records where it ran (device
kind, CPU model, jax version, git SHA, date) next to the numbers.
"""

from __future__ import annotations

import dataclasses
import datetime
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jgraph.core._io import atomic_write_json

__all__ = ["Timing", "environment", "format_table", "time_call", "write_results"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Timing:
    """Wall-clock seconds of repeated calls (after warm-up)."""

    median: float
    min: float
    max: float
    repeats: int

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def time_call(
    fn: Callable[..., Any], *args: Any, warmup: int = 1, repeats: int = 5, **kwargs: Any
) -> Timing:
    """Times ``fn(*args, **kwargs)``, blocking on JAX outputs.

    Args:
        fn: the function to time; its outputs are passed to
            `jax.block_until_ready` so asynchronous dispatch is not mistaken
            for speed.
        *args: positional arguments for ``fn``.
        warmup: untimed calls first (compilation, caches).
        repeats: timed calls; the median is the number to quote.
        **kwargs: keyword arguments for ``fn``.

    Returns:
        A `Timing` with median, min and max seconds.

    Example:
        >>> t = time_call(sum, range(1000), warmup=0, repeats=3)
        >>> t.repeats, t.min <= t.median <= t.max
        (3, True)
    """
    import jax

    if repeats < 1:
        raise ValueError(f"time_call: repeats={repeats} must be >= 1")
    for _ in range(warmup):
        jax.block_until_ready(fn(*args, **kwargs))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args, **kwargs))
        samples.append(time.perf_counter() - start)
    return Timing(
        median=statistics.median(samples), min=min(samples), max=max(samples), repeats=repeats
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def environment() -> dict[str, Any]:
    """Where a benchmark ran: versions, device kind, CPU model, git SHA, UTC time."""
    import jax
    import jaxlib

    from jgraph._version import __version__

    devices = jax.devices()
    return {
        "jgraph": __version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "cpu_model": _cpu_model(),
        "git_sha": _git_sha(),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Formats rows of dicts as an aligned plain-text table (floats to 4 significant digits).

    Example:
        >>> print(format_table([{"n": 1, "t": 0.123456}, {"n": 10, "t": 2.0}]))
        n   t
        1   0.1235
        10  2
    """
    if not rows:
        return ""
    cols = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    body = [[cell(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths, strict=True)).rstrip() for b in body]
    return "\n".join(lines)


def write_results(
    path: str | Path, *, name: str, rows: Sequence[Mapping[str, Any]], **extra: Any
) -> Path:
    """Writes a benchmark's rows with `environment()` as JSON, atomically.

    Args:
        path: destination ``.json`` file.
        name: the benchmark's name (usually the script's).
        rows: one dict per measured configuration.
        **extra: more top-level fields (e.g. ``smoke=True``, targets).

    Returns:
        The path written.
    """
    return atomic_write_json(
        path, {"benchmark": name, "environment": environment(), "rows": list(rows), **extra}
    )
