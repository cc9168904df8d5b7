"""`SearchResult` (what `jgraph.superopt.search` returns) and `CacheWarning`.

The on-disk cache of results is `jgraph.superopt._search_cache`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from jgraph.superopt._candidate import Candidate, SearchStats
from jgraph.superopt._cost import Cost
from jgraph.superopt._ir import KernelGraph
from jgraph.superopt._lower import Route
from jgraph.superopt._signature import Signature
from jgraph.superopt._verify import Verdict

if TYPE_CHECKING:
    from jgraph.superopt._selection import Selection

__all__ = ["CacheWarning", "SearchResult"]


class CacheWarning(UserWarning):
    """A cache file could not be used or written; the result is computed (or kept) anyway."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchResult:
    """Verified candidates sorted by model cost (the XLA candidate always among them)."""

    name: str
    reference: KernelGraph
    candidates: tuple[Candidate, ...]
    stats: SearchStats
    from_cache: bool = False
    # How `superoptimize`'s caller passes arguments and gets results (None: flat lists).
    signature: Signature | None = dataclasses.field(default=None, compare=False)
    # The candidate and knobs `superoptimize` chose to run (`jgraph.superopt.lower.select`:
    # measured on a GPU); None: run the best candidate by model cost.
    selection: Selection | None = dataclasses.field(default=None, compare=False)
    # The regions and XLA steps `superoptimize` captured (`_plan.CapturedProgram`); this
    # result is its main (largest) region's. None: the graph alone is the program.
    program: Any = dataclasses.field(default=None, compare=False)
    _kernels: dict[str, Any] = dataclasses.field(
        default_factory=dict, compare=False, repr=False, init=False
    )

    # By identity, so `jax.jit(result)` works (its stats hold dicts); equality stays by value.
    __hash__ = object.__hash__

    @property
    def best(self) -> Candidate:
        """The cheapest verified candidate (model cost)."""
        return self.candidates[0]

    @property
    def xla(self) -> Candidate:
        """The all-pre-defined-ops candidate: the reference program, as XLA runs it."""
        return next(c for c in self.candidates if c.label == "xla")

    @property
    def model_speedup(self) -> float:
        """XLA candidate's model time over the best candidate's (a model number, not measured)."""
        return self.xla.cost.estimated_us / self.best.cost.estimated_us

    @property
    def stayed_xla(self) -> tuple[str, ...]:
        """The operators `superoptimize` kept as XLA, ``"primitive: why"`` each (in order)."""
        return self.program.xla_ops if self.program is not None else ()

    @property
    def chosen(self) -> Candidate:
        """The candidate `__call__` runs: the `selection`'s, else `best`."""
        return self.selection.candidate if self.selection is not None else self.best

    @property
    def fused_kernels(self) -> tuple[str, ...]:
        """The graph-defined (fused) kernels that run, ``"region k: K[grid=...:ops]"`` each.

        One line per graph-defined kernel of the `chosen` candidate of every region
        `superoptimize` searched (a plain `search` result is region 0); empty when
        every region runs as its pre-defined (XLA) ops. `KernelGraph.summary` says
        how each line reads.
        """
        results = self.program.results if self.program is not None else (self,)
        lines = []
        for k, res in enumerate(results):
            graph = res.chosen.graph
            for op, part in zip(graph.ops, graph.summary().split(" ; "), strict=True):
                if op.block is not None:
                    lines.append(f"region {k}: {part}")
        return tuple(lines)

    def kernel(self, route: Route = "auto") -> Any:
        """The candidate to run, lowered on ``route`` (a cached `LoweredGraph`).

        With ``route="auto"`` that is the `selection` when there is one (the
        fastest measured candidate and knobs on a GPU), else the best candidate by
        model cost. The search keeps only candidates that lower for CUDA (unless
        ``check_lowering`` was off), so it runs as Pallas kernels.
        """
        if route not in self._kernels:
            from jgraph.superopt._lower import lower

            if route == "auto" and self.selection is not None:
                self._kernels[route] = self.selection.lowered()
            else:
                self._kernels[route] = lower(self.best.graph, route=route)
        return self._kernels[route]

    def __call__(self, *args: Any) -> Any:
        """Runs the best μGraph as Pallas kernels (interpret mode on CPU), inside `jax.jit` too.

        Called like the captured function when it came from `superoptimize`
        (same argument and result pytrees); otherwise takes the graph's input
        arrays and returns the list of its outputs.
        """
        if self.signature is None:
            return self.kernel()(*args)
        leaves = self.signature.flatten(args)
        if self.program is None:
            return self.signature.unflatten(self.kernel()(*leaves))
        return self.signature.unflatten(self.program.run(leaves, self.kernel))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "reference": self.reference.to_json(),
            "candidates": [
                {
                    "graph": c.graph.to_json(),
                    "cost": c.cost.as_dict(),
                    "label": c.label,
                    "found_s": c.found_s,
                    "found_states": c.found_states,
                    "verdict": dataclasses.asdict(c.verdict),
                }
                for c in self.candidates
            ],
            "stats": self.stats.as_dict(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchResult:
        cands = tuple(
            Candidate(
                graph=KernelGraph.from_json(c["graph"]),
                cost=Cost(**c["cost"]),
                label=str(c["label"]),
                found_s=float(c.get("found_s", 0.0)),
                found_states=int(c.get("found_states", 0)),
                verdict=Verdict(
                    ok=bool(c["verdict"]["ok"]),
                    stage=c["verdict"]["stage"],
                    reason=str(c["verdict"]["reason"]),
                    permutation=tuple(c["verdict"]["permutation"]),
                ),
            )
            for c in data["candidates"]
        )
        if not cands or not all(c.verdict.ok for c in cands):
            raise ValueError("cache holds an unverified candidate")
        return cls(
            name=str(data["name"]),
            reference=KernelGraph.from_json(data["reference"]),
            candidates=cands,
            stats=SearchStats(**data["stats"]),
            from_cache=True,
        )
