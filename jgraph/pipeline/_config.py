"""Configs: the device cluster the plan targets and the planner's knobs.

Default device numbers are public hardware specifications of the cluster the
GraphPipe paper ran on (Summit: NVIDIA V100 16 GB, NVLink 2.0 inside a node,
EDR InfiniBand between nodes). They are starting points for a cost model, not
fitted values, and are never tuned to reach a benchmark target: pass your own
(or a measured profile, see `profile_module_graph`) for another machine.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

from jgraph.core import ConfigError, check_choice, check_int, check_number

__all__ = ["SCHEDULE_KINDS", "ClusterConfig", "PlannerConfig", "ScheduleKind"]

ScheduleKind = Literal["1f1b", "gpipe"]
# Derived from the Literal, so the type, the checks and the CLI choices are one list.
SCHEDULE_KINDS: tuple[ScheduleKind, ...] = get_args(ScheduleKind)

GB = 1e9

# NVIDIA Tesla V100 SXM2 datasheet (2017/2018): 15.7 TFLOP/s single precision,
# 125 TFLOP/s tensor (mixed) precision, 900 GB/s HBM2, 16 GB or 32 GB.
V100_FP32_FLOPS = 15.7e12
V100_FP16_TENSOR_FLOPS = 125e12
V100_HBM_BYTES_PER_S = 900e9
V100_MEMORY_BYTES = 16 * GB
# OLCF Summit User Guide, "System Overview": GPUs of one node are connected by
# NVLink 2.0 at 50 GB/s per direction; nodes by dual-rail Mellanox EDR
# InfiniBand (100 Gbit/s = 12.5 GB/s per rail). The paper (§7) reports 4 V100
# per node in its setup; we model one EDR rail per stage-to-stage stream.
NVLINK2_BYTES_PER_S = 50e9
EDR_IB_BYTES_PER_S = 12.5e9
# Per-message latency. A CUDA kernel launch costs ~5 us (NVIDIA CUDA C++ Best
# Practices Guide, "kernel launch overhead"), which bounds an NVLink copy from
# below; EDR IB adds ~1 us port-to-port (Mellanox EDR switch/HCA datasheets)
# plus the MPI/NCCL protocol, so we round the inter-node latency up to 10 us.
# Order-of-magnitude values: they matter only for tiny transfers.
NVLINK_ALPHA_S = 5e-6
IB_ALPHA_S = 10e-6
KERNEL_LAUNCH_S = 5e-6


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """The devices a plan may use and the machine model used to cost it.

    Compute time of one operator call follows a roofline: ``max(flops / peak_flops,
    bytes / memory_bandwidth) + kernels * kernel_launch_s``. Bytes include the
    weights, read once per call whatever the micro-batch, so small micro-batches
    are bandwidth- and launch-bound: that is the micro-batch efficiency curve.
    Communication is affine, ``alpha + bytes / bandwidth``, with one (alpha,
    bandwidth) pair inside a node and one between nodes.

    Attributes:
        num_devices: devices available to the pipeline (stages x data parallelism).
        memory_bytes: memory per device; a plan never predicts more than this.
        peak_flops: sustained-peak FLOP/s of one device (V100 FP32 by default).
        memory_bandwidth: device memory bandwidth in bytes/s (V100 HBM2).
        devices_per_node: devices sharing the fast intra-node link.
        intra_alpha_s, intra_bandwidth: latency (s) and bandwidth (bytes/s) inside a node.
        inter_alpha_s, inter_bandwidth: the same between nodes.
        kernel_launch_s: fixed overhead per kernel of an operator.
        name: a label shown in reports.
    """

    num_devices: int = 8
    memory_bytes: float = V100_MEMORY_BYTES
    peak_flops: float = V100_FP32_FLOPS
    memory_bandwidth: float = V100_HBM_BYTES_PER_S
    devices_per_node: int = 4
    intra_alpha_s: float = NVLINK_ALPHA_S
    intra_bandwidth: float = NVLINK2_BYTES_PER_S
    inter_alpha_s: float = IB_ALPHA_S
    inter_bandwidth: float = EDR_IB_BYTES_PER_S
    kernel_launch_s: float = KERNEL_LAUNCH_S
    name: str = "V100-16GB (public specs)"

    def __post_init__(self) -> None:
        check_int("ClusterConfig.num_devices", self.num_devices, minimum=1, maximum=4096)
        check_int("ClusterConfig.devices_per_node", self.devices_per_node, minimum=1)
        for field in ("memory_bytes", "peak_flops", "memory_bandwidth"):
            check_number(
                f"ClusterConfig.{field}", getattr(self, field), minimum=0, strict_minimum=True
            )
        for field in ("intra_bandwidth", "inter_bandwidth"):
            check_number(
                f"ClusterConfig.{field}", getattr(self, field), minimum=0, strict_minimum=True
            )
        for field in ("intra_alpha_s", "inter_alpha_s", "kernel_launch_s"):
            check_number(f"ClusterConfig.{field}", getattr(self, field), minimum=0)

    def link(self, inter_node: bool) -> tuple[float, float]:
        """(alpha seconds, bandwidth bytes/s) of the intra- or inter-node link."""
        if inter_node:
            return self.inter_alpha_s, self.inter_bandwidth
        return self.intra_alpha_s, self.intra_bandwidth


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlannerConfig:
    """Knobs shared by every planner (so baselines and GraphPipe see one model).

    Attributes:
        schedule: ``"1f1b"`` (synchronous DAG-aware 1F1B, the paper's default) or
            ``"gpipe"`` (all forwards, then all backwards).
        micro_batch_sizes: candidate micro-batch sizes; empty means every power
            of two that divides the mini-batch.
        optimizer_bytes_per_param_byte: persistent bytes per parameter byte:
            weights + gradients + two Adam moments = 4.
        overlap_comm: if True inter-stage transfers overlap compute (PipeDream
            takes a max); if False they add to the stage time (Piper).
        rerank_top: how many feasible bottleneck targets per micro-batch size are
            re-ranked by the simulator (the best few of the binary search).
        piper_max_downsets: the Piper-style planner gives up ("no plan") when the
            DAG has more downsets than this, as Piper does on wide graphs.
    """

    schedule: ScheduleKind = "1f1b"
    micro_batch_sizes: tuple[int, ...] = ()
    optimizer_bytes_per_param_byte: float = 4.0
    overlap_comm: bool = False
    rerank_top: int = 3
    piper_max_downsets: int = 2000

    def __post_init__(self) -> None:
        check_choice("PlannerConfig.schedule", self.schedule, SCHEDULE_KINDS)
        if not isinstance(self.micro_batch_sizes, tuple):
            raise ConfigError(
                "PlannerConfig.micro_batch_sizes",
                self.micro_batch_sizes,
                "must be a tuple of ints",
                "pass e.g. (1, 2, 4)",
            )
        for b in self.micro_batch_sizes:
            check_int("PlannerConfig.micro_batch_sizes[]", b, minimum=1)
        check_number(
            "PlannerConfig.optimizer_bytes_per_param_byte",
            self.optimizer_bytes_per_param_byte,
            minimum=1.0,
        )
        check_int("PlannerConfig.rerank_top", self.rerank_top, minimum=1)
        check_int("PlannerConfig.piper_max_downsets", self.piper_max_downsets, minimum=1)
