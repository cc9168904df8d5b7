"""The DGMS mixture math: responsibilities, soft and hard quantized weights.

Per quantized layer the mixture has K = 2**b components: means μ_0 ≡ 0 (the
pruning component, not stored) and μ_1..μ_{K-1} (learnable, ``mu`` [K-1]),
standard deviations σ_0..σ_{K-1} (``sigma`` [K]), raw mixing weights
π_0..π_{K-1} (``pi`` [K], normalised as |π_k| / Σ_j |π_j|) and a temperature τ
(``tau`` []). For a weight w:

* log γ_k(w) = log π̂_k + log N(w | μ_k, σ_k) − logsumexp_j(...)  (log space);
* soft (training) weight  ŵ = Σ_k softmax_k(γ_k(w) / τ) μ_k, differentiated by
  plain autodiff (no straight-through estimator, as the released code);
* hard (inference) weight ŵ = μ_{k*}, k* = argmax_k γ_k(w).

σ and τ are clamped from below (``sigma_min``, ``tau_min``) so that a collapsed
component or weight decay on τ cannot produce inf/NaN.

References:
    Dong et al., "Finding the Task-Optimal Low-Bit Sub-Distribution in Deep
    Neural Networks", ICML 2022 (arXiv 2112.15139), and its released code
    (github.com/RunpeiDong/DGMS); Nowlan & Hinton, "Simplifying Neural Networks
    by Soft Weight-Sharing", 1992.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

__all__ = [
    "codebook",
    "hard_indices",
    "hard_weights",
    "log_responsibilities",
    "soft_weights",
]

Mixture = dict[str, Any]  # {"mu": [K-1], "sigma": [K], "pi": [K], "tau": []}
# Shape aliases (module-level so that linters do not parse the dim strings).
Weights = Float[Array, "*shape"]
Indices = Int[Array, "*shape"]
LogResponsibilities = Float[Array, "*shape mixture"]
_Joint = Float[Array, "n mixture"]
_Flat = Float[Array, "n"]
Codebook = Float[Array, "mixture"]
Scalar = Float[Array, ""]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
# Added to every |π_k|: ~1e-12 of a typical Σ|π| = 1, so it changes nothing
# measurable, but log π̂ and its gradient stay finite for π_k = 0.
_PI_EPS = 1e-12


def codebook(mixture: Mixture) -> Codebook:
    """The K shared values [0, μ_1, ..., μ_{K-1}]; index 0 is the pruning component."""
    mu = jnp.asarray(mixture["mu"])
    return jnp.concatenate([jnp.zeros((1,), mu.dtype), mu])


def _log_joint(w: _Flat, mixture: Mixture, sigma_min: float) -> _Joint:
    """log π̂_k + log N(w | μ_k, σ_k) for every weight and component."""
    means = codebook(mixture)
    sigma = jnp.maximum(jnp.asarray(mixture["sigma"]), sigma_min)
    # π̂_k = |π_k| / Σ|π_j|, smoothed by _PI_EPS so that an empty component
    # (π = 0) has a finite log-prior and an all-zero π has finite gradients.
    abs_pi = jnp.abs(jnp.asarray(mixture["pi"])) + _PI_EPS
    log_pi = jnp.log(abs_pi) - jnp.log(jnp.sum(abs_pi))
    z = (w[:, None] - means[None, :]) / sigma[None, :]
    log_pdf = -0.5 * z * z - jnp.log(sigma)[None, :] - _LOG_SQRT_2PI
    return log_pi[None, :] + log_pdf


def log_responsibilities(
    w: Weights, mixture: Mixture, *, sigma_min: float = 1e-5
) -> LogResponsibilities:
    """log γ_k(w): the log posterior of each component for each weight.

    Args:
        w: weights of any shape.
        mixture: the layer's mixture dict (``mu``, ``sigma``, ``pi``, ``tau``).
        sigma_min: floor on σ.

    Returns:
        log γ with a trailing axis of size K; ``exp`` sums to 1 over it.
    """
    flat = jnp.reshape(w, (-1,))
    lj = _log_joint(flat, mixture, sigma_min)
    lg = lj - jax.nn.logsumexp(lj, axis=-1, keepdims=True)
    return jnp.reshape(lg, (*jnp.shape(w), lg.shape[-1]))


def soft_weights(
    w: Weights,
    mixture: Mixture,
    *,
    sigma_min: float = 1e-5,
    tau_min: float = 1e-4,
    tau_scale: float | Scalar = 1.0,
) -> Weights:
    """The training weight Σ_k softmax_k(γ_k(w) / τ) μ_k (differentiable, no STE).

    Args:
        w: the latent full-precision weights.
        mixture: the layer's mixture dict.
        sigma_min: floor on σ.
        tau_min: floor on τ (applied before ``tau_scale``).
        tau_scale: multiplies the learned τ; a τ-annealing schedule passes
            a traced scalar that decays to 1 (so the step never recompiles).

    Returns:
        ŵ, the same shape and dtype as ``w``.

    Example:
        >>> import jax.numpy as jnp
        >>> mix = {"mu": jnp.array([1.0]), "sigma": jnp.array([0.1, 0.1]),
        ...        "pi": jnp.array([0.5, 0.5]), "tau": jnp.array(0.01)}
        >>> soft_weights(jnp.array([0.05, 0.9]), mix).round(3).tolist()
        [0.0, 1.0]
    """
    flat = jnp.reshape(w, (-1,))
    lj = _log_joint(flat, mixture, sigma_min)
    gamma = jnp.exp(lj - jax.nn.logsumexp(lj, axis=-1, keepdims=True))
    tau = jnp.maximum(jnp.asarray(mixture["tau"]), tau_min) * tau_scale
    r = jax.nn.softmax(gamma / tau, axis=-1)
    out = r @ codebook(mixture)
    return jnp.reshape(out, jnp.shape(w)).astype(jnp.asarray(w).dtype)


def hard_indices(w: Weights, mixture: Mixture, *, sigma_min: float = 1e-5) -> Indices:
    """k* = argmax_k γ_k(w) as int32 (0 is the zero component)."""
    flat = jnp.reshape(w, (-1,))
    idx = jnp.argmax(_log_joint(flat, mixture, sigma_min), axis=-1).astype(jnp.int32)
    return jnp.reshape(idx, jnp.shape(w))


def hard_weights(w: Weights, mixture: Mixture, *, sigma_min: float = 1e-5) -> Weights:
    """The inference weight μ_{k*}: at most K distinct values, 0 included."""
    idx = hard_indices(w, mixture, sigma_min=sigma_min)
    return codebook(mixture)[idx].astype(jnp.asarray(w).dtype)
