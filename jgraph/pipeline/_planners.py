"""The planners `plan_pipeline` runs, one class each behind the `Planner` protocol.

A planner is prepared for one cost model and mini-batch size, then asked for
candidate partitions per micro-batch size; `plan_pipeline` hands every
candidate to the shared assembler (`assemble_plan`) and keeps the fastest
simulated plan. What the assembler needs from a planner besides its
candidates (its name, whether its stages run as a chain, the dependency edges
a candidate assumes) is part of the protocol, so it is typed and declared
here rather than attached to a function after the fact.

`PLANNER_NAMES` is derived from the `PlannerName` type and `make_planner`
looks names up in one registry; a test checks that both list the same names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple, Protocol, get_args

from jgraph.pipeline._baselines import (
    downsets,
    gpipe_uniform,
    linearisations,
    pipedream_dp,
    piper_dp,
)
from jgraph.pipeline._cost import CostModel
from jgraph.pipeline._errors import NoPlanError
from jgraph.pipeline._graphpipe import GraphPipeSearch
from jgraph.pipeline._linear import LinearSearch
from jgraph.pipeline._plan import assemble_plan

__all__ = ["PLANNER_NAMES", "Candidate", "Planner", "PlannerName", "make_planner"]

PlannerName = Literal["graphpipe", "pipedream", "piper", "gpipe"]
# Derived from the Literal, so the type, `plan_pipeline`'s check and the CLI choices are one list.
PLANNER_NAMES: tuple[PlannerName, ...] = get_args(PlannerName)


class Candidate(NamedTuple):
    """One partition a planner offers the assembler.

    Attributes:
        stages: node indices (`CostModel` numbering) of each stage.
        degrees: data-parallel degree of each stage.
        order_edges: dependency edges ``(u, v)`` (node indices) the partition
            assumes besides the graph's own (GraphPipe's series-parallel
            edges); the plan lists them.
    """

    stages: list[list[int]]
    degrees: list[int]
    order_edges: tuple[tuple[int, int], ...] = ()


class Planner(Protocol):
    """One planner, prepared for one cost model and mini-batch size.

    Attributes:
        name: the planner's name, recorded in its plans.
        chain: True for sequential pipelines (SPP): stage ``i`` feeds stage
            ``i + 1`` in the given order, as PipeDream/Piper/GPipe runtimes run it.
    """

    @property
    def name(self) -> PlannerName: ...

    @property
    def chain(self) -> bool: ...

    def candidates(self, micro_batch: int, *, bound_s: float = math.inf) -> list[Candidate]:
        """Partitions worth simulating at this micro-batch size (``[]``: none fits).

        ``bound_s`` is the best simulated iteration time so far; a planner may
        skip candidates that provably cannot beat it (only GraphPipe does).
        """
        ...

    def fits(self, micro_batch: int) -> bool:
        """Whether any partition at this micro-batch size fits in memory."""
        ...


class GraphPipePlanner:
    """GraphPipe: a DP over the series-parallel tree (`GraphPipeSearch`) plus the
    contiguous ranges of two topological orders as stage DAGs (`LinearSearch`).

    A chain of stages is a stage DAG too: the linear candidates put every
    partition the PipeDream-style planner searches into GraphPipe's space,
    where the SP tree cannot reach them (a series prefix with part of a
    parallel composition) or reaches them only with the edges the
    decomposition added. SP candidates assume those edges, linear ones only
    the graph's own.
    """

    name: PlannerName = "graphpipe"
    chain = False

    def __init__(self, cm: CostModel, batch: int) -> None:
        self._search = GraphPipeSearch(cm, batch=batch)
        self._linear = LinearSearch(cm, batch=batch)

    def candidates(self, micro_batch: int, *, bound_s: float = math.inf) -> list[Candidate]:
        edges = self._search.added_edges
        out = [
            Candidate(s, d, edges)
            for s, d in self._search.best(micro_batch=micro_batch, bound_s=bound_s)
        ]
        for s, d in self._linear.best(micro_batch=micro_batch, bound_s=bound_s):
            if Candidate(s, d) not in out:
                out.append(Candidate(s, d))
        return out

    def fits(self, micro_batch: int) -> bool:
        return self._search.fits(micro_batch=micro_batch) or self._linear.fits(
            micro_batch=micro_batch
        )


class PipeDreamPlanner:
    """PipeDream-style: a chain DP over the BFS and DFS linearisations of the graph."""

    name: PlannerName = "pipedream"
    chain = True

    def __init__(self, cm: CostModel, batch: int) -> None:
        self._cm, self._batch = cm, batch
        self._orders = linearisations(cm)
        # Like GraphPipe's re-ranked targets, the sequential DP also offers
        # shallower pipelines (depth caps) to the simulator: fill and drain
        # can outweigh a slightly better bottleneck.
        self._caps: list[int | None] = [None]
        cap = 2
        while cap < min(cm.cluster.num_devices, len(cm.nodes)):
            self._caps.append(cap)
            cap *= 2

    def candidates(self, micro_batch: int, *, bound_s: float = math.inf) -> list[Candidate]:
        del bound_s  # every candidate is cheap to assemble; the assembler prunes
        out: list[Candidate] = []
        for order in self._orders:
            for cap in self._caps:
                got = pipedream_dp(self._cm, micro_batch, self._batch, order, max_depth=cap)
                if got is not None and Candidate(*got) not in out:
                    out.append(Candidate(*got))
        return out

    def fits(self, micro_batch: int) -> bool:
        return any(
            pipedream_dp(self._cm, micro_batch, self._batch, order) is not None
            for order in self._orders
        )


class PiperPlanner:
    """Piper-style: a chain DP over the graph's downsets; gives up above a state cap.

    Raises:
        NoPlanError: when the graph has more downsets than
            ``PlannerConfig.piper_max_downsets`` (raised on construction).
    """

    name: PlannerName = "piper"
    chain = True

    def __init__(self, cm: CostModel, batch: int) -> None:
        self._cm, self._batch = cm, batch
        ideals = downsets(cm, cm.config.piper_max_downsets)
        if ideals is None:
            raise NoPlanError(
                "PlannerConfig.piper_max_downsets",
                cm.config.piper_max_downsets,
                f"no plan: the Piper-style planner hit its state cap (graph {cm.graph.name!r} has "
                "more downsets than that)",
                "raise the cap (search time and memory grow with it) or use the graphpipe planner",
            )
        self._ideals = ideals

    def candidates(self, micro_batch: int, *, bound_s: float = math.inf) -> list[Candidate]:
        del bound_s  # one candidate per micro-batch size
        got = piper_dp(self._cm, micro_batch, self._batch, self._ideals)
        return [Candidate(*got)] if got is not None else []

    def fits(self, micro_batch: int) -> bool:
        return bool(self.candidates(micro_batch))


class GPipePlanner:
    """GPipe (uniform): 1, 2, 4, ... equal stages on equal device groups."""

    name: PlannerName = "gpipe"
    chain = True

    def __init__(self, cm: CostModel, batch: int) -> None:
        self._cm, self._batch = cm, batch

    def candidates(self, micro_batch: int, *, bound_s: float = math.inf) -> list[Candidate]:
        del bound_s  # a handful of candidates; the assembler prunes
        out = []
        stages = 1
        while stages <= self._cm.cluster.num_devices:
            got = gpipe_uniform(self._cm, micro_batch, stages)
            if got is not None:
                out.append(Candidate(*got))
            stages *= 2
        return out

    def fits(self, micro_batch: int) -> bool:
        # The uniform split ignores memory, so a candidate fits only once
        # assembled with the schedule's real in-flight counts.
        for stages, degrees, _ in self.candidates(micro_batch):
            got = assemble_plan(
                self._cm, stages, degrees, micro_batch=micro_batch, batch=self._batch,
                planner=self.name, chain=True,
            )  # fmt: skip
            if got is not None and got[0].max_memory_bytes <= self._cm.cluster.memory_bytes:
                return True
        return False


_REGISTRY: dict[PlannerName, Callable[[CostModel, int], Planner]] = {
    "graphpipe": GraphPipePlanner,
    "pipedream": PipeDreamPlanner,
    "piper": PiperPlanner,
    "gpipe": GPipePlanner,
}


def make_planner(name: PlannerName, cm: CostModel, *, batch: int) -> Planner:
    """The planner called ``name``, prepared for ``cm`` and mini-batch ``batch``.

    Raises:
        NoPlanError: the Piper-style planner's state cap is exceeded.
    """
    return _REGISTRY[name](cm, batch)
