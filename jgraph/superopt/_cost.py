"""Analytic cost of a μGraph: device-memory bytes, FLOPs, launches, shared memory.

This ranks candidates without a GPU; it is a model, not a measurement. Kernels
of pre-defined ops follow what XLA does on a GPU: element-wise chains fuse into
one kernel, and an element-wise chain whose only producer is a matmul or a
reduction fuses into that kernel's epilogue (thread-level fusion). A
graph-defined kernel is one launch that reads every tile it loads (replicated
tiles count once per block that loads them) and writes its outputs once; inside
it, element-wise chains are fused at thread level, so their intermediates take
no shared memory. ``estimated_us`` is a roofline on the `Device` numbers
(H100 SXM by default) with a per-launch overhead and an occupancy factor for
grids smaller than the SM count. `CostModel.measure` is the hook for measured
costs (e.g. profiled Pallas kernels from the lowering issue).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from jgraph.superopt._ir import BlockGraph, KernelGraph
from jgraph.superopt._ops import ACCUMULATORS, ELEMENTWISE
from jgraph.superopt._tiling import partial_outputs

__all__ = ["Cost", "CostModel", "Device", "thread_fusion"]

_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Device:
    """Roofline numbers of the target (defaults: H100 SXM, fp16 tensor cores)."""

    name: str = "H100-SXM (model)"
    hbm_bytes_per_s: float = 3.35e12
    matmul_flops_per_s: float = 989e12
    vector_flops_per_s: float = 67e12
    launch_us: float = 3.0
    num_sms: int = 132
    smem_bytes: int = 227 * 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cost:
    """Model costs of one μGraph (``estimated_us`` ranks candidates)."""

    dram_bytes: int
    flops: int
    launches: int
    smem_bytes: int
    estimated_us: float

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def thread_fusion(block: BlockGraph) -> tuple[tuple[int, ...], ...]:
    """Groups of block-op indices fused at thread level (element-wise chains).

    An element-wise op joins its producer's group when the producer is an
    element-wise op of the same loop phase with no other consumer; each group's
    intermediates stay in registers.
    """
    n_in = len(block.inputs)
    uses: dict[int, int] = {}
    for op in block.ops:
        for i in op.inputs:
            uses[i] = uses.get(i, 0) + 1
    for o in block.outputs:
        uses[o.src] = uses.get(o.src, 0) + 1
    group_of: dict[int, int] = {}
    groups: list[list[int]] = []
    for k, op in enumerate(block.ops):
        joined = None
        if op.kind in ELEMENTWISE:
            for i in op.inputs:
                j = i - n_in
                if j >= 0 and block.ops[j].kind in ELEMENTWISE and uses.get(i) == 1:
                    joined = group_of[j]
                    break
        if joined is None:
            groups.append([k])
            group_of[k] = len(groups) - 1
        else:
            groups[joined].append(k)
            group_of[k] = joined
    return tuple(tuple(g) for g in groups)


def _flops(kind: str, in_shapes: list[tuple[int, ...]], out: tuple[int, ...]) -> int:
    if kind == "matmul":
        return 2 * math.prod(out) * in_shapes[0][-1]
    if kind in ("rms_norm",):
        return 4 * math.prod(out)
    return max(math.prod(s) for s in [*in_shapes, out])


class CostModel:
    """Analytic costs; pass ``measure`` to rank by measured microseconds instead."""

    def __init__(
        self, device: Device | None = None, measure: Callable[[KernelGraph], float] | None = None
    ) -> None:
        self.device = device or Device()
        self.measure = measure

    def __call__(self, graph: KernelGraph) -> Cost:
        """The `Cost` of ``graph`` (``estimated_us`` from ``measure`` when given).

        Example:
            >>> from jgraph.superopt._programs import get_program
            >>> CostModel()(get_program("rmsnorm_linear").graph).launches
            2
        """
        dev, shapes = self.device, graph.shapes
        nbytes = _BYTES.get(graph.inputs[0].dtype, 2) if graph.inputs else 2
        producer: dict[int, int] = {}
        tid = len(graph.inputs)
        for k, op in enumerate(graph.ops):
            for _ in range(op.n_outputs):
                producer[tid] = k
                tid += 1
        consumers: dict[int, list[int]] = {}
        for k, op in enumerate(graph.ops):
            for i in op.inputs:
                consumers.setdefault(i, []).append(k)
        # XLA-style fusion of pre-defined ops: op k joins the kernel of its producer.
        kernel_of: dict[int, int] = {}
        out_id = {}
        tid = len(graph.inputs)
        # bytes per element of every tensor: partial results between kernels are float32
        width = dict.fromkeys(range(len(graph.inputs)), nbytes)
        for k, op in enumerate(graph.ops):
            out_id[k] = tid
            partial = (
                partial_outputs(op.block, [shapes[i] for i in op.inputs])
                if op.block is not None
                else (False,)
            )
            for s, p in enumerate(partial):
                width[tid + s] = 4 if p else nbytes
            tid += op.n_outputs
        for k, op in enumerate(graph.ops):
            kernel_of[k] = k
            if op.kind not in ELEMENTWISE:
                continue
            for i in op.inputs:
                src = producer.get(i)
                if src is None or graph.ops[src].kind == "customized":
                    continue
                if len(consumers.get(i, [])) == 1 and i not in graph.outputs:
                    kernel_of[k] = kernel_of[src]
                    break
        dram, flops, smem = 0, 0.0, 0
        time_us = 0.0
        kernels = sorted(set(kernel_of.values()))
        for kern in kernels:
            members = [k for k in kernel_of if kernel_of[k] == kern]
            member_outs = {out_id[k] + s for k in members for s in range(graph.ops[k].n_outputs)}
            k_bytes, k_mm, k_vec = 0, 0.0, 0.0
            for k in members:
                op = graph.ops[k]
                ins = [shapes[i] for i in op.inputs]
                k_bytes += sum(
                    math.prod(shapes[i]) * width[i] for i in op.inputs if i not in member_outs
                )
                for s in range(op.n_outputs):
                    t = out_id[k] + s
                    if t in graph.outputs or any(
                        kernel_of[c] != kern for c in consumers.get(t, [])
                    ):
                        k_bytes += math.prod(shapes[t]) * width[t]
                if op.block is not None:
                    in_w = [width[i] for i in op.inputs]
                    b_bytes, b_mm, b_vec, b_smem = self._block(op.block, ins, nbytes, in_w)
                    k_bytes += b_bytes - sum(
                        math.prod(s) * w for s, w in zip(ins, in_w, strict=True)
                    )
                    k_mm, k_vec, smem = k_mm + b_mm, k_vec + b_vec, max(smem, b_smem)
                    blocks = math.prod(op.block.grid)
                else:
                    f = _flops(op.kind, ins, shapes[out_id[k]])
                    k_mm, k_vec = (k_mm + f, k_vec) if op.kind == "matmul" else (k_mm, k_vec + f)
                    blocks = dev.num_sms
            occupancy = min(1.0, blocks / dev.num_sms)
            k_s = max(
                k_bytes / dev.hbm_bytes_per_s,
                k_mm / dev.matmul_flops_per_s + k_vec / dev.vector_flops_per_s,
            )
            time_us += k_s * 1e6 / occupancy + dev.launch_us
            dram += k_bytes
            flops += k_mm + k_vec
        est = self.measure(graph) if self.measure is not None else time_us
        return Cost(
            dram_bytes=int(dram),
            flops=int(flops),
            launches=len(kernels),
            smem_bytes=int(smem),
            estimated_us=float(est),
        )

    def _block(
        self,
        block: BlockGraph,
        in_shapes: list[tuple[int, ...]],
        nbytes: int,
        in_bytes: list[int] | None = None,
    ) -> tuple[int, int, int, int]:
        """(DRAM bytes incl. outputs' reads of inputs, matmul FLOPs, vector FLOPs, smem/block)."""
        tiles, post, _outs = block.infer(in_shapes)
        n_blocks, frange = math.prod(block.grid), block.frange
        in_bytes = in_bytes or [nbytes] * len(block.inputs)
        loaded = sum(
            n_blocks * (frange if b.fmap != -1 else 1) * math.prod(tiles[k]) * in_bytes[k]
            for k, b in enumerate(block.inputs)
        )
        mm = vec = 0
        n_in = len(block.inputs)
        fused = {k for g in thread_fusion(block) for k in g[:-1]}
        smem = sum(math.prod(t) * nbytes for t in tiles[:n_in])
        for k, op in enumerate(block.ops):
            t = n_in + k
            reps = n_blocks * (1 if post[t] else frange)
            f = _flops(op.kind, [tiles[i] for i in op.inputs], tiles[t]) * reps
            if op.kind == "matmul":
                mm += f
            else:
                vec += f
            if k not in fused:  # fused intermediates live in registers
                smem += math.prod(tiles[t]) * (4 if op.kind in ACCUMULATORS else nbytes)
        return loaded, mm, vec, smem

    def smem_bytes(self, block: BlockGraph, in_shapes: list[tuple[int, ...]]) -> int:
        """Shared memory one block of ``block`` needs (the search's budget check)."""
        return self._block(block, in_shapes, 2)[3]
