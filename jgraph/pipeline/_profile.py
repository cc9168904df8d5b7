"""A user's model as a DAG of Flax modules, costed by profiling on the current backend.

`ModuleGraph` is the object a pipeline runtime will execute: named Flax Linen
modules and, for each, the names of the nodes (or graph inputs) it consumes.
`profile_module_graph` turns it into a costed `ModelGraph`:

* XLA's cost analysis of the compiled forward gives FLOPs and bytes accessed;
* the forward and the backward (the ``jax.vjp`` pullback alone, from the
  residuals a jitted forward kept, as a pipeline stage runs it) are timed at
  several micro-batch sizes (medians after warm-up) — these timings replace
  the roofline model;
* the residuals ``jax.vjp`` keeps give the activation bytes per sample.

Results are cached on disk (one JSON per node, keyed by the module, its input
shapes, the micro-batch sizes, the backend, the device kind and the jax
version) and written atomically, so re-planning does not re-profile.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jgraph.core import ConfigError, atomic_write_json, check_int, time_call
from jgraph.pipeline._graph import ModelGraph, Node

__all__ = ["GraphInput", "ModuleGraph", "ModuleNode", "profile_module_graph"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GraphInput:
    """A graph input: per-sample shape (no batch axis) and dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModuleNode:
    """A Flax Linen module applied to the outputs of ``inputs`` (positional args, in order)."""

    name: str
    module: Any  # flax.linen.Module; typed loosely so importing jgraph.pipeline stays light
    inputs: tuple[str, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModuleGraph:
    """A model as a DAG of Flax modules (what a pipeline runtime executes).

    Attributes:
        name: the model's name.
        inputs: the graph inputs (batch axis excluded from their shapes).
        nodes: the modules; each consumes graph inputs and/or other nodes.
    """

    name: str
    inputs: tuple[GraphInput, ...]
    nodes: tuple[ModuleNode, ...]

    def __post_init__(self) -> None:
        # Validates names, cycles and connectivity through ModelGraph's checks.
        self.skeleton()

    def skeleton(self) -> ModelGraph:
        """The bare DAG (no costs), validated."""
        nodes = [Node(name=i.name, kind="input") for i in self.inputs]
        nodes += [Node(name=n.name, inputs=tuple(n.inputs), kind="flax") for n in self.nodes]
        return ModelGraph(name=self.name, nodes=tuple(nodes))


def _default_cache_dir() -> Path:
    root = os.environ.get("JGRAPH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jgraph"
    )
    return Path(root) / "pipeline-profiles"


def _cost_analysis(compiled: Any) -> dict[str, float]:
    ca = compiled.cost_analysis()
    if isinstance(ca, list | tuple):  # older jax returns one dict per program
        ca = ca[0] if ca else {}
    return {k: float(v) for k, v in (ca or {}).items() if isinstance(v, int | float)}


def _profile_node(
    node: ModuleNode, in_specs: list[tuple[tuple[int, ...], str]], micro_batches: Sequence[int],
    repeats: int, seed: int,
) -> dict[str, Any]:  # fmt: skip
    import jax
    import jax.numpy as jnp
    import numpy as np

    def inputs(b: int) -> list[Any]:
        return [jnp.ones((b, *shape), dtype=dtype) for shape, dtype in in_specs]

    params = node.module.init(jax.random.key(seed), *inputs(1))
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))

    def fwd(p: Any, *xs: Any) -> Any:
        return node.module.apply(p, *xs)

    # The backward is the pullback alone, fed the residuals a jitted forward kept
    # (as a pipeline stage runs it from stashed activations); timing a jitted
    # ``vjp(...)(ct)`` would count most of the forward a second time.
    fwd_j = jax.jit(fwd)
    vjp_j = jax.jit(lambda p, *xs: jax.vjp(fwd, p, *xs)[1])
    pull_j = jax.jit(lambda pull, ct: pull(ct))
    out1 = jax.eval_shape(fwd, params, *inputs(1))
    if not isinstance(out1, jax.ShapeDtypeStruct):
        raise ConfigError(
            f"ModuleGraph.nodes[{node.name}]",
            type(out1).__name__,
            "must return a single array",
            "return one array (concatenate multiple outputs)",
        )
    out_bytes = int(np.prod(out1.shape[1:])) * out1.dtype.itemsize

    def residual_bytes(b: int) -> int:
        _, pull = jax.vjp(fwd, params, *inputs(b))
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(pull))

    act = max(0, residual_bytes(2) - residual_bytes(1))
    big = max(micro_batches)
    xs_big = inputs(big)
    fca = _cost_analysis(fwd_j.lower(params, *xs_big).compile())
    ct_big = jnp.ones((big, *out1.shape[1:]), out1.dtype)
    bca = _cost_analysis(pull_j.lower(vjp_j(params, *xs_big), ct_big).compile())
    measured = []
    for b in micro_batches:
        xs = inputs(b)
        ct = jnp.ones((b, *out1.shape[1:]), out1.dtype)
        tf = time_call(fwd_j, params, *xs, warmup=1, repeats=repeats).median
        tb = time_call(pull_j, vjp_j(params, *xs), ct, warmup=1, repeats=repeats).median
        measured.append([b, tf, tb])
    return {
        "flops": fca.get("flops", 0.0) / big,
        "bwd_flops": bca.get("flops", 0.0) / big,
        "io_bytes": max(0.0, fca.get("bytes accessed", 0.0) - param_bytes) / big,
        "param_bytes": float(param_bytes),
        "activation_bytes": float(act),
        "output_bytes": float(out_bytes),
        "measured": measured,
        "out_shape": list(out1.shape[1:]),
        "out_dtype": str(out1.dtype),
    }


