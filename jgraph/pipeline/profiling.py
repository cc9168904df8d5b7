"""A user's model as a DAG of Flax modules, costed by profiling on the current backend.

`ModuleGraph` names Flax Linen modules (`ModuleNode`) and what each consumes (other nodes or
`GraphInput`s); `profile_module_graph` compiles, times and measures each node (forward,
backward, residual bytes; cached on disk) and returns the costed `ModelGraph` that
`jgraph.pipeline.plan_pipeline` partitions.

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

from jgraph.pipeline._profile import GraphInput as GraphInput
from jgraph.pipeline._profile import ModuleGraph as ModuleGraph
from jgraph.pipeline._profile import ModuleNode as ModuleNode
from jgraph.pipeline._profile import profile_module_graph as profile_module_graph

__all__ = ["GraphInput", "ModuleGraph", "ModuleNode", "profile_module_graph"]
