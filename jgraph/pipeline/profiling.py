"""Measured costs: profile a DAG of Flax modules, or apply per-micro-batch efficiency curves.

`ModuleGraph` names Flax Linen modules (`ModuleNode`) and what each consumes (other nodes or
`GraphInput`s); `profile_module_graph` compiles, times and measures each node (forward,
backward, residual bytes; cached on disk) and returns the costed `ModelGraph` that
`jgraph.pipeline.plan_pipeline` partitions. `init_module_graph` and `apply_module_graph`
are the single-device reference (initialise every node, run the graph to its sink,
`module_graph_sink`) that a pipeline runtime is checked against.

A `CostProfile` (JSON, see `CostProfile.load`) holds `EfficiencyCurve`s: seconds per sample
vs per-device micro-batch, per node kind or per node name, with the device, jax version and
date they were measured on. `apply_profile` puts them on a graph's nodes (scaled by FLOPs to
other sizes), and the cost model then uses them instead of the roofline.
`measured_shape_profile` is a DERIVED profile (not a measurement): the V100 roofline's
scale with the micro-batch shape of one quoted H200 measurement of a Transformer layer.
`scripts/gpu/profile_pipeline.py` measures the benchmark blocks on a GPU.

Example:
    >>> import flax.linen as nn
    >>> from jgraph.pipeline.profiling import GraphInput, ModuleGraph, ModuleNode
    >>> mg = ModuleGraph(
    ...     name="tiny",
    ...     inputs=(GraphInput(name="x", shape=(8,)),),
    ...     nodes=(ModuleNode(name="fc", module=nn.Dense(4), inputs=("x",)),),
    ... )
    >>> [n.name for n in mg.skeleton().nodes]
    ['x', 'fc']
    >>> from jgraph.pipeline.models import mmt
    >>> from jgraph.pipeline.profiling import apply_profile, measured_shape_profile
    >>> g = apply_profile(mmt(branches=1, layers=2), measured_shape_profile())
    >>> sum(bool(n.measured) for n in g.nodes)  # the two Transformer layers
    2
"""

from jgraph.pipeline._curve import PROFILE_FORMAT as PROFILE_FORMAT
from jgraph.pipeline._curve import CostProfile as CostProfile
from jgraph.pipeline._curve import EfficiencyCurve as EfficiencyCurve
from jgraph.pipeline._curve import apply_profile as apply_profile
from jgraph.pipeline._measured_shape import MEASURED_SHAPE_LABEL as MEASURED_SHAPE_LABEL
from jgraph.pipeline._measured_shape import measured_shape_profile as measured_shape_profile
from jgraph.pipeline._module_apply import apply_module_graph as apply_module_graph
from jgraph.pipeline._module_apply import init_module_graph as init_module_graph
from jgraph.pipeline._module_apply import module_graph_sink as module_graph_sink
from jgraph.pipeline._profile import GraphInput as GraphInput
from jgraph.pipeline._profile import ModuleGraph as ModuleGraph
from jgraph.pipeline._profile import ModuleNode as ModuleNode
from jgraph.pipeline._profile import profile_module_graph as profile_module_graph

__all__ = [
    "MEASURED_SHAPE_LABEL",
    "PROFILE_FORMAT",
    "CostProfile",
    "EfficiencyCurve",
    "GraphInput",
    "ModuleGraph",
    "ModuleNode",
    "apply_module_graph",
    "apply_profile",
    "init_module_graph",
    "measured_shape_profile",
    "module_graph_sink",
    "profile_module_graph",
]
