"""`jgraph.quant.training` on models that are not bundled: a Linen and an NNX one.

Each goes the whole way on digits (tiny epochs): adapter -> train (FP) -> DGMS ->
train -> BatchNorm re-estimation with hard weights -> harden -> evaluate, and
the hardened variables run in the plain model exactly as the hard DGMS model.
"""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jgraph import quant
from jgraph.core import ConfigError
from jgraph.quant import training
from jgraph.testing import assert_trees_close

CHANCE = 0.1  # 10 balanced digit classes
BITS = 2
K = 2**BITS


@pytest.fixture(scope="module")
def data():
    return quant.recipes.load_dataset("digits")


def _xy(data):
    return data.x_train, data.y_train, data.x_test, data.y_test


class LinenNet(nn.Module):
    """Dense + BatchNorm + Dropout, switched by ``deterministic`` (True at inference)."""

    hidden: int = 32

    @nn.compact
    def __call__(self, images, *, deterministic: bool = True):
        x = images.reshape(images.shape[0], -1)
        for i in range(2):
            x = nn.Dense(self.hidden, name=f"dense{i}")(x)
            x = nn.BatchNorm(use_running_average=deterministic, name=f"norm{i}")(x)
            x = nn.relu(x)
        x = nn.Dropout(0.1, deterministic=deterministic)(x)
        return nn.Dense(10, name="head")(x)


class NNXNet(nnx.Module):
    """Two convs in an ``nnx.List``, BatchNorm, Dropout, two Linear layers."""

    def __init__(self, rngs: nnx.Rngs):
        self.convs = nnx.List(
            [nnx.Conv(1, 8, (3, 3), rngs=rngs), nnx.Conv(8, 16, (3, 3), strides=2, rngs=rngs)]
        )
        self.norm = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)  # 3 epochs: 63 updates
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.hidden = nnx.Linear(16, 32, rngs=rngs)
        self.head = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        for conv in self.convs:
            x = nnx.relu(conv(x))
        x = self.norm(x).mean(axis=(1, 2))
        return self.head(self.drop(nnx.relu(self.hidden(x))))


FP = training.Recipe(epochs=3, lr=1e-2)
DG = training.Recipe(epochs=2, lr=1e-2, tau_start=0.05)


def _check_hardened(hardened, names):
    assert sorted(hardened.codebooks) == sorted(names)
    for name, book in hardened.codebooks.items():
        kernel = np.asarray(_kernel(hardened.variables["params"], name))
        values = np.unique(kernel)
        assert values.size <= K, (name, values)
        assert set(values.tolist()) <= set(book.tolist())
        assert book[0] == 0.0


def _kernel(params, name):
    node = params
    for key in name.split("/"):
        node = node[int(key)] if key.isdigit() and int(key) in node else node[key]
    return node["kernel"]


