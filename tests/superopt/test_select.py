"""Selection by measurement: model order without timing, fastest point with it, the cache."""

import dataclasses
import json
import re

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from jgraph.core import ConfigError
from jgraph.superopt import CacheWarning, SearchConfig, search
from jgraph.superopt import _lower as lower_mod
from jgraph.superopt import _select as select_mod
from jgraph.superopt.lower import (
    DEFAULT_KNOB_GRID,
    KernelKnobs,
    LoweredGraph,
    kendall_tau,
    select,
)
from jgraph.superopt.programs import get_program, handwritten
from jgraph.testing import Tolerance, assert_trees_close, tolerance


@pytest.fixture(scope="module")
def prog():
    return get_program("rmsnorm_linear", scale=16, dtype="float32")


@pytest.fixture(scope="module")
def result(prog):
    res = search(prog.graph, config=SearchConfig(time_limit_s=60, max_kernel_ops=1, fusion=False))
    # the fused kernel first (model order), then the XLA program
    assert [c.label for c in res.candidates] == ["search", "xla"]
    return res


def _fake_timer(monkeypatch, median_of):
    """Replaces the clock reader: ``median_of(lowered) -> seconds``; returns the call log."""
    calls = []

    def fake(fn, args, *, warmup, repeats):
        calls.append((fn.graph, fn.knobs))
        return 0.5, median_of(fn)

    monkeypatch.setattr(select_mod, "_time_one", fake)
    return calls


def test_unmeasured_on_cpu_takes_the_cheapest_candidate_in_interpret_mode(result):
    sel = select(result)
    assert (sel.route, sel.measured, sel.device_kind) == ("interpret", False, "cpu")
    assert sel.candidate is result.best
    assert sel.knobs == KernelKnobs()
    assert sel.kendall_tau is None
    assert not sel.from_cache
    (m,) = sel.measurements
    assert (m.rank, m.median_us, m.problem) == (0, None, None)


def test_measured_on_cpu_times_every_point_and_keeps_the_smallest_median(result):
    grid = (KernelKnobs(), KernelKnobs(num_warps=8))
    sel = select(result, measure=True, repeats=3, warmup=1, knob_grid=grid)
    assert sel.measured
    # the kernel candidate once per knob setting, the XLA program once
    assert [(m.rank, m.knobs) for m in sel.measurements] == [
        (0, grid[0]),
        (0, grid[1]),
        (1, grid[0]),
    ]
    assert all(m.median_us > 0 and m.compile_s > 0 for m in sel.measurements)
    fastest = min(sel.measurements, key=lambda m: m.median_us)
    assert sel.candidate is result.candidates[fastest.rank]
    assert sel.knobs == fastest.knobs
    assert sel.kendall_tau in (-1.0, 1.0)  # two candidates: agree or not


def test_fastest_point_wins_even_when_the_model_ranks_it_second(result, monkeypatch):
    xla = result.xla.graph
    _fake_timer(monkeypatch, lambda fn: 1e-5 if fn.graph == xla else 2e-5)
    sel = select(result, measure=True)
    assert sel.candidate is result.xla
    assert sel.kendall_tau == -1.0  # the model and the clock disagree
    # negative check: with the times reversed the model's first choice wins
    _fake_timer(monkeypatch, lambda fn: 2e-5 if fn.graph == xla else 1e-5)
    sel = select(result, measure=True)
    assert sel.candidate is result.best
    assert sel.kendall_tau == 1.0


def test_knobs_of_the_fastest_point_are_kept(result, monkeypatch):
    xla, want = result.xla.graph, KernelKnobs(num_warps=8, num_stages=3)
    calls = _fake_timer(
        monkeypatch, lambda fn: 9e-5 if fn.graph == xla else (1e-5 if fn.knobs == want else 3e-5)
    )
    sel = select(result, measure=True)
    assert (sel.candidate, sel.knobs) == (result.best, want)
    assert len(calls) == len(DEFAULT_KNOB_GRID) + 1  # the XLA program is timed once


def test_a_point_that_fails_is_recorded_and_skipped(result, monkeypatch):
    xla = result.xla.graph

    def median(fn):
        if fn.graph != xla:
            raise RuntimeError("ptxas: out of registers\nmore text")
        return 1e-3

    _fake_timer(monkeypatch, median)
    sel = select(result, measure=True, knob_grid=(KernelKnobs(),))
    assert sel.candidate is result.xla
    assert sel.measured
    failed = [m for m in sel.measurements if m.problem]
    assert [(m.rank, m.problem) for m in failed] == [(0, "RuntimeError: ptxas: out of registers")]
    assert sel.kendall_tau is None  # one measured candidate


