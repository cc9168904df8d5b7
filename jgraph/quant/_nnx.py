"""`dgms_nnx(model, config, ...)`: the DGMS transform for Flax NNX models.

NNX modules are mutable objects, so the transform is model surgery (as
`flax.nnx.LoRA` and penzai's LoRA injection do): each selected `nnx.Conv` /
`nnx.Linear` is replaced in place by a `DGMSLayer` that holds the original
layer and the layer's mixture as `MixtureParam` variables. `MixtureParam` is an
`nnx.Param` subtype, so ``nnx.state(model, nnx.Param)`` trains everything with
one optimizer and ``nnx.state(model, MixtureParam)`` (or an ``nnx.Optimizer``
``wrt=`` filter) treats the mixture apart — NNX's counterpart of Linen's
``"mixture"`` collection.

`DGMSLayer.__call__` swaps the kernel for its soft (``hard=False``) or hard
quantized value for the duration of the inner call and restores the latent
weights afterwards, so gradients reach both the kernel and the mixture by
plain autodiff. Layers are found in call order by tracing one forward pass
with `jax.eval_shape` on a clone (nothing runs); the default selection is the
Linen one: every Conv and Linear except the first Conv and the last Linear.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jgraph.quant._config import DGMSConfig
from jgraph.quant._gmm import codebook, hard_indices, hard_weights, soft_weights
from jgraph.quant._harden import Hardened
from jgraph.quant._kmeans import init_mixture
from jgraph.quant._select import choose_layers

__all__ = ["DGMSLayer", "MixtureParam", "dgms_nnx", "harden_nnx"]


class MixtureParam(nnx.Param):
    """A DGMS mixture parameter (μ, σ, π or τ); filter with ``nnx.state(model, MixtureParam)``."""


def _kind(node: Any) -> str | None:
    if isinstance(node, nnx.Conv | nnx.ConvTranspose):
        return "conv"
    if isinstance(node, nnx.Linear | nnx.LinearGeneral):
        return "dense"
    return None


class _Probe(nnx.Module):
    """Records the call order of the wrapped layer (used once, on a clone)."""

    def __init__(self, layer: nnx.Module, name: str, log: list[str]) -> None:
        self.layer = layer
        self.name = name
        self.log = log

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.name not in self.log:
            self.log.append(self.name)
        return self.layer(*args, **kwargs)


class DGMSLayer(nnx.Module):
    """An NNX Conv/Linear whose kernel is DGMS-quantized on every call.

    Attributes:
        layer: the wrapped layer (its ``kernel`` holds the latent weights).
        mu: MixtureParam [K-1]; ``sigma``, ``pi`` [K]; ``tau`` [].
        hard: use the argmax assignment (inference); set with
            ``model.set_attributes(hard=True)``.
        tau_scale: multiplies τ in soft mode (τ annealing; the training
            adapter sets it per step and resets it to 1).
    """

    def __init__(self, layer: nnx.Module, mixture: dict[str, Any], config: DGMSConfig) -> None:
        # Any: a Conv/Linear/LinearGeneral, all with a ``kernel`` Param (checked by the caller).
        self.layer: Any = layer
        self.mu = MixtureParam(jnp.asarray(mixture["mu"]))
        self.sigma = MixtureParam(jnp.asarray(mixture["sigma"]))
        self.pi = MixtureParam(jnp.asarray(mixture["pi"]))
        self.tau = MixtureParam(jnp.asarray(mixture["tau"]))
        self.hard = False
        self.tau_scale: Any = 1.0
        self.sigma_min = config.sigma_min
        self.tau_min = config.tau_min

    def mixture(self) -> dict[str, jax.Array]:
        return {
            "mu": self.mu[...],
            "sigma": self.sigma[...],
            "pi": self.pi[...],
            "tau": self.tau[...],
        }

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        w = self.layer.kernel[...]
        mix = self.mixture()
        if self.hard:
            q = hard_weights(w, mix, sigma_min=self.sigma_min)
        else:
            q = soft_weights(
                w, mix, sigma_min=self.sigma_min, tau_min=self.tau_min, tau_scale=self.tau_scale
            )
        self.layer.kernel[...] = q
        try:
            return self.layer(*args, **kwargs)
        finally:
            self.layer.kernel[...] = w  # the latent weights stay what the optimizer sees


def _parent_and_key(model: nnx.Module, path: tuple[Any, ...]) -> tuple[Any, Any]:
    parent: Any = model
    for p in path[:-1]:
        parent = parent[p] if isinstance(p, int) else getattr(parent, p)
    return parent, path[-1]


def _replace(model: nnx.Module, path: tuple[Any, ...], new: nnx.Module) -> None:
    parent, key = _parent_and_key(model, path)
    if isinstance(key, int):
        parent[key] = new
    else:
        setattr(parent, key, new)


def _layers(model: nnx.Module) -> dict[str, tuple[tuple[Any, ...], str, Any]]:
    # Any: the values are Conv/Linear/LinearGeneral layers (see `_kind`), each with a kernel.
    return {
        "/".join(map(str, path)): (tuple(path), kind, node)
        for path, node in nnx.iter_graph(model)
        if (kind := _kind(node)) is not None and path
    }


def dgms_nnx(
    model: nnx.Module, config: DGMSConfig | None, *sample_args: Any, key: jax.Array
) -> nnx.Module:
    """Replaces the selected Conv/Linear layers of an NNX model by `DGMSLayer`s, in place.

    Args:
        model: a pretrained NNX model.
        config: what to quantize; defaults to ``DGMSConfig()``.
        *sample_args: inputs for one traced forward pass that finds the call
            order (only shapes matter).
        key: PRNG key for the k-means++ seeding.

    Returns:
        ``model`` (modified in place, returned for chaining).

    Raises:
        ConfigError: the patterns select no layer (the message lists the layers).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> from jgraph import quant
        >>> model = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)), nnx.relu,
        ...                        nnx.Linear(8, 8, rngs=nnx.Rngs(1)), nnx.relu,
        ...                        nnx.Linear(8, 3, rngs=nnx.Rngs(2)))
        >>> model = quant.dgms_nnx(model, quant.DGMSConfig(bits=2), jnp.ones((1, 4)),
        ...                        key=jax.random.key(0))
        >>> type(model.layers[2]).__name__, model(jnp.ones((2, 4))).shape
        ('DGMSLayer', (2, 3))
    """
    config = config or DGMSConfig()
    found = _layers(model)
    # Call order: wrap every candidate in a probe on a clone and trace it once.
    clone = nnx.clone(model)
    order: list[str] = []
    for name, (path, _, node) in _layers(clone).items():
        _replace(clone, path, _Probe(node, name, order))
    graphdef, state = nnx.split(clone)
    jax.eval_shape(lambda s: nnx.merge(graphdef, s)(*sample_args), state)
    names = order + [n for n in found if n not in order]
    kinds = [found[n][1] for n in names]
    chosen = choose_layers(names, kinds, config, family="Conv/Linear")
    for i, (name, c) in enumerate(zip(names, chosen, strict=True)):
        if not c:
            continue
        path, _, layer = found[name]
        mix = init_mixture(
            layer.kernel[...],
            config.bits,
            key=jax.random.fold_in(key, i),
            empirical=config.init == "empirical",
            tau0=config.tau0,
            iters=config.kmeans_iters,
        )
        _replace(model, path, DGMSLayer(layer, mix, config))
    return model


def harden_nnx(model: nnx.Module) -> tuple[nnx.Module, Hardened]:
    """Hard-quantizes a `dgms_nnx` model: a plain model plus codebooks and indices.

    Returns:
        ``(plain_model, hardened)``: a copy of the model with every `DGMSLayer`
        replaced by its inner layer holding the hard kernel, and a `Hardened`
        whose ``variables`` are ``{"params": ..., "batch_stats": ...}`` pure
        dicts (so `compression_report` applies).
    """
    plain = nnx.clone(model)
    codebooks, indices = {}, {}
    for path, node in list(nnx.iter_graph(plain)):
        if not isinstance(node, DGMSLayer):
            continue
        mix = node.mixture()
        idx = np.asarray(hard_indices(node.layer.kernel[...], mix, sigma_min=node.sigma_min))
        book = np.asarray(codebook(mix), np.float32)
        name = "/".join(map(str, path))
        codebooks[name], indices[name] = book, idx.astype(np.uint8)
        node.layer.kernel[...] = jnp.asarray(book[idx], node.layer.kernel[...].dtype)
        _replace(plain, tuple(path), node.layer)
    variables = {"params": nnx.to_pure_dict(nnx.state(plain, nnx.Param))}
    stats = nnx.to_pure_dict(nnx.state(plain, nnx.BatchStat))
    if stats:
        variables["batch_stats"] = stats
    return plain, Hardened(variables, codebooks, indices)
