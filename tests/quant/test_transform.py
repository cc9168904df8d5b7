"""The Linen `dgms` transform: layer selection, gradients, optax, jit, recompilation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jgraph import quant
from jgraph.core import ConfigError
from jgraph.quant._models import ResNet20, SmallCNN
from jgraph.testing import assert_no_recompile, assert_trees_close

X = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32))
Y = jnp.asarray([0, 1, 2, 3], jnp.int32)


@pytest.fixture(scope="module")
def cnn():
    model = SmallCNN(num_classes=4, width=4)
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(0), X)
    qmodel = quant.dgms(model, quant.DGMSConfig(bits=2))
    qvars = qmodel.init(variables, X, key=jax.random.key(1), train=False)
    return model, variables, qmodel, qvars


def test_default_selection_skips_first_conv_and_last_dense():
    layers = quant.dgms(ResNet20()).layers(X, train=False)
    names = [layer.name for layer in layers]
    assert len(layers) == 20
    assert names[0] == "conv1"
    assert names[-1] == "fc"
    assert [layer.name for layer in layers if not layer.selected] == ["conv1", "fc"]
    assert all(layer.kind == "conv" for layer in layers[:-1])
    assert layers[-1].kind == "dense"


def test_regex_selection_and_exclude():
    model = SmallCNN(num_classes=4, width=4)
    cfg = quant.DGMSConfig(layers=r"conv\d|fc1", exclude="conv3")
    chosen = [lay.name for lay in quant.dgms(model, cfg).layers(X, train=False) if lay.selected]
    assert chosen == ["conv1", "conv2", "fc1"]


def test_pattern_that_matches_nothing_lists_the_layers():
    model = SmallCNN(num_classes=4, width=4)
    with pytest.raises(
        ConfigError,
        match=r"DGMSConfig.layers='nope'.*selects no layer.*conv1 \(conv\), conv2 \(conv\), conv3 \(conv\), fc1 \(dense\), fc2 \(dense\)",
    ):
        quant.dgms(model, quant.DGMSConfig(layers="nope")).layers(X, train=False)
    with pytest.raises(ConfigError, match=r"DGMSConfig.exclude='\.\*'.*selects no layer"):
        quant.dgms(model, quant.DGMSConfig(exclude=".*")).layers(X, train=False)


def test_mixture_collection_mirrors_params(cnn):
    _, variables, _, qvars = cnn
    assert set(qvars) == {"params", "batch_stats", "mixture"}
    assert sorted(qvars["mixture"]) == ["conv2", "conv3", "fc1"]
    for mix in qvars["mixture"].values():
        assert mix["mu"].shape == (3,)
        assert mix["sigma"].shape == (4,)
        assert mix["pi"].shape == (4,)
        assert mix["tau"].shape == ()
    # init does not touch the pretrained variables
    assert_trees_close(qvars["params"], variables["params"], kind="exact")


def test_gradients_reach_weights_and_every_mixture_parameter(cnn):
    _, _, qmodel, qvars = cnn
    # τ = 0.5 makes the soft assignment smooth enough that latent weights get
    # gradient everywhere (at τ0 = 0.01 it is ~0 away from region boundaries).
    mixture = jax.tree.map(lambda a: a, qvars["mixture"])
    for name in mixture:
        mixture[name] = {**mixture[name], "tau": jnp.asarray(0.5)}
    trainable = {"params": qvars["params"], "mixture": mixture}

    def loss(tr):
        logits, _ = qmodel.apply(
            {**tr, "batch_stats": qvars["batch_stats"]}, X, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()

    grads = jax.jit(jax.grad(loss))(trainable)
    for name in ("conv2", "conv3", "fc1"):
        g_w = np.asarray(grads["params"][name]["kernel"])
        assert np.all(np.isfinite(g_w)), name
        assert np.abs(g_w).max() > 0, name
        for field in ("mu", "sigma", "pi", "tau"):
            g = np.asarray(grads["mixture"][name][field])
            assert np.all(np.isfinite(g)), (name, field)
            assert np.abs(g).max() > 0, (name, field)


def test_soft_forward_equals_model_on_soft_kernels(cnn):
    model, _, qmodel, qvars = cnn
    params = dict(qvars["params"])
    for name, mix in qvars["mixture"].items():
        params[name] = {
            **params[name],
            "kernel": quant.mixture.soft_weights(params[name]["kernel"], mix),
        }
    ref = model.apply({"params": params, "batch_stats": qvars["batch_stats"]}, X, train=False)
    got = qmodel.apply(qvars, X, train=False)
    assert_trees_close(got, ref, kind="exact")
    plain = model.apply(
        {"params": qvars["params"], "batch_stats": qvars["batch_stats"]}, X, train=False
    )
    assert not np.allclose(np.asarray(got), np.asarray(plain))  # the transform is not a no-op


def test_trains_in_optax_under_jit_without_recompiling(cnn):
    _, _, qmodel, qvars = cnn
    # optax.chain around multi_transform: the mixture collection gets its own optimizer.
    opt = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.multi_transform(
            {"params": optax.adam(1e-2), "mixture": optax.sgd(1e-3)},
            {"params": "params", "mixture": "mixture"},
        ),
    )
    trainable = {"params": qvars["params"], "mixture": qvars["mixture"]}
    state = (trainable, qvars["batch_stats"], opt.init(trainable))

    @jax.jit
    def step(state, x, y):
        tr, bs, os = state

        def loss(tr):
            logits, upd = qmodel.apply(
                {**tr, "batch_stats": bs}, x, train=True, mutable=["batch_stats"]
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd

        (value, upd), g = jax.value_and_grad(loss, has_aux=True)(tr)
        u, os = opt.update(g, os, tr)
        return (optax.apply_updates(tr, u), upd["batch_stats"], os), value

    state, first = step(state, X, Y)
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), state)
    xs = [X * (i + 1) for i in range(3)]
    with assert_no_recompile("dgms train step"):
        for x in xs:
            state, loss = step(state, x, Y)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), state) == shapes
    for _ in range(20):
        state, loss = step(state, X, Y)
    assert float(loss) < float(first)  # it trains
    moved = state[0]["mixture"]["conv2"]["mu"] - qvars["mixture"]["conv2"]["mu"]
    assert np.abs(np.asarray(moved)).max() > 0


def test_apply_without_mixture_says_to_init(cnn):
    model, variables, _, _ = cnn
    with pytest.raises(ConfigError, match=r"has no 'mixture' collection.*DGMS\.init"):
        quant.dgms(model).apply(variables, X, train=False)


def test_dgms_rejects_non_linen():
    with pytest.raises(TypeError, match=r"flax\.linen\.Module"):
        quant.dgms(lambda x: x)


def test_works_on_plain_sequential_dense_stack():
    model = nn.Sequential(
        [nn.Dense(8), nn.relu, nn.Dense(8), nn.relu, nn.Dense(8), nn.relu, nn.Dense(2)]
    )
    x = jnp.ones((3, 5))
    v = model.init(jax.random.key(0), x)
    q = quant.dgms(model, quant.DGMSConfig(bits=1))
    qv = q.init(v, x, key=jax.random.key(0))
    assert sorted(qv["mixture"]) == ["layers_2", "layers_4"]
    h = quant.harden(qv)
    for name in ("layers_2", "layers_4"):
        assert np.unique(np.asarray(h.variables["params"][name]["kernel"])).size <= 2
