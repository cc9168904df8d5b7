"""Lowering verified μGraphs to kernels: Pallas routes, launch knobs, the CUDA check.

`lower` turns a μGraph into a jitted JAX function whose graph-defined kernels
are ``pl.pallas_call``s (Triton or Mosaic GPU on NVIDIA GPUs, the interpreter
on CPU); `lowering_problem` says whether it lowers for CUDA, on a machine with
no GPU.
"""

from jgraph.superopt._lower import ROUTES as ROUTES
from jgraph.superopt._lower import KernelKnobs as KernelKnobs
from jgraph.superopt._lower import LoweredGraph as LoweredGraph
from jgraph.superopt._lower import Route as Route
from jgraph.superopt._lower import export_cuda as export_cuda
from jgraph.superopt._lower import lower as lower
from jgraph.superopt._lower import lowering_problem as lowering_problem

__all__ = [
    "ROUTES",
    "KernelKnobs",
    "LoweredGraph",
    "Route",
    "export_cuda",
    "lower",
    "lowering_problem",
]
