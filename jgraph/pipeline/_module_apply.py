"""The single-device reference for a `ModuleGraph`: initialise every node, run the graph.

`init_module_graph` and `apply_module_graph` are what a pipeline runtime's
results are compared with, so they stay plain: nodes run one after the other in
topological order, each on its producers' outputs. The graph inputs and every
node's output carry a leading batch axis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jgraph.core import ConfigError
from jgraph.pipeline._profile import ModuleGraph

__all__ = ["apply_module_graph", "init_module_graph", "module_graph_sink"]


def module_graph_sink(graph: ModuleGraph) -> str:
    """The name of the graph's only sink (the node nothing consumes).

    Raises:
        ConfigError: if the graph has several sinks (or its only sink is a graph input).
    """
    used = {i for n in graph.nodes for i in n.inputs}
    sinks = [n.name for n in graph.nodes if n.name not in used]
    if len(sinks) != 1:
        raise ConfigError(
            f"ModuleGraph({graph.name}).nodes",
            sinks,
            "must have exactly one sink (a node no other node consumes)",
            "join the outputs in one final node (e.g. a head that concatenates them)",
        )
    return sinks[0]


def _check_inputs(graph: ModuleGraph, inputs: Mapping[str, Any]) -> None:
    want = [i.name for i in graph.inputs]
    if sorted(inputs) != sorted(want):
        raise ConfigError(
            f"ModuleGraph({graph.name}) inputs",
            sorted(inputs),
            f"must name exactly the graph inputs {want}",
            "pass one [batch, *shape] array per GraphInput, keyed by its name",
        )


def init_module_graph(
    graph: ModuleGraph, sample_inputs: Mapping[str, Any], *, key: Any
) -> dict[str, Any]:
    """Initialises every node's Flax variables by running the graph once.

    Nodes run in topological order on ``sample_inputs`` (a small batch); node
    ``i`` (its index in ``graph.nodes``) is initialised with
    ``jax.random.fold_in(key, i)``, so a node's variables do not depend on the
    order of the others.

    Args:
        graph: the Flax module DAG.
        sample_inputs: one ``[batch, *shape]`` array per `GraphInput`, by name.
        key: a JAX PRNG key.

    Returns:
        ``{node_name: variables}`` (each ``variables`` is what ``module.init`` returned;
        ``{}`` for a node without parameters).

    Raises:
        ConfigError: if the inputs do not match the graph, a node makes a
            collection other than ``"params"`` (e.g. ``batch_stats``), or a node
            does not return a single array.
    """
    import jax

    _check_inputs(graph, sample_inputs)
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    modules = {n.name: n for n in graph.nodes}
    values = dict(sample_inputs)
    variables: dict[str, Any] = {}
    for name in graph.skeleton().topological_order:
        if name not in modules:
            continue
        node = modules[name]
        args = [values[i] for i in node.inputs]
        v = node.module.init(jax.random.fold_in(key, index[name]), *args)
        extra = sorted(set(v) - {"params"})
        if extra:
            raise ConfigError(
                f"ModuleGraph({graph.name}).nodes[{name}]",
                extra,
                "makes collections other than 'params' (mutable state is not supported)",
                "use a stateless layer (e.g. LayerNorm instead of BatchNorm)",
            )
        out = node.module.apply(v, *args)
        if not isinstance(out, jax.Array):
            raise ConfigError(
                f"ModuleGraph({graph.name}).nodes[{name}]",
                type(out).__name__,
                "must return a single array",
                "return one array (concatenate multiple outputs)",
            )
        variables[name] = v
        values[name] = out
    return variables


def apply_module_graph(
    graph: ModuleGraph, params: Mapping[str, Any], inputs: Mapping[str, Any]
) -> Any:
    """Runs the graph on one device and returns its sink's output.

    Args:
        graph: the Flax module DAG.
        params: ``{node_name: variables}``, as `init_module_graph` returns.
        inputs: one ``[batch, *shape]`` array per `GraphInput`, by name.

    Returns:
        The sink node's output, ``[batch, ...]``.

    Example:
        >>> import jax, jax.numpy as jnp, flax.linen as nn
        >>> from jgraph.pipeline.profiling import GraphInput, ModuleGraph, ModuleNode
        >>> mg = ModuleGraph(name="mlp", inputs=(GraphInput(name="x", shape=(3,)),),
        ...     nodes=(ModuleNode(name="fc", module=nn.Dense(2), inputs=("x",)),))
        >>> x = {"x": jnp.ones((5, 3))}
        >>> p = init_module_graph(mg, x, key=jax.random.key(0))
        >>> apply_module_graph(mg, p, x).shape
        (5, 2)
    """
    _check_inputs(graph, inputs)
    sink = module_graph_sink(graph)
    modules = {n.name: n for n in graph.nodes}
    values = dict(inputs)
    for name in graph.skeleton().topological_order:
        if name in modules:
            node = modules[name]
            values[name] = node.module.apply(params[name], *[values[i] for i in node.inputs])
    return values[sink]
