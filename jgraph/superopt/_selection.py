"""What `select` returns: the chosen candidate and knobs, and every measured point.

Also Kendall's tau-b, the rank agreement between the analytic model and the
measured times (spec §f: cost-model validation), written out here because scipy
is only a test dependency.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import cast

from jgraph.core import ConfigError
from jgraph.superopt._candidate import Candidate
from jgraph.superopt._lower import KernelKnobs, LoweredGraph, Route, lower

__all__ = ["Measurement", "Selection", "kendall_tau"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Measurement:
    """One (candidate, knobs) point of a selection.

    Attributes:
        rank: the candidate's position in ``result.candidates`` (analytic order).
        label: the candidate's label (``"xla"`` for the reference program).
        estimated_us: the analytic model's time for the candidate.
        knobs: the launch knobs used.
        route: the concrete lowering route (``"triton"``, ``"mosaic_gpu"``, ``"interpret"``);
            a candidate without graph-defined kernels is plain XLA whatever the route.
        median_us: median wall time of one call; None when not measured (or failed).
        compile_s: seconds of the first call (trace, lower, compile, run); None if not run.
        problem: why the point was skipped (does not lower, compile or run error), else None.
    """

    rank: int
    label: str
    estimated_us: float
    knobs: KernelKnobs
    route: str
    median_us: float | None = None
    compile_s: float | None = None
    problem: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Selection:
    """The chosen candidate and knobs, with every measurement that led to the choice.

    Attributes:
        candidate: the chosen verified μGraph.
        knobs: its launch knobs.
        route: its concrete lowering route.
        device_kind: ``jax.devices()[0].device_kind`` where it was selected (``"cpu"`` on CPU).
        measured: chosen by measured time (False: the model's order, default knobs).
        measurements: every point considered, in the order they were visited.
        kendall_tau: rank agreement (Kendall's tau-b) between the model's times and the
            measured ones over the measured candidates (each at its best knobs); None
            with fewer than two.
        from_cache: read from the selection cache instead of measured now.
    """

    candidate: Candidate
    knobs: KernelKnobs
    route: str
    device_kind: str
    measured: bool
    measurements: tuple[Measurement, ...]
    kendall_tau: float | None
    from_cache: bool = False

    def lowered(self) -> LoweredGraph:
        """The chosen μGraph lowered with the chosen route and knobs."""
        return lower(self.candidate.graph, route=cast(Route, self.route), knobs=self.knobs)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b of two paired sequences (ties handled); None if undefined.

    Example:
        >>> kendall_tau([1, 2, 3], [10, 20, 30]), kendall_tau([1, 2, 3], [3, 2, 1])
        (1.0, -1.0)
    """
    if len(x) != len(y):
        raise ConfigError(
            "kendall_tau.y", len(y), f"must pair with x ({len(x)} values)", "pass equal lengths"
        )
    conc = disc = tie_x = tie_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tie_x += 1
            elif dy == 0:
                tie_y += 1
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    denom = ((conc + disc + tie_x) * (conc + disc + tie_y)) ** 0.5
    return None if denom == 0 else (conc - disc) / denom
