"""Cost and memory model shared by every planner and by the simulator.

One stage = a set of nodes on ``d`` data-parallel devices running micro-batches
of ``b`` samples (``b / d`` per device). Per micro-batch it spends:

* forward: the nodes' forward time at ``b / d`` plus receiving its inputs from
  other stages (``alpha + bytes / bandwidth``, one message per producer);
* backward: the nodes' backward time plus receiving the output gradients from
  consuming stages;

and, once per iteration, a ring all-reduce of its gradients over ``d`` devices.
Its time per sample (TPS, the quantity GraphPipe's binary search bounds) is
``(fwd + bwd + comm) / b + allreduce / B`` (transfers add to the stage time, as
in Piper; ``overlap_comm`` takes a max instead, as in PipeDream).

A node's compute times are its roofline (`ClusterConfig`) unless it carries
``measured`` rows (from `profile_module_graph`, or a `CostProfile`'s efficiency
curves put on by `apply_profile`): then the per-call time is interpolated
linearly between rows, held below the smallest row and grown in proportion to
the micro-batch above the largest (per-sample time held: the device saturated).

Memory per device of the stage, with ``n`` micro-batches in flight:
``param_bytes * optimizer_bytes_per_param_byte + n * (b / d) * activation_bytes
+ 2 * (b / d) * max output_bytes`` (one output and one gradient buffer of
workspace).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable

import numpy as np

from jgraph.pipeline._config import ClusterConfig, PlannerConfig
from jgraph.pipeline._graph import ModelGraph, Node

__all__ = ["CostModel", "StageCost"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageCost:
    """Costs of one stage for one (devices, micro-batch) choice (seconds, bytes)."""

    devices: int
    micro_batch: int
    fwd_s: float  # compute + receiving activations, per micro-batch
    bwd_s: float  # compute + receiving gradients, per micro-batch
    comm_s: float  # the transfer part of fwd_s + bwd_s
    allreduce_s: float  # once per iteration
    tps: float  # time per sample
    static_bytes: float  # params + grads + optimizer state, per device
    activation_bytes_per_mb: float  # per device, per in-flight micro-batch
    workspace_bytes: float  # per device

    def memory(self, in_flight: int) -> float:
        """Bytes per device with ``in_flight`` micro-batches stashed."""
        return self.static_bytes + in_flight * self.activation_bytes_per_mb + self.workspace_bytes


def _roofline(node: Node, x: int, cluster: ClusterConfig) -> tuple[float, float]:
    peak, bw, launch = cluster.peak_flops, cluster.memory_bandwidth, cluster.kernel_launch_s
    if node.kind in ("junction", "input"):
        return 0.0, 0.0  # graph inputs and junctions do no work
    fwd = max(node.flops * x / peak, (node.weight_bytes + node.io_bytes * x) / bw)
    # Backward reads the weights and writes their gradients, and moves about
    # twice the forward's activation bytes (input grads + weight-grad operands).
    bwd = max(node.bwd_flops * x / peak, (2 * node.weight_bytes + 2 * node.io_bytes * x) / bw)
    return fwd + node.kernels * launch, bwd + 2 * node.kernels * launch


def _interpolate(measured: tuple[tuple[int, float, float], ...], x: int) -> tuple[float, float]:
    rows = sorted(measured)
    bs = np.array([r[0] for r in rows], dtype=np.float64)
    out = []
    for col in (1, 2):
        ts = np.array([r[col] for r in rows], dtype=np.float64)
        if x <= bs[0]:
            # Below the smallest profiled size the time cannot drop further than
            # proportionally; launch overhead keeps it near the smallest value.
            out.append(float(ts[0]))
        elif x >= bs[-1]:
            # Beyond the largest profiled size the device is taken as saturated:
            # time grows in proportion to the micro-batch.
            out.append(float(ts[-1] * x / bs[-1]))
        else:
            out.append(float(np.interp(x, bs, ts)))
    return out[0], out[1]


class CostModel:
    """Prices stages of one graph on one cluster; cached, shared by all planners.

    Example:
        >>> from jgraph.pipeline import ClusterConfig, PlannerConfig
        >>> from jgraph.pipeline.models import synthetic_branches
        >>> cm = CostModel(synthetic_branches(2, layers=2), ClusterConfig(num_devices=4), PlannerConfig())
        >>> c = cm.stage_cost(cm.graph.topological_order, devices=1, micro_batch=4, batch=64)
        >>> c.tps > 0 and c.static_bytes > 0
        True
    """

    def __init__(self, graph: ModelGraph, cluster: ClusterConfig, config: PlannerConfig) -> None:
        self.graph = graph
        self.cluster = cluster
        self.config = config
        self.index = {name: i for i, name in enumerate(graph.topological_order)}
        self.nodes = [graph.by_name[n] for n in graph.topological_order]
        self.preds = [[self.index[i] for i in n.inputs] for n in self.nodes]
        succ: list[list[int]] = [[] for _ in self.nodes]
        for v, ps in enumerate(self.preds):
            for u in ps:
                succ[u].append(v)
        self.succs = succ
        self.param = np.array([n.param_bytes for n in self.nodes])
        self.act = np.array([n.activation_bytes for n in self.nodes])
        self.out = np.array([n.output_bytes for n in self.nodes])
        self._multi_node = cluster.num_devices > cluster.devices_per_node

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one model per planning run
    def node_times(self, per_device: int) -> tuple[np.ndarray, np.ndarray]:
        """Forward and backward seconds of every node (topological order) at ``per_device``."""
        f = np.empty(len(self.nodes))
        b = np.empty(len(self.nodes))
        for i, n in enumerate(self.nodes):
            f[i], b[i] = (
                _interpolate(n.measured, per_device)
                if n.measured
                else _roofline(n, per_device, self.cluster)
            )
        return f, b

    def p2p_s(self, nbytes: float, inter_node: bool) -> float:
        if nbytes == 0:
            return 0.0  # a pure ordering edge (e.g. added for series-parallelism) sends nothing
        alpha, bw = self.cluster.link(inter_node)
        return alpha + nbytes / bw

    def allreduce_s(self, nbytes: float, devices: int) -> float:
        """Ring all-reduce: 2(d-1) steps of nbytes/d each (Patarasuk & Yuan 2009)."""
        if devices <= 1 or nbytes == 0:
            return 0.0
        alpha, bw = self.cluster.link(devices > self.cluster.devices_per_node)
        return 2 * (devices - 1) * alpha + 2 * (devices - 1) / devices * nbytes / bw

    def cut(self, members: Iterable[int]) -> tuple[list[float], list[float]]:
        """Bytes per sample entering (one per outside producer) and leaving (one per edge)."""
        inside = set(members)
        ins: dict[int, float] = {}
        outs: list[float] = []
        for v in inside:
            for u in self.preds[v]:
                if u not in inside:
                    ins[u] = self.out[u]
            outs.extend(self.out[v] for w in self.succs[v] if w not in inside)
        return list(ins.values()), outs

    def stage_cost(
        self,
        names_or_ids: Iterable[str] | Iterable[int],
        *,
        devices: int,
        micro_batch: int,
        batch: int,
        inter_node: bool | None = None,
    ) -> StageCost:
        """Costs of one stage; ``inter_node=None`` assumes the slow link when the cluster spans nodes."""
        ids = [self.index[x] if isinstance(x, str) else int(x) for x in names_or_ids]
        cut_in, cut_out = self.cut(ids)
        return self.stage_cost_from_sums(
            ids, cut_in, cut_out, devices=devices, micro_batch=micro_batch, batch=batch,
            inter_node=self._multi_node if inter_node is None else inter_node,
        )  # fmt: skip

    def stage_cost_from_sums(
        self,
        ids: list[int],
        cut_in: list[float],
        cut_out: list[float],
        *,
        devices: int,
        micro_batch: int,
        batch: int,
        inter_node: bool,
        in_links: list[bool] | None = None,
        out_links: list[bool] | None = None,
    ) -> StageCost:
        x = micro_batch // devices
        f, b = self.node_times(x)
        idx = np.asarray(ids, dtype=np.int64)
        comp_f = float(f[idx].sum())
        comp_b = float(b[idx].sum())
        links_in = in_links if in_links is not None else [inter_node] * len(cut_in)
        links_out = out_links if out_links is not None else [inter_node] * len(cut_out)
        c_in = sum(self.p2p_s(nb * x, li) for nb, li in zip(cut_in, links_in, strict=True))
        c_out = sum(self.p2p_s(nb * x, li) for nb, li in zip(cut_out, links_out, strict=True))
        param = float(self.param[idx].sum())
        ar = self.allreduce_s(param, devices)
        if self.config.overlap_comm:
            fwd, bwd = max(comp_f, c_in), max(comp_b, c_out)
        else:
            fwd, bwd = comp_f + c_in, comp_b + c_out
        tps = (fwd + bwd) / micro_batch + ar / batch
        return StageCost(
            devices=devices,
            micro_batch=micro_batch,
            fwd_s=float(fwd),
            bwd_s=float(bwd),
            comm_s=float(c_in + c_out),
            allreduce_s=float(ar),
            tps=float(tps),
            static_bytes=param * self.config.optimizer_bytes_per_param_byte,
            activation_bytes_per_mb=x * float(self.act[idx].sum()),
            workspace_bytes=2.0 * x * float(self.out[idx].max(initial=0.0)),
        )

    @functools.cached_property
    def adjacency(self) -> np.ndarray:
        """``adj[u, v] = 1`` for every edge ``u -> v`` (float, for matrix products)."""
        adj = np.zeros((len(self.nodes), len(self.nodes)))
        for v, ps in enumerate(self.preds):
            adj[ps, v] = 1.0
        return adj

    def stage_arrays(
        self, sets: np.ndarray, *, micro_batch: int, batch: int, degrees: list[int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`stage_cost_from_sums` for many stages at once (each on the slow link when multi-node).

        Args:
            sets: boolean membership rows, ``[k, nodes]``.
            micro_batch: ``b``; each stage runs ``b / d`` samples per device.
            batch: mini-batch size (amortises the all-reduce).
            degrees: data-parallel degrees ``d`` to price (each divides ``b``).

        Returns:
            ``(tps, static_bytes, activation_bytes_per_mb, workspace_bytes)``, each ``[k, len(degrees)]``.
        """
        adj = self.adjacency
        S = sets.astype(np.float64)
        succ_in = S @ adj.T  # [k, u]: consumers of u inside the set
        in_mask = ((succ_in > 0) & ~sets).astype(np.float64)  # outside producers feeding the set
        out_edges = S * (adj.sum(axis=1)[None, :] - succ_in)  # edges leaving the set, per producer
        alpha, bw = self.cluster.link(self._multi_node)
        params = S @ self.param
        k, nd = sets.shape[0], len(degrees)
        tps, act, work = np.empty((k, nd)), np.empty((k, nd)), np.empty((k, nd))
        static = np.repeat((params * self.config.optimizer_bytes_per_param_byte)[:, None], nd, 1)
        outmax = (S * self.out[None, :]).max(axis=1, initial=0.0)
        act_sum = S @ self.act
        for t, d in enumerate(degrees):
            x = micro_batch // d
            f, g = self.node_times(x)
            msg = np.where(self.out > 0, alpha + self.out * x / bw, 0.0)
            c_in, c_out = in_mask @ msg, out_edges @ msg
            comp_f, comp_b = S @ f, S @ g
            if self.config.overlap_comm:
                per_mb = np.maximum(comp_f, c_in) + np.maximum(comp_b, c_out)
            else:
                per_mb = comp_f + comp_b + c_in + c_out
            if d > 1:  # `allreduce_s`, vectorised over the stages
                a_ar, bw_ar = self.cluster.link(d > self.cluster.devices_per_node)
                ring = 2 * (d - 1) * a_ar + 2 * (d - 1) / d * params / bw_ar
                ar = np.where(params > 0, ring, 0.0)
            else:
                ar = np.zeros(k)
            tps[:, t] = per_mb / micro_batch + ar / batch
            act[:, t] = x * act_sum
            work[:, t] = 2.0 * x * outmax
        return tps, static, act, work
