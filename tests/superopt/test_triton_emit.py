"""The Triton emitter against the float64 interpreter, run in Triton's CPU interpreter.

Every emitted kernel runs over its grid in Triton's interpreter (`run_interpreted`)
with outputs poisoned with NaN, and is compared with `evaluate` (float64). The
emitted kernels also compile for CUDA (sm_90) here, with Triton's bundled ptxas.
"""

import dataclasses
import platform
import re
import sys

import numpy as np
import pytest

if sys.platform == "linux" and platform.machine() == "x86_64":
    import triton  # noqa: F401  # the test extra installs it here: fail, never skip
else:
    pytest.importorskip("triton", reason="the test extra installs triton on Linux x86-64 only")

from jgraph.core import ConfigError
from jgraph.superopt import evaluate, new_kernel_graph, new_threadblock_graph
from jgraph.superopt._triton_emit import emit_block
from jgraph.superopt._triton_run import (
    block_call_jax_triton,
    compile_for_cuda,
    run_interpreted,
)
from jgraph.superopt.lower import lowering_problem
from jgraph.superopt.programs import HANDWRITTEN, get_program, handwritten
from jgraph.testing import Tolerance, assert_trees_close, tolerance

U16 = 2.0**-11  # float16 unit roundoff


def _run(graph, xs, storage, **emit):
    """Runs a μGraph of graph-defined kernels, each emitted and interpreted; checks poison."""
    vals = list(xs)
    for n, op in enumerate(graph.ops):
        assert op.block is not None, "these tests use graph-defined kernels only"
        args = [vals[i] for i in op.inputs]
        src = emit_block(op.block, [a.shape for a in args], storage=storage, name=f"k{n}", **emit)
        outs = run_interpreted(src, args)
        for o in outs:  # every element of every output was written (they start as NaN)
            assert not np.isnan(o.astype(np.float32)).any(), f"kernel {n} left NaN poison"
        vals.extend(outs)
    return [vals[o] for o in graph.outputs]


def _f32_tol(want, k):
    # as tests/superopt/test_interp_vs_reference.py: the table's f32 rtol, and an
    # atol that scales with the gamma_K bound of a length-K float32 sum
    base = tolerance("forward", np.float32)
    eps = float(np.finfo(np.float32).eps)
    return Tolerance(rtol=base.rtol, atol=k * eps * float(np.abs(want).max()))


def _f16_tol(want):
    # float16 storage: the reference runs on the same float16 inputs, so the kernel's
    # error is its own roundings. The output's rounding to float16 (<= u·|y|, u = 2^-11)
    # is within the table's rtol (1e-3 ~ 2u). Matmul operands that the kernel computes
    # (lora's X·A, gqa's exp(S)) are rounded to float16 before the dot, u relative per
    # product: for these O(1)-conditioned sums a few u of the output scale, so
    # atol = 4u·max|y|. Float32 accumulation error is far below both.
    base = tolerance("forward", np.float16)
    return Tolerance(rtol=base.rtol, atol=4 * U16 * float(np.abs(want).max()))


def _program(kind):
    prog = get_program("gqa" if kind.startswith("gqa") else kind, scale=16)
    return prog, handwritten(kind, prog)


@pytest.mark.parametrize("storage", ["float32", "float16"])
@pytest.mark.parametrize("kind", HANDWRITTEN)
def test_handwritten_kernels_match_interpreter(kind, storage):
    prog, graph = _program(kind)
    rng = np.random.default_rng(1)
    xs = [(rng.standard_normal(s) * 0.5).astype(storage) for s in prog.shapes]
    got = _run(graph, xs, storage)[0]
    assert got.dtype == np.dtype(storage)
    want = evaluate(graph, [x.astype(np.float64) for x in xs])[0]
    if storage == "float32":
        tol = _f32_tol(want, max(s[-1] for s in prog.shapes))
    else:
        tol = _f16_tol(want)
    assert_trees_close(got, want.astype(storage), tol=tol)


