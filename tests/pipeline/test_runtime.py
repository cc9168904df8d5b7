"""The pipeline runtime against the single-device reference (8 fake CPU devices).

Every case compares the pipelined loss and per-node gradients with `jax.grad`
of the same modules on one device, so a mis-routed activation, a lost
cotangent, a gradient counted twice or a bubble tick that touches the weights
fails. Inputs are rank coded (each sample carries its index), so a micro-batch
delivered to the wrong stage or replica is a plain mismatch, not a near miss.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jgraph.core import ConfigError
from jgraph.pipeline import ClusterConfig, CostModel, PlannerConfig, StagePlan, compile
from jgraph.pipeline.planners import assemble_plan
from jgraph.pipeline.profiling import GraphInput, ModuleGraph, ModuleNode
from jgraph.testing import assert_no_recompile, assert_trees_close

N_DEV = 8


class Block(nn.Module):
    """Dense + tanh over the concatenation of its inputs (tuples are flattened)."""

    width: int

    @nn.compact
    def __call__(self, *xs: jax.Array) -> jax.Array:
        flat = [x for t in xs for x in (t if isinstance(t, tuple) else (t,))]
        x = jnp.concatenate(flat, -1) if len(flat) > 1 else flat[0]
        return jnp.tanh(nn.Dense(self.width)(x))


class Split(nn.Module):
    """A multi-output node: returns two tensors of different widths."""

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = nn.Dense(9)(x)
        return jnp.tanh(h[:, :4]), jnp.sin(h[:, 4:])


def fan_graph() -> ModuleGraph:
    """x -> a -> {b1, b2(+x skip)} -> c(+a skip) -> head; s splits into two outputs."""
    return ModuleGraph(
        name="fan",
        inputs=(GraphInput(name="x", shape=(6,)), GraphInput(name="y", shape=(3,))),
        nodes=(
            ModuleNode(name="a", module=Block(8), inputs=("x",)),
            ModuleNode(name="s", module=Split(), inputs=("y",)),
            ModuleNode(name="b1", module=Block(5), inputs=("a", "s")),
            ModuleNode(name="b2", module=Block(7), inputs=("a", "x")),
            ModuleNode(name="c", module=Block(4), inputs=("b1", "b2", "a", "s")),
            ModuleNode(name="head", module=nn.Dense(3), inputs=("c",)),
        ),
    )


def mse(out: jax.Array, t: jax.Array) -> jax.Array:
    return jnp.mean((out - t) ** 2)


def init_params(mg: ModuleGraph, *, key: jax.Array) -> dict:
    def init(key: jax.Array) -> dict:
        env = {i.name: jnp.ones((1, *i.shape), i.dtype) for i in mg.inputs}
        params = {}
        for i, n in enumerate(mg.nodes):
            args = [env[u] for u in n.inputs]
            params[n.name] = n.module.init(jax.random.fold_in(key, i), *args)
            env[n.name] = n.module.apply(params[n.name], *args)
        return params

    return jax.jit(init)(key)  # one compile instead of one per eager op


def ref_loss(mg: ModuleGraph, loss_fn, params, inputs, targets) -> jax.Array:
    env = dict(inputs)
    for n in mg.nodes:
        env[n.name] = n.module.apply(params[n.name], *(env[u] for u in n.inputs))
    return loss_fn(env[mg.nodes[-1].name], targets)


def rank_coded_batch(mg: ModuleGraph, batch: int, out_dim: int) -> tuple[dict, np.ndarray]:
    """Sample i carries i in every feature (plus a fixed pattern), target too."""
    rng = np.random.default_rng(0)
    idx = np.arange(batch, dtype=np.float32)[:, None]
    inputs = {
        i.name: (0.05 * idx + rng.normal(size=(batch, *i.shape)) * 0.1).astype(np.float32)
        for i in mg.inputs
    }
    targets = (np.sin(idx * 0.37) + rng.normal(size=(batch, out_dim)) * 0.1).astype(np.float32)
    return inputs, targets


def hand_plan(mg: ModuleGraph, stages: list[list[str]], degrees: list[int], *, micro: int,
              batch: int, schedule: str = "1f1b") -> StagePlan:  # fmt: skip
    """A plan with the given stages (the cost model's numbers do not matter here)."""
    from jgraph.pipeline.profiling import profile_module_graph  # noqa: F401 - doc pointer

    cm = CostModel(_costed(mg), ClusterConfig(num_devices=N_DEV), PlannerConfig(schedule=schedule))
    names = cm.graph.topological_order
    idx = [[names.index(n) for n in st] for st in stages]
    plan, _ = assemble_plan(cm, idx, degrees, micro_batch=micro, batch=batch, planner="by hand")
    return plan


def _costed(mg: ModuleGraph):
    from jgraph.pipeline import ModelGraph, Node

    nodes = [Node(name=i.name, kind="input") for i in mg.inputs]
    nodes += [
        Node(name=n.name, inputs=n.inputs, kind="flax", flops=1e6, param_bytes=1e3)
        for n in mg.nodes
    ]
    return ModelGraph(name=mg.name, nodes=tuple(nodes))


def check_against_reference(plan: StagePlan, mg: ModuleGraph, *, out_dim: int = 3,
                            lr: float = 0.1, step: bool = True) -> object:  # fmt: skip
    """Pipelined loss and gradients vs `jax.grad` on one device; with ``step``, one SGD
    step's parameters too and the run-time stash counters vs the schedule."""
    prog = compile(plan, mg, mse, optax.sgd(lr))
    params = init_params(mg, key=jax.random.key(0))
    inputs, targets = rank_coded_batch(mg, plan.batch_size, out_dim)
    state = prog.init(params)
    loss, grads = prog.loss_and_grads(state, inputs, targets)
    ref_l, ref_g = jax.jit(jax.value_and_grad(lambda p: ref_loss(mg, mse, p, inputs, targets)))(
        params
    )
    assert_trees_close(np.float32(loss), np.float32(ref_l), kind="gradient", err_msg="loss")
    assert_trees_close(grads, ref_g, kind="gradient", err_msg="grads")
    if not step:
        return prog, state, inputs, targets
    new_state, metrics = prog.step(state, inputs, targets)
    assert_trees_close(np.float32(metrics["loss"]), np.float32(ref_l), kind="gradient")
    expected = jax.tree.map(lambda p, g: p - lr * g, params, ref_g)
    assert_trees_close(prog.params(new_state), expected, kind="gradient", err_msg="sgd step")
    # Counters measured at run time: each stage stashes what its schedule says.
    peaks = np.asarray(metrics["peak_in_flight"])
    for st in plan.stages:
        r0 = prog.layout.stages[st.index].first_row
        assert (peaks[r0] == st.peak_in_flight).all(), (st.index, peaks[r0], st.peak_in_flight)
        if plan.schedule.kind == "1f1b":  # GraphPipe's warm-up bound W_i = min(M, L_i)
            assert (peaks[r0] <= min(plan.num_microbatches, st.depth)).all()
    return prog, new_state, inputs, targets


FAN_4 = [["x", "y", "a", "s"], ["b1"], ["b2"], ["c", "head"]]


# M = 2, 4, 8 around depth 3; the fast tier keeps one of each schedule.
FAN_CASES = [
    pytest.param(s, m, id=f"{s}-M{16 // m}", marks=() if (s, m) in FAST else pytest.mark.slow)
    for s in ("1f1b", "gpipe")
    for m in (8, 4, 2)
    for FAST in ({("1f1b", 4)},)  # gpipe's fast case: the uniform data-parallel test
]


@pytest.mark.parametrize(("schedule", "micro"), FAN_CASES)
def test_fan_graph_matches_reference(schedule: str, micro: int) -> None:
    plan = hand_plan(fan_graph(), FAN_4, [1, 1, 1, 1], micro=micro, batch=16, schedule=schedule)
    assert plan.depth == 3
    assert plan.num_microbatches in (2, 4, 8)
    check_against_reference(plan, fan_graph(), step=micro == 4)


def test_ragged_data_parallel_stages_match_reference() -> None:
    # 4 + 2 + 1 + 1 devices: the mesh is 8 x 1, stage 0 reduces over a 4-row ring.
    plan = hand_plan(fan_graph(), FAN_4, [4, 2, 1, 1], micro=4, batch=16)
    prog, *_ = check_against_reference(plan, fan_graph())
    assert (prog.layout.rows, prog.layout.cols) == (8, 1)
    assert len(prog.layout.ring_perms) == 3


def test_uniform_data_parallel_uses_the_data_axis() -> None:
    plan = hand_plan(fan_graph(), FAN_4, [2, 2, 2, 2], micro=4, batch=8, schedule="gpipe")
    prog, *_ = check_against_reference(plan, fan_graph())
    assert (prog.layout.rows, prog.layout.cols) == (4, 2)
    assert not prog.layout.ring_perms


@pytest.mark.slow
def test_one_stage_plan_equals_reference() -> None:
    plan = hand_plan(fan_graph(), [["x", "y", "a", "s", "b1", "b2", "c", "head"]], [8],
                     micro=8, batch=16)  # fmt: skip
    prog, *_ = check_against_reference(plan, fan_graph())
    assert prog.layout.permutes_per_tick == 0


def test_skip_edges_and_multi_output_nodes_cross_stages() -> None:
    # a skips stage 1 to reach c; s (two outputs) feeds stages 1 and 2.
    stages = [["x", "y", "a"], ["s", "b1"], ["b2"], ["c"], ["head"]]
    plan = hand_plan(fan_graph(), stages, [1, 1, 1, 1, 1], micro=2, batch=8)
    prog, *_ = check_against_reference(plan, fan_graph())
    crossing = {u for io in prog.layout.stages for u in io.ext_in}
    assert {"a", "s", "b1", "b2", "c"} <= crossing


def test_each_device_holds_only_its_stage() -> None:
    plan = hand_plan(fan_graph(), FAN_4, [1, 1, 1, 1], micro=4, batch=8)
    prog = compile(plan, fan_graph(), mse, optax.adam(1e-3))
    state = prog.init(init_params(fan_graph(), key=jax.random.key(0)))
    total = sum(x.size for x in jax.tree.leaves(init_params(fan_graph(), key=jax.random.key(0))))
    buf = state["params"]["float32"]
    per_device = buf.addressable_shards[0].data.shape
    largest = max(s.sizes["float32"] for s in prog.param_specs)
    assert per_device == (1, 1, largest)
    assert largest < total
    # Adam's mu and nu, plus its step count in an int32 buffer.
    assert state["opt"]["float32"].addressable_shards[0].data.shape[-1] == 2 * largest


def test_training_steps_do_not_recompile_and_follow_reference_adam() -> None:
    mg = fan_graph()
    plan = hand_plan(mg, FAN_4, [1, 1, 1, 1], micro=4, batch=16)
    tx = optax.adam(1e-2)
    prog = compile(plan, mg, mse, tx)
    params = init_params(mg, key=jax.random.key(0))
    inputs, targets = rank_coded_batch(mg, 16, 3)
    state = prog.init(params)
    state, m0 = prog.step(state, inputs, targets)
    with assert_no_recompile("second pipelined step"):
        state, _m1 = prog.step(state, inputs, targets)
        state, m2 = prog.step(state, inputs, targets)

    @jax.jit
    def ref_step(p, o):
        g = jax.grad(lambda p: ref_loss(mg, mse, p, inputs, targets))(p)
        upd, o = tx.update(g, o, p)
        return optax.apply_updates(p, upd), o

    ref_p, ref_o = params, tx.init(params)
    for _ in range(3):
        ref_p, ref_o = ref_step(ref_p, ref_o)
    assert_trees_close(prog.params(state), ref_p, kind="gradient")
    assert float(m2["loss"]) < float(m0["loss"])


def test_plan_for_another_graph_is_refused_before_tracing() -> None:
    plan = hand_plan(fan_graph(), FAN_4, [1, 1, 1, 1], micro=4, batch=8)
    other = dataclasses.replace(fan_graph(), nodes=(*fan_graph().nodes[:-1], ModuleNode(name="out", module=nn.Dense(3), inputs=("c",))))  # fmt: skip
    with pytest.raises(ConfigError, match=r"StagePlan\.stages"):
        compile(plan, other, mse, optax.sgd(0.1))


def test_mesh_with_wrong_device_count_is_refused() -> None:
    from jgraph.testing import cpu_mesh

    plan = hand_plan(fan_graph(), FAN_4, [1, 1, 1, 1], micro=4, batch=8)
    with pytest.raises(ConfigError, match=r"compile\.mesh"):
        compile(plan, fan_graph(), mse, optax.sgd(0.1), mesh=cpu_mesh((4,), ("stage",)))


def test_bad_batch_is_refused_with_the_field_named() -> None:
    plan = hand_plan(fan_graph(), FAN_4, [1, 1, 1, 1], micro=4, batch=8)
    prog = compile(plan, fan_graph(), mse, optax.sgd(0.1))
    state = prog.init(init_params(fan_graph(), key=jax.random.key(0)))
    inputs, targets = rank_coded_batch(fan_graph(), 8, 3)
    with pytest.raises(ConfigError, match=r"inputs\[x\]"):
        prog.step(state, {**inputs, "x": inputs["x"][:6]}, targets)
    with pytest.raises(ConfigError, match="keys"):
        prog.step(state, {"x": inputs["x"]}, targets)


def test_stateful_modules_are_refused() -> None:
    mg = ModuleGraph(name="bn", inputs=(GraphInput(name="x", shape=(4,)),), nodes=(
        ModuleNode(name="bn", module=nn.BatchNorm(use_running_average=False), inputs=("x",)),
        ModuleNode(name="head", module=nn.Dense(3), inputs=("bn",)),
    ))  # fmt: skip
    plan = hand_plan(mg, [["x", "bn"], ["head"]], [1, 1], micro=4, batch=8)
    with pytest.raises(ConfigError, match="collections other than 'params'"):
        compile(plan, mg, mse, optax.sgd(0.1))


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tmp_path) -> None:
    from jgraph.pipeline.runtime import TrainConfig, train

    mg = fan_graph()
    plan = hand_plan(mg, FAN_4, [2, 2, 2, 2], micro=4, batch=16)
    prog = compile(plan, mg, mse, optax.adam(1e-2))
    params = init_params(mg, key=jax.random.key(0))

    def data(step: int) -> tuple[dict, np.ndarray]:
        inputs, targets = rank_coded_batch(mg, 16, 3)
        return {k: v + 0.01 * step for k, v in inputs.items()}, targets

    full = train(prog, params, data, TrainConfig(steps=4))
    cfg = TrainConfig(steps=4, checkpoint_dir=tmp_path / "ck", checkpoint_every=2, stop_after=2)
    first = train(prog, params, data, cfg)
    assert [h["step"] for h in first.history] == [1, 2]
    with pytest.raises(ConfigError, match="already holds a run"):
        train(prog, params, data, cfg)
    resumed = train(prog, params, data, dataclasses.replace(cfg, stop_after=None, resume=True))
    assert resumed.resumed_from == 2
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert_trees_close(prog.params(resumed.state), prog.params(full.state), kind="exact")
    # A checkpoint of another plan is refused rather than loaded into the wrong layout.
    other = compile(hand_plan(mg, FAN_4, [1, 1, 1, 1], micro=4, batch=16), mg, mse,
                    optax.adam(1e-2))  # fmt: skip
    with pytest.raises(ConfigError, match="another plan"):
        train(other, params, data, dataclasses.replace(cfg, resume=True))


