"""Fusion moves (jgraph.superopt._fuse, _rewrite, _fusion_search): every kernel they build
is a verified equal of the program, the loops they build are the right ones (accumulated
matmuls, carried invariants, the online softmax), and what cannot loop is refused."""

import time

import jax
import numpy as np
import pytest

from jgraph.superopt import SearchConfig, superoptimize
from jgraph.superopt._builder import new_kernel_graph
from jgraph.superopt._config import SearchConfig as _Cfg
from jgraph.superopt._cost import CostModel
from jgraph.superopt._fuse import dim_classes, fused_graphs, fusion_moves
from jgraph.superopt._fusion_search import fusion_candidates
from jgraph.superopt._interp import evaluate
from jgraph.superopt._ir import KernelGraph, KernelOp, Op
from jgraph.superopt._jaxpr import _capture
from jgraph.superopt._rewrite import cse, hoist_row_factors
from jgraph.superopt._tiling import schedules
from jgraph.superopt._verify import Verifier
from jgraph.superopt.corpus import example
from jgraph.testing import assert_trees_close, tolerance

_SMEM = _Cfg().smem_budget


def _region(name, rows=8, hidden=32, k=0):
    ex = example(name, rows=rows, hidden=hidden)
    prog, _ = _capture(ex.fn, tuple(ex.args(0)))
    return prog.regions[k].graph


def _kinds(graph):
    return [op.kind for kop in graph.ops if kop.block is not None for op in kop.block.ops]


@pytest.mark.parametrize(
    "name",
    ["softmax", "layernorm", "rmsnorm_linear", "layernorm_linear_bias", "attention",
     "multihead_attention", "swiglu_bias", "residual_rmsnorm_mlp"],
)  # fmt: skip
def test_every_fused_kernel_built_verifies(name):
    ref = _region(name)
    verifier = Verifier(ref)
    built = list(fused_graphs(ref, smem_budget=_SMEM, sizes_per_mapping=2, maps="derived"))
    assert built, name
    bad = [(move, g.summary(), verifier.check(g)) for move, g in built]
    assert all(v.ok for *_, v in bad), [b for b in bad if not b[2].ok][:3]


def test_attention_moves_include_the_online_softmax():
    moves = fusion_moves(_region("multihead_attention"))
    online = [m for m in moves if any(op.kind == "accum_rescale" for op in m.ops)]
    assert online
    (m,) = online
    kinds = [op.kind for op in m.ops]
    # the iteration's max, its exponentials summed and contracted, both rescaled, one div
    assert kinds.count("accum_rescale") == 2
    assert "reduce_max" in kinds
    assert kinds[-1] == "div"
    assert "accum_sum" not in kinds


def test_loop_invariants_are_carried_as_an_exact_accumulated_fraction():
    ref = _region("swiglu_bias", rows=8, hidden=64)
    looped = [
        g
        for move, g in fused_graphs(ref, smem_budget=_SMEM, sizes_per_mapping=2, maps="derived")
        if move == "loop"
    ]
    assert looped
    for g in looped:
        block = g.ops[0].block
        scales = [op.attr["scalar"] for op in block.ops if op.kind == "mul_scalar"]
        assert scales
        assert all(s == 1.0 / block.frange for s in scales)
        assert block.frange > 1


def test_row_factors_hoist_past_the_matmul_for_rmsnorm_linear():
    ref = _region("rmsnorm_linear")
    moves = {m.name: m for m in fusion_moves(ref)}
    hoisted = moves["hoisted_loop"]
    kinds = [op.kind for op in hoisted.ops]
    # the matmul runs per iteration and is accumulated; the rsqrt factor scales the sum
    assert kinds[kinds.index("matmul") + 1] == "accum_sum"
    n_in = len(ref.inputs)
    last = hoisted.ops[-1]
    assert last.kind == "mul"
    assert {hoisted.ops[i - n_in].kind for i in last.inputs} == {"accum_sum", "rsqrt"}
    assert "loop" not in moves  # without the rewrite the normalized x cannot loop


def _random_row_program(seed):
    """x·(random products of per-row statistics and per-column scales) @ W, +/- terms."""
    rng = np.random.default_rng(seed)
    g = new_kernel_graph()
    x, col, w, eps = (g.new_input(s) for s in ((6, 16), (1, 16), (16, 8), (1, 1)))
    stat = g.mul_scalar(g.reduction(g.square(x), 1), 1 / 16)
    row = g.rsqrt(g.add(stat, eps))
    mean = g.mul_scalar(g.reduction(x, 1), 1 / 16)
    terms = {"x": x, "col": col, "row": row, "mean": mean}
    lhs = x
    for _ in range(int(rng.integers(1, 4))):
        pick = terms[rng.choice(["col", "row", "mean", "x"])]
        op = rng.choice(["mul", "add", "sub", "div_row"])
        lhs = g.div(lhs, row) if op == "div_row" else getattr(g, op)(lhs, pick)
    g.mark_output(g.matmul(lhs, w))
    return g.graph


