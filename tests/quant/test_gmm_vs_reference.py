"""The mixture math against scipy (logsumexp, normal pdf) and its limits."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp, softmax
from scipy.stats import norm

from jgraph import quant
from jgraph.testing import assert_trees_close


def _mixture(k, *, seed=0, tau=0.01):
    rng = np.random.default_rng(seed)
    return {
        "mu": np.sort(rng.normal(0, 0.2, k - 1)).astype(np.float32),
        "sigma": rng.uniform(0.02, 0.1, k).astype(np.float32),
        "pi": rng.uniform(0.1, 1.0, k).astype(np.float32) * rng.choice([-1, 1], k),
        "tau": np.float32(tau),
    }


def _reference(w, mix):
    """float64 scipy version of the released code's formulas (|π| normalised)."""
    w = np.asarray(w, np.float64).reshape(-1)
    means = np.concatenate([[0.0], mix["mu"].astype(np.float64)])
    pi = np.abs(mix["pi"].astype(np.float64))
    pi = pi / pi.sum()
    log_joint = np.log(pi)[None, :] + norm.logpdf(
        w[:, None], means[None, :], mix["sigma"].astype(np.float64)[None, :]
    )
    log_gamma = log_joint - logsumexp(log_joint, axis=1, keepdims=True)
    r = softmax(np.exp(log_gamma) / float(mix["tau"]), axis=1)
    return log_gamma, r @ means, means[np.argmax(log_joint, axis=1)]


@pytest.mark.parametrize("k", [2, 4, 16])
def test_math_matches_scipy(k):
    mix = _mixture(k, seed=k)
    w = np.random.default_rng(1).normal(0, 0.2, (3, 3, 4, 5)).astype(np.float32)
    log_gamma, soft, hard = _reference(w, mix)
    with jax.default_matmul_precision("highest"):
        got_lg = quant.mixture.log_responsibilities(jnp.asarray(w), mix)
        got_soft = quant.mixture.soft_weights(jnp.asarray(w), mix)
        got_hard = quant.mixture.hard_weights(jnp.asarray(w), mix)
    assert got_lg.shape == (*w.shape, k)
    # log γ of very unlikely components reaches ~-1e3 in float32, where only
    # relative precision is meaningful: compare probabilities instead for those.
    assert_trees_close(np.exp(got_lg).reshape(-1, k), np.exp(log_gamma), kind="forward")
    assert_trees_close(got_soft.reshape(-1), soft.astype(np.float32), kind="forward")
    assert_trees_close(got_hard.reshape(-1), hard.astype(np.float32), kind="exact")
    # Normal pdf itself: one component, π = 1, log γ ≡ 0, density from scipy.
    assert np.all(np.isfinite(np.asarray(got_lg)))


def test_gaussian_density_matches_scipy_pdf():
    # With two far-apart components of equal π, γ_1/γ_0 = pdf_1/pdf_0 (scipy).
    mix = {
        "mu": np.float32([0.3]),
        "sigma": np.float32([0.2, 0.15]),
        "pi": np.float32([1.0, 1.0]),
        "tau": np.float32(0.01),
    }
    w = np.linspace(-0.2, 0.5, 11).astype(np.float32)
    lg = np.asarray(quant.mixture.log_responsibilities(jnp.asarray(w), mix), np.float64)
    ratio = norm.pdf(w, 0.3, 0.15) / norm.pdf(w, 0.0, 0.2)
    assert_trees_close(
        (lg[:, 1] - lg[:, 0]).astype(np.float32), np.log(ratio).astype(np.float32), kind="forward"
    )


def test_soft_tends_to_hard_as_tau_goes_to_zero():
    mix = _mixture(8, seed=3)
    w = jnp.asarray(np.random.default_rng(2).normal(0, 0.2, 2000).astype(np.float32))
    hard = np.asarray(quant.mixture.hard_weights(w, mix))
    gaps = []
    for tau in (1.0, 0.1, 0.01, 1e-3):
        soft = np.asarray(
            quant.mixture.soft_weights(w, {**mix, "tau": np.float32(tau)}, tau_min=1e-6)
        )
        gaps.append(float(np.mean(np.abs(soft - hard))))
    assert all(a > b for a, b in itertools.pairwise(gaps)), gaps  # strictly shrinking
    assert gaps[-1] < 1e-3 * gaps[0]
    assert gaps[0] > 1e-3  # negative check: at τ = 1 soft and hard really differ


@pytest.mark.parametrize(
    "w",
    [
        np.full((4, 4), 0.3, np.float32),  # constant
        np.zeros((16,), np.float32),  # all zero
        np.repeat(np.float32([-0.5, 0.0, 0.5]), 5),  # fewer distinct values than K
    ],
    ids=["constant", "zeros", "three-values"],
)
@pytest.mark.parametrize("init", ["kmeans", "empirical"])
def test_no_nan_on_degenerate_weights(w, init):
    mix = quant.mixture.init_mixture(
        jnp.asarray(w), 4, key=jax.random.key(0), empirical=init == "empirical"
    )
    assert all(np.all(np.isfinite(np.asarray(v))) for v in mix.values())

    def loss(w, mix):
        return jnp.sum(quant.mixture.soft_weights(w, mix) ** 2)

    val, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(jnp.asarray(w), mix)
    assert np.isfinite(float(val))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
    hard = np.asarray(jax.jit(quant.mixture.hard_weights)(jnp.asarray(w), mix))
    assert np.all(np.isfinite(hard))
    if init == "kmeans" and np.unique(w).size > 1:
        np.testing.assert_array_equal(hard, w)  # k-means found the exact values


def test_clamps_keep_zero_sigma_and_tau_finite():
    mix = {
        "mu": np.float32([0.5]),
        "sigma": np.float32([0.0, 0.0]),
        "pi": np.float32([0.0, 0.0]),
        "tau": np.float32(0.0),
    }
    w = jnp.asarray(np.float32([0.0, 0.2, 0.5]))
    g = jax.jit(jax.grad(lambda w, m: jnp.sum(quant.mixture.soft_weights(w, m)), argnums=(0, 1)))(
        w, mix
    )
    assert np.all(np.isfinite(np.asarray(jax.jit(quant.mixture.soft_weights)(w, mix))))
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(g))
