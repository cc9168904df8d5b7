"""`search`: the entry point of the μGraph search.

It verifies the reference (the XLA candidate every result holds), runs the
bounded search (`jgraph.superopt._kernel_search`), ranks the verified candidates
by model cost, and reads and writes the on-disk cache (`jgraph.superopt._search_cache`;
a cache that cannot be read or written is a `CacheWarning`, never a lost result).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from jgraph.superopt._candidate import Candidate, SearchStats
from jgraph.superopt._config import SearchConfig
from jgraph.superopt._cost import CostModel
from jgraph.superopt._fusion_search import fusion_candidates
from jgraph.superopt._ir import KernelGraph
from jgraph.superopt._kernel_search import run_search
from jgraph.superopt._result import SearchResult
from jgraph.superopt._search_cache import cache_path, load_cached, rank, store
from jgraph.superopt._verify import Verdict, Verifier

__all__ = ["search"]

log = logging.getLogger(__name__)


def search(
    reference: KernelGraph,
    *,
    config: SearchConfig | None = None,
    name: str = "program",
    cache_dir: str | Path | None = None,
    show_progress: bool | None = None,
) -> SearchResult:
    """Superoptimizes a μGraph: bounded search, verification, cost ranking, caching.

    Args:
        reference: the program (usually all pre-defined ops), e.g. from
            `new_kernel_graph` or `superoptimize`'s jaxpr capture.
        config: bounds, limits, backend, verification; defaults to `SearchConfig()`.
        name: a label for logs and the result.
        cache_dir: where results are cached (None: no cache). A cache file that
            cannot be read or written is a `CacheWarning`; the search result is
            returned either way.
        show_progress: force the progress bar on or off (None: when stderr is a tty).

    Returns:
        A `SearchResult` whose candidates are sorted by model cost; it always
        holds the XLA (reference) candidate.

    Raises:
        ConfigError: verifying ``reference`` would need more memory than
            ``config.verify.max_memory_gib`` (checked from the shapes, before any work).

    Example:
        >>> from jgraph.superopt import SearchConfig
        >>> from jgraph.superopt.programs import get_program
        >>> prog = get_program("rmsnorm_linear", scale=16)
        >>> res = search(prog.graph, config=SearchConfig(time_limit_s=60, max_kernel_ops=1))
        >>> res.best.label, res.best.graph.ops[0].kind
        ('fusion', 'customized')
    """
    config = config or SearchConfig()
    reference = reference.validate()
    verifier = Verifier(reference, config.verify)
    path = cache_path(cache_dir, reference, config) if cache_dir else None
    if path is not None:
        cached = load_cached(path, reference, verifier)
        if cached is not None:
            log.info("superopt cache hit: %s", path)
            return cached
    start = time.perf_counter()
    if not verifier.lax:
        # exp of an exp (e.g. a softmax of a tanh): no finite-field test can check a
        # candidate, so none is searched; the program runs as XLA, and the log says why
        log.warning("%s: not field-checkable (an exp of an exp), kept as the XLA program", name)
        xla = Candidate(
            graph=reference, cost=CostModel()(reference), label="xla",
            verdict=Verdict(ok=True, stage="passed", reason="the reference itself (not LAX)"),
        )  # fmt: skip
        stats = _no_search(seconds=time.perf_counter() - start, rejected={"not_lax": 1})
        return SearchResult(name=name, reference=reference, candidates=(xla,), stats=stats)
    xla_verdict = verifier.check(reference)
    if not xla_verdict.ok:  # the reference equals itself; anything else is a bug
        raise AssertionError(f"the reference failed its own verification: {xla_verdict}")
    xla = Candidate(graph=reference, cost=CostModel()(reference), verdict=xla_verdict, label="xla")
    fused: list[Candidate] = []
    found: list[Candidate]
    fused_first = None
    if config.fusion:
        # fusion moves get up to half the time; the enumeration gets what is left
        deadline = start + config.time_limit_s / 2
        fused, fused_first = fusion_candidates(reference, config, verifier, deadline=deadline)
    spent = time.perf_counter() - start
    config = dataclasses.replace(config, time_limit_s=max(config.time_limit_s - spent, 1e-3))
    if fused and len(reference.ops) > config.max_block_ops:
        # A program longer than one block graph: the enumeration's set-up (abstract
        # expressions of 12+ ops) alone overruns its limit by tens of seconds and GiBs
        # (23 ops: 52 s and 3.6 GiB on a 10 s limit) without reaching a kernel; the
        # fusion moves already cover it.
        log.info("%s: %d ops, enumeration skipped after the fusion moves", name, len(reference.ops))
        found, stats = [], _no_search()
    else:
        found, stats = run_search(reference, config, verifier, show_progress=show_progress)
    if fused:
        dfs_first = None if stats.time_to_first_s is None else spent + stats.time_to_first_s
        firsts = [t for t in (fused_first, dfs_first) if t is not None]
        # the enumeration's times count from its own start, after the fusion moves
        found = [*fused, *(dataclasses.replace(c, found_s=c.found_s + spent) for c in found)]
        stats = dataclasses.replace(
            stats, verified=stats.verified + len(fused), time_to_first_s=min(firsts)
        )
    if config.check_lowering and config.backend != "tpu":
        found, dropped = _lowerable(found, name)
        if dropped:
            stats = dataclasses.replace(stats, rejected={**stats.rejected, "lowering": dropped})
    stats = dataclasses.replace(stats, seconds=time.perf_counter() - start)
    result = SearchResult(
        name=name, reference=reference, candidates=rank([xla, *found]), stats=stats
    )
    if path is not None:
        store(path, result)
    return result


def _no_search(seconds: float = 0.0, rejected: dict[str, int] | None = None) -> SearchStats:
    """The statistics of an enumeration that did not run."""
    return SearchStats(
        states=0, seconds=seconds, pruned={}, verified=0, rejected=rejected or {},
        verify_seconds=0.0, oracle_queries=0, exhausted=False, time_to_first_s=None,
    )  # fmt: skip


def _lowerable(found: list[Candidate], name: str) -> tuple[list[Candidate], int]:
    """The candidates that lower for CUDA on some Pallas GPU route, and how many did not.

    Routes are tried in order and the first that lowers ends the check (each one is a
    real export).
    """
    from jgraph.core.pallas import GPU_ROUTES
    from jgraph.superopt._lower import lowering_problem

    kept, dropped = [], 0
    for c in found:
        problems = []
        for r in GPU_ROUTES:
            problem = lowering_problem(c.graph, route=r)
            if problem is None:
                kept.append(c)
                break
            problems.append(problem)
        else:
            dropped += 1
            log.info("%s: dropped a verified candidate that does not lower: %s", name, problems)
    return kept, dropped
