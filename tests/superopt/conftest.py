"""Shared searches for the lowering tests (test_lower_vs_interpreter.py, test_lower_cuda.py).

Each program's search runs once per test process (per xdist worker): the fixture
hands out a cached ``searches(name, budget)``. The programs are the float16
benchmark programs at ``scale=16``, ``batch=1``. The budgets are state counts
(the search is deterministic; the time limit is far above what they need, so a
loaded machine makes them slower, never different):

* ``fast``: just past the first few verified schedules of each program (found at
  the state counts noted below), two to four candidates per program. LoRA's
  search needs ~11k states (7-10 s on two loaded cores) before its first find, so
  only slow tests use it and the hand-written LoRA μGraph is their fast twin;
* ``slow``: every candidate those bounds hold (gqa, rmsnorm_linear, gated_mlp and
  ntrans exhaust their space; qknorm's last find is at 17.2k states). LoRA's space
  holds 73 candidates (exhausted at 14.3k states); the first 41, of one structure
  with its schedules, keep the slow tests within their time budget.

``verify_all``: at these small shapes the cost bound would skip verifying most
schedules; the lowering tests want every verified schedule, not only the cheapest.
``check_lowering=False``: the interpreter runs every verified candidate, also those
the search would drop because they do not lower for CUDA (batched block dots,
tiles that are not powers of two); test_lower_cuda.py checks that filter.
QKNorm needs three kernel ops (its one-kernel space holds no candidate at these
bounds): two pre-defined ops around one graph-defined kernel.
"""

import functools
from collections.abc import Callable

import pytest

from jgraph.superopt import SearchConfig, SearchResult, search
from jgraph.superopt.programs import get_program

# name: (search bounds, fast max_states, slow max_states)
LOWER_SEARCHES: dict[str, tuple[dict[str, int], int, int]] = {
    "gqa": ({"max_kernel_ops": 1}, 942, 20_000),  # finds from 940 states, exhausts at 971
    "qknorm": ({"max_kernel_ops": 3, "max_customized": 1}, 16_821, 20_000),  # from 16.8k
    "rmsnorm_linear": ({"max_kernel_ops": 1}, 410, 20_000),  # from 408, exhausts at 433
    "lora": ({"max_kernel_ops": 1}, 10_867, 10_900),  # from 10.9k: 41 of its 73 by 10.9k
    "gated_mlp": ({"max_kernel_ops": 1}, 2_623, 20_000),  # from 2.6k, exhausts at 2.7k
    "ntrans": ({"max_kernel_ops": 1}, 1_050, 20_000),  # from 1.0k, exhausts at 1.1k
}


@functools.cache
def _search(name: str, states: int, extra: tuple[tuple[str, int | bool], ...] = ()) -> SearchResult:
    bounds, _, _ = LOWER_SEARCHES[name]
    fields = {"check_lowering": False, **bounds, **dict(extra)}
    cfg = SearchConfig(time_limit_s=600, max_states=states, verify_all=True, **fields)
    return search(get_program(name, scale=16).graph, config=cfg, name=name)


@pytest.fixture(scope="session")
def lower_searches() -> Callable[..., SearchResult]:
    """``searches(name, budget="fast", **config)``: the cached search of program ``name``.

    ``config`` overrides `SearchConfig` fields (bounds, ``check_lowering``).
    """

    def get(name: str, budget: str = "fast", **bounds: int | bool) -> SearchResult:
        _, fast, slow = LOWER_SEARCHES[name]
        return _search(name, fast if budget == "fast" else slow, tuple(sorted(bounds.items())))

    return get
