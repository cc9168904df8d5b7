"""The model graph the planners partition: a DAG of costed operators.

A `Node` is one layer or operator. Its costs are per sample (FLOPs, bytes moved,
activation bytes kept for the backward pass, output bytes sent to consumers)
plus per-call constants (weight bytes read, kernel count), so the time of a
micro-batch follows from the device model; a measured profile (``measured``)
replaces the roofline estimate. `ModelGraph` validates the DAG when built:
unknown inputs, cycles and disconnected parts raise `ConfigError` naming the
offending nodes.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from jgraph.core import ConfigError, check_int, check_number

__all__ = ["ModelGraph", "Node"]


_COST_FIELDS = (
    "flops",
    "bwd_flops",
    "io_bytes",
    "weight_bytes",
    "param_bytes",
    "activation_bytes",
    "output_bytes",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Node:
    """One operator of a model graph, with per-sample costs.

    Attributes:
        name: unique name in the graph.
        inputs: names of the nodes whose outputs this node consumes.
        kind: a label (``"transformer_layer"``, ``"ff"``, ``"concat"``, ``"junction"``, ...).
        flops: forward FLOPs per sample.
        bwd_flops: backward FLOPs per sample (about 2x forward for dense layers).
        io_bytes: device-memory bytes read and written per sample by the forward
            (activations in and out); the backward moves twice as many.
        weight_bytes: bytes read once per call whatever the micro-batch (dense
            weights; 0 for gathers such as embedding bags).
        param_bytes: bytes of trainable parameters held by the node.
        activation_bytes: bytes per sample kept from forward for backward.
        output_bytes: bytes per sample of the output sent to consumers.
        kernels: kernels launched by one forward call (backward: twice as many).
        measured: ``((micro_batch, fwd_s, bwd_s), ...)`` timings from a profile;
            when present they replace the roofline estimate.
    """

    name: str
    inputs: tuple[str, ...] = ()
    kind: str = "op"
    flops: float = 0.0
    bwd_flops: float = 0.0
    io_bytes: float = 0.0
    weight_bytes: float = 0.0
    param_bytes: float = 0.0
    activation_bytes: float = 0.0
    output_bytes: float = 0.0
    kernels: int = 1
    measured: tuple[tuple[int, float, float], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("Node.name", self.name, "must be a non-empty string", "name the node")
        if not isinstance(self.inputs, tuple):
            raise ConfigError(
                f"Node({self.name}).inputs", self.inputs, "must be a tuple", "pass a tuple of names"
            )
        # Fast path: graphs reach 10^5 nodes, and plain finite non-negative numbers
        # (NaN and inf fail the comparison) pass in one expression; anything else
        # goes through `check_number` for its message.
        costs = [getattr(self, field) for field in _COST_FIELDS]
        if not all(type(v) in (int, float) and 0 <= v < math.inf for v in costs):
            for field in _COST_FIELDS:
                check_number(f"Node({self.name}).{field}", getattr(self, field), minimum=0)
        if type(self.kernels) is not int or self.kernels < 0:
            check_int(f"Node({self.name}).kernels", self.kernels, minimum=0)
        for row in self.measured:
            if len(row) != 3 or row[0] < 1 or row[1] < 0 or row[2] < 0:
                raise ConfigError(
                    f"Node({self.name}).measured",
                    row,
                    "rows must be (micro_batch >= 1, fwd_s >= 0, bwd_s >= 0)",
                    "pass ((1, 1e-3, 2e-3), ...)",
                )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["inputs"] = list(self.inputs)
        d["measured"] = [list(r) for r in self.measured]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Node:
        """A node from `to_dict`'s layout (as in a graph JSON file), every field checked."""
        where = f"Node({d.get('name', '?')})" if isinstance(d, Mapping) else "Node"
        if not isinstance(d, Mapping):
            raise ConfigError(where, d, "is not a JSON object", "write each node as {...}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ConfigError(
                where, unknown, "are not Node fields", f"use only {', '.join(sorted(fields))}"
            )
        d = dict(d)
        inputs = d.get("inputs", ())
        # A string is iterable: "ab" must not read as the inputs ("a", "b").
        if not isinstance(inputs, list | tuple) or not all(isinstance(i, str) for i in inputs):
            raise ConfigError(
                f"{where}.inputs", inputs, "must be a list of node names", 'pass e.g. ["embed"]'
            )
        d["inputs"] = tuple(inputs)
        rows = d.get("measured", ())
        try:
            d["measured"] = tuple((int(b), float(f), float(g)) for b, f, g in rows)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}.measured", rows, "must be [[micro_batch, fwd_s, bwd_s], ...]",
                "pass e.g. [[1, 0.001, 0.002]]",
            ) from None  # fmt: skip
        return cls(**d)

    def signature(self) -> tuple[Any, ...]:
        """Every cost field except the name and inputs: equal signatures cost the same."""
        return (
            self.kind,
            self.flops,
            self.bwd_flops,
            self.io_bytes,
            self.weight_bytes,
            self.param_bytes,
            self.activation_bytes,
            self.output_bytes,
            self.kernels,
            self.measured,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelGraph:
    """A validated DAG of `Node`s (connected, acyclic, every input defined).

    Attributes:
        name: the model's name, shown in reports.
        nodes: the nodes; order is free (topological order is computed).

    Example:
        >>> g = ModelGraph(name="two", nodes=(Node(name="a"), Node(name="b", inputs=("a",))))
        >>> g.topological_order
        ('a', 'b')
    """

    name: str
    nodes: tuple[Node, ...]

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ConfigError("ModelGraph.nodes", (), "is empty", "add at least one Node")
        # Every check here is linear in nodes + edges (sets and dicts), so graphs of
        # hundreds of thousands of nodes validate in seconds.
        known: set[str] = set()
        repeated: set[str] = set()
        for n in self.nodes:
            (repeated if n.name in known else known).add(n.name)
        if repeated:
            dupes = sorted(repeated)
            many = f" ({len(dupes)} names repeat; the first 10 shown)" if len(dupes) > 10 else ""
            raise ConfigError(
                "ModelGraph.nodes",
                dupes[:10],
                "node names must be unique" + many,
                "rename the duplicates",
            )
        for n in self.nodes:
            missing = [i for i in n.inputs if i not in known]
            if missing:
                raise ConfigError(
                    f"ModelGraph({self.name}).nodes[{n.name}].inputs",
                    missing,
                    "names nodes that are not in the graph",
                    "add those nodes or fix the input names",
                )
            if len(set(n.inputs)) != len(n.inputs) or n.name in n.inputs:
                raise ConfigError(
                    f"ModelGraph({self.name}).nodes[{n.name}].inputs",
                    n.inputs,
                    "repeats an input or names the node itself",
                    "list each producer once",
                )
        order = _kahn(self.nodes)
        _check_acyclic(self.name, self.nodes, order)
        _check_connected(self.name, self.nodes)
        # The acyclicity check already computed the order: keep it for the property.
        self.__dict__["topological_order"] = order

    @functools.cached_property
    def by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    @functools.cached_property
    def successors(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n.name)
        return {k: tuple(v) for k, v in out.items()}

    @functools.cached_property
    def topological_order(self) -> tuple[str, ...]:
        """Kahn's order; ties keep declaration order, so branches stay contiguous-ish."""
        return _kahn(self.nodes)

    def edges(self) -> tuple[tuple[str, str], ...]:
        return tuple((i, n.name) for n in self.nodes for i in n.inputs)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "nodes": [n.to_dict() for n in self.nodes]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelGraph:
        """A graph from `to_dict`'s layout: ``{"name": ..., "nodes": [{...}, ...]}``."""
        if not isinstance(d, Mapping) or not isinstance(d.get("name"), str):
            raise ConfigError(
                "ModelGraph.name", d.get("name") if isinstance(d, Mapping) else d,
                "is missing or not a string", 'write {"name": "my_model", "nodes": [...]}',
            )  # fmt: skip
        nodes = d.get("nodes")
        if not isinstance(nodes, list | tuple):
            raise ConfigError(
                f"ModelGraph({d['name']}).nodes", nodes, "must be a list of nodes",
                'write "nodes": [{"name": "a"}, {"name": "b", "inputs": ["a"]}]',
            )  # fmt: skip
        return cls(name=d["name"], nodes=tuple(Node.from_dict(n) for n in nodes))

    def to_json(self) -> str:
        """The graph as JSON text (`from_json` reads it back)."""
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> ModelGraph:
        """Reads a graph written by `to_json`, or by hand in the same layout.

        Raises:
            ConfigError: the text is not JSON, or a field is missing or invalid
                (named), or the nodes do not form a connected DAG.

        Example:
            >>> g = ModelGraph.from_json(
            ...     '{"name": "tiny", "nodes": [{"name": "a", "flops": 1e9},'
            ...     ' {"name": "b", "inputs": ["a"], "flops": 2e9}]}'
            ... )
            >>> g.topological_order, ModelGraph.from_json(g.to_json()) == g
            (('a', 'b'), True)
        """
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                "ModelGraph JSON", str(text)[:40], f"is not JSON ({exc})", "fix the file"
            ) from None
        return cls.from_dict(d)


