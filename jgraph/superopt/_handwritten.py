"""Hand-written μGraphs with the structures of Mirage's saved best μGraphs.

They are written with the expert builder API (`new_threadblock_graph`) and
serve as examples, as always-pass cases for the verifier, and as the
seeds of the benchmark's mutant corpus. They are never given to the search.
"""

from __future__ import annotations

from jgraph.core import check_choice
from jgraph.superopt._builder import new_kernel_graph, new_threadblock_graph
from jgraph.superopt._ir import KernelGraph
from jgraph.superopt._programs import Program

__all__ = ["HANDWRITTEN", "handwritten"]

HANDWRITTEN = ("rmsnorm_linear", "gated_mlp", "lora", "gqa", "gqa_online_softmax", "ntrans")


def _pick(n: int, cap: int) -> int:
    """The largest power of two <= cap dividing n."""
    g = 1
    while g * 2 <= cap and n % (g * 2) == 0:
        g *= 2
    return g


def handwritten(kind: str, program: Program) -> KernelGraph:
    """A hand-written μGraph equivalent to ``program`` (``kind`` from `HANDWRITTEN`).

    Example:
        >>> from jgraph.superopt.programs import get_program
        >>> g = handwritten("rmsnorm_linear", get_program("rmsnorm_linear", scale=16))
        >>> [op.kind for op in g.ops]
        ['customized']
    """
    check_choice("handwritten.kind", kind, HANDWRITTEN)
    g = new_kernel_graph()
    ins = [
        g.new_input(s, spec.dtype)
        for s, spec in zip(program.shapes, program.graph.inputs, strict=True)
    ]
    if kind == "rmsnorm_linear":  # division moved after the matmul, one kernel
        x, w = ins
        tb = new_threadblock_graph((_pick(w.shape[1], 256), 1, 1), _pick(x.shape[1], 32))
        bx, bw = tb.new_input(x, (-1,), 1), tb.new_input(w, (1,), 0)
        out = tb.div(tb.forloop_accum(tb.matmul(bx, bw)), tb.forloop_accum(bx, "rms"))
        tb.new_output(out, (1,))
        (y,) = g.customized([x, w], tb)
    elif kind == "gated_mlp":  # two matmul accumulators, silu and mul after the loop
        x, w1, w2 = ins
        tb = new_threadblock_graph((_pick(w1.shape[1], 64), 1, 1), _pick(x.shape[1], 16))
        bx, b1, b2 = tb.new_input(x, (-1,), 1), tb.new_input(w1, (1,), 0), tb.new_input(w2, (1,), 0)
        a1, a2 = tb.forloop_accum(tb.matmul(bx, b1)), tb.forloop_accum(tb.matmul(bx, b2))
        tb.new_output(tb.mul(tb.silu(a1), a2), (1,))
        (y,) = g.customized([x, w1, w2], tb)
    elif kind == "lora":  # X·W + (X·A)·B in one kernel; the loop splits the contraction
        x, w, a, b = ins
        tb = new_threadblock_graph((_pick(w.shape[1], 64), 1, 1), _pick(x.shape[1], 4))
        bx, bw = tb.new_input(x, (-1,), 1), tb.new_input(w, (1,), 0)
        ba, bb = tb.new_input(a, (-1,), 0), tb.new_input(b, (1,), -1)
        s = tb.add(tb.matmul(bx, bw), tb.matmul(tb.matmul(bx, ba), bb))
        tb.new_output(tb.forloop_accum(s), (1,))
        (y,) = g.customized([x, w, a, b], tb)
    elif kind == "gqa":  # split-KV in two kernels (FlashDecoding without max subtraction)
        q, k, v = ins
        bsz, m, d = q.shape
        n = k.shape[2]
        split = _pick(n, 8)
        f = _pick(n // split, 4)
        tb = new_threadblock_graph((bsz, split, 1), f)
        bq, bk, bv = (
            tb.new_input(q, (0, -1), -1),
            tb.new_input(k, (0, 2), 2),
            tb.new_input(v, (0, 1), 1),
        )
        e = tb.exp(tb.matmul(bq, bk))
        rowsum = tb.forloop_accum(e, "sum")
        o = tb.forloop_accum(tb.matmul(e, bv))
        tb.new_output(o, (0, 2))
        tb.new_output(rowsum, (0, 2))
        part_o, part_s = g.customized([q, k, v], tb)
        tb2 = new_threadblock_graph((bsz, _pick(m, 16), 1), 1)
        po, ps = tb2.new_input(part_o, (0, 1), -1), tb2.new_input(part_s, (0, 1), -1)
        out = tb2.div(tb2.forloop_accum(po, "sum_todimx", dimx=d), tb2.forloop_accum(ps, "sum"))
        tb2.new_output(out, (0, 1))
        (y,) = g.customized([part_o, part_s], tb2)
    elif kind == "gqa_online_softmax":  # one kernel, running max with the rescaling accumulator
        q, k, v = ins
        bsz, m, _ = q.shape
        n = k.shape[2]
        tb = new_threadblock_graph((bsz, _pick(m, 4), 1), _pick(n, 8))
        bq, bk, bv = (
            tb.new_input(q, (0, 1), -1),
            tb.new_input(k, (0, -1), 2),
            tb.new_input(v, (0, -1), 1),
        )
        s = tb.matmul(bq, bk)
        mx = tb.reduce_max(s, 2)
        e = tb.exp(tb.sub(s, mx))
        num = tb.forloop_accum_rescale(tb.matmul(e, bv), mx)
        den = tb.forloop_accum_rescale(tb.reduction(e, 2), mx)
        tb.new_output(tb.div(num, den), (0, 1))
        (y,) = g.customized([q, k, v], tb)
    else:  # ntrans: the whole chain in one kernel, rows split over the grid
        h, x, a = ins
        tb = new_threadblock_graph((_pick(h.shape[0], 8), 1, 1), 1)
        bh, bx, ba = (tb.new_input(t, (0,), -1) for t in (h, x, a))
        t = tb.rms_norm(tb.add(tb.mul(tb.add(tb.rms_norm(bh), bx), ba), bx))
        tb.new_output(tb.forloop_accum(t), (0,))
        (y,) = g.customized([h, x, a], tb)
    g.mark_output(y)
    return g.graph
