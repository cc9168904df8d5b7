"""Lowering verified μGraphs to kernels: Pallas routes, launch knobs, the CUDA check, selection.

`lower` turns a μGraph into a jitted JAX function whose graph-defined kernels
are ``pl.pallas_call``s (Triton or Mosaic GPU on NVIDIA GPUs, the interpreter
on CPU); `lowering_problem` (and `export_cuda`) say whether it lowers for CUDA,
on a machine with no GPU; `select` picks the candidate and `KernelKnobs` to run by timing the
model's top-k on the GPU (a `Selection` with every `Measurement`).
"""

from jgraph.superopt._lower import ROUTES as ROUTES
from jgraph.superopt._lower import KernelKnobs as KernelKnobs
from jgraph.superopt._lower import LoweredGraph as LoweredGraph
from jgraph.superopt._lower import Route as Route
from jgraph.superopt._lower import export_cuda as export_cuda
from jgraph.superopt._lower import lower as lower
from jgraph.superopt._lower import lowering_problem as lowering_problem
from jgraph.superopt._select import DEFAULT_KNOB_GRID as DEFAULT_KNOB_GRID
from jgraph.superopt._select import select as select
from jgraph.superopt._selection import Measurement as Measurement
from jgraph.superopt._selection import Selection as Selection
from jgraph.superopt._selection import kendall_tau as kendall_tau

__all__ = [
    "DEFAULT_KNOB_GRID",
    "ROUTES",
    "KernelKnobs",
    "LoweredGraph",
    "Measurement",
    "Route",
    "Selection",
    "export_cuda",
    "kendall_tau",
    "lower",
    "lowering_problem",
    "select",
]
