"""Training loop: exact resume from Orbax checkpoints, optimizer presets, τ annealing, BN re-estimation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jgraph import quant
from jgraph.core import ConfigError
from jgraph.quant._models import SmallCNN
from jgraph.quant._train import _tau_scale
from jgraph.quant.training import linen_apply, reestimate_batch_stats, train
from jgraph.testing import assert_trees_close


@pytest.fixture(scope="module")
def setup():
    data = quant.recipes.load_dataset("digits")
    x, y = data.x_train[:128], data.y_train[:128]
    xt, yt = data.x_test[:64], data.y_test[:64]
    model = SmallCNN(num_classes=10, width=4)
    v = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(0), x[:1])
    qmodel = quant.dgms(model, quant.DGMSConfig(bits=2))
    qv = qmodel.init(v, x[:1], key=jax.random.key(1), train=False)
    return qmodel, qv, (x, y, xt, yt)


RECIPE = quant.recipes.Recipe(epochs=3, batch_size=64, tau_start=0.05)


@pytest.mark.slow  # three training runs
def test_resume_continues_exactly(setup, tmp_path):
    # Pinned to the CPU, whose XLA kernels are deterministic: on a GPU even two
    # uninterrupted runs differ in the last bits (reduction order of atomics)
    # unless XLA_FLAGS=--xla_gpu_deterministic_ops=true. This test is about the
    # resume logic (state, schedule position, batch order), so it needs a
    # deterministic backend to be exact.
    qmodel, qv, data = setup
    qv = jax.device_put(qv, jax.devices("cpu")[0])
    apply = linen_apply(qmodel)
    full = train(apply, qv, *data, RECIPE, seed=3, ckpt_dir=tmp_path / "a")
    part = train(apply, qv, *data, RECIPE, seed=3, ckpt_dir=tmp_path / "b", stop_after=1)
    assert [h["epoch"] for h in part.history] == [1]
    resumed = train(apply, qv, *data, RECIPE, seed=3, ckpt_dir=tmp_path / "b", resume=True)
    assert resumed.resumed_from == 1
    assert resumed.history == full.history
    assert_trees_close(resumed.variables, full.variables, kind="exact")
    # negative check: the interrupted run really stopped short of the full one
    assert not np.array_equal(
        np.asarray(part.variables["mixture"]["conv2"]["mu"]),
        np.asarray(full.variables["mixture"]["conv2"]["mu"]),
    )


@pytest.mark.slow  # a training run before the refusal
def test_resume_with_other_settings_is_refused(setup, tmp_path):
    qmodel, qv, data = setup
    apply = linen_apply(qmodel)
    train(apply, qv, *data, RECIPE, seed=3, ckpt_dir=tmp_path, stop_after=1)
    with pytest.raises(ConfigError, match=r"already holds checkpoints \(epoch 1\).*--resume"):
        train(apply, qv, *data, RECIPE, seed=3, ckpt_dir=tmp_path)
    other = dataclasses.replace(RECIPE, lr=0.5)
    with pytest.raises(
        ConfigError, match=r"different settings \(recipe, seed, data, model or bits\)"
    ):
        train(apply, qv, *data, other, seed=3, ckpt_dir=tmp_path, resume=True)


def _one_update(recipe):
    opt = quant.make_optimizer(recipe, total_steps=10)
    tree = {"params": {"w": jnp.ones(3)}, "mixture": {"mu": jnp.ones(2)}}
    zeros = jax.tree.map(jnp.zeros_like, tree)
    updates, _ = opt.update(zeros, opt.init(tree), tree)
    return updates


def test_original_preset_decays_every_parameter():
    r = quant.recipes.Recipe.original()
    assert (r.optimizer, r.lr, r.momentum, r.weight_decay) == ("sgd", 2e-5, 0.9, 5e-4)
    assert r.decay_mixture
    assert not r.bn_reestimate
    assert r.tau_start is None
    assert quant.DGMSConfig().tau0 == 0.01
    upd = _one_update(r)
    # with zero gradients, the only update is weight decay: lr0 * wd * param, lr0 = 2e-5 / 25
    expected = -(2e-5 / 25) * 5e-4
    np.testing.assert_allclose(np.asarray(upd["params"]["w"]), expected, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(upd["mixture"]["mu"]), expected, rtol=1e-5)


def test_no_decay_on_mixture_flag():
    upd = _one_update(dataclasses.replace(quant.recipes.Recipe.original(), decay_mixture=False))
    assert np.all(np.asarray(upd["mixture"]["mu"]) == 0)
    assert np.all(np.asarray(upd["params"]["w"]) != 0)


def test_tau_annealing_schedule():
    recipe = quant.recipes.Recipe(tau_start=1.0)
    scale = [float(_tau_scale(recipe, 0.01, jnp.asarray(s), 100)) for s in (0, 35, 70, 100)]
    np.testing.assert_allclose(scale[0], 100.0, rtol=1e-5)  # τ starts at 1.0 = 100 τ0
    assert scale[0] > scale[1] > scale[2]
    assert scale[2] == pytest.approx(1.0)
    assert scale[3] == pytest.approx(1.0)
    assert float(_tau_scale(quant.recipes.Recipe(), 0.01, jnp.asarray(0), 100)) == 1.0


@pytest.mark.parametrize("method", ["ema", "average"])
def test_bn_reestimation_with_hard_weights(setup, method):
    qmodel, qv, (x, *_) = setup
    hard_train = linen_apply(qmodel, hard_in_train=True)
    new = reestimate_batch_stats(hard_train, qv, x, batch_size=64, passes=8, method=method)
    # the training adapter (soft weights in train mode) is switched to hard weights
    soft_train = linen_apply(qmodel)
    auto = reestimate_batch_stats(soft_train, qv, x, batch_size=64, passes=8, method=method)
    assert_trees_close(auto, new, kind="exact")
    before = np.asarray(qv["batch_stats"]["bn2"]["mean"])
    after = np.asarray(new["batch_stats"]["bn2"]["mean"])
    assert np.all(np.isfinite(after))
    assert not np.allclose(before, after)
    # The EMA converges to the hard-weight batch statistics of the data.
    _, upd = qmodel.apply(qv, x, hard=True, train=True, mutable=["batch_stats"])
    # one full-data batch moves the stats by 10% toward that batch's mean:
    target = (np.asarray(upd["batch_stats"]["bn2"]["mean"]) - 0.9 * before) / 0.1
    # EMA: 16 updates at momentum 0.9 leave 0.9**16 = 19% of the old value, plus batch
    # noise; the average of the two half-batches' means is the full batch's mean.
    tol = 0.2 if method == "ema" else 1e-3
    assert np.abs(after - target).max() < tol * np.abs(target - before).max()
    assert_trees_close(new["params"], qv["params"], kind="exact")


def test_make_optimizer_works_in_chain():
    opt = optax.chain(
        optax.clip_by_global_norm(1.0), quant.make_optimizer(quant.recipes.Recipe(), 5)
    )
    tree = {"params": {"w": jnp.ones(3)}, "mixture": {"mu": jnp.ones(2)}}
    u, _ = opt.update(jax.tree.map(jnp.ones_like, tree), opt.init(tree), tree)
    assert np.all(np.asarray(u["mixture"]["mu"]) < 0)