# --- the module model zoo through the planner and the runtime ---------------------------

# Each zoo model under a GraphPipe plan, re-assembled with a micro-batch count below, equal
# to or above the plan's depth, under either schedule; one case runs in the fast tier.
ZOO_CASES = [
    pytest.param("mmt-tiny", {"branches": 2, "layers": 1}, "1f1b", "below", id="mmt-2-1f1b-M<D"),
    pytest.param("mmt-tiny", {"branches": 2, "layers": 1}, "gpipe", "above",
                 id="mmt-2-gpipe-M>D", marks=pytest.mark.slow),
    pytest.param("mmt-tiny", {"branches": 4, "layers": 1}, "1f1b", "equal",
                 id="mmt-4-1f1b-M=D", marks=pytest.mark.slow),
    pytest.param("dlrm-tiny", {}, "gpipe", "below", id="dlrm-gpipe-M<D", marks=pytest.mark.slow),
    pytest.param("candle-uno-tiny", {}, "1f1b", "above", id="candle-1f1b-M>D",
                 marks=pytest.mark.slow),
    pytest.param("transformer-tiny", {"layers": 3}, "gpipe", "equal", id="seq-gpipe-M=D",
                 marks=pytest.mark.slow),
    pytest.param("transformer-tiny", {"layers": 3}, "1f1b", "above", id="seq-1f1b-M>D",
                 marks=pytest.mark.slow),
]  # fmt: skip