@pytest.mark.parametrize("seed", range(24))
def test_hoisting_is_an_identity_on_generated_programs(seed):
    ref = _random_row_program(seed)
    n_in = len(ref.inputs)
    ops = [Op(o.kind, o.inputs, o.attrs) for o in ref.ops]
    shapes = [s.shape for s in ref.inputs]
    rng = np.random.default_rng(100 + seed)
    xs = [rng.standard_normal(s) for s in shapes]
    xs[3] = np.abs(xs[3]) + 1.0  # the epsilon input: keep rsqrt real
    want = evaluate(ref, xs)[0]
    for variant in (cse(n_in, ops, ref.outputs), hoist_row_factors(n_in, shapes, ops, ref.outputs)):
        if variant is None:
            continue
        vops, vouts = variant
        g = KernelGraph(
            ref.inputs, tuple(KernelOp(o.kind, o.inputs, o.attrs) for o in vops), tuple(vouts)
        )
        assert_trees_close(evaluate(g, xs)[0], want, kind="forward")


def test_a_max_used_after_the_loop_gets_no_loop():
    # logsumexp-like: the row max itself is an output, so no loop over the row is exact
    g = new_kernel_graph()
    x = g.new_input((8, 64))
    m = g.reduce_max(x, 1)
    g.mark_output(g.add(m, g.reduction(g.exp(g.sub(x, m)), 1)))
    moves = fusion_moves(g.graph)
    assert [mv.name for mv in moves] == ["row_pass"]


def test_schedules_honour_the_split_and_loop_restrictions():
    ref = _region("rmsnorm_linear", rows=16, hidden=64)
    (move,) = [m for m in fusion_moves(ref) if m.name == "hoisted_loop"]
    shapes = [s.shape for s in ref.inputs]
    loop_dim = next(
        (k, c.index(move.loop)) for k, c in enumerate(move.in_classes) if move.loop in c
    )

    def split_ok(k, j):
        return move.in_classes[k][j] not in move.reduced

    blocks = list(
        schedules(
            shapes, move.ops, move.sinks, smem_budget=_SMEM, split_ok=split_ok, loop_dim=loop_dim
        )
    )
    assert blocks
    for b in blocks:
        assert b.frange > 1
        assert b.inputs[loop_dim[0]].fmap == loop_dim[1]
        for cls, bi in zip(move.in_classes, b.inputs, strict=True):
            for gsize, d in zip(b.grid, bi.imap, strict=True):
                assert gsize == 1 or d == -1 or cls[d] not in move.reduced
    # unrestricted, some schedule splits the reduced hidden dim or loops elsewhere
    free = list(schedules(shapes, move.ops, move.sinks, smem_budget=_SMEM))
    assert len(free) > len(blocks)


def test_dim_classes_mark_contractions_and_reductions():
    ref = _region("rmsnorm_linear")
    classes, reduced = dim_classes([s.shape for s in ref.inputs], list(ref.ops))
    x, w = classes[0], classes[1]
    assert x[1] == w[0]
    assert x[1] in reduced
    assert x[0] not in reduced
    assert w[1] not in reduced


def test_segment_fusion_fuses_the_norm_and_keeps_xla_matmuls():
    ref = _region("residual_rmsnorm_mlp", rows=16, hidden=512)
    start = time.perf_counter()
    found, first = fusion_candidates(
        ref, SearchConfig(), Verifier(ref), deadline=time.perf_counter() + 60
    )
    assert found
    assert first is not None
    assert first <= time.perf_counter() - start
    best = found[0]
    assert best.cost.estimated_us < CostModel()(ref).estimated_us
    kinds = [op.kind for op in best.graph.ops]
    assert "customized" in kinds
    assert "matmul" in kinds
    assert best.verdict.ok
    assert best.label == "fusion"


def test_search_builds_a_single_kernel_online_softmax_for_attention():
    ex = example("multihead_attention", rows=128, hidden=128)  # 2 heads, 128 keys, d 64
    res = superoptimize(ex.fn, *ex.args(0), config=SearchConfig(time_limit_s=30, max_kernel_ops=1))
    (region,) = res.program.results
    graph = region.chosen.graph
    assert [op.kind for op in graph.ops] == ["customized"]
    kinds = _kinds(graph)
    assert kinds.count("accum_rescale") == 2
    assert "reduce_max" in kinds
    assert graph.ops[0].block.frange > 1  # a real loop over the keys
    assert region.chosen.cost.estimated_us < region.xla.cost.estimated_us
    fresh = ex.args(1)
    got, want = res(*fresh), ex.fn(*fresh)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert_trees_close(np.asarray(got), np.asarray(want), tol=tolerance("forward", np.float32))


def test_the_generated_programs_exercise_the_hoist():
    hoisted = 0
    for seed in range(24):
        ref = _random_row_program(seed)
        ops = [Op(o.kind, o.inputs, o.attrs) for o in ref.ops]
        shapes = [s.shape for s in ref.inputs]
        hoisted += hoist_row_factors(len(ref.inputs), shapes, ops, ref.outputs) is not None
    assert hoisted >= 8  # 13 of the 24 programs have a per-row factor to move
