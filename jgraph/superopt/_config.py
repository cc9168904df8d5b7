"""Search configuration: bounds, limits, schedule mode, backend and verification.

The string modes are `Literal` types, and their value lists are derived from them
(`BACKENDS`, `MAP_MODES`), so the config's check, the CLI's choices and
`SMEM_BUDGET` cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal, get_args

from jgraph.core import check_choice, check_int, check_number
from jgraph.superopt._verify import VerifyConfig

__all__ = ["BACKENDS", "MAP_MODES", "SMEM_BUDGET", "Backend", "MapMode", "SearchConfig"]

Backend = Literal["cuda", "h100", "tpu"]
"""The target whose shared memory per block bounds the tiles (`SMEM_BUDGET`)."""

MapMode = Literal["derived", "mirage"]
"""How grid/for-loop maps are chosen: derived from the shapes, or Mirage's fixed lists."""

BACKENDS: tuple[Backend, ...] = get_args(Backend)
MAP_MODES: tuple[MapMode, ...] = get_args(MapMode)

# Shared memory per block: Mirage's CUDA budget, an H100's opt-in maximum, and
# a conservative scoped-VMEM share on TPU.
SMEM_BUDGET: Mapping[Backend, int] = {
    "cuda": 96 * 1024,
    "h100": 227 * 1024,
    "tpu": 16 * 1024 * 1024,
}
# A backend without a budget would pass the config's check and fail in the search.
assert tuple(SMEM_BUDGET) == BACKENDS, (tuple(SMEM_BUDGET), BACKENDS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """What the μGraph search explores and for how long.

    Attributes:
        time_limit_s: wall-clock budget; the best verified μGraph so far is returned.
        max_states: budget of search states (kernel- and block-level nodes).
        max_kernel_ops: kernel-graph ops per candidate (Mirage: 5).
        max_customized: graph-defined kernels per candidate (Mirage: 1, 2 for attention).
        max_block_ops: block-graph size bound (Mirage: 11): input iterators + block ops + one
            output saver; a second saver (``max_block_outputs`` = 2) is not counted. So the
            fused QKNorm kernel (3 inputs + 7 ops + 2 savers) fits at 11; counting every
            saver would need 12. (Mirage checks its bound, which counts inputs and outputs,
            while adding block ops; the savers come when a block graph is closed.)
        max_block_inputs: operands of one graph-defined kernel (Mirage: 3, 4 for LoRA).
        max_block_outputs: outputs of one graph-defined kernel.
        sizes_per_mapping: grid/loop sizes kept per map assignment, ranked by a
            closed-form cost (bytes loaded and occupancy); 0 keeps every size. A
            jgraph heuristic, not in Mirage: it never changes *which* map
            assignments are explored, only how many sizes of each.
        require_live_operand: every new op must read a tensor nothing has read yet.
            A jgraph heuristic, not in Mirage: it drops DAGs whose canonical order
            has an op reading only already-read tensors (e.g. two different
            unary ops of one tensor); ``False`` restores the full space.
        maps: ``"derived"`` (from shapes) or ``"mirage"`` (Mirage's fixed lists).
        backend: ``"cuda"`` (96 KiB smem), ``"h100"`` (227 KiB) or ``"tpu"``.
        pruning: abstract-expression pruning (off only for the ablation).
        check_lowering: drop verified candidates that do not lower for CUDA (Pallas
            Triton, else Mosaic GPU), with a logged reason, so the best candidate is
            one that runs (`jgraph.superopt.lower.lowering_problem`; no GPU needed).
            Not done for ``backend="tpu"`` (there is no TPU lowering yet).
        verify_all: verify candidates that cannot beat the best verified cost too.
        fusion: before the enumeration, try fusion moves (`jgraph.superopt._fuse`):
            whole-region and segment kernels built from the program's own ops,
            with loops over reduced dimensions, row-factor hoisting and the online
            softmax; they reach fused kernels for captured layer code (norms,
            softmax, attention) that the op-by-op enumeration does not. They get
            up to half of ``time_limit_s``; the enumeration the rest, and it is
            skipped when a fusion candidate verified and the program has more ops
            than ``max_block_ops`` (its set-up alone overruns the limit there).
            ``False`` measures the enumeration alone (the rediscovery benchmark).
        verify: the verifier's settings.
    """

    time_limit_s: float = 600.0
    max_states: int = 5_000_000
    max_kernel_ops: int = 3
    max_customized: int = 2
    max_block_ops: int = 11
    max_block_inputs: int = 4
    max_block_outputs: int = 2
    sizes_per_mapping: int = 2
    require_live_operand: bool = True
    maps: MapMode = "derived"
    backend: Backend = "h100"
    pruning: bool = True
    check_lowering: bool = True
    verify_all: bool = False
    fusion: bool = True
    verify: VerifyConfig = dataclasses.field(default_factory=VerifyConfig)

    def __post_init__(self) -> None:
        check_number(
            "SearchConfig.time_limit_s",
            self.time_limit_s,
            minimum=0.0,
            strict_minimum=True,
            fix="pass a positive number of seconds, e.g. 600",
        )
        check_int("SearchConfig.max_states", self.max_states, minimum=1)
        check_int("SearchConfig.max_kernel_ops", self.max_kernel_ops, minimum=1, maximum=8)
        check_int("SearchConfig.max_customized", self.max_customized, minimum=0, maximum=3)
        check_int("SearchConfig.max_block_ops", self.max_block_ops, minimum=3, maximum=16)
        check_int("SearchConfig.max_block_inputs", self.max_block_inputs, minimum=1, maximum=6)
        check_int("SearchConfig.max_block_outputs", self.max_block_outputs, minimum=1, maximum=4)
        check_int("SearchConfig.sizes_per_mapping", self.sizes_per_mapping, minimum=0)
        check_choice("SearchConfig.maps", self.maps, MAP_MODES)
        check_choice("SearchConfig.backend", self.backend, BACKENDS)

    @property
    def smem_budget(self) -> int:
        return SMEM_BUDGET[self.backend]

    def key(self) -> dict[str, object]:
        """The fields that change the result (for the cache key)."""
        d = dataclasses.asdict(self)
        d.pop("time_limit_s")
        d["verify"].pop("max_memory_gib")  # a limit, not a setting: verdicts do not depend on it
        return d