def regime_plan(mg: ModuleGraph, schedule: str, regime: str) -> StagePlan:
    """GraphPipe's stages for ``mg`` on 8 devices, with M below, equal to or above the depth."""
    from jgraph.pipeline import plan_pipeline

    graph = _costed(mg)
    config = PlannerConfig(schedule=schedule)
    first = plan_pipeline(graph, ClusterConfig(num_devices=N_DEV), config, batch=16)
    cm = CostModel(graph, ClusterConfig(num_devices=N_DEV), config)
    names = cm.graph.topological_order
    stages = [[names.index(n) for n in st.nodes] for st in first.stages]
    degrees = [st.data_parallel for st in first.stages]
    if len(stages) == 1:
        # A chain with uniform made-up costs is best run as one data-parallel stage; split
        # it into 4 contiguous stages instead (a sequential pipeline, as a chain's plan).
        chunks = np.array_split(np.arange(len(names)), 4)
        stages, degrees = [[int(i) for i in c] for c in chunks], [1, 1, 1, 1]
    micro = max(degrees)  # powers of two: every degree divides it
    probe, _ = assemble_plan(cm, stages, degrees, micro_batch=micro, batch=micro, planner="probe")
    depth = probe.depth
    m = {"below": max(1, depth - 1), "equal": depth, "above": depth + 2}[regime]
    plan, _ = assemble_plan(cm, stages, degrees, micro_batch=micro, batch=micro * m,
                            planner="graphpipe")  # fmt: skip
    assert len(plan.stages) > 1  # a real pipeline, not one stage
    if regime == "below":
        assert plan.num_microbatches < plan.depth or plan.depth == 1
    elif regime == "equal":
        assert plan.num_microbatches == plan.depth
    else:
        assert plan.num_microbatches > plan.depth
    return plan