def test_non_power_of_two_tile_that_pallas_triton_rejects():
    # rmsnorm_linear's hand-written μGraph loads (8, 3) weight tiles: Pallas-Triton
    # cannot lower it; the emitter pads them to (16, 16) and masks (the values are
    # checked in test_handwritten_kernels_match_interpreter).
    prog, graph = _program("rmsnorm_linear")
    block = graph.ops[0].block
    assert block.infer(prog.shapes)[0][1] == (8, 3)
    assert "power of 2" in (lowering_problem(graph) or "")
    src = emit_block(block, prog.shapes, storage="float16", name="k0")
    assert "padded to [(16, 16), (16, 16)]" in src.source
    assert re.search(r"for i in range\(32\):", src.source)  # a real loop, not unrolled


def test_padded_lanes_do_not_leak_into_row_sums():
    # gqa over a KV length of 48: 8 blocks x 2 iterations of 3 keys, padded to 16 lanes.
    # Padded scores are 0 and exp(0) = 1, so an unmasked row sum would add 13 per chunk.
    base = get_program("gqa", scale=16)
    prog = dataclasses.replace(base, shapes=((2, 16, 4), (2, 4, 48), (2, 48, 4)))
    graph = handwritten("gqa", prog)
    assert graph.ops[0].block.infer(prog.shapes)[0][1] == (1, 4, 3)
    rng = np.random.default_rng(2)
    xs = [(rng.standard_normal(s) * 0.5).astype(np.float32) for s in prog.shapes]
    want = evaluate(graph, [x.astype(np.float64) for x in xs])[0]
    tol = _f32_tol(want, 48)
    assert_trees_close(_run(graph, xs, "float32")[0], want.astype(np.float32), tol=tol)
    # negative check: without the masking the same comparison fails
    leaky = _run(graph, xs, "float32", mask_reductions=False)[0]
    with pytest.raises(AssertionError, match="max abs"):
        assert_trees_close(leaky, want.astype(np.float32), tol=tol)


def _one_kernel(shapes, grid, frange, maps, body, omap=(0,)):
    """A μGraph of one graph-defined kernel: inputs ``shapes`` cut by ``maps`` (imap, fmap)."""
    g = new_kernel_graph()
    ins = [g.new_input(s, "float32") for s in shapes]
    tb = new_threadblock_graph(grid, frange)
    bins = [tb.new_input(t, imap, fmap) for t, (imap, fmap) in zip(ins, maps, strict=True)]
    tb.new_output(body(tb, *bins), omap)
    (y,) = g.customized(ins, tb)
    g.mark_output(y)
    return g.graph


def _check(graph, xs, k):
    want = evaluate(graph, xs)[0]
    got = _run(graph, [x.astype(np.float32) for x in xs], "float32")[0]
    assert_trees_close(got, want.astype(np.float32), tol=_f32_tol(want, k))


# (6, 20) inputs, rows over 2 blocks, columns over 2 iterations: (3, 10) tiles, padded (4, 16)
_ROWS = ((0,), 1)
_OPS = {
    "exp": lambda tb, x, y: tb.exp(x),
    "square": lambda tb, x, y: tb.square(x),
    "sqrt": lambda tb, x, y: tb.sqrt(y),
    "rsqrt": lambda tb, x, y: tb.rsqrt(y),
    "silu": lambda tb, x, y: tb.silu(x),
    "gelu": lambda tb, x, y: tb.gelu(x),
    "gelu_exact": lambda tb, x, y: tb.gelu_exact(x),
    "gelu_exact_tails": lambda tb, x, y: tb.gelu_exact(tb.mul_scalar(x, 4.0)),
    "relu": lambda tb, x, y: tb.relu(x),
    "mul_scalar": lambda tb, x, y: tb.mul_scalar(x, 0.1),
    "add": lambda tb, x, y: tb.add(x, y),
    "sub": lambda tb, x, y: tb.sub(x, y),
    "mul": lambda tb, x, y: tb.mul(x, y),
    "div": lambda tb, x, y: tb.div(x, y),
    "pow": lambda tb, x, y: tb.pow(y, x),
    "pow_signed": lambda tb, x, y: tb.pow(x, y),
    "reduce_sum_rows": lambda tb, x, y: tb.mul(x, tb.reduction(tb.exp(x), 0)),
    "reduce_max_rows": lambda tb, x, y: tb.sub(x, tb.reduce_max(x, 0)),
    "reduce_max_cols": lambda tb, x, y: tb.exp(tb.sub(x, tb.reduce_max(x, 1))),
    "rms_norm": lambda tb, x, y: tb.rms_norm(tb.exp(x)),
}


