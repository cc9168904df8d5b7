"""The trainable module-graph zoo and its single-device reference (init, apply, loss, data)."""

import functools
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jgraph.core import ConfigError
from jgraph.pipeline.models import (
    MODULE_MODEL_NAMES,
    module_model,
    module_model_loss,
    synthetic_batch,
)
from jgraph.pipeline.profiling import (
    GraphInput,
    ModuleGraph,
    ModuleNode,
    apply_module_graph,
    init_module_graph,
    module_graph_sink,
    profile_module_graph,
)
from jgraph.testing import assert_no_recompile, assert_trees_close

# Small sizes keep the eager init and the compiles short; the structure is the default one.
SMALL = {
    "mmt-tiny": {"branches": 2, "layers": 1, "width": 16},
    "dlrm-tiny": {"branches": 2, "layers": 1},
    "candle-uno-tiny": {"branches": 2, "layers": 1, "width": 16},
    "transformer-tiny": {"layers": 1, "width": 16},
}


def test_names_and_config_errors():
    assert MODULE_MODEL_NAMES == ("mmt-tiny", "dlrm-tiny", "candle-uno-tiny", "transformer-tiny")
    with pytest.raises(ConfigError, match=r"module_model\.name='mmt'"):
        module_model("mmt")
    with pytest.raises(ConfigError, match=r"module_model\.branches=0"):
        module_model("mmt-tiny", branches=0)
    with pytest.raises(ConfigError, match="single chain"):
        module_model("transformer-tiny", branches=2)
    with pytest.raises(ConfigError, match=r"module_model\.layers=0"):
        module_model("dlrm-tiny", layers=0)
    with pytest.raises(ConfigError, match="multiple of 4"):
        module_model("mmt-tiny", width=18)
    module_model("candle-uno-tiny", width=18)  # no attention heads there
    with pytest.raises(ConfigError, match=r"module_model_loss\.name"):
        module_model_loss("bert")
    with pytest.raises(ConfigError, match=r"synthetic_batch\.batch=0"):
        synthetic_batch(module_model("dlrm-tiny"), "dlrm-tiny", 0, key=jax.random.key(0))
    with pytest.raises(ConfigError, match="does not match the graph"):
        synthetic_batch(module_model("dlrm-tiny"), "mmt-tiny", 4, key=jax.random.key(0))


@pytest.mark.parametrize("name", MODULE_MODEL_NAMES)
def test_default_graph_is_a_dag_with_one_sink(name):
    g = module_model(name)
    skeleton = g.skeleton()  # validates: unique names, acyclic, connected
    assert [n for n, succ in skeleton.successors.items() if not succ] == ["head"]
    assert module_graph_sink(g) == "head"
    assert set(skeleton.topological_order) == {i.name for i in g.inputs} | {n.name for n in g.nodes}


@pytest.mark.parametrize("branches", [2, 4])
def test_mmt_has_one_parallel_branch_per_modality(branches):
    g = module_model("mmt-tiny", branches=branches, layers=2)
    s = g.skeleton()
    assert s.by_name["fuse"].inputs == tuple(f"b{b}.pool" for b in range(branches))
    assert len({i.shape for i in g.inputs}) == branches  # a different d_in per modality

    def upstream(name):
        seen, todo = set(), [name]
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo += s.by_name[n].inputs
        return seen

    branch_sets = [upstream(f"b{b}.pool") for b in range(branches)]
    for b, nodes in enumerate(branch_sets):
        assert nodes == {f"x{b}", f"b{b}.proj", f"b{b}.l0", f"b{b}.l1", f"b{b}.pool"}
    assert upstream("head") == set().union(*branch_sets) | {"fuse", "head"}


def test_losses_match_their_formulas():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]], np.float32)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = module_model_loss("mmt-tiny")(jnp.asarray(logits), jnp.array([0, 2]))
    np.testing.assert_allclose(ce, -(logp[0, 0] + logp[1, 2]) / 2, rtol=1e-6)
    z, t = np.array([3.0, -2.0, 0.0], np.float32), np.array([1.0, 0.0, 1.0], np.float32)
    s = 1 / (1 + np.exp(-z))
    bce = -np.mean(t * np.log(s) + (1 - t) * np.log(1 - s))
    np.testing.assert_allclose(module_model_loss("dlrm-tiny")(z, t), bce, rtol=1e-6)
    # (3 - 1)^2 + (-2 - 0)^2 + (0 - 1)^2 = 9, over 3 samples.
    np.testing.assert_allclose(module_model_loss("candle-uno-tiny")(z, t), 3.0, rtol=1e-6)
    assert module_model_loss("transformer-tiny") is module_model_loss("mmt-tiny")


