"""The CUDA lowering check (`lowering_problem`: ``jax.export`` for CUDA, no GPU needed).

What lowers for Triton at the benchmark shapes:

* every hand-written μGraph but RMSNorm-Linear's, at ``scale=16`` and at the spec's
  shapes (``scale=1``), float16 and float32 storage;
* RMSNorm-Linear's hand-written graph never does: its output width is 6144 = 3·2^11
  (384 at scale 16) and it cuts it into a power-of-two number of blocks, so its
  tiles are 3·2^k wide, and Triton needs power-of-two arrays (the lowering does not
  pad tiles). The same structure at a power-of-two width lowers, and the search
  cuts 384 into 3·2^k blocks instead (power-of-two tiles); its candidates that keep
  the 384 columns in one block do not lower;
* search candidates whose block matmuls keep a batch dim (GQA/QKNorm schedules
  whose grid does not split the batch) do not: Triton has no batched dot.

The search drops the candidates that lower on no GPU route (``check_lowering``);
the shared searches (conftest.py) keep them, so this file checks the filter too.
Triton's compile-time limits (shared memory, ``tl.dot`` minimum sizes, ptxas) show
only on a GPU compile; the `gpu`-marked test in test_lower_vs_interpreter.py runs there.
"""

import dataclasses
import math

import pytest

from jgraph.superopt import new_kernel_graph, new_threadblock_graph
from jgraph.superopt._lower import _describe
from jgraph.superopt.lower import KernelKnobs, export_cuda, lowering_problem
from jgraph.superopt.programs import HANDWRITTEN, PROGRAMS, get_program, handwritten

_TRITON_CALL = "__gpu$xla.gpu.triton"


def _mlir(graph, dtype=None, knobs=None):
    return export_cuda(graph, route="triton", knobs=knobs, dtype=dtype).mlir_module()


def _n_kernels(graph):
    return sum(op.block is not None for op in graph.ops)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("scale", [16, 1])
@pytest.mark.parametrize("kind", [k for k in HANDWRITTEN if k != "rmsnorm_linear"])
def test_handwritten_mugraphs_lower_for_triton(kind, scale, dtype):
    prog = get_program("gqa" if kind.startswith("gqa") else kind, scale=scale)
    graph = handwritten(kind, prog)
    assert lowering_problem(graph, route="triton", dtype=dtype) is None
    assert _mlir(graph, dtype).count(_TRITON_CALL) == _n_kernels(graph)


@pytest.mark.parametrize("scale", [16, 1])
def test_rmsnorm_linear_tiles_are_three_times_a_power_of_two(scale):
    prog = get_program("rmsnorm_linear", scale=scale)
    problem = lowering_problem(handwritten("rmsnorm_linear", prog), route="triton")
    assert problem is not None
    assert "power of 2" in problem, problem
    if scale == 16:
        assert "(8, 3)" in problem  # W's tile: 256 rows / 32 loop chunks, 384 cols / 128 blocks


def test_rmsnorm_linear_structure_lowers_at_a_power_of_two_width():
    g = new_kernel_graph()
    x, w = g.new_input((2, 256)), g.new_input((256, 512))
    g.mark_output(g.matmul(g.rms_norm(x), w))
    base = get_program("rmsnorm_linear", scale=16)
    prog = dataclasses.replace(base, graph=g.graph, shapes=((2, 256), (256, 512)))
    graph = handwritten("rmsnorm_linear", prog)
    assert lowering_problem(graph, route="triton") is None


# LoRA's search takes ~10 s (conftest.py): slow.
_PROGRAMS = [pytest.param(n, marks=pytest.mark.slow) if n == "lora" else n for n in PROGRAMS]


def _graph_defined(res):
    return [c for c in res.candidates if _n_kernels(c.graph)]


@pytest.mark.parametrize("name", _PROGRAMS)
def test_a_graph_defined_search_candidate_of_each_program_lowers_for_triton(lower_searches, name):
    """The first candidate in cost order that lowers exports one Triton call per kernel."""
    res = lower_searches(name, "slow" if name == "lora" else "fast")
    problems = []
    for i, cand in enumerate(_graph_defined(res)):
        problem = lowering_problem(cand.graph, route="triton")
        if problem is None:
            assert _mlir(cand.graph).count(_TRITON_CALL) == _n_kernels(cand.graph)
            break
        problems.append((i, problem))
    else:
        pytest.fail(f"{name}: no graph-defined candidate lowers for Triton: {problems}")


def _pow2_tiles(graph):
    """Whether every block tensor of every graph-defined kernel has a power-of-two size."""
    for op in graph.ops:
        if op.block is not None:
            tiles = op.block.infer([graph.shapes[i] for i in op.inputs])[0]
            if any(math.prod(t) & (math.prod(t) - 1) for t in tiles):
                return False
    return True


