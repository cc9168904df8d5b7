"""The corpus of ordinary JAX/Flax layers (jgraph.superopt.corpus) through `superoptimize`:
accepted, equal to the function on fresh inputs, output structure kept, and what it
reports (fused kernels, operators kept as XLA) is what the program holds."""

import jax
import numpy as np
import pytest

from jgraph.core import ConfigError
from jgraph.superopt import SearchConfig, capture, search, superoptimize
from jgraph.superopt.corpus import NAMES, example
from jgraph.superopt.programs import get_program
from jgraph.testing import Tolerance, assert_trees_close, tolerance

# Short searches: this checks acceptance, correctness and reporting, not what the search
# finds (scripts/bench_superopt_coverage.py measures that at realistic sizes).
CFG = SearchConfig(time_limit_s=2, max_kernel_ops=1)
ROWS, HID = 8, 32
# f32 dot products of up to 2*HID terms (the MLP width) of O(1) values: the table's f32
# atol scaled by the contraction length (gamma_K bound), with 10x headroom.
TOL = Tolerance(rtol=tolerance("forward", np.float32).rtol, atol=2 * HID * 1.2e-7 * 10)
# Its search spends ~11 s (of two loaded cores) before its first state on a 20-op
# region; residual_rmsnorm_mlp is its fast twin (same residual + norm + MLP shape).
SLOW = {"residual_layernorm_swiglu"}


def _run(name):
    ex = example(name, rows=ROWS, hidden=HID)
    return ex, superoptimize(ex.fn, *ex.args(0), config=CFG)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in NAMES]
)
def test_corpus_program_is_accepted_correct_and_reported(name, record_property):
    ex, res = _run(name)
    record_property("fused_kernels", res.fused_kernels)
    record_property("stayed_xla", res.stayed_xla)
    fresh = ex.args(1)
    got, want = res(*fresh), ex.fn(*fresh)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    assert_trees_close(np.asarray(got), np.asarray(want), tol=TOL)
    # what stayed XLA is exactly what the program holds that the IR cannot express
    assert [line.split(":")[0] for line in res.stayed_xla] == list(ex.xla_ops)
    assert all(line.split(":", 1)[1].strip() for line in res.stayed_xla)  # with why
    # every fused kernel reported is a graph-defined kernel of a chosen μGraph, and back
    results = res.program.results if res.program is not None else (res,)
    blocks = sum(op.block is not None for r in results for op in r.chosen.graph.ops)
    assert len(res.fused_kernels) == blocks
    assert all(line.startswith("region ") and ": K[grid=" in line for line in res.fused_kernels)


# At 8x32, XLA's own fusion is as good as any kernel for these (a matmul with its
# element-wise epilogue, element-wise chains around a cumsum/sort): the model keeps XLA.
XLA_IS_BEST = {"flax_dense_relu", "flax_dense_gelu_tanh", "flax_dense_silu", "cumsum_exp",
               "sort_scale"}  # fmt: skip
# The fusion moves alone: one enumeration state, so the result does not depend on timing.
FUSION_ONLY = SearchConfig(time_limit_s=30, max_kernel_ops=1, max_states=1)


@pytest.mark.parametrize("name", NAMES)
def test_corpus_program_gets_a_fused_kernel_that_beats_xla(name):
    ex = example(name, rows=ROWS, hidden=HID)
    res = superoptimize(ex.fn, *ex.args(0), config=FUSION_ONLY)
    results = res.program.results if res.program is not None else (res,)
    chosen = sum(r.chosen.cost.estimated_us for r in results)
    xla = sum(r.xla.cost.estimated_us for r in results)
    if name in XLA_IS_BEST:
        assert res.fused_kernels == ()
        assert chosen == xla
    else:
        assert res.fused_kernels
        assert chosen < xla
    fresh = ex.args(1)
    assert_trees_close(np.asarray(res(*fresh)), np.asarray(ex.fn(*fresh)), tol=TOL)


def test_the_corpus_is_at_least_twenty_programs_with_xla_ones_among_them():
    assert len(NAMES) >= 20
    assert len(set(NAMES)) == len(NAMES)
    held = {op for n in NAMES for op in example(n, rows=2, hidden=4).xla_ops}
    assert {"cumsum", "sort"} <= held


def test_the_exact_gelu_mlp_is_one_mugraph_with_a_gelu_exact_op():
    ex = example("gelu_mlp_exact", rows=ROWS, hidden=HID)
    kinds = [op.kind for op in capture(ex.fn, *ex.args(0)).ops]  # raises unless one μGraph
    assert kinds.count("gelu_exact") == 1
    assert "gelu" not in kinds


def test_a_multi_region_program_runs_under_jit_too():
    ex, res = _run("cumsum_exp")
    assert len(res.program.regions) == 2  # exp | cumsum (XLA) | * 0.5 + 1
    fresh = ex.args(2)
    assert_trees_close(np.asarray(jax.jit(res)(*fresh)), np.asarray(ex.fn(*fresh)), tol=TOL)


def test_a_wrong_result_would_be_caught():
    """Negative: the equality check fails for a perturbed result or a different program."""
    ex, res = _run("layernorm")
    fresh = ex.args(1)
    got = np.asarray(res(*fresh))
    bad = got.copy()
    bad[0, 0] += 1e-3
    with pytest.raises(AssertionError):
        assert_trees_close(bad, np.asarray(ex.fn(*fresh)), tol=TOL)
    other = example("rmsnorm", rows=ROWS, hidden=HID)  # no centering, no bias
    with pytest.raises(AssertionError):
        assert_trees_close(got, np.asarray(other.fn(fresh[0], fresh[1])), tol=TOL)


def test_fused_kernels_lists_the_graph_defined_kernels_of_the_chosen_mugraph():
    # rmsnorm_linear's first fused μGraph is verified from ~408 states (tests/superopt/conftest)
    prog = get_program("rmsnorm_linear", scale=16)
    cfg = SearchConfig(time_limit_s=120, max_kernel_ops=1, max_states=500, check_lowering=False)
    res = search(prog.graph, config=cfg)
    assert res.best.label != "xla"
    assert len(res.fused_kernels) == 1
    assert res.fused_kernels[0].startswith("region 0: K[grid=")
    assert "matmul" in res.fused_kernels[0]
    # the XLA-only result of a tiny budget reports none
    none = search(prog.graph, config=SearchConfig(max_states=5, fusion=False))
    assert none.best.label == "xla"
    assert none.fused_kernels == ()


def test_example_checks_its_arguments():
    with pytest.raises(ConfigError, match=r"corpus\.name"):
        example("no_such_program")
    with pytest.raises(ConfigError, match=r"corpus\.hidden"):
        example("rmsnorm", hidden=33)


def test_regions_share_the_programs_time_limit(monkeypatch):
    import jgraph.superopt._jaxpr as jaxpr_mod

    limits = []
    real = jaxpr_mod.search

    def spy(graph, *, config, **kwargs):
        limits.append((len(graph.ops), config.time_limit_s))
        return real(graph, config=config, **kwargs)

    monkeypatch.setattr(jaxpr_mod, "search", spy)
    ex = example("cumsum_exp", rows=ROWS, hidden=HID)  # exp | cumsum (XLA) | x*0.5 + 1
    superoptimize(ex.fn, *ex.args(0), config=SearchConfig(time_limit_s=3, max_kernel_ops=1))
    assert len(limits) == 2
    assert sum(t for _, t in limits) == pytest.approx(3.0)
    (n0, t0), (n1, t1) = limits
    assert t0 / t1 == pytest.approx(n0 / n1)  # by op count