@pytest.mark.parametrize("name", MODULE_MODEL_NAMES)
def test_synthetic_batch_is_deterministic_and_in_range(name):
    g = module_model(name)
    x, y = synthetic_batch(g, name, 64, key=jax.random.key(3))
    x2, y2 = synthetic_batch(g, name, 64, key=jax.random.key(3))
    x3, _ = synthetic_batch(g, name, 64, key=jax.random.key(4))
    assert_trees_close((x2, y2), (x, y), kind="exact")
    for gi in g.inputs:
        assert x[gi.name].shape == (64, *gi.shape)
        assert x[gi.name].dtype == gi.dtype
        assert not np.array_equal(x3[gi.name], x[gi.name])
        if gi.dtype == "int32":
            vocab = next(n.module.vocab for n in g.nodes if gi.name in n.inputs)
            assert int(x[gi.name].min()) >= 0
            assert int(x[gi.name].max()) < vocab
    assert y.shape == (64,)
    if name in ("mmt-tiny", "transformer-tiny"):
        assert y.dtype == jnp.int32
        assert len(set(np.asarray(y).tolist())) >= 5
    elif name == "dlrm-tiny":
        assert y.dtype == jnp.float32
        assert set(np.asarray(y).tolist()) == {0.0, 1.0}
    else:
        assert y.dtype == jnp.float32
        assert 0.3 < float(jnp.std(y)) < 3


def train(g, name, params, steps, *, fresh):
    """Adam (lr 1e-2) on the reference from batch-16 steps.

    Returns the first step's loss and gradients, and the losses before and after
    training on the fit batch (``fresh=False``) or, when every step draws a new
    batch (``fresh=True``), on a held-out batch of 256.
    """
    loss_fn = module_model_loss(name)
    opt = optax.adam(1e-2)

    def loss(p, xs, ys):
        return loss_fn(apply_module_graph(g, p, xs), ys)

    @jax.jit
    def step(p, s, xs, ys):
        value, grads = jax.value_and_grad(loss)(p, xs, ys)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value, grads

    fit = synthetic_batch(g, name, 16, key=jax.random.key(0))
    batches = [
        synthetic_batch(g, name, 16, key=jax.random.key(i)) if fresh else fit
        for i in range(1, steps + 2)
    ]
    state = opt.init(params)
    if fresh:
        test_x, test_y = synthetic_batch(g, name, 256, key=jax.random.key(10_000))
        before = float(jax.jit(loss)(params, test_x, test_y))
    params, state, first, grads = step(params, state, *batches[0])
    with assert_no_recompile(f"{name} train step"):
        for xs, ys in batches[1:]:
            params, state, last, _ = step(params, state, xs, ys)
    if fresh:
        return first, grads, before, float(jax.jit(loss)(params, test_x, test_y))
    return first, grads, float(first), float(last)  # `last` is after `steps` updates


def check_apply_is_per_sample(g, name, params):
    """The reference forward at batch 5 and batch 1, and that samples do not mix."""
    x, _ = synthetic_batch(g, name, 5, key=jax.random.key(5))
    f = jax.jit(functools.partial(apply_module_graph, g))
    out = f(params, x)
    want = (5, 10) if name in ("mmt-tiny", "transformer-tiny") else (5,)
    assert out.shape == want
    assert out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    # Sample 2 alone (batch 1) gives row 2 of the batch.
    one = f(params, {k: v[2:3] for k, v in x.items()})
    assert one.shape == (1, *want[1:])
    assert_trees_close(one[0], out[2])
    # Changing the other samples leaves row 2 alone; changing sample 2 moves it.
    other, _ = synthetic_batch(g, name, 5, key=jax.random.key(7))
    mixed = {k: other[k].at[2].set(v[2]) for k, v in x.items()}
    out2 = f(params, mixed)
    assert_trees_close(out2[2], out[2])
    assert not np.allclose(out2[0], out[0])
    swapped = {k: v.at[2].set(other[k][2]) for k, v in x.items()}
    assert not np.allclose(f(params, swapped)[2], out[2])


# One test per model so that its (eager, slow to compile on a CPU) init runs once per process.
# transformer-tiny's layers are mmt-tiny's, so its copy waits for the slow run; mmt-tiny's
# reference also runs in the fast tier through tests/pipeline/test_runtime.py's zoo case.
@pytest.mark.parametrize(
    "name",
    [
        pytest.param("mmt-tiny", marks=pytest.mark.slow),
        "dlrm-tiny",
        "candle-uno-tiny",
        pytest.param("transformer-tiny", marks=pytest.mark.slow),
    ],
)
def test_reference_forward_loss_gradients_and_twenty_adam_steps(name):
    g = module_model(name, **SMALL[name])
    x, _ = synthetic_batch(g, name, 2, key=jax.random.key(0))
    params = init_module_graph(g, x, key=jax.random.key(1))
    assert params.keys() == {n.name for n in g.nodes}
    check_apply_is_per_sample(g, name, params)
    value, grads, before, after = train(g, name, params, 20, fresh=False)
    assert value.shape == ()
    assert bool(jnp.isfinite(value))
    assert grads.keys() == params.keys()
    for node, gr in grads.items():
        leaves = jax.tree.leaves(gr)
        assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves), node
        if leaves:  # a node with parameters gets a gradient (no node is cut off)
            assert any(bool(jnp.any(leaf != 0)) for leaf in leaves), node
    assert after < 0.7 * before, (before, after)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODULE_MODEL_NAMES)