def test_nothing_measurable_falls_back_to_the_xla_candidate(result, monkeypatch):
    def median(fn):
        raise RuntimeError("no")

    _fake_timer(monkeypatch, median)
    sel = select(result, measure=True, knob_grid=(KernelKnobs(),))
    assert sel.candidate is result.xla
    assert not sel.measured
    assert all(m.problem for m in sel.measurements)


def test_top_k_limits_the_candidates_measured(result, monkeypatch):
    calls = _fake_timer(monkeypatch, lambda fn: 1e-5)
    select(result, measure=True, top_k=1, knob_grid=(KernelKnobs(),))
    assert [g for g, _ in calls] == [result.best.graph]


def _as_gpu(monkeypatch, lowers, routes=("triton", "mosaic_gpu")):
    """Pretends the device is an NVIDIA GPU: ``lowers(graph, route) -> bool``; no real compile.

    ``routes``: what "auto" tries (jax-triton joins when it is installed).
    """
    monkeypatch.setattr(select_mod, "_platform", lambda: "cuda")
    monkeypatch.setattr(lower_mod, "_platform", lambda: "cuda")  # explicit routes
    monkeypatch.setattr(select_mod, "auto_gpu_routes", lambda: routes)
    monkeypatch.setattr(
        select_mod,
        "lowering_problem",
        lambda graph, *, route: None if lowers(graph, route) else f"{route}: does not lower",
    )
    monkeypatch.setattr(
        select_mod,
        "lower",
        lambda graph, *, route, knobs: dataclasses.make_dataclass(
            "Fake", ["graph", "route", "knobs"]
        )(graph, route, knobs),
    )


def test_gpu_route_skips_candidates_that_do_not_lower_and_measures_by_default(result, monkeypatch):
    _as_gpu(monkeypatch, lambda graph, route: False)  # the fused kernel lowers nowhere
    calls = _fake_timer(monkeypatch, lambda fn: 1e-5)
    sel = select(result)  # measure=None: measured on a GPU route
    assert sel.measured
    assert (sel.candidate, sel.route) == (result.xla, "triton")
    skipped = sel.measurements[0]
    assert (skipped.rank, skipped.median_us) == (0, None)
    assert skipped.problem == "triton: does not lower; mosaic_gpu: does not lower"
    assert [g for g, _ in calls] == [result.xla.graph]


def test_gpu_auto_route_falls_back_to_mosaic_gpu_per_candidate(result, monkeypatch):
    _as_gpu(monkeypatch, lambda graph, route: route == "mosaic_gpu")
    xla = result.xla.graph
    _fake_timer(monkeypatch, lambda fn: 2e-5 if fn.graph == xla else 1e-5)
    sel = select(result)
    assert (sel.candidate, sel.route) == (result.best, "mosaic_gpu")
    assert {m.route for m in sel.measurements} == {"mosaic_gpu", "triton"}
    # an explicit route is not widened: on Triton alone the kernel is skipped
    sel = select(result, route="triton")
    assert sel.candidate is result.xla
    assert sel.measurements[0].problem == "triton: does not lower"


def test_gpu_auto_route_tries_jax_triton_last_when_installed(result, monkeypatch):
    _as_gpu(
        monkeypatch,
        lambda graph, route: route == "jax_triton",
        ("triton", "mosaic_gpu", "jax_triton"),
    )
    _fake_timer(monkeypatch, lambda fn: 1e-5 if fn.graph == result.best.graph else 2e-5)
    sel = select(result)
    assert (sel.candidate, sel.route) == (result.best, "jax_triton")


def test_gpu_route_on_cpu_is_a_config_error(result):
    with pytest.raises(ConfigError, match="NVIDIA GPU") as err:
        select(result, route="triton")
    assert err.value.field == "route"


