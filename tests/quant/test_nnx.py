"""The NNX transform: surgery, gradients, optimizer filtering, harden, no recompilation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jgraph import quant
from jgraph.core import ConfigError
from jgraph.testing import assert_no_recompile, assert_trees_close

X = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32))
Y = jnp.asarray([0, 1, 2, 1], jnp.int32)


class Net(nnx.Module):
    def __init__(self, rngs):
        self.convs = nnx.List(
            [
                nnx.Conv(1, 4, (3, 3), rngs=rngs),
                nnx.Conv(4, 8, (3, 3), strides=2, rngs=rngs),
                nnx.Conv(8, 8, (3, 3), rngs=rngs),
            ]
        )
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.hidden = nnx.Linear(8, 16, rngs=rngs)
        self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        for conv in self.convs:
            x = nnx.relu(conv(x))
        x = self.bn(x).mean(axis=(1, 2))
        return self.head(nnx.relu(self.hidden(x)))


def _model(**cfg):
    model = Net(nnx.Rngs(0))
    return quant.dgms_nnx(model, quant.DGMSConfig(bits=2, **cfg), X, key=jax.random.key(1))


def test_default_selection_in_call_order():
    model = _model()
    kinds = [type(c).__name__ for c in model.convs]
    assert kinds == ["Conv", "DGMSLayer", "DGMSLayer"]
    assert type(model.hidden).__name__ == "DGMSLayer"
    assert type(model.head).__name__ == "Linear"
    mix = nnx.state(model, quant.MixtureParam)
    assert len(jax.tree.leaves(mix)) == 3 * 4


def test_nothing_matches_lists_layers():
    with pytest.raises(ConfigError, match=r"selects no layer.*convs/0 \(conv\).*head \(dense\)"):
        _model(layers="nope")


def test_gradients_reach_kernel_and_mixture():
    model = _model()
    for layer in (model.convs[1], model.convs[2], model.hidden):
        layer.tau[...] = jnp.asarray(0.5)  # smooth assignment: gradient everywhere

    def loss(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(X), Y).mean()

    grads = nnx.jit(nnx.grad(loss))(model)
    g = grads.convs[1]
    for leaf in (g.layer.kernel, g.mu, g.sigma, g.pi, g.tau):
        arr = np.asarray(leaf[...])
        assert np.all(np.isfinite(arr))
        assert np.abs(arr).max() > 0


def test_optimizer_step_jitted_without_recompiling_and_harden():
    model = _model()
    before = np.asarray(model.convs[1].layer.kernel[...]).copy()
    opt = nnx.Optimizer(
        model, optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)), wrt=nnx.Param
    )

    @nnx.jit
    def step(model, opt, x, y):
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        value, grads = nnx.value_and_grad(loss)(model)
        opt.update(model, grads)
        return value

    step(model, opt, X, Y)
    xs = [X * (i + 2) for i in range(3)]
    with assert_no_recompile("nnx dgms step"):
        for x in xs:
            step(model, opt, x, Y)
    assert not np.array_equal(before, np.asarray(model.convs[1].layer.kernel[...]))
    model.eval()
    model.set_attributes(hard=True)
    plain, hardened = quant.harden_nnx(model)
    assert sorted(hardened.codebooks) == ["convs/1", "convs/2", "hidden"]
    for name, idx in hardened.indices.items():
        assert idx.max() < 4
        assert hardened.codebooks[name][0] == 0.0
    assert np.unique(np.asarray(plain.convs[1].kernel[...])).size <= 4
    # the plain hardened model computes exactly what the hard DGMS model does
    assert_trees_close(plain(X), model(X), kind="exact")
    # excluded layers untouched
    assert_trees_close(plain.head.kernel[...], model.head.kernel[...], kind="exact")
    report = quant.compression_report(hardened)
    assert report.quantized_weights == 4 * 8 * 9 + 8 * 8 * 9 + 8 * 16
