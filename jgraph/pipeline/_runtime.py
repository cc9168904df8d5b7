"""`compile`: a `StagePlan` of a `ModuleGraph` as one jitted `jax.shard_map` train step.

The step runs on a ``(STAGE, DATA)`` mesh (see `_rt_layout` for how stages and
their data-parallel replicas map onto it). Inside the `shard_map`, a
`lax.scan` walks the schedule's tick table; at each tick every device runs its
stage's forward or backward (or nothing) through one `lax.switch` over
``(stage, op)`` branches, then a fixed set of `lax.ppermute`s (the colours of
the transfer multigraph) carries activations and cotangents to the stages
that need them. Idle ticks select a branch that computes nothing, so bubble
garbage never reaches the weights; weight gradients accumulate as running sums
in the packed buffers and are reduced over data-parallel replicas once, after
the loop; then each device applies the optimizer to its own stage's
parameters (one more `lax.switch`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jgraph.core import DATA, STAGE, ConfigError
from jgraph.pipeline._config import ClusterConfig
from jgraph.pipeline._module_apply import module_graph_sink
from jgraph.pipeline._plan import StagePlan
from jgraph.pipeline._plan_check import check_plan, check_plan_fits
from jgraph.pipeline._profile import ModuleGraph
from jgraph.pipeline._rt_body import make_body
from jgraph.pipeline._rt_layout import Layout, build_layout
from jgraph.pipeline._rt_pack import PackSpec, buffer_sizes, pack, pack_host, pack_spec, unpack
from jgraph.pipeline._rt_stage import StageProgram

__all__ = ["PipelineProgram", "compile"]

log = logging.getLogger(__name__)

LossFn = Callable[[Any, Any], jax.Array]


def _abstract_graph(graph: ModuleGraph) -> tuple[dict[str, Any], dict[str, Any]]:
    """Abstract per-node params and per-sample output structures (no FLOPs run)."""
    env: dict[str, Any] = {
        i.name: jax.ShapeDtypeStruct((1, *i.shape), jnp.dtype(i.dtype)) for i in graph.inputs
    }
    env2 = {i.name: jax.ShapeDtypeStruct((2, *i.shape), jnp.dtype(i.dtype)) for i in graph.inputs}
    params: dict[str, Any] = {}
    out: dict[str, Any] = {}
    order = {n.name: n for n in graph.nodes}
    for name in graph.skeleton().topological_order:
        node = order.get(name)
        if node is None:
            continue
        args = [env[u] for u in node.inputs]
        variables = jax.eval_shape(node.module.init, jax.random.key(0), *args)
        extra = sorted(set(variables) - {"params"})
        if extra:
            raise ConfigError(
                f"ModuleGraph.nodes[{name}]", extra, "has variable collections other than 'params'",
                "the pipeline runtime trains stateless modules: drop BatchNorm-style state "
                "(use LayerNorm) or keep that part outside the pipeline",
            )  # fmt: skip
        params[name] = variables
        o1 = jax.eval_shape(node.module.apply, variables, *args)
        o2 = jax.eval_shape(node.module.apply, variables, *(env2[u] for u in node.inputs))
        for a, b in zip(jax.tree.leaves(o1), jax.tree.leaves(o2), strict=True):
            if not a.shape or a.shape[0] != 1 or b.shape[0] != 2:
                raise ConfigError(
                    f"ModuleGraph.nodes[{name}]", f"output shape {a.shape}",
                    "does not keep the batch as its leading axis",
                    "make every module map [batch, ...] inputs to [batch, ...] outputs",
                )  # fmt: skip
        env[name], env2[name] = o1, o2
        out[name] = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), o1)
    return params, out


def _validate(plan: StagePlan, graph: ModuleGraph, mesh: Mesh | None) -> str:
    """Checks before any tracing; returns the sink node."""
    if not isinstance(plan, StagePlan):
        raise ConfigError("compile.plan", type(plan).__name__, "is not a StagePlan",
                          "pass plan_pipeline(...) or StagePlan.from_json(text)")  # fmt: skip
    if not isinstance(graph, ModuleGraph):
        raise ConfigError("compile.module_graph", type(graph).__name__, "is not a ModuleGraph",
                          "build a jgraph.pipeline.profiling.ModuleGraph")  # fmt: skip
    check_plan(plan)
    cluster = ClusterConfig(num_devices=plan.num_devices, memory_bytes=plan.memory_limit_bytes)
    check_plan_fits(plan, graph.skeleton(), cluster)
    sink = module_graph_sink(graph)  # exactly one node feeds the loss
    if mesh is not None:
        if mesh.size != plan.num_devices:
            raise ConfigError(
                "compile.mesh", dict(mesh.shape), f"has {mesh.size} devices, the plan needs "
                f"{plan.num_devices}", "pass a mesh of plan.num_devices devices (or mesh=None)",
            )  # fmt: skip
    elif len(jax.devices()) < plan.num_devices:
        raise ConfigError(
            "compile.mesh", None, f"JAX has {len(jax.devices())} devices, the plan needs "
            f"{plan.num_devices}", "re-plan for the devices you have, or start more "
            "(CPU: jax.config.update('jax_num_cpu_devices', N) before JAX starts)",
        )  # fmt: skip
    return sink


@dataclasses.dataclass(frozen=True, eq=False)
class PipelineProgram:
    """A compiled pipelined train step of one plan (what `compile` returns).

    Use `init` to place parameters, `step` to train, `loss_and_grads` to check
    against a single-device reference, `params` to read parameters back.
    """

    plan: StagePlan
    graph: ModuleGraph
    layout: Layout
    mesh: Mesh
    param_specs: tuple[PackSpec, ...]
    opt_specs: tuple[PackSpec, ...]
    pbuf: Mapping[str, int]
    obuf: Mapping[str, int]
    optimizer: Any
    out_struct: Mapping[str, Any]
    _fns: dict[str, Any]

    # --- placement -------------------------------------------------------------------
    def _sharding(self, spec: P) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    def _place(self, per_row: Callable[[int], dict[str, np.ndarray]], sizes: Mapping[str, int]
               ) -> dict[str, jax.Array]:  # fmt: skip
        lay = self.layout
        cache: dict[int, dict[str, np.ndarray]] = {}

        def row_bufs(r: int) -> dict[str, np.ndarray]:
            if r not in cache:
                cache[r] = per_row(r)
            return cache[r]

        out: dict[str, jax.Array] = {}
        for key, n in sizes.items():
            shape = (lay.rows, lay.cols, n)

            def cb(index: Any, key: str = key) -> np.ndarray:
                # index: this shard's (rows, cols, elements) slices of the global array
                rows = range(lay.rows)[index[0]]
                blocks = [row_bufs(r)[key] for r in rows]
                ncols = len(range(lay.cols)[index[1]])
                return np.stack([np.stack([b] * ncols) for b in blocks])[..., index[2]]

            out[key] = jax.make_array_from_callback(shape, self._sharding(P(STAGE, DATA)), cb)
        return out

    def init(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Places per-node parameters (``{node: variables}``) and the optimizer state.

        Each device receives only its own stage's parameters and optimizer state,
        packed into flat per-dtype buffers padded to the largest stage.
        """
        self._check_params(params)
        lay = self.layout
        stage_params = [
            {v: params[v] for v in io.nodes} for io in lay.stages
        ]  # fmt: skip

        def prow(r: int) -> dict[str, np.ndarray]:
            s = int(lay.row_stage[r])
            if s < 0:
                return {k: np.zeros((n,), k) for k, n in self.pbuf.items()}
            return pack_host(self.param_specs[s], stage_params[s], self.pbuf)

        pbufs = self._place(prow, self.pbuf)
        return {
            "params": pbufs,
            "opt": self._opt_init()(pbufs),
            "step": jax.device_put(jnp.zeros((), jnp.int32), self._sharding(P())),
        }

    def _opt_init(self) -> Callable[[dict[str, jax.Array]], dict[str, jax.Array]]:
        """Optimizer state made on each device from its own stage's packed parameters."""
        if "opt_init" in self._fns:
            return self._fns["opt_init"]
        lay, n_st = self.layout, len(self.layout.stages)
        row_stage = jnp.asarray(lay.row_stage)

        def branch(s: int) -> Callable[[dict[str, jax.Array]], dict[str, jax.Array]]:
            def init(pb: dict[str, jax.Array]) -> dict[str, jax.Array]:
                opt = self.optimizer.init(unpack(self.param_specs[s], pb))
                return pack(self.opt_specs[s], opt, self.obuf)

            return init

        def idle(pb: dict[str, jax.Array]) -> dict[str, jax.Array]:
            return {k: jnp.zeros((n,), k) for k, n in self.obuf.items()}

        def body(pbufs: dict[str, jax.Array]) -> dict[str, jax.Array]:
            stage = row_stage[jax.lax.axis_index(STAGE)]
            local = {k: v[0, 0] for k, v in pbufs.items()}
            out = jax.lax.switch(
                jnp.where(stage >= 0, stage, n_st), [branch(s) for s in range(n_st)] + [idle], local
            )
            return {k: v[None, None] for k, v in out.items()}

        spec = P(STAGE, DATA)
        fn = jax.jit(
            jax.shard_map(
                body,
                mesh=self.mesh,
                in_specs=(dict.fromkeys(self.pbuf, spec),),
                out_specs=dict.fromkeys(self.obuf, spec),
                check_vma=False,
            )
        )
        self._fns["opt_init"] = fn
        return fn

    def _check_params(self, params: Mapping[str, Any]) -> None:
        names = {n.name for n in self.graph.nodes}
        if not isinstance(params, Mapping) or set(params) != names:
            got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
            raise ConfigError("PipelineProgram.init.params", got,
                              f"must map every node {sorted(names)} to its Flax variables",
                              "pass init_module_graph(graph, inputs, key=...)")  # fmt: skip

        def sig(tree: Any) -> Any:
            return jax.tree.map(lambda x: (tuple(x.shape), np.dtype(x.dtype)), tree)

        for s, io in enumerate(self.layout.stages):
            spec = self.param_specs[s]
            expected = sig(jax.tree.unflatten(
                spec.treedef, [jax.ShapeDtypeStruct(sh, k) for k, _, sh in spec.leaves]
            ))  # fmt: skip
            for v in io.nodes:
                if sig(params[v]) != expected[v]:
                    raise ConfigError(
                        f"PipelineProgram.init.params[{v}]", "shapes/dtypes differ",
                        "do not match the module's own init",
                        "initialise with the same module and input shapes",
                    )  # fmt: skip

    def shard_batch(self, inputs: Mapping[str, Any], targets: Any) -> tuple[Any, Any]:
        """Checks a global batch and lays it out ``[M, D, b / D, ...]`` over ``DATA``."""
        plan, lay = self.plan, self.layout
        want = {i.name: i for i in self.graph.inputs}
        if not isinstance(inputs, Mapping) or set(inputs) != set(want):
            got = sorted(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__
            raise ConfigError("PipelineProgram.step.inputs", got, f"must be a dict with keys "
                              f"{sorted(want)}", "pass one array per GraphInput")  # fmt: skip
        m, b = plan.num_microbatches, plan.micro_batch_size

        def shaped(name: str, x: Any, shape: tuple[int, ...] | None) -> Any:
            x_shape = tuple(np.shape(x))
            if (
                not x_shape
                or x_shape[0] != plan.batch_size
                or (shape is not None and x_shape[1:] != shape)
            ):
                raise ConfigError(
                    name, x_shape, f"needs shape ({plan.batch_size}, {shape or '...'})",
                    f"pass the plan's whole batch of {plan.batch_size} samples",
                )  # fmt: skip
            arr = np.asarray(x).reshape(m, lay.cols, b // lay.cols, *x_shape[1:])
            spec = P(None, DATA)
            return jax.make_array_from_callback(
                arr.shape, self._sharding(spec), lambda idx: arr[idx]
            )

        ins = {}
        for k, gi in want.items():
            x = inputs[k]
            if np.dtype(getattr(x, "dtype", np.asarray(x).dtype)) != np.dtype(gi.dtype):
                raise ConfigError(f"PipelineProgram.step.inputs[{k}]", str(np.asarray(x).dtype),
                                  f"must be {gi.dtype}", f"cast it to {gi.dtype}")  # fmt: skip
            ins[k] = shaped(f"PipelineProgram.step.inputs[{k}]", x, tuple(gi.shape))
        tg = jax.tree.map(lambda t: shaped("PipelineProgram.step.targets", t, None), targets)
        return ins, tg

    # --- running ---------------------------------------------------------------------
    def step(self, state: dict[str, Any], inputs: Mapping[str, Any], targets: Any
             ) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
        """One training step on a global batch; returns the new state and metrics.

        Metrics: ``loss`` (the batch mean) and, per mesh row, ``peak_in_flight``
        (micro-batches whose forward ran and backward did not) and
        ``peak_live_inputs`` (input slots holding data), both counted at run time.
        """
        ins, tg = self.shard_batch(inputs, targets)
        fn = self._fns.get("step") or self._build("step", ins, tg)
        state, metrics = fn(state, ins, tg, self._tables())
        return state, metrics

    def loss_and_grads(self, state: dict[str, Any], inputs: Mapping[str, Any], targets: Any
                       ) -> tuple[float, dict[str, Any]]:  # fmt: skip
        """The pipelined loss and per-node gradients (data-parallel reduced), on the host."""
        ins, tg = self.shard_batch(inputs, targets)
        fn = self._fns.get("grads") or self._build("grads", ins, tg)
        loss, grads = fn(state, ins, tg, self._tables())
        return float(loss), self._unpack_rows(grads, self.param_specs)

    def params(self, state: dict[str, Any]) -> dict[str, Any]:
        """Per-node parameters read back to the host (row 0, column 0 of each stage)."""
        return self._unpack_rows(state["params"], self.param_specs)

    def _unpack_rows(self, bufs: Mapping[str, jax.Array], specs: tuple[PackSpec, ...]
                     ) -> dict[str, Any]:  # fmt: skip
        host = {k: _to_host(v) for k, v in bufs.items()}
        out: dict[str, Any] = {}
        for s, io in enumerate(self.layout.stages):
            row = {k: v[io.first_row, 0] for k, v in host.items()}
            out.update(unpack(specs[s], row))
        return out

    def _tables(self) -> tuple[jax.Array, ...]:
        if "tables" not in self._fns:
            lay = self.layout
            arrays = (lay.op, lay.mb, lay.in_slot, lay.cot_slot, lay.send_off, lay.send_len,
                      lay.recv_kind, lay.recv_slot, lay.recv_off)  # fmt: skip
            self._fns["tables"] = tuple(
                jax.device_put(jnp.asarray(a), self._sharding(P())) for a in arrays
            )
        return self._fns["tables"]

    def lower(self, state: dict[str, Any], inputs: Mapping[str, Any], targets: Any) -> Any:
        """The lowered train step (``jax.stages.Lowered``): ``.compile().memory_analysis()``
        gives the per-device buffers, ``.as_text()`` the collectives."""
        ins, tg = self.shard_batch(inputs, targets)
        fn = self._fns.get("step") or self._build("step", ins, tg)
        return fn.lower(state, ins, tg, self._tables())

    def _build(self, what: str, ins: Any, tg: Any) -> Any:
        body = make_body(self, update=(what == "step"))
        pspec = {k: P(STAGE, DATA) for k in self.pbuf}
        ospec = {k: P(STAGE, DATA) for k in self.obuf}
        state_spec = {"params": pspec, "opt": ospec, "step": P()}
        in_specs = (
            state_spec,
            jax.tree.map(lambda _: P(None, DATA), ins),
            jax.tree.map(lambda _: P(None, DATA), tg),
            tuple(P() for _ in range(9)),
        )
        counters = P(STAGE, DATA)
        if what == "step":
            out_specs: Any = (state_spec, {"loss": P(), "peak_in_flight": counters,
                                           "peak_live_inputs": counters})  # fmt: skip
        else:
            out_specs = (P(), pspec)
        fn = jax.shard_map(body, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs,
                           check_vma=False)  # fmt: skip
        jitted = jax.jit(fn, donate_argnums=(0,) if what == "step" else ())
        self._fns[what] = jitted
        return jitted


def _to_host(x: jax.Array) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def compile(
    plan: StagePlan,
    module_graph: ModuleGraph,
    loss_fn: LossFn,
    optimizer: Any,
    *,
    mesh: Mesh | None = None,
) -> PipelineProgram:
    """`jgraph.pipeline.compile` (documented there; this module loads JAX)."""

    sink = _validate(plan, module_graph, mesh)
    abstract_params, out_struct = _abstract_graph(module_graph)
    gin = frozenset(i.name for i in module_graph.inputs)
    node_inputs = {n.name: tuple(n.inputs) for n in module_graph.nodes}
    elems = {
        v: sum(int(np.prod(x.shape, dtype=np.int64)) for x in jax.tree.leaves(s))
        for v, s in out_struct.items()
    }
    layout = build_layout(plan, node_inputs=node_inputs, elems=elems, sink=sink, graph_inputs=gin)
    crossing = [x.dtype for io in layout.stages for u in io.ext_out
                for x in jax.tree.leaves(out_struct[u])]  # fmt: skip
    for dt in crossing:
        if not jnp.issubdtype(dt, jnp.floating):
            raise ConfigError(
                "ModuleGraph", str(dt), "a tensor crossing stages is not floating point",
                "keep integer tensors inside one stage (re-plan) or cast them",
            )  # fmt: skip
    wire_dtype = jnp.result_type(*crossing) if crossing else jnp.float32
    try:
        opt_abstract = [
            jax.eval_shape(optimizer.init, {v: abstract_params[v] for v in io.nodes})
            for io in layout.stages
        ]
    except Exception as exc:
        raise ConfigError("compile.optimizer", type(optimizer).__name__,
                          f"cannot init on a stage's parameters ({exc})",
                          "pass an optax.GradientTransformation") from exc  # fmt: skip
    param_specs = tuple(
        pack_spec({v: abstract_params[v] for v in io.nodes}) for io in layout.stages
    )
    opt_specs = tuple(pack_spec(o) for o in opt_abstract)
    if mesh is None:
        devices = np.asarray(jax.devices()[: plan.num_devices])
    else:
        devices = np.asarray(mesh.devices).reshape(-1)
    mesh2 = Mesh(devices.reshape(layout.rows, layout.cols), (STAGE, DATA))
    total = len(module_graph.inputs) + len(module_graph.nodes)
    batch = plan.batch_size
    stage_programs = tuple(
        StageProgram(
            io=io, modules={n.name: n.module for n in module_graph.nodes},
            node_inputs=node_inputs, out_struct=out_struct, param_spec=param_specs[s], sink=sink,
            loss_fn=loss_fn, loss_weight=io.rows / batch,
        )
        for s, io in enumerate(layout.stages)
    )  # fmt: skip
    log.info(
        "pipeline runtime: %d stages on a %dx%d (stage x data) mesh, %d ticks, %d ppermutes/tick, "
        "%d nodes", len(layout.stages), layout.rows, layout.cols, layout.num_ticks,
        layout.permutes_per_tick, total,
    )  # fmt: skip
    return PipelineProgram(
        plan=plan, graph=module_graph, layout=layout, mesh=mesh2, param_specs=param_specs,
        opt_specs=opt_specs, pbuf=buffer_sizes(param_specs), obuf=buffer_sizes(opt_specs),
        optimizer=optimizer, out_struct=out_struct,
        _fns={"wire_dtype": wire_dtype, "stage_programs": stage_programs},
    )  # fmt: skip