@pytest.mark.parametrize("op", sorted(_OPS))
def test_block_ops_on_padded_tiles(op):
    graph = _one_kernel(
        [(6, 20), (6, 20)], (2, 1, 1), 2, [_ROWS, _ROWS],
        lambda tb, x, y: tb.forloop_accum(_OPS[op](tb, x, y), "sum"),
    )  # fmt: skip
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 20))
    y = np.abs(rng.standard_normal((6, 20))) + 0.5  # positive: sqrt, rsqrt, pow's base
    if op == "pow_signed":  # negative bases, integer exponents
        y = np.round(y)
    _check(graph, [x, y], 20)


_ACCS = {
    "sum": lambda tb, e: tb.forloop_accum(e),
    "sum_ld": lambda tb, e: tb.forloop_accum(e, "sum"),
    "mean": lambda tb, e: tb.forloop_accum(e, "mean"),
    "rms": lambda tb, e: tb.forloop_accum(e, "rms"),
    "redtox": lambda tb, e: tb.forloop_accum(e, "sum_todimx", dimx=5),  # (3, 10) -> (3, 5)
    "max": lambda tb, e: tb.forloop_accum_max(e),
    "rescale": lambda tb, e: tb.forloop_accum_rescale(e, tb.reduce_max(e, 1)),
}


@pytest.mark.parametrize("acc", sorted(_ACCS))
def test_accumulators_on_padded_tiles(acc):
    graph = _one_kernel([(6, 20)], (2, 1, 1), 2, [_ROWS], lambda tb, x: _ACCS[acc](tb, tb.exp(x)))
    _check(graph, [np.random.default_rng(4).standard_normal((6, 20))], 20)


@pytest.mark.parametrize("m", [6, 1])
def test_batched_matmul_tiles(m):
    # a (2, m, 10) x (2, 10, 24) tile: Triton's batched dot for m = 6, broadcast
    # products for m = 1 (a dim of 1 stays 1, below tl.dot's 16)
    graph = _one_kernel(
        [(4, m, 20), (4, 20, 24)], (2, 1, 1), 2, [((0,), 2), ((0,), 1)],
        lambda tb, a, b: tb.forloop_accum(tb.matmul(a, b)),
    )  # fmt: skip
    rng = np.random.default_rng(5)
    _check(graph, [rng.standard_normal((4, m, 20)), rng.standard_normal((4, 20, 24))], 20)


def test_rank_one_tiles():
    graph = _one_kernel(
        [(40,)], (2, 1, 1), 2, [((0,), 0)], lambda tb, x: tb.forloop_accum(tb.exp(x), "sum")
    )
    _check(graph, [np.random.default_rng(6).standard_normal(40)], 20)


