"""`SearchResult` (what `jgraph.superopt.search` returns) and its on-disk cache.

The cache key is a SHA-256 of the program's μGraph JSON (which holds shapes and
dtypes), the backend, the result-relevant search settings and the jgraph
version. Only verified candidates are written (atomically). A corrupt or
foreign cache file is ignored with a `CacheWarning` and rebuilt; a cached best
candidate is re-verified on load, so a tampered file cannot inject a wrong μGraph.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jgraph._version import __version__
from jgraph.core import atomic_write_json
from jgraph.superopt._candidate import Candidate, SearchStats
from jgraph.superopt._config import SearchConfig
from jgraph.superopt._cost import Cost
from jgraph.superopt._ir import KernelGraph
from jgraph.superopt._lower import Route
from jgraph.superopt._signature import Signature
from jgraph.superopt._verify import Verdict, Verifier

if TYPE_CHECKING:
    from jgraph.superopt._selection import Selection

__all__ = ["CacheWarning", "SearchResult", "cache_key", "cache_path", "load_cached", "store"]


class CacheWarning(UserWarning):
    """A cache file could not be used (corrupt, foreign or failing re-verification)."""


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


def cache_key(reference: KernelGraph, config: SearchConfig) -> str:
    """The structural hash of (program, shapes, dtypes, backend, settings, jgraph version)."""
    blob = json.dumps(
        {"program": reference.to_json(), "config": config.key(), "jgraph": __version__},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cache_path(cache_dir: str | Path, reference: KernelGraph, config: SearchConfig) -> Path:
    """The cache file of (program, settings) in ``cache_dir``."""
    return Path(cache_dir) / f"superopt-{cache_key(reference, config)}.json"


def load_cached(path: Path, reference: KernelGraph, verifier: Verifier) -> SearchResult | None:
    """The cached result at ``path``, or None (missing, or unusable: a `CacheWarning`).

    A result is used only if it is for ``reference`` and its best candidate passes
    ``verifier`` again, so a tampered file cannot inject a wrong μGraph.
    """
    if not path.exists():
        return None
    try:
        result = SearchResult.from_json(json.loads(path.read_text()))
        if result.reference != reference:
            raise ValueError("cache file is for another program")
        if not verifier.check(result.best.graph).ok:
            raise ValueError("cached best candidate fails verification")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(
            f"ignoring superopt cache file {path} ({type(exc).__name__}: {exc}); rebuilding it",
            CacheWarning,
            stacklevel=3,
        )
        return None
    return result


def store(path: Path, result: SearchResult) -> None:
    """Writes ``result`` (verified candidates only) to ``path`` atomically."""
    atomic_write_json(path, result.to_json())