def _stats_differ(a, b):
    return all(
        not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_custom_linen_model_end_to_end(data):
    apply = training.linen_apply(LinenNet())
    assert (apply.mode.name, apply.mode.where, apply.mode.inverted) == (
        "deterministic",
        "call",
        True,
    )
    v0 = apply.init(jax.random.key(0), data.x_train[:1])
    fp = training.train(apply, v0, *_xy(data), FP, seed=0)
    fp_acc = training.evaluate(apply, fp.variables, data.x_test, data.y_test)
    assert fp_acc == fp.history[-1]["test_accuracy"]
    assert fp_acc > 0.8  # an MLP on digits: ~0.9 after 3 epochs

    config = quant.DGMSConfig(bits=BITS)
    qmodel = quant.dgms(LinenNet(), config)
    qvars = qmodel.init(fp.variables, data.x_train[:1], key=jax.random.key(1))
    q_apply = training.linen_apply(qmodel)
    q = training.train(q_apply, qvars, *_xy(data), DG, seed=0, tau0=config.tau0)
    hard_acc = training.evaluate(q_apply, q.variables, data.x_test, data.y_test)
    assert hard_acc == q.history[-1]["test_accuracy"]  # evaluation uses hard weights

    bn = training.reestimate_batch_stats(
        q_apply, q.variables, data.x_train, batch_size=64, passes=1
    )
    assert _stats_differ(bn["batch_stats"], q.variables["batch_stats"])
    assert_trees_close(bn["params"], q.variables["params"], kind="exact")
    bn_acc = training.evaluate(q_apply, bn, data.x_test, data.y_test)
    # Re-estimation may cost a few images through noise but never breaks the model
    # (0.03 = 13 of 450 test images); it usually gains.
    assert bn_acc >= hard_acc - 0.03
    assert bn_acc > 0.7  # well above chance (0.1) with 2-bit hidden weights

    hardened = quant.harden(bn, config)
    _check_hardened(hardened, ["dense1"])  # first and last Dense stay full precision
    # the export hand-off: the plain model with the hardened variables is the hard model
    x = data.x_test[:64]
    assert_trees_close(
        apply(hardened.variables, x, train=False), q_apply(bn, x, train=False), kind="exact"
    )
    assert training.evaluate(apply, hardened.variables, data.x_test, data.y_test) == bn_acc
    assert_trees_close(hardened.variables["params"]["head"], bn["params"]["head"], kind="exact")


def test_custom_nnx_model_end_to_end(data):
    model = NNXNet(nnx.Rngs(0))
    apply = training.nnx_apply(model)
    assert sorted(apply.variables) == ["batch_stats", "params"]
    fp = training.train(apply, apply.variables, *_xy(data), FP, seed=0)
    assert fp.history[-1]["test_accuracy"] > 0.6  # a small CNN after 3 epochs: ~0.85

    fp_model = apply.module(fp.variables)
    assert isinstance(fp_model, NNXNet)
    quant.dgms_nnx(fp_model, quant.DGMSConfig(bits=BITS), data.x_train[:1], key=jax.random.key(1))
    q_apply = training.nnx_apply(fp_model)
    assert sorted(q_apply.variables) == ["batch_stats", "mixture", "params"]
    q = training.train(q_apply, q_apply.variables, *_xy(data), DG, seed=0)
    hard_acc = q.history[-1]["test_accuracy"]
    bn = training.reestimate_batch_stats(
        q_apply, q.variables, data.x_train, batch_size=64, passes=1
    )
    assert _stats_differ(bn["batch_stats"], q.variables["batch_stats"])
    bn_acc = training.evaluate(q_apply, bn, data.x_test, data.y_test)
    assert bn_acc >= hard_acc - 0.03  # as for Linen: 13 of 450 images of noise allowed
    assert bn_acc > 0.6

    plain, hardened = quant.harden_nnx(q_apply.module(bn))
    _check_hardened(hardened, ["convs/1", "hidden"])  # first conv and head stay FP
    p_apply = training.nnx_apply(plain)
    assert training.evaluate(p_apply, p_apply.variables, data.x_test, data.y_test) == bn_acc
    x = jnp.asarray(data.x_test[:64])
    assert_trees_close(
        p_apply(p_apply.variables, x, train=False), q_apply(bn, x, train=False), kind="exact"
    )
    # the caller's model is untouched by the adapters and the training
    assert isinstance(model.hidden, nnx.Linear)
    assert_trees_close(
        model.hidden.kernel[...], apply.variables["params"]["hidden"]["kernel"], kind="exact"
    )


@pytest.mark.slow  # the whole recipe, then its resume, per model (the flows above are the twins)
@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_run_recipe_takes_your_model(tmp_path, data, kind):
    model = LinenNet() if kind == "linen" else NNXNet(nnx.Rngs(0))
    cfg = quant.recipes.RunConfig(
        model=model, fp=FP, dgms=DG, quant=quant.DGMSConfig(bits=BITS), out=tmp_path
    )
    r = quant.recipes.run_recipe(cfg, data=data)
    assert r.fp_accuracy > 0.6
    assert r.dgms_accuracy > 0.6
    names = ["dense1"] if kind == "linen" else ["convs/1", "hidden"]
    assert [layer.name for layer in r.report.layers] == names
    assert all(layer.distinct <= K for layer in r.report.layers)
    pngs = sorted(p.name for p in (tmp_path / "hist").iterdir())
    assert pngs == [f"{n.replace('/', '.')}.png" for n in names]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["config"]["model"].startswith(f"{__name__}.{type(model).__name__}")
    again = quant.recipes.run_recipe(dataclasses.replace(cfg, resume=True), data=data)
    assert again.dgms_accuracy == r.dgms_accuracy
    assert (again.fp_seconds, again.dgms_seconds) == (r.fp_seconds, r.dgms_seconds)


# --- adapters: how a model's call is switched between training and inference ---

X = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4, 4, 1)).astype(np.float32))


def _body(x, use_running_average):
    x = nn.Dense(3)(x.reshape(len(x), -1))
    return nn.BatchNorm(use_running_average=use_running_average)(x)