def test_emitted_kernels_compile_for_cuda():
    # Triton's ahead-of-time compile to an sm_90 cubin (bundled ptxas, no GPU):
    # what the interpreter does not check (dot layouts, reshapes, 3-D dots).
    for kind in ("rmsnorm_linear", "gqa", "gqa_online_softmax"):
        prog, graph = _program(kind)
        shapes, dtypes = graph.shapes, ["float16"] * len(prog.shapes)
        for n, op in enumerate(graph.ops):
            src = emit_block(op.block, [shapes[i] for i in op.inputs], storage="float16", name="k")
            in_dtypes = [dtypes[i] for i in op.inputs]
            dtypes += src.out_dtypes
            assert compile_for_cuda(src, in_dtypes).asm["cubin"], (kind, n)
    batched = _one_kernel(
        [(4, 6, 20), (4, 20, 24)], (2, 1, 1), 2, [((0,), 2), ((0,), 1)],
        lambda tb, a, b: tb.forloop_accum(tb.matmul(a, b)),
    )  # fmt: skip
    src = emit_block(batched.ops[0].block, batched.shapes[:2], storage="float32", name="k")
    assert "tl.dot(" in src.source
    assert compile_for_cuda(src, ["float32", "float32"]).asm["cubin"]
    gelu = _one_kernel(
        [(6, 20)], (2, 1, 1), 2, [_ROWS], lambda tb, x: tb.forloop_accum(tb.gelu_exact(x), "sum")
    )
    src = emit_block(gelu.ops[0].block, gelu.shapes[:1], storage="float16", name="k")
    assert "2.0 - " in src.source  # erfc(-z) = 2 - erfc(z): the exact form was emitted
    assert compile_for_cuda(src, ["float16"]).asm["cubin"]


def test_emit_is_deterministic():
    prog, graph = _program("gqa_online_softmax")
    again = handwritten("gqa_online_softmax", prog)  # an equal graph, built anew
    a = emit_block(graph.ops[0].block, prog.shapes, storage="float16", name="k0")
    b = emit_block(again.ops[0].block, prog.shapes, storage="float16", name="k0")
    assert a == b
    assert a.out_dtypes == ("float16",)
    assert a.grid == (2, 4, 1)


def test_partial_outputs_are_float32():
    prog, graph = _program("gqa")
    src = emit_block(graph.ops[0].block, prog.shapes, storage="float16", name="k0")
    assert src.out_dtypes == ("float32", "float32")


def test_unsupported_inputs_raise():
    graph = _one_kernel(
        [(6, 20), (6, 20)], (2, 1, 1), 1, [((0,), -1), ((0,), -1)],
        lambda tb, x, y: tb.forloop_accum(tb.concat([x, y], 1)),
    )  # fmt: skip
    with pytest.raises(NotImplementedError, match="concat"):
        emit_block(graph.ops[0].block, graph.shapes[:2], storage="float32", name="k")
    prog, graph = _program("ntrans")
    with pytest.raises(ConfigError, match="storage"):
        emit_block(graph.ops[0].block, prog.shapes, storage="int8", name="k")
    with pytest.raises(ConfigError, match="identifier"):
        emit_block(graph.ops[0].block, prog.shapes, storage="float32", name="k-0")


def test_jax_triton_route_without_jax_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax_triton", None)  # makes `import jax_triton` fail
    prog, graph = _program("ntrans")
    with pytest.raises(ConfigError, match="jax-triton") as info:
        block_call_jax_triton(
            graph.ops[0].block, [np.zeros(s, np.float32) for s in prog.shapes],
            storage="float32", num_warps=4, num_stages=2, name="k0",
        )  # fmt: skip
    assert info.value.field == "route"


def test_interpreter_keeps_pointer_dtypes():
    # The same kernel on float32 and float16 operands in turn: the shim's dtype must
    # not be mistaken for an earlier one (Triton caches pointer types by dtype hash).
    graph = _one_kernel([(6, 20)], (2, 1, 1), 2, [_ROWS], lambda tb, x: tb.forloop_accum(x))
    src = emit_block(graph.ops[0].block, [(6, 20)], storage="float32", name="k0")
    x = np.random.default_rng(7).standard_normal((6, 20))
    for _ in range(40):  # freed shims' addresses get reused: the bug showed within a few
        for dtype in (np.float32, np.float16):
            xd = x.astype(dtype)
            want = xd.astype(np.float64).reshape(6, 2, 10).sum(1)
            out = run_interpreted(src, [xd])[0]
            assert_trees_close(out, want, tol=tolerance("forward", np.float32))