def test_hundred_adam_steps_learn_the_teacher(name):
    g = module_model(name)
    x, _ = synthetic_batch(g, name, 2, key=jax.random.key(0))
    params = init_module_graph(g, x, key=jax.random.key(1))
    *_, before, after = train(g, name, params, 100, fresh=True)
    assert after < 0.8 * before, (before, after)


@pytest.mark.slow  # ~15 s on a 2-core CPU: every node is compiled and timed at two sizes
def test_profile_small_mmt(tmp_path):
    g = module_model("mmt-tiny", branches=2, layers=1, width=16)
    costed = profile_module_graph(g, micro_batches=(1, 2), repeats=1, cache_dir=tmp_path)
    assert costed.topological_order == g.skeleton().topological_order
    assert costed.by_name["b0.pool"].param_bytes == 0
    assert costed.by_name["head"].output_bytes == 10 * 4
    # The two branches' identical blocks share one cache entry.
    assert len(list(tmp_path.glob("*.json"))) == len(g.nodes) - 2


def test_init_folds_the_node_index_into_the_key():
    g = module_model("candle-uno-tiny", branches=2, layers=2, width=8)
    x, _ = synthetic_batch(g, "candle-uno-tiny", 2, key=jax.random.key(0))
    key = jax.random.key(1)
    params = init_module_graph(g, x, key=key)
    names = [n.name for n in g.nodes]
    i, j = names.index("b1.l0"), names.index("b1.l1")
    h = g.nodes[i].module.apply(params["b1.l0"], x["x1"])
    want = g.nodes[j].module.init(jax.random.fold_in(key, j), h)
    assert_trees_close(params["b1.l1"], want, kind="exact")
    # b0.l1 is the same module on the same shapes, yet starts from other weights.
    assert g.nodes[names.index("b0.l1")].module == g.nodes[j].module
    a, b = params["b0.l1"]["params"], params["b1.l1"]["params"]
    assert not np.allclose(a["Dense_0"]["kernel"], b["Dense_0"]["kernel"])


class TwoOutputs(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x, x


def test_reference_errors_name_the_node():
    x = {"x": jnp.ones((2, 4))}

    def graph(module):
        nodes = (
            ModuleNode(name="fc", module=nn.Dense(4), inputs=("x",)),
            ModuleNode(name="bad", module=module, inputs=("fc",)),
        )
        return ModuleGraph(name="g", inputs=(GraphInput(name="x", shape=(4,)),), nodes=nodes)

    with pytest.raises(ConfigError, match=r"nodes\[bad\]=\['batch_stats'\]"):
        init_module_graph(graph(nn.BatchNorm(use_running_average=False)), x, key=jax.random.key(0))
    with pytest.raises(ConfigError, match=r"nodes\[bad\]='tuple': must return a single array"):
        init_module_graph(graph(TwoOutputs()), x, key=jax.random.key(0))
    g = graph(nn.Dense(3))
    params = init_module_graph(g, x, key=jax.random.key(0))
    with pytest.raises(ConfigError, match="must name exactly the graph inputs"):
        apply_module_graph(g, params, {"y": x["x"]})
    two_sinks = ModuleGraph(
        name="two",
        inputs=(GraphInput(name="x", shape=(4,)),),
        nodes=(
            ModuleNode(name="a", module=nn.Dense(4), inputs=("x",)),
            ModuleNode(name="b", module=nn.Dense(4), inputs=("x",)),
        ),
    )
    with pytest.raises(ConfigError, match="exactly one sink"):
        module_graph_sink(two_sinks)


def test_importing_the_models_module_stays_light():
    # Importing jgraph.pipeline.models (the CLI's --model choices) loads neither JAX nor
    # Flax; building a zoo graph does (its layers are Flax modules).
    code = (
        "import sys, jgraph.pipeline.models as m\n"
        "print(sorted(x for x in ('jax', 'flax') if x in sys.modules))\n"
        "m.module_model('mmt-tiny', branches=4)\n"
        "print(sorted(x for x in ('jax', 'flax') if x in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["[]", "['flax',", "'jax']"]