class ByTrain(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return _body(x, not train)


class ByTraining(nn.Module):
    @nn.compact
    def __call__(self, inputs, *, training: bool):
        return _body(inputs, not training)


class ByIsTraining(nn.Module):
    @nn.compact
    def __call__(self, x, is_training=False, scale=1.0):
        return _body(x, not is_training) * scale


class ByDeterministic(nn.Module):
    @nn.compact
    def __call__(self, x, *, deterministic: bool = True):
        return _body(x, deterministic)


class ByUseRunningAverage(nn.Module):
    @nn.compact
    def __call__(self, x, use_running_average: bool):
        return _body(x, use_running_average)


class ByField(nn.Module):
    train: bool = False

    @nn.compact
    def __call__(self, x):
        return _body(x, not self.train)


class ByOwnName(nn.Module):
    @nn.compact
    def __call__(self, x, frozen_stats: bool = True):
        return _body(x, frozen_stats)


# (model, adapter options, how to call the model itself in train / eval mode)
SWITCHES = {
    "train": (ByTrain(), {}, lambda t: {"train": t}),
    "training": (ByTraining(), {}, lambda t: {"training": t}),
    "is_training": (ByIsTraining(), {}, lambda t: {"is_training": t}),
    "deterministic": (ByDeterministic(), {}, lambda t: {"deterministic": not t}),
    "use_running_average": (ByUseRunningAverage(), {}, lambda t: {"use_running_average": not t}),
    "field": (ByField(), {}, None),
    "named": (ByOwnName(), {"train_arg": "frozen_stats", "inverted": True}, None),
}


def _reference(name, model, train):
    kwargs = SWITCHES[name][2]
    if name == "field":
        return model.clone(train=train), {}
    if name == "named":
        return model, {"frozen_stats": not train}
    return model, kwargs(train)


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_linen_switch_is_found_and_used(name):
    model, options, _ = SWITCHES[name]
    apply = training.linen_apply(model, **options)
    v = apply.init(jax.random.key(0), X)
    logits, updates = apply(v, X, train=True)
    m, kw = _reference(name, model, True)
    ref, ref_updates = m.apply(v, X, mutable=["batch_stats"], **kw)
    assert_trees_close(logits, ref, kind="exact")
    assert_trees_close(updates, ref_updates, kind="exact")
    m, kw = _reference(name, model, False)
    assert_trees_close(apply(v, X, train=False), m.apply(v, X, **kw), kind="exact")
    # negative check: the two modes really differ (batch vs running statistics)
    assert not np.allclose(logits, apply(v, X, train=False))


class NoSwitch(nn.Module):
    @nn.compact
    def __call__(self, x):
        return _body(x, False)


class TwoSwitches(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False, deterministic: bool = True):
        return _body(x, deterministic)


class NeedsMask(nn.Module):
    @nn.compact
    def __call__(self, x, mask, train: bool = False):
        return _body(x * mask, not train)


def test_linen_model_without_switch_is_refused_only_with_batchnorm():
    apply = training.linen_apply(NoSwitch())
    assert apply.mode.where == "none"
    v = NoSwitch().init(jax.random.key(0), X)
    with pytest.raises(ConfigError, match=r"finds no training switch in NoSwitch.*batch_stats"):
        apply(v, X, train=True)
    # train_arg=None: the user says the model switches by itself (here: always batch stats)
    _, updates = training.linen_apply(NoSwitch(), train_arg=None)(v, X, train=True)
    assert sorted(updates) == ["batch_stats"]
    # a model without BatchNorm needs no switch at all; nn.Sequential (a list field, so
    # not hashable) is keyed by identity: one adapter per object, equal to itself
    assert training.linen_apply(quant.recipes.make_model("mlp", 3)).mode.name == "train"
    plain = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(3)])
    pv = plain.init(jax.random.key(0), X.reshape(8, -1))
    seq = training.linen_apply(plain)
    assert seq.mode.where == "none"
    assert seq(pv, X.reshape(8, -1), train=True).shape == (8, 3)
    assert seq == training.linen_apply(plain)
    assert hash(seq) == hash(training.linen_apply(plain))
    other = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(3)])
    assert seq != training.linen_apply(other)
    # hashable modules compare by value: equal models share one compiled step
    assert training.linen_apply(ByTrain()) == training.linen_apply(ByTrain())


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: training.linen_apply(TwoSwitches()),
            r"several training switches.*train_arg='train'",
        ),
        (lambda: training.linen_apply(NeedsMask()), r"needs mask besides the images"),
        (lambda: training.linen_apply(ByTrain(), train_arg="mode"), "is neither an argument"),
        (lambda: training.linen_apply(ByTrain(), hard_in_train=True), "applies to DGMS models"),
        (lambda: training.linen_apply(NNXNet(nnx.Rngs(0))), "is not a flax.linen.Module"),
        (lambda: training.nnx_apply(ByTrain()), "is not a flax.nnx.Module"),
        (lambda: training.nnx_apply(NNXNeedsMask()), r"needs mask besides the images"),
        (lambda: quant.recipes.RunConfig(model="vgg"), "is not a bundled model"),
        (lambda: quant.recipes.RunConfig(model=lambda x: x), "neither a bundled model"),
    ],
    ids=[
        "two-switches",
        "extra-input",
        "missing-train-arg",
        "hard-in-train-plain",
        "nnx-to-linen",
        "linen-to-nnx",
        "nnx-extra-input",
        "unknown-name",
        "not-a-module",
    ],
)
def test_models_that_cannot_be_adapted_are_refused(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


class NNXNeedsMask(nnx.Module):
    def __init__(self):
        self.lin = nnx.Linear(16, 3, rngs=nnx.Rngs(0))

    def __call__(self, x, mask):
        return self.lin(x.reshape(len(x), -1) * mask)


class DropNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(16)(x.reshape(len(x), -1))
        return nn.Dense(3)(nn.Dropout(0.5, deterministic=not train)(x))


def test_dropout_gets_a_key_per_step():
    apply = training.linen_apply(DropNet())
    v = apply.init(jax.random.key(0), X)
    a = apply(v, X, train=True, rng=jax.random.key(1))
    b = apply(v, X, train=True, rng=jax.random.key(2))
    assert not np.allclose(a, b)  # different masks
    assert_trees_close(a, apply(v, X, train=True, rng=jax.random.key(1)), kind="exact")
    y = np.arange(8) % 3
    recipe = training.Recipe(epochs=1, batch_size=4)
    r0 = training.train(apply, v, X, y, X, y, recipe, seed=0)
    r1 = training.train(apply, v, X, y, X, y, recipe, seed=1)
    again = training.train(apply, v, X, y, X, y, recipe, seed=0)
    assert r0.history == again.history
    # the seed changes the masks (and the batch order); without a key Dropout would fail
    assert r0.history != r1.history


def test_nnx_tau_scale_reaches_the_soft_weights():
    model = NNXNet(nnx.Rngs(0))
    quant.dgms_nnx(model, quant.DGMSConfig(bits=2), X, key=jax.random.key(1))
    apply = training.nnx_apply(model)
    v = apply.variables
    one, _ = apply(v, X, train=True)
    hot, _ = apply(v, X, train=True, tau_scale=100.0)
    assert not np.allclose(one, hot)
    assert_trees_close(one, apply(v, X, train=True, tau_scale=1.0)[0], kind="exact")
    # eval ignores it (hard weights), and nothing traced is left on the module
    assert_trees_close(
        apply(v, X, train=False), apply(v, X, train=False, tau_scale=9.0), kind="exact"
    )
    assert all(
        node.tau_scale == 1.0
        for _, node in nnx.iter_graph(apply.module())
        if isinstance(node, quant.DGMSLayer)
    )


class Norm(nn.Module):
    momentum: float

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(len(x), -1)
        return nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(x)


def test_bn_reestimation_average_ignores_momentum():
    x = np.random.default_rng(0).normal(2.0, 3.0, (256, 4, 4, 1)).astype(np.float32)
    results = []
    for momentum in (0.5, 0.99):
        apply = training.linen_apply(Norm(momentum=momentum))
        v = apply.init(jax.random.key(0), x[:1])
        new = training.reestimate_batch_stats(apply, v, x, batch_size=64, passes=2)
        ema = training.reestimate_batch_stats(apply, v, x, batch_size=64, passes=2, method="ema")
        results.append((new["batch_stats"]["BatchNorm_0"], ema["batch_stats"]["BatchNorm_0"]))
    flat = x.reshape(4, 64, -1)  # any split into batches of 64 has the same mean of means
    tol = {"atol": 1e-4, "rtol": 1e-4}  # float32 sums over 256 values of size ~10
    for avg, _ in results:
        np.testing.assert_allclose(avg["mean"], x.reshape(256, -1).mean(0), **tol)
        # the variance is the mean within-batch variance (what the EMA also converges to)
        assert np.all(avg["var"] < x.reshape(256, -1).var(0) * 1.05)
        assert np.all(avg["var"] > flat.var(1).mean(0) * 0.8)
    # the EMA at momentum 0.99 has not converged after 8 batches (0.99**8 = 0.92 stays old)
    ema_slow = results[1][1]
    assert np.all(np.abs(ema_slow["mean"] - x.reshape(256, -1).mean(0)) > 1.0)
    np.testing.assert_allclose(results[0][0]["mean"], results[1][0]["mean"], **tol)