def test_selection_lowers_to_a_working_function(result, prog):
    f = select(result).lowered()
    assert isinstance(f, LoweredGraph)
    assert f.route == "interpret"
    rng = np.random.default_rng(0)
    xs = [jnp.asarray(rng.standard_normal(s) * 0.5, jnp.float32) for s in prog.shapes]
    want = np.asarray(prog.fn(*xs))
    # f32 sums of length K in another order: atol K·eps·max|ref| (test_interp_vs_reference)
    k, eps = prog.shapes[0][-1], float(np.finfo(np.float32).eps)
    tol = Tolerance(rtol=tolerance("forward", np.float32).rtol, atol=k * eps * np.abs(want).max())
    assert_trees_close(np.asarray(f(*xs)[0]), want, tol=tol)


def test_cache_round_trip_reuses_the_choice_without_timing(result, tmp_path, monkeypatch):
    xla = result.xla.graph
    _fake_timer(monkeypatch, lambda fn: 1e-5 if fn.graph == xla else 2e-5)
    first = select(result, measure=True, cache_dir=tmp_path)
    (path,) = tmp_path.iterdir()
    assert re.fullmatch(r"superopt-select-[0-9a-f]{24}-cpu-auto\.json", path.name)
    calls = _fake_timer(monkeypatch, lambda fn: 1.0)
    again = select(result, measure=True, cache_dir=tmp_path)
    assert again.from_cache
    assert not first.from_cache
    assert calls == []
    assert (again.candidate, again.knobs, again.route) == (
        first.candidate,
        first.knobs,
        "interpret",
    )
    assert again.measurements == first.measurements
    assert again.kendall_tau == first.kendall_tau
    # another question (top_k, knob grid) is another file
    select(result, measure=True, cache_dir=tmp_path, top_k=1)
    assert len(list(tmp_path.iterdir())) == 2
    # unmeasured selections are not cached
    select(result, cache_dir=tmp_path / "unmeasured")
    assert not (tmp_path / "unmeasured").exists()


def test_tampered_cache_file_warns_and_selects_again(result, tmp_path, monkeypatch):
    xla = result.xla.graph
    _fake_timer(monkeypatch, lambda fn: 1e-5 if fn.graph == xla else 2e-5)
    select(result, measure=True, cache_dir=tmp_path)
    (path,) = tmp_path.iterdir()
    data = json.loads(path.read_text())
    foreign = handwritten("rmsnorm_linear", get_program("rmsnorm_linear", scale=8))
    data["graph"] = foreign.to_json()  # a valid μGraph, but not one of the candidates
    path.write_text(json.dumps(data))
    calls = _fake_timer(monkeypatch, lambda fn: 1e-5 if fn.graph == xla else 2e-5)
    with pytest.warns(CacheWarning, match="not among the result's candidates"):
        sel = select(result, measure=True, cache_dir=tmp_path)
    assert not sel.from_cache
    assert calls
    assert sel.candidate is result.xla
    # the file was rewritten with a usable choice
    assert select(result, measure=True, cache_dir=tmp_path).from_cache
    path.write_text("{not json")
    with pytest.warns(CacheWarning, match="JSONDecodeError"):
        assert not select(result, measure=True, cache_dir=tmp_path).from_cache


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"top_k": 0}, "select.top_k"),
        ({"repeats": 0}, "select.repeats"),
        ({"warmup": -1}, "select.warmup"),
        ({"knob_grid": ()}, "select.knob_grid"),
        ({"knob_grid": ({"num_warps": 4},)}, "select.knob_grid"),
        ({"route": "cuda"}, "select.route"),
        ({"measure": "yes"}, "select.measure"),
    ],
)
def test_bad_arguments_name_the_field(result, kwargs, field):
    with pytest.raises(ConfigError) as err:
        select(result, **kwargs)
    assert err.value.field == field


def test_kendall_tau_identical_and_reversed_ranks():
    assert kendall_tau([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]) == 1.0
    assert kendall_tau([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]) == -1.0
    assert kendall_tau([1.0], [2.0]) is None
    assert kendall_tau([1.0, 1.0], [1.0, 2.0]) is None  # undefined: x has no order
    with pytest.raises(ConfigError):
        kendall_tau([1.0, 2.0], [1.0])


@pytest.mark.parametrize("seed", range(5))
def test_kendall_tau_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 4, 12).astype(float), rng.integers(0, 5, 12).astype(float)
    want = scipy.stats.kendalltau(x, y, variant="b").statistic
    assert kendall_tau(list(x), list(y)) == pytest.approx(want, abs=1e-12)
