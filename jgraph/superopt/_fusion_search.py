"""Fusion candidates for `search`: whole-region and segment kernels, verified by cost order.

`jgraph.superopt._fuse` builds single-kernel structures of a program; here they are
applied to *segments* (contiguous runs of pre-defined ops, in program order) and
chosen greedily: each round fuses the segment whose best schedule lowers the model
cost of the whole μGraph most, until no segment helps. So a LayerNorm before two
matmuls becomes one fused norm kernel followed by XLA's fused matmul epilogues when
a single kernel for everything would cost more. Each round's μGraph (and the
cheapest few whole-region kernels) are verified against the reference by the same
`Verifier` as every other candidate; only verified ones are returned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from jgraph.superopt._candidate import Candidate
from jgraph.superopt._config import SearchConfig
from jgraph.superopt._cost import CostModel
from jgraph.superopt._fuse import fused_graphs
from jgraph.superopt._ir import KernelGraph, KernelOp, TensorSpec
from jgraph.superopt._ops import ShapeError
from jgraph.superopt._verify import Verifier

__all__ = ["fusion_candidates"]

log = logging.getLogger(__name__)

_KEEP = 3  # verified fusion candidates kept per search (each is lowered again by `search`)


# A fused run of the reference's ops: (first op, end op, the kernel, its outer inputs, outputs).
Fused = tuple[int, int, KernelOp, tuple[int, ...], tuple[int, ...]]


def _segment(
    ref: KernelGraph, i: int, j: int
) -> tuple[KernelGraph, tuple[int, ...], tuple[int, ...]]:
    """Reference ops ``[i, j)`` as a graph of their own, with its outer input and output ids."""
    n_in = len(ref.inputs)
    first, last = n_in + i, n_in + j  # pre-defined ops: op k writes tensor n_in + k
    ext: list[int] = []
    for op in ref.ops[i:j]:
        for t in op.inputs:
            if not first <= t < last and t not in ext:
                ext.append(t)
    used_after = {t for op in ref.ops[j:] for t in op.inputs} | set(ref.outputs)
    outs = [t for t in range(first, last) if t in used_after]
    local = {t: k for k, t in enumerate(ext)}
    for t in range(first, last):
        local[t] = len(ext) + t - first
    shapes = ref.shapes
    sub = KernelGraph(
        tuple(TensorSpec(shape=shapes[t], dtype=ref.inputs[0].dtype) for t in ext),
        tuple(KernelOp(op.kind, tuple(local[t] for t in op.inputs), op.attrs) for op in ref.ops[i:j]),
        tuple(local[t] for t in outs),
    )  # fmt: skip
    return sub, tuple(ext), tuple(outs)


def _assemble(ref: KernelGraph, fused: Sequence[Fused]) -> KernelGraph:
    """The reference with each fused run replaced by its kernel (runs are disjoint)."""
    n_in = len(ref.inputs)
    at = {f[0]: f for f in fused}
    remap = {t: t for t in range(n_in)}
    ops: list[KernelOp] = []
    tid, k = n_in, 0
    while k < len(ref.ops):
        if k in at:
            _, j, kern, ext, outs = at[k]
            ops.append(KernelOp("customized", tuple(remap[t] for t in ext), (), kern.block))
            for s, t in enumerate(outs):
                remap[t] = tid + s
            tid += len(outs)
            k = j
            continue
        op = ref.ops[k]
        ops.append(KernelOp(op.kind, tuple(remap[t] for t in op.inputs), op.attrs))
        remap[n_in + k] = tid
        tid, k = tid + 1, k + 1
    return KernelGraph(ref.inputs, tuple(ops), tuple(remap[t] for t in ref.outputs))


def _worth_fusing(ops: Sequence[KernelOp]) -> bool:
    """Whether fusing ``ops`` can beat XLA's own fusion in the cost model.

    XLA already fuses element-wise chains and a matmul's element-wise epilogue; a
    run gains only if it joins a reduction (a norm or softmax statistic) with what
    reads it, or two matmuls.
    """
    kinds = [op.kind for op in ops]
    return (
        any(k in ("reduce_sum", "reduce_max", "rms_norm") for k in kinds)
        or kinds.count("matmul") > 1
    )


def _best_kernels(
    sub: KernelGraph, config: SearchConfig, cost: CostModel, deadline: float, keep: int
) -> list[KernelOp]:
    """The ``keep`` cheapest single-kernel schedules of ``sub`` (unverified)."""
    scored: list[tuple[tuple[float, int, int], int, KernelOp]] = []
    want = [sub.shapes[o] for o in sub.outputs]
    for _name, g in fused_graphs(
        sub, smem_budget=config.smem_budget, sizes_per_mapping=config.sizes_per_mapping,
        maps=config.maps,
    ):  # fmt: skip
        try:
            if [g.shapes[o] for o in g.outputs] != want:
                continue  # a saver that concatenates partials: not this segment's outputs
            c = cost(g)
            # ties (a memory-bound kernel) go to fewer FLOPs, then less shared memory
            scored.append(((c.estimated_us, c.flops, c.smem_bytes), len(scored), g.ops[0]))
        except ShapeError:
            continue
        if time.perf_counter() > deadline:
            break
    scored.sort(key=lambda s: (s[0], s[1]))
    return [s[2] for s in scored[:keep]]


def fusion_candidates(
    reference: KernelGraph, config: SearchConfig, verifier: Verifier, *, deadline: float
) -> tuple[list[Candidate], float | None]:
    """Verified fusion candidates of ``reference`` and when the first was verified.

    Returns at most a few candidates (the cheapest verified ones), each labelled
    ``"fusion"``; an empty list when no fused μGraph verifies or the reference has
    an op without a block form.
    """
    start = time.perf_counter()
    if not reference.ops or any(op.block is not None for op in reference.ops):
        return [], None
    cost = CostModel()
    tried: list[KernelGraph] = []
    # the whole region as one kernel: its cheapest schedules
    whole = _best_kernels(reference, config, cost, deadline, 4)
    n_in, n_ops = len(reference.inputs), len(reference.ops)
    for kern in whole:
        tried.append(
            _assemble(reference, [(0, n_ops, kern, tuple(range(n_in)), reference.outputs)])
        )
    # greedy segment fusion: fuse the run that lowers the whole graph's cost most
    fused: list[Fused] = []
    xla_us = current = cost(reference).estimated_us
    sub_cache: dict[tuple[int, int], tuple[list[KernelOp], tuple[int, ...], tuple[int, ...]]] = {}
    while time.perf_counter() < deadline:
        taken = {k for f in fused for k in range(f[0], f[1])}
        best = None
        for i in range(n_ops):
            for j in range(i + 2, n_ops + 1):
                if taken.intersection(range(i, j)) or time.perf_counter() > deadline:
                    break
                if not _worth_fusing(reference.ops[i:j]):
                    continue
                if (i, j) not in sub_cache:
                    sub, ext, outs = _segment(reference, i, j)
                    sub_cache[(i, j)] = (_best_kernels(sub, config, cost, deadline, 1), ext, outs)
                kerns, ext, outs = sub_cache[(i, j)]
                for kern in kerns:
                    g = _assemble(reference, [*fused, (i, j, kern, ext, outs)])
                    c = cost(g).estimated_us
                    if best is None or c < best[0]:
                        best = (c, (i, j, kern, ext, outs), g)
        if best is None or best[0] >= current:
            break
        current = best[0]
        fused.append(best[1])
        tried.append(best[2])
    found: list[Candidate] = []
    first_s = None
    costs = {g: cost(g) for g in tried}
    limit = 1.5 * xla_us  # as the enumeration: never the answer above this
    # ties (a memory-bound kernel) go to fewer FLOPs, then less shared memory
    for g in sorted(
        costs, key=lambda g: (costs[g].estimated_us, costs[g].flops, costs[g].smem_bytes)
    ):
        if len(found) >= _KEEP or time.perf_counter() > deadline or costs[g].estimated_us > limit:
            break
        verdict = verifier.check(g)
        if not verdict.ok:
            log.info("fusion candidate rejected (%s): %s", verdict.stage, verdict.reason)
            continue
        now = time.perf_counter() - start
        first_s = now if first_s is None else first_s
        found.append(
            Candidate(graph=g, cost=costs[g], verdict=verdict, label="fusion", found_s=now)
        )
    return found, first_s
