"""The on-disk cache of measured selections, one file per (result, device kind, route).

The file is ``superopt-select-<key>-<device>-<route>.json`` in the cache folder
(the search cache's, usually). SearchResult does not keep its SearchConfig, so
the key is a SHA-256 (first 24 hex digits) of: the reference μGraph's JSON, the
SHA-256 of every candidate's JSON in the result's (analytic) order, the route
asked for, the device kind, ``top_k``, the knob grid and the jgraph version.
``repeats``, ``warmup`` and the input key are not in it: they change how well a
choice is measured, not which question it answers.

A file whose chosen μGraph is not among the result's candidates (or that does
not parse, or is for another key) is ignored with a `CacheWarning` and the
selection is measured again; writes are atomic, and one that fails is a
`CacheWarning` (the measured selection is still used).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jgraph._version import __version__
from jgraph.core import atomic_write_json
from jgraph.superopt._ir import KernelGraph
from jgraph.superopt._lower import KernelKnobs
from jgraph.superopt._result import CacheWarning, SearchResult
from jgraph.superopt._selection import Measurement, Selection

__all__ = ["load_selection", "selection_key", "selection_path", "store_selection"]

_FORMAT = "jgraph-superopt-selection/1"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def selection_key(result: SearchResult, *, route: str, device_kind: str, top_k: int,
                  knob_grid: Sequence[KernelKnobs]) -> str:  # fmt: skip
    """The hash that names a selection's cache file (module docs list what it covers)."""
    blob = json.dumps(
        {
            "reference": result.reference.dumps(),
            "candidates": [_sha(c.graph.dumps()) for c in result.candidates],
            "route": route,
            "device_kind": device_kind,
            "top_k": top_k,
            "knob_grid": [dataclasses.asdict(k) for k in knob_grid],
            "jgraph": __version__,
        },
        sort_keys=True,
    )
    return _sha(blob)[:24]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def selection_path(cache_dir: str | Path, key: str, *, route: str, device_kind: str) -> Path:
    """The cache file of the selection ``key`` (from `selection_key`) in ``cache_dir``."""
    return Path(cache_dir) / f"superopt-select-{key}-{_slug(device_kind)}-{route}.json"


def _measurement_json(m: Measurement) -> dict[str, Any]:
    return {**dataclasses.asdict(m), "knobs": dataclasses.asdict(m.knobs)}


def store_selection(path: Path, key: str, sel: Selection) -> None:
    """Writes a measured selection (for ``key``) to ``path`` atomically.

    A write that fails is a `CacheWarning`, not an error: the selection is kept.
    """
    try:
        _write(path, key, sel)
    except OSError as exc:
        warnings.warn(
            f"could not write superopt selection cache file {path} ({type(exc).__name__}: "
            f"{exc}); the selection is used but not cached",
            CacheWarning,
            stacklevel=3,
        )


def _write(path: Path, key: str, sel: Selection) -> None:
    atomic_write_json(
        path,
        {
            "format": _FORMAT,
            "key": key,
            "device_kind": sel.device_kind,
            "graph": sel.candidate.graph.to_json(),
            "knobs": dataclasses.asdict(sel.knobs),
            "route": sel.route,
            "kendall_tau": sel.kendall_tau,
            "measurements": [_measurement_json(m) for m in sel.measurements],
        },
    )


def _parse(data: dict[str, Any], result: SearchResult, key: str) -> Selection:
    if data.get("format") != _FORMAT or data.get("key") != key:
        raise ValueError("not a selection file for this key")
    chosen = KernelGraph.from_json(data["graph"]).dumps()
    cand = next((c for c in result.candidates if c.graph.dumps() == chosen), None)
    if cand is None:
        raise ValueError("the chosen μGraph is not among the result's candidates")
    measurements = tuple(
        Measurement(**{**m, "knobs": KernelKnobs(**m["knobs"])}) for m in data["measurements"]
    )
    tau = data["kendall_tau"]
    return Selection(
        candidate=cand,
        knobs=KernelKnobs(**data["knobs"]),
        route=str(data["route"]),
        device_kind=str(data["device_kind"]),
        measured=True,
        measurements=measurements,
        kendall_tau=None if tau is None else float(tau),
        from_cache=True,
    )


def load_selection(path: Path, key: str, result: SearchResult) -> Selection | None:
    """The cached selection ``key`` at ``path``, or None (missing, or unusable: warns)."""
    try:
        if not path.exists():
            return None
        return _parse(json.loads(path.read_text()), result, key)
    # Whatever a damaged file makes the parser raise (AttributeError, RecursionError on
    # deep nesting, ...) means "measure again", never "fail".
    except Exception as exc:
        warnings.warn(
            f"ignoring superopt selection cache file {path} ({type(exc).__name__}: {exc}); "
            "selecting again",
            CacheWarning,
            stacklevel=3,
        )
        return None
