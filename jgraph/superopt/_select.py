"""Choosing a verified μGraph (and its launch knobs) by measurement on the device.

The analytic cost model ranks candidates; `select` lowers the top-k that lower
on the route and, on a GPU, times each under a grid of `KernelKnobs` (median of
single-call wall times after warm-up) and keeps the fastest (spec §f "On one
GPU"). Interpret-mode timings on CPU are not performance numbers, so by default
nothing is measured there and the cheapest candidate in the model's order wins.
Measured selections are cached per device kind (`jgraph.superopt._select_cache`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from jgraph.core import ConfigError, check_choice, check_int, time_call
from jgraph.superopt._candidate import Candidate
from jgraph.superopt._lower import (
    _GPU_ROUTES,
    ROUTES,
    KernelKnobs,
    LoweredGraph,
    Route,
    _describe,
    _platform,
    _storage,
    auto_gpu_routes,
    lower,
    lowered_callable,
    lowering_problem,
    resolve_route,
)
from jgraph.superopt._result import SearchResult
from jgraph.superopt._select_cache import (
    load_selection,
    selection_key,
    selection_path,
    store_selection,
)
from jgraph.superopt._selection import Measurement, Selection, kendall_tau

__all__ = ["DEFAULT_KNOB_GRID", "select"]

log = logging.getLogger(__name__)

DEFAULT_KNOB_GRID: tuple[KernelKnobs, ...] = (
    KernelKnobs(num_warps=4, num_stages=2),
    KernelKnobs(num_warps=4, num_stages=3),
    KernelKnobs(num_warps=8, num_stages=2),
    KernelKnobs(num_warps=8, num_stages=3),
)


def _time_one(
    fn: LoweredGraph, args: Sequence[Any], *, warmup: int, repeats: int
) -> tuple[float, float]:
    """(seconds of the first call, median seconds of ``repeats`` single calls after ``warmup``).

    The one place that reads the clock (tests replace it to fix which point is fastest).
    """
    import jax

    call = lowered_callable(fn)  # no per-call argument checks inside the timed loop
    start = time.perf_counter()
    jax.block_until_ready(call(*args))
    compile_s = time.perf_counter() - start
    return compile_s, time_call(call, *args, warmup=warmup, repeats=repeats).median


def _has_kernels(cand: Candidate) -> bool:
    return any(op.block is not None for op in cand.graph.ops)


def _gpu_route(cand: Candidate, route: str) -> tuple[str, str | None]:
    """(concrete route, why it does not lower or None) of one candidate; ``route`` may be auto."""
    routes = auto_gpu_routes() if route == "auto" else (route,)
    if not _has_kernels(cand):  # no Pallas kernel: the XLA program lowers anywhere
        return routes[0], None
    problems = []
    for r in routes:
        problem = lowering_problem(cand.graph, route=cast(Any, r))
        if problem is None:
            return r, None
        problems.append(problem)
    return routes[0], "; ".join(problems)


def _check_args(route: str, top_k: int, knob_grid: Sequence[KernelKnobs], repeats: int,
                warmup: int, measure: bool | None) -> None:  # fmt: skip
    check_choice("select.route", route, ROUTES)
    check_int("select.top_k", top_k, minimum=1)
    check_int("select.repeats", repeats, minimum=1, fix="time at least one call (default 100)")
    check_int("select.warmup", warmup, minimum=0)
    if measure is not None and not isinstance(measure, bool):
        raise ConfigError("select.measure", measure, "must be True, False or None", "pass a bool")
    if not knob_grid or not all(isinstance(k, KernelKnobs) for k in knob_grid):
        raise ConfigError(
            "select.knob_grid", knob_grid, "must be a non-empty sequence of KernelKnobs",
            "pass e.g. DEFAULT_KNOB_GRID or (KernelKnobs(),)",
        )  # fmt: skip


def _inputs(result: SearchResult, storage: Any, key: Any) -> list[Any]:
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(0) if key is None else key
    specs = result.reference.inputs
    keys = jax.random.split(key, len(specs))
    return [
        (0.5 * jax.random.normal(k, tuple(s.shape), jnp.float32)).astype(storage)
        for k, s in zip(keys, specs, strict=True)
    ]


def _point(rank: int, cand: Candidate, route: str, knobs: KernelKnobs, **kw: Any) -> Measurement:
    return Measurement(rank=rank, label=cand.label, estimated_us=cand.cost.estimated_us,
                       knobs=knobs, route=route, **kw)  # fmt: skip


def _measure(
    lowerable: Sequence[tuple[int, Candidate, str]],
    knob_grid: Sequence[KernelKnobs],
    args: Sequence[Any],
    visited: list[Measurement],
    *,
    warmup: int,
    repeats: int,
) -> list[tuple[Measurement, Candidate]]:
    """Times every (candidate, knobs) point; failures go to ``visited`` with their problem."""
    points = []
    for rank, cand, r in lowerable:
        for knobs in knob_grid if _has_kernels(cand) else knob_grid[:1]:
            try:
                fn = lower(cand.graph, route=cast(Route, r), knobs=knobs)
                compile_s, median_s = _time_one(fn, args, warmup=warmup, repeats=repeats)
            except Exception as exc:  # a compile or run failure rules out this point only
                log.warning("select: candidate %d (%s) with %s failed: %s", rank, cand.label,
                            knobs, _describe(exc))  # fmt: skip
                visited.append(_point(rank, cand, r, knobs, problem=_describe(exc)))
                continue
            m = _point(rank, cand, r, knobs, median_us=1e6 * median_s, compile_s=compile_s)
            visited.append(m)
            points.append((m, cand))
    return points


def select(
    result: SearchResult,
    *,
    route: Route = "auto",
    top_k: int = 4,
    knob_grid: Sequence[KernelKnobs] = DEFAULT_KNOB_GRID,
    measure: bool | None = None,
    repeats: int = 100,
    warmup: int = 5,
    cache_dir: str | Path | None = None,
    key: Any = None,
) -> Selection:
    """Picks the candidate (and launch knobs) to run, by measurement on a GPU.

    Candidates are visited in the model's order; on a GPU route those that do not
    lower (`lowering_problem`) are skipped and recorded with the reason until
    ``top_k`` lowerable ones are found. Measuring, each is timed under every knob
    setting (a candidate without graph-defined kernels once) on random normal
    inputs (scaled 0.5, storage dtype) from ``key``; a point that fails to compile
    or run is recorded and skipped, and the fastest point wins. Not measuring, the
    first lowerable candidate wins with `KernelKnobs()`.

    Args:
        result: a search result (``search`` or ``superoptimize``).
        route: ``"auto"`` (interpret on CPU; on an NVIDIA GPU, per candidate the
            first of Triton, Mosaic GPU and, if installed, jax-triton that lowers
            it) or a concrete route.
        top_k: lowerable candidates to measure.
        knob_grid: launch knobs to try per candidate with graph-defined kernels.
        measure: time the candidates; None: only on a GPU route (interpret-mode
            times on CPU say nothing about GPU speed).
        repeats: timed calls per point (the median is kept).
        warmup: untimed calls after the first (compiling) call.
        cache_dir: where measured selections are cached per device kind (None: no cache).
        key: PRNG key for the timing inputs (default ``jax.random.PRNGKey(0)``).

    Returns:
        A `Selection`.

    Raises:
        ConfigError: a bad argument, or a route this device cannot run.

    Example:
        >>> from jgraph.superopt import SearchConfig, search
        >>> from jgraph.superopt.programs import get_program
        >>> prog = get_program("rmsnorm_linear", scale=16, dtype="float32")
        >>> res = search(prog.graph, config=SearchConfig(time_limit_s=30, max_kernel_ops=1))
        >>> sel = select(res)  # on CPU: the model's choice, nothing measured
        >>> sel.route, sel.measured, sel.candidate is res.best
        ('interpret', False, True)
    """
    import jax

    _check_args(route, top_k, knob_grid, repeats, warmup, measure)
    storage = _storage(result.reference, None)
    if route == "auto" and _platform() == "cuda":
        concrete = "auto"  # decided per candidate (`auto_gpu_routes`)
    else:
        concrete = resolve_route(route, result.reference, KernelKnobs(), storage)
    on_gpu = concrete == "auto" or concrete in _GPU_ROUTES
    measure = on_gpu if measure is None else measure
    device_kind = str(jax.devices()[0].device_kind)
    path = cache_key = None
    if measure and cache_dir is not None:
        cache_key = selection_key(result, route=route, device_kind=device_kind, top_k=top_k,
                                  knob_grid=knob_grid)  # fmt: skip
        path = selection_path(cache_dir, cache_key, route=route, device_kind=device_kind)
        cached = load_selection(path, cache_key, result)
        if cached is not None:
            log.info("superopt selection cache hit: %s", path)
            return cached

    visited: list[Measurement] = []
    lowerable: list[tuple[int, Candidate, str]] = []
    for rank, cand in enumerate(result.candidates):
        r, problem = _gpu_route(cand, concrete) if on_gpu else (concrete, None)
        if problem is not None:
            log.info("select: skipping candidate %d (%s): %s", rank, cand.label, problem)
            visited.append(_point(rank, cand, r, KernelKnobs(), problem=problem))
            continue
        lowerable.append((rank, cand, r))
        if len(lowerable) == (top_k if measure else 1):
            break
    xla_route = _GPU_ROUTES[0] if concrete == "auto" else concrete

    if not measure:
        rank, cand, r = lowerable[0]  # never empty: the XLA candidate lowers on every route
        visited.append(_point(rank, cand, r, KernelKnobs()))
        return Selection(candidate=cand, knobs=KernelKnobs(), route=r, device_kind=device_kind,
                         measured=False, measurements=tuple(visited), kendall_tau=None)  # fmt: skip

    if not on_gpu:
        log.warning("select: timing interpret-mode kernels; not a GPU performance number")
    points = _measure(lowerable, knob_grid, _inputs(result, storage, key), visited,
                      warmup=warmup, repeats=repeats)  # fmt: skip
    if not points:
        log.warning("select: no candidate could be measured; falling back to the XLA candidate")
        return Selection(candidate=result.xla, knobs=KernelKnobs(), route=xla_route,
                         device_kind=device_kind, measured=False, measurements=tuple(visited),
                         kendall_tau=None)  # fmt: skip
    fastest, cand = min(points, key=lambda p: (p[0].median_us or 0.0, p[0].rank))
    best: dict[int, tuple[float, float]] = {}  # rank -> (model us, fastest measured us)
    for m, _ in points:
        t = m.median_us or 0.0
        if m.rank not in best or t < best[m.rank][1]:
            best[m.rank] = (m.estimated_us, t)
    pairs = list(best.values())
    tau = kendall_tau([p[0] for p in pairs], [p[1] for p in pairs]) if len(pairs) >= 2 else None
    sel = Selection(candidate=cand, knobs=fastest.knobs, route=fastest.route,
                    device_kind=device_kind, measured=True, measurements=tuple(visited),
                    kendall_tau=tau)  # fmt: skip
    if path is not None and cache_key is not None:
        store_selection(path, cache_key, sel)
    return sel