def _kahn(nodes: Sequence[Node]) -> tuple[str, ...]:
    indeg = {n.name: len(n.inputs) for n in nodes}
    succ: dict[str, list[str]] = {n.name: [] for n in nodes}
    for n in nodes:
        for i in n.inputs:
            succ[i].append(n.name)
    # A deque: popping the front of a list is linear, which made the sort quadratic.
    ready = collections.deque(n.name for n in nodes if indeg[n.name] == 0)
    order: list[str] = []
    while ready:
        v = ready.popleft()
        order.append(v)
        for w in succ[v]:
            indeg[w] -= 1
            if indeg[w] == 0:
                ready.append(w)
    return tuple(order)


def _check_acyclic(name: str, nodes: Sequence[Node], order: tuple[str, ...]) -> None:
    """Raises naming one cycle when Kahn's ``order`` misses nodes."""
    if len(order) == len(nodes):
        return
    # Nodes Kahn could not order are on a cycle or downstream of one; walk
    # predecessors inside that set until a node repeats to name one cycle.
    ordered = set(order)
    left = {n.name: n for n in nodes if n.name not in ordered}
    start = next(iter(left))
    path, seen = [start], {start: 0}
    while True:
        nxt = next(i for i in left[path[-1]].inputs if i in left)
        if nxt in seen:
            cycle = [*path[seen[nxt] :], nxt][::-1]
            break
        seen[nxt] = len(path)
        path.append(nxt)
    raise ConfigError(
        f"ModelGraph({name})",
        " -> ".join(cycle),
        "the graph has a cycle",
        "remove one of these edges (a model graph must be a DAG)",
    )


def _check_connected(name: str, nodes: Sequence[Node]) -> None:
    parent = {n.name: n.name for n in nodes}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for n in nodes:
        for i in n.inputs:
            parent[find(i)] = find(n.name)
    groups: dict[str, list[str]] = {}
    for n in nodes:
        groups.setdefault(find(n.name), []).append(n.name)
    if len(groups) > 1:
        parts = sorted((sorted(g) for g in groups.values()), key=len)
        shown = "; ".join(
            "{" + ", ".join(p[:6]) + (", ..." if len(p) > 6 else "") + "}" for p in parts
        )
        raise ConfigError(
            f"ModelGraph({name})",
            shown,
            f"the graph is disconnected ({len(groups)} parts)",
            "connect the parts (e.g. a shared input or a final concat) or plan them separately",
        )
