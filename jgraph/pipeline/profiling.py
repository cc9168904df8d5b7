"""A user's model as a DAG of Flax modules, costed by profiling on the current backend.

`ModuleGraph` names Flax Linen modules (`ModuleNode`) and what each consumes (other nodes or
`GraphInput`s); `profile_module_graph` compiles, times and measures each node (forward,
backward, residual bytes; cached on disk) and returns the costed `ModelGraph` that
`jgraph.pipeline.plan_pipeline` partitions. `init_module_graph` and `apply_module_graph`
are the single-device reference (initialise every node, run the graph to its sink,
`module_graph_sink`) that a pipeline runtime is checked against.

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
"""

from jgraph.pipeline._module_apply import apply_module_graph as apply_module_graph
from jgraph.pipeline._module_apply import init_module_graph as init_module_graph
from jgraph.pipeline._module_apply import module_graph_sink as module_graph_sink
from jgraph.pipeline._profile import GraphInput as GraphInput
from jgraph.pipeline._profile import ModuleGraph as ModuleGraph
from jgraph.pipeline._profile import ModuleNode as ModuleNode
from jgraph.pipeline._profile import profile_module_graph as profile_module_graph

__all__ = [
    "GraphInput",
    "ModuleGraph",
    "ModuleNode",
    "apply_module_graph",
    "init_module_graph",
    "module_graph_sink",
    "profile_module_graph",
]
