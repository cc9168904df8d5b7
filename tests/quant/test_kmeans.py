"""k-means initialization: the released code's rules for μ, σ, π, the zero component and `empirical`."""

import jax
import numpy as np
import pytest

from jgraph import quant
from jgraph.testing import assert_trees_close


def _groups():
    rng = np.random.default_rng(0)
    parts = [
        -1.0 + 0.01 * rng.standard_normal(10),
        0.01 + 0.01 * rng.standard_normal(20),
        1.0 + 0.01 * rng.standard_normal(30),
        2.0 + 0.01 * rng.standard_normal(40),
    ]
    return parts, rng.permutation(np.concatenate(parts)).astype(np.float32)


def test_init_follows_the_released_rules():
    parts, w = _groups()
    mix = quant.mixture.init_mixture(w, 2, key=jax.random.key(0))
    # References in float64 from the float32 weights the init sees; compared at the table's
    # f32 forward tolerance (the init stores float32 statistics).
    p64 = [p.astype(np.float32).astype(np.float64) for p in parts]
    means = [p.mean() for p in p64]
    # the cluster nearest 0 becomes the pinned zero component; the others keep their centre
    assert_trees_close(np.asarray(mix["mu"]), np.float32([means[0], means[2], means[3]]))
    np.testing.assert_allclose(mix["pi"], [0.2, 0.1, 0.3, 0.4], rtol=1e-6)
    # σ0 is the spread around 0 (not around its centre), with n - 1
    assert_trees_close(np.asarray(mix["sigma"][0]), np.float32(np.sqrt(np.sum(p64[1] ** 2) / 19)))
    assert_trees_close(
        np.asarray(mix["sigma"][1:]), np.float32([np.std(p64[i], ddof=1) for i in (0, 2, 3)])
    )
    assert float(mix["tau"]) == pytest.approx(0.01)


def test_empirical_variant_sets_every_sigma():
    _, w = _groups()
    mix = quant.mixture.init_mixture(w, 2, key=jax.random.key(0), empirical=True)
    np.testing.assert_array_equal(mix["sigma"], np.full(4, 0.01, np.float32))
    base = quant.mixture.init_mixture(w, 2, key=jax.random.key(0))
    np.testing.assert_array_equal(mix["mu"], base["mu"])  # same means and π
    np.testing.assert_array_equal(mix["pi"], base["pi"])


def test_kmeans_is_deterministic_per_key_and_handles_tiny_clusters():
    w = np.float32([0.0, 0.0, 0.0, 5.0])  # a cluster of one point: n - 1 = 0
    a = quant.mixture.init_mixture(w, 1, key=jax.random.key(3))
    b = quant.mixture.init_mixture(w, 1, key=jax.random.key(3))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert np.all(np.isfinite(a["sigma"]))
    assert np.all(a["sigma"] > 0)
    np.testing.assert_array_equal(a["mu"], [5.0])
    centres, assign = quant.mixture.kmeans_1d(w, 2, key=jax.random.key(0))
    assert centres.tolist() == [0.0, 5.0]
    assert assign.tolist() == [0, 0, 0, 1]