def zoo_check(name: str, kw: dict, plan: StagePlan) -> None:
    from jgraph.pipeline.models import module_model, module_model_loss, synthetic_batch
    from jgraph.pipeline.profiling import apply_module_graph, init_module_graph

    mg = module_model(name, **kw)
    loss_fn = module_model_loss(name)
    inputs, targets = synthetic_batch(mg, name, plan.batch_size, key=jax.random.key(1))
    params = init_module_graph(mg, inputs, key=jax.random.key(0))
    prog = compile(plan, mg, loss_fn, optax.sgd(0.1))
    loss, grads = prog.loss_and_grads(prog.init(params), inputs, targets)
    ref_l, ref_g = jax.jit(
        jax.value_and_grad(lambda p: loss_fn(apply_module_graph(mg, p, inputs), targets))
    )(params)
    assert_trees_close(np.float32(loss), np.float32(ref_l), kind="gradient", err_msg=name)
    assert_trees_close(grads, ref_g, kind="gradient", err_msg=name)


@pytest.mark.parametrize(("name", "kw", "schedule", "regime"), ZOO_CASES)
def test_zoo_models_match_reference(name: str, kw: dict, schedule: str, regime: str) -> None:
    from jgraph.pipeline.models import module_model

    zoo_check(name, kw, regime_plan(module_model(name, **kw), schedule, regime))


@pytest.mark.slow
def test_mmt_with_a_data_parallel_branch_stage_matches_reference() -> None:
    from jgraph.pipeline.models import module_model

    mg = module_model("mmt-tiny", branches=2, layers=1)
    names = mg.skeleton().topological_order
    first = [n for n in names if n.startswith("x") or n.endswith("proj")]
    b0 = [n for n in names if n.startswith("b0.") and n not in first]
    b1 = [n for n in names if n.startswith("b1.") and n not in first]
    rest = [n for n in names if n not in first + b0 + b1]
    plan = hand_plan(mg, [first, b0, b1, rest], [2, 2, 2, 2], micro=4, batch=8)
    zoo_check("mmt-tiny", {"branches": 2, "layers": 1}, plan)