def _check_power_of_two_rule(res):
    cands = _graph_defined(res)
    assert cands
    for cand in cands:
        problem = lowering_problem(cand.graph, route="triton") or ""
        assert ("power of 2" in problem) == (not _pow2_tiles(cand.graph)), (problem, cand.graph)


@pytest.mark.parametrize("name", [n for n in PROGRAMS if n != "lora"])
def test_candidates_fail_on_triton_exactly_when_a_tile_is_not_a_power_of_two(lower_searches, name):
    _check_power_of_two_rule(lower_searches(name, "fast"))


def test_rmsnorm_linear_candidates_with_a_whole_384_wide_tile_do_not_lower(lower_searches):
    # the full (exhausted, ~2 s) space: six candidates keep W's 384 columns in one block
    res = lower_searches("rmsnorm_linear", "slow")
    _check_power_of_two_rule(res)
    assert sum(not _pow2_tiles(c.graph) for c in _graph_defined(res)) == 6


def test_search_drops_exactly_the_candidates_that_lower_on_no_gpu_route(lower_searches):
    # GQA's one-kernel space (exhausted at 971 states): 12 of its 24 schedules keep the
    # batch dim in a block matmul, which neither Triton nor Mosaic GPU lowers.
    every = lower_searches("gqa", "slow")
    kept = lower_searches("gqa", "slow", check_lowering=True)
    lowers = [
        c.graph
        for c in _graph_defined(every)
        if None in [lowering_problem(c.graph, route=r) for r in ("triton", "mosaic_gpu")]
    ]
    assert [c.graph for c in _graph_defined(kept)] == lowers
    assert kept.stats.rejected["lowering"] == len(_graph_defined(every)) - len(lowers) == 12


def test_a_non_power_of_two_tile_is_a_problem():
    g = new_kernel_graph()
    x = g.new_input((4, 6))
    tb = new_threadblock_graph((1, 1, 1), 1)
    tb.new_output(tb.forloop_accum(tb.exp(tb.new_input(x, (-1,), -1))), (-1,))
    (y,) = g.customized([x], tb)
    g.mark_output(y)
    problem = lowering_problem(g.graph, route="triton")
    assert problem is not None
    assert problem.startswith("triton: ")
    assert "power of 2" in problem


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_exact_gelu_lowers_for_triton(dtype):
    # Pallas-Triton has no erf/erfc lowering: gelu_exact's erfc is a polynomial (ERFC_POLY)
    g = new_kernel_graph()
    x = g.new_input((64, 128))
    tb = new_threadblock_graph((4, 1, 1), 2)
    tb.new_output(tb.forloop_accum(tb.gelu_exact(tb.new_input(x, (0,), 1)), "sum"), (0,))
    (y,) = g.customized([x], tb)
    g.mark_output(y)
    assert lowering_problem(g.graph, route="triton", dtype=dtype) is None
    assert _mlir(g.graph, dtype).count(_TRITON_CALL) == 1


def test_mosaic_gpu_route_rejects_block_matmuls():
    graph = handwritten("gated_mlp", get_program("gated_mlp", scale=16))
    problem = lowering_problem(graph, route="mosaic_gpu")
    assert problem is not None
    assert "Mosaic GPU" in problem
    assert "matmul" in problem


def _bare_assert():
    raise AssertionError


def test_a_bare_assert_in_the_lowering_names_where_it_failed():
    # Triton rejects a batched dot with a bare `assert`; the problem must still say something.
    g = new_kernel_graph()
    a, b = g.new_input((2, 16, 16)), g.new_input((2, 16, 16))
    tb = new_threadblock_graph((1, 1, 1), 1)
    ba, bb = tb.new_input(a, (-1,), -1), tb.new_input(b, (-1,), -1)
    tb.new_output(tb.forloop_accum(tb.matmul(ba, bb)), (-1,))
    (y,) = g.customized([a, b], tb)
    g.mark_output(y)
    problem = lowering_problem(g.graph, route="triton")
    assert problem is not None
    assert problem.startswith("triton: ")
    assert problem.split(": ", 2)[-1].strip(), problem  # not "triton: AssertionError: "
    with pytest.raises(AssertionError) as info:
        _bare_assert()
    described = _describe(info.value)
    assert described.startswith("AssertionError at ")
    assert "test_lower_cuda.py:" in described
    assert described.endswith("raise AssertionError"), described


def test_exported_module_has_one_triton_call_per_kernel_with_the_knobs():
    prog = get_program("gqa", scale=16)
    graph = handwritten("gqa", prog)  # split-KV: two graph-defined kernels
    mlir = _mlir(graph, knobs=KernelKnobs(num_warps=8, num_stages=3))
    assert mlir.count(_TRITON_CALL) == 2
    assert mlir.count("num_warps = 8") == 2
    assert mlir.count("num_stages = 3") == 2
    assert '"jgraph_mugraph_k0"' in mlir
    assert '"jgraph_mugraph_k1"' in mlir
