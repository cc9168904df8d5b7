"""What a search returns: verified candidates and the search's statistics."""

from __future__ import annotations

import dataclasses
from typing import Any

from jgraph.superopt._cost import Cost
from jgraph.superopt._ir import KernelGraph
from jgraph.superopt._verify import Verdict

__all__ = ["Candidate", "SearchStats"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Candidate:
    """A verified μGraph with its model cost.

    ``label`` says where it came from: ``"xla"`` (the reference), ``"search"`` (the
    op-by-op enumeration) or ``"fusion"`` (the fusion moves, `jgraph.superopt._fuse`).
    """

    graph: KernelGraph
    cost: Cost
    verdict: Verdict
    label: str = "search"
    found_s: float = 0.0  # seconds into the search when it was verified
    found_states: int = 0  # search states explored when it was verified (deterministic)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchStats:
    """What the search did: states, time, pruning breakdown, verification counts."""

    states: int
    seconds: float
    pruned: dict[str, int]
    verified: int
    rejected: dict[str, int]
    verify_seconds: float
    oracle_queries: int
    exhausted: bool
    time_to_first_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
