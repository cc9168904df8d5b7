"""Mixture initialization from pretrained weights: vectorized 1-D k-means (k-means++ seeding).

`init_mixture` follows the released DGMS code: cluster the layer's weights into
K groups; the group whose centre is nearest 0 becomes the pinned zero
component (π_0 = its share, σ_0 = its spread around 0); the others give
μ_k = centre, π_k = share, σ_k = sample std around the centre. The
``"empirical"`` variant keeps μ and π and sets every σ to 0.01.

Unlike the original (random data points as centres, an O(N) Python loop for
σ), seeding is k-means++ and every step is vectorized over weights and
clusters (`np.bincount` segment sums, an [n, K] distance matrix). It runs in
NumPy float64 on the host: initialization happens once per layer, and a jitted
version would recompile for every distinct kernel size. It is safe on
degenerate input: empty clusters keep their centre and get π = 0, clusters of
one point (where the n-1 formula divides by zero) get a fallback σ, and a
constant tensor yields finite values.
"""

from __future__ import annotations

import jax
import numpy as np

from jgraph.quant._gmm import Weights

__all__ = ["init_mixture", "kmeans_1d"]

_EMPIRICAL_SIGMA = 0.01  # the released code's `--empirical` value


def _rng(key: jax.Array) -> np.random.Generator:
    data = (
        jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    )
    return np.random.default_rng(np.asarray(data, np.uint32).reshape(-1).tolist())


def _kmeans_pp_seeds(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++: each next centre is drawn with probability ∝ squared distance."""
    n = x.shape[0]
    centres = np.empty(k, np.float64)
    centres[0] = x[rng.integers(n)]
    d2 = (x - centres[0]) ** 2
    for i in range(1, k):
        total = d2.sum()
        # All points already coincide with a centre (e.g. a constant tensor):
        # D² sampling is undefined, so draw uniformly; duplicates are harmless.
        j = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centres[i] = x[j]
        d2 = np.minimum(d2, (x - centres[i]) ** 2)
    return centres


def _assign(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)


def kmeans_1d(
    x: Weights | np.ndarray,
    k: int,
    *,
    key: jax.Array,
    iters: int = 100,
    tol: float = 1e-11,
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars, seeded with k-means++.

    Args:
        x: the values to cluster (flattened weights).
        k: number of clusters.
        key: PRNG key for the seeding.
        iters: cap on Lloyd iterations.
        tol: stop when the squared sum of centre shifts falls below it (the
            released code's criterion).

    Returns:
        (centres sorted ascending, float64 [k]; assignment of each value [n]).
        A cluster that ends up empty keeps its last centre.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> c, a = kmeans_1d(jnp.array([0.0, 0.1, 5.0, 5.1]), 2, key=jax.random.key(0))
        >>> [round(float(v), 2) for v in c], a.tolist()
        ([0.05, 5.05], [0, 0, 1, 1])
    """
    x = np.asarray(x, np.float64).reshape(-1)
    c = _kmeans_pp_seeds(x, k, _rng(key))
    for _ in range(iters):
        a = _assign(x, c)
        counts = np.bincount(a, minlength=k)
        sums = np.bincount(a, weights=x, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        shift = np.sum(np.abs(new - c)) ** 2
        c = new
        if shift < tol:
            break
    c = np.sort(c)
    return c, _assign(x, c)


def init_mixture(
    w: Weights | np.ndarray,
    bits: int,
    *,
    key: jax.Array,
    empirical: bool = False,
    tau0: float = 0.01,
    iters: int = 100,
) -> dict[str, np.ndarray]:
    """A layer's mixture initialized by k-means on its pretrained weights.

    Args:
        w: the pretrained kernel (any shape; it is flattened).
        bits: b; the mixture has K = 2**b components, the zero one included.
        key: PRNG key for k-means++ seeding.
        empirical: the released code's ``--empirical`` variant (every σ = 0.01).
        tau0: initial temperature.
        iters: cap on Lloyd iterations.

    Returns:
        ``{"mu": [K-1], "sigma": [K], "pi": [K], "tau": []}`` as float32 NumPy arrays.

    Example:
        >>> import jax
        >>> w = jax.random.normal(jax.random.key(0), (3, 3, 8, 8))
        >>> mix = init_mixture(w, 2, key=jax.random.key(1))
        >>> [mix[k].shape for k in ("mu", "sigma", "pi", "tau")]
        [(3,), (4,), (4,), ()]
    """
    k = 2**bits
    x = np.asarray(w, np.float64).reshape(-1)
    centres, a = kmeans_1d(x, k, key=key, iters=iters)
    counts = np.bincount(a, minlength=k).astype(np.float64)
    zero = int(np.argmin(np.abs(centres)))
    # With fewer distinct values than K some clusters are empty. If the cluster
    # nearest 0 is not itself near 0 (0 lies outside its spread), pinning it at
    # 0 would prune real weights (a constant tensor would become all zeros), so
    # an empty cluster becomes the (unused) zero component instead.
    spread = np.sqrt(np.bincount(a, (x - centres[a]) ** 2, k) / np.maximum(counts, 1))
    empty = counts == 0
    if empty.any() and abs(centres[zero]) > spread[zero]:
        zero = int(np.argmax(empty))
    # Spread around the centre for ordinary clusters, around 0 for the zero one.
    ref = np.where(np.arange(k) == zero, 0.0, centres)
    ss = np.bincount(a, (x - ref[a]) ** 2, k)
    ok = counts > 1
    sigma = np.sqrt(ss / np.where(ok, counts - 1.0, 1.0))
    # Fallback for clusters of 0 or 1 points, where n-1 is not a sample size:
    # the mean σ of the healthy clusters, or the layer's std / K if none is.
    healthy = ok & (sigma > 0)
    fallback = sigma[healthy].mean() if healthy.any() else x.std() / k
    sigma = np.where(healthy, sigma, fallback)
    if empirical:
        sigma = np.full(k, _EMPIRICAL_SIGMA)
    # Zero component first, then the others in ascending order of their centre.
    order = np.concatenate([[zero], np.delete(np.arange(k), zero)])
    f32 = np.float32
    return {
        "mu": centres[order][1:].astype(f32),
        "sigma": sigma[order].astype(f32),
        "pi": (counts / x.size)[order].astype(f32),
        "tau": np.asarray(tau0, f32),
    }
