"""The μGraph IR: kernel graphs whose graph-defined ops carry block graphs, and the builders.

`KernelGraph` (frozen, hashable, JSON round-trip) holds `KernelOp`s; a graph-defined op carries
a `BlockGraph` (grid, for-loop range, `BlockInput` iterators with imap/fmap, block `Op`s and
accumulators, `BlockOutput` savers with omap). `KernelGraphBuilder` / `ThreadblockGraphBuilder`
(from `jgraph.superopt.new_kernel_graph` / `new_threadblock_graph`) build them by hand; their
tensors are `DTensor` (device) and `STensor` (block); bad shapes raise `ShapeError`.
"""

from jgraph.superopt._builder import DTensor as DTensor
from jgraph.superopt._builder import KernelGraphBuilder as KernelGraphBuilder
from jgraph.superopt._builder import STensor as STensor
from jgraph.superopt._builder import ThreadblockGraphBuilder as ThreadblockGraphBuilder
from jgraph.superopt._ir import BlockGraph as BlockGraph
from jgraph.superopt._ir import BlockInput as BlockInput
from jgraph.superopt._ir import BlockOutput as BlockOutput
from jgraph.superopt._ir import KernelGraph as KernelGraph
from jgraph.superopt._ir import KernelOp as KernelOp
from jgraph.superopt._ir import Op as Op
from jgraph.superopt._ir import TensorSpec as TensorSpec
from jgraph.superopt._ops import ShapeError as ShapeError

__all__ = [
    "BlockGraph",
    "BlockInput",
    "BlockOutput",
    "DTensor",
    "KernelGraph",
    "KernelGraphBuilder",
    "KernelOp",
    "Op",
    "STensor",
    "ShapeError",
    "TensorSpec",
    "ThreadblockGraphBuilder",
]
