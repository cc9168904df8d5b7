"""The on-disk cache of search results: one JSON file per (program, settings).

The cache key is a SHA-256 of the program's μGraph JSON (which holds shapes and
dtypes), the backend, the result-relevant search settings and the jgraph
version. Only verified candidates are written (atomically).

The cache never costs a result:

* reading: a file that is missing, unreadable, corrupt, foreign, malformed in
  any way (wrong types, ``ops: ["x"]``, nesting too deep for the JSON parser) or
  tampered with is ignored with a `CacheWarning` and the search runs again. Only
  the μGraphs are taken from the file: every candidate is re-verified, its cost
  is recomputed by the `CostModel` (a stored cost is never trusted: a tampered
  XLA cost would otherwise report any speedup), the candidates are ranked again,
  and the XLA candidate must be there and be the reference itself;
* writing: a file that cannot be written (unwritable folder, a folder where the
  file should be, a file in place of the folder, a file another user owns) is a
  `CacheWarning`, and the finished result is returned anyway.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

from jgraph._version import __version__
from jgraph.core import atomic_write_json
from jgraph.superopt._config import SearchConfig
from jgraph.superopt._cost import CostModel
from jgraph.superopt._ir import KernelGraph
from jgraph.superopt._result import CacheWarning, SearchResult
from jgraph.superopt._verify import Verifier

__all__ = ["cache_key", "cache_path", "load_cached", "rank", "store"]


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


def rank(candidates: Any) -> tuple[Any, ...]:
    """Candidates by model cost, the XLA candidate first among equals (the search's order)."""
    return tuple(sorted(candidates, key=lambda c: (c.cost.estimated_us, c.label != "xla")))


def _checked(data: Any, reference: KernelGraph, verifier: Verifier) -> SearchResult:
    """The result in ``data`` with costs and verdicts recomputed; raises if it is unusable."""
    if not isinstance(data, dict):
        raise TypeError(f"the file holds a {type(data).__name__}, not a result")
    result = SearchResult.from_json(data)
    if result.reference != reference:
        raise ValueError("cache file is for another program")
    xla = [c for c in result.candidates if c.label == "xla"]
    if len(xla) != 1 or xla[0].graph != reference:
        raise ValueError("the XLA candidate is missing or is not the reference program")
    model = CostModel()
    cands = []
    for c in result.candidates:
        hash(c.graph)  # attrs from the file must be hashable, as the lowering caches graphs
        verdict = c.verdict if c.label == "xla" else verifier.check(c.graph)
        if not verdict.ok:
            raise ValueError(f"a cached candidate fails verification ({verdict.reason})")
        cands.append(dataclasses.replace(c, cost=model(c.graph), verdict=verdict))
    return dataclasses.replace(result, candidates=rank(cands))


def load_cached(path: Path, reference: KernelGraph, verifier: Verifier) -> SearchResult | None:
    """The cached result at ``path``, or None (missing, or unusable: a `CacheWarning`).

    A result is used only if it is for ``reference``, holds the XLA candidate and
    every candidate passes ``verifier`` again; costs are recomputed (module docs).
    """
    try:
        if not path.exists():
            return None
        return _checked(json.loads(path.read_text()), reference, verifier)
    # Anything a damaged file can make the parser, the IR or the verifier raise
    # (AttributeError on `ops: ["x"]`, RecursionError on deep nesting, ShapeError, ...)
    # means "rebuild", never "fail": the search below does not depend on the file.
    except Exception as exc:
        warnings.warn(
            f"ignoring superopt cache file {path} ({type(exc).__name__}: {exc}); rebuilding it",
            CacheWarning,
            stacklevel=3,
        )
        return None


def store(path: Path, result: SearchResult) -> None:
    """Writes ``result`` (verified candidates only) to ``path`` atomically.

    A write that fails is a `CacheWarning`, not an error: the result is kept.
    """
    try:
        atomic_write_json(path, result.to_json())
    except OSError as exc:
        warnings.warn(
            f"could not write superopt cache file {path} ({type(exc).__name__}: {exc}); "
            "the result is returned but not cached",
            CacheWarning,
            stacklevel=3,
        )