def profile_module_graph(
    graph: ModuleGraph,
    *,
    micro_batches: Sequence[int] = (1, 2, 4, 8),
    repeats: int = 3,
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> ModelGraph:
    """Costs a `ModuleGraph` by profiling every node on the current JAX backend.

    Args:
        graph: the Flax module DAG.
        micro_batches: per-device micro-batch sizes to time (the planner
            interpolates between them and extrapolates linearly beyond).
        repeats: timed calls per size (the median is kept).
        cache_dir: where profiles are cached; default ``$JGRAPH_CACHE_DIR`` or
            ``~/.cache/jgraph``, sub-folder ``pipeline-profiles``.
        seed: parameter initialisation seed (values do not change costs).

    Returns:
        A `ModelGraph` whose nodes carry measured times (plus FLOPs, bytes and
        activation sizes); graph inputs become zero-cost ``input`` nodes.

    Example:
        >>> import tempfile, flax.linen as nn
        >>> mg = ModuleGraph(name="mlp", inputs=(GraphInput(name="x", shape=(8,)),),
        ...     nodes=(ModuleNode(name="fc", module=nn.Dense(4), inputs=("x",)),))
        >>> g = profile_module_graph(mg, micro_batches=(1, 2), repeats=1, cache_dir=tempfile.mkdtemp())
        >>> g.by_name["fc"].param_bytes, len(g.by_name["fc"].measured)
        (144.0, 2)
    """
    import jax

    from jgraph._version import __version__

    check_int("profile_module_graph.repeats", repeats, minimum=1)
    if not micro_batches or any(
        isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in micro_batches
    ):
        raise ConfigError(
            "profile_module_graph.micro_batches",
            micro_batches,
            "must be ints >= 1",
            "pass e.g. (1, 2, 4, 8)",
        )
    cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    skeleton = graph.skeleton()
    specs: dict[str, tuple[tuple[int, ...], str]] = {
        i.name: (tuple(i.shape), i.dtype) for i in graph.inputs
    }
    modules = {n.name: n for n in graph.nodes}
    device = jax.devices()[0]
    out_nodes: list[Node] = []
    for name in skeleton.topological_order:
        if name not in modules:
            shape, dtype = specs[name]
            itemsize = jax.numpy.dtype(dtype).itemsize
            n_el = 1
            for s in shape:
                n_el *= s
            out_nodes.append(
                Node(name=name, kind="input", output_bytes=float(n_el * itemsize), kernels=0)
            )
            continue
        node = modules[name]
        in_specs = [specs[i] for i in node.inputs]
        key_src = json.dumps(
            {
                "module": repr(node.module),
                "type": f"{type(node.module).__module__}.{type(node.module).__qualname__}",
                "inputs": in_specs,
                "micro_batches": list(micro_batches),
                "repeats": repeats,
                "backend": jax.default_backend(),
                "device_kind": device.device_kind,
                "jax": jax.__version__,
                "jgraph": __version__,
                "backward": "pullback only",  # earlier entries timed forward + backward
            },
            sort_keys=True,
            default=str,
        )
        path = cache / f"{hashlib.sha256(key_src.encode()).hexdigest()[:24]}.json"
        record = None
        if path.exists():
            try:
                record = json.loads(path.read_text())
                log.info("profile cache hit for %s (%s)", name, path)
            except (OSError, json.JSONDecodeError):
                record = None  # a corrupt entry is re-profiled and overwritten
        if record is None:
            log.info("profiling %s on %s", name, device.device_kind)
            record = _profile_node(node, in_specs, micro_batches, repeats, seed)
            atomic_write_json(path, record)
        specs[name] = (tuple(record["out_shape"]), record["out_dtype"])
        out_nodes.append(
            Node(
                name=name,
                inputs=tuple(node.inputs),
                kind="flax",
                flops=record["flops"],
                bwd_flops=record["bwd_flops"],
                io_bytes=record["io_bytes"],
                weight_bytes=record["param_bytes"],
                param_bytes=record["param_bytes"],
                activation_bytes=record["activation_bytes"],
                output_bytes=record["output_bytes"],
                measured=tuple((int(b), float(f), float(g)) for b, f, g in record["measured"]),
            )
        )
    return ModelGraph(name=graph.name, nodes=tuple(out_nodes))
