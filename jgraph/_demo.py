"""`jgraph demo`: a CPU tour of the four subsystems.

Each part lives in its subpackage as ``demo(out_dir) -> DemoReport``. A part
whose subpackage does not define ``demo`` yet is reported as not built, with
the issue that builds it; a part that raises is reported as failed (and makes
the CLI exit non-zero), the others still run.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from jgraph.core import DemoReport

__all__ = ["PARTS", "DemoOutcome", "DemoPart", "part_names", "run_demo"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoPart:
    """One stop of the tour: which module provides ``demo`` and which issue builds it."""

    name: str
    title: str
    module: str
    issue: str


PARTS: tuple[DemoPart, ...] = (
    DemoPart(
        name="pipeline",
        title="GraphPipe: graph pipeline parallelism",
        module="jgraph.pipeline",
        issue="issue #3 (planner)",
    ),
    DemoPart(
        name="superopt",
        title="Mirage: μGraph superoptimization",
        module="jgraph.superopt",
        issue="issue #4 (search and verification)",
    ),
    DemoPart(
        name="coserve",
        title="FlexLLM: co-serving inference and LoRA finetuning",
        module="jgraph.coserve",
        issue="issue #5 (engine)",
    ),
    DemoPart(
        name="quant",
        title="DGMS: Gaussian-mixture weight sharing",
        module="jgraph.quant",
        issue="issue #6 (training transform)",
    ),
    DemoPart(
        name="tflite",
        title="DGMS export to .tflite",
        module="tflite_export",
        issue="issue #17 (TFLite export)",
    ),
)


def part_names() -> tuple[str, ...]:
    """The names `run_demo(only=...)` and ``jgraph demo --only`` accept."""
    return tuple(part.name for part in PARTS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoOutcome:
    """How one part went: ``ok`` with its report, ``not_built``, or ``failed``."""

    part: DemoPart
    status: Literal["ok", "not_built", "failed"]
    seconds: float = 0.0
    report: DemoReport | None = None
    error: str = ""


def _entry(part: DemoPart) -> Callable[[Path], DemoReport] | None:
    module = importlib.import_module(part.module)
    entry = getattr(module, "demo", None)
    return entry if callable(entry) else None


def run_demo(out_dir: Path, *, only: Sequence[str] = ()) -> list[DemoOutcome]:
    """Runs the selected demo parts (all by default) and collects their outcomes.

    Args:
        out_dir: where parts write their artifacts (one sub-folder per part).
        only: names of the parts to run; empty means every part.

    Returns:
        One `DemoOutcome` per selected part, in tour order.

    Raises:
        ValueError: a name in ``only`` is not a part.

    Example:
        >>> import tempfile, pathlib
        >>> outcomes = run_demo(pathlib.Path(tempfile.mkdtemp()), only=["nothing"])
        Traceback (most recent call last):
        ...
        ValueError: unknown demo part(s) ['nothing']; choose from pipeline, superopt, coserve, quant, tflite
    """
    names = part_names()
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ValueError(f"unknown demo part(s) {unknown}; choose from {', '.join(names)}")
    outcomes = []
    for part in PARTS:
        if only and part.name not in only:
            continue
        entry = _entry(part)
        if entry is None:
            outcomes.append(DemoOutcome(part=part, status="not_built"))
            continue
        log.info("demo part %s starting", part.name)
        start = time.perf_counter()
        try:
            report = entry(out_dir / part.name)
        except Exception as exc:  # one broken part must not hide the others
            log.exception("demo part %s failed", part.name)
            outcomes.append(
                DemoOutcome(
                    part=part,
                    status="failed",
                    seconds=time.perf_counter() - start,
                    error=f"{type(exc).__name__}: {exc}",
                )
            )
            continue
        outcomes.append(
            DemoOutcome(part=part, status="ok", seconds=time.perf_counter() - start, report=report)
        )
    return outcomes
