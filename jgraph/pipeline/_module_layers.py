"""The Flax Linen layers of the module-graph zoo (`jgraph.pipeline._module_models`).

Each layer is one `ModuleNode`: it maps a leading batch axis per sample (no
batch statistics, no cross-sample mixing) and returns a single float array.
Fields are plain ints and strings so that ``repr(module)`` (the profiler's cache
key) names the layer completely. This module imports Flax at import time, so
`_module_models` imports it only inside functions.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "EmbeddingBag",
    "Fuse",
    "Head",
    "Interaction",
    "MeanPool",
    "MlpLayer",
    "Project",
    "TransformerBlock",
]

Array = Any


class Project(nn.Module):
    """Projects ``[B, seq, d_in]`` tokens to ``width`` and adds a learned position embedding."""

    width: int
    seq: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        pos = self.param("pos", nn.initializers.normal(0.02), (self.seq, self.width))
        return nn.Dense(self.width)(x) + pos[None]


class TransformerBlock(nn.Module):
    """A pre-LN Transformer encoder block: self-attention then a GELU MLP, both residual."""

    width: int
    heads: int
    ffn: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.width)(h)
        h = nn.LayerNorm()(x)
        h = nn.Dense(self.width)(jax.nn.gelu(nn.Dense(self.ffn)(h)))
        return x + h


class MeanPool(nn.Module):
    """Averages ``[B, seq, d]`` over the sequence axis to ``[B, d]`` (no parameters)."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return jnp.mean(x, axis=-2)


class Fuse(nn.Module):
    """Concatenates its inputs' last axes, then Dense(``width``) + ReLU."""

    width: int

    @nn.compact
    def __call__(self, *xs: Array) -> Array:
        return jax.nn.relu(nn.Dense(self.width)(jnp.concatenate(xs, axis=-1)))


class MlpLayer(nn.Module):
    """Dense(``features``) followed by ReLU."""

    features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return jax.nn.relu(nn.Dense(self.features)(x))


class Head(nn.Module):
    """The sink: Dense(``features``); with ``features == 1`` the output is ``[B]`` (one logit)."""

    features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        y = nn.Dense(self.features)(x)
        return y[..., 0] if self.features == 1 else y


class EmbeddingBag(nn.Module):
    """Looks up ``[B, bag]`` int indices in a ``[vocab, features]`` table and averages the bag."""

    vocab: int
    features: int

    @nn.compact
    def __call__(self, idx: Array) -> Array:
        return jnp.mean(nn.Embed(self.vocab, self.features)(idx), axis=-2)


class Interaction(nn.Module):
    """DLRM's dot interaction: the bottom MLP's output and every pairwise dot product.

    All inputs are ``[B, d]``; the output is ``[B, d + F (F - 1) / 2]`` for ``F`` inputs.
    """

    @nn.compact
    def __call__(self, *xs: Array) -> Array:
        t = jnp.stack(xs, axis=-2)  # [B, F, d]
        dots = jnp.einsum("bfd,bgd->bfg", t, t)
        i, j = np.triu_indices(len(xs), k=1)
        return jnp.concatenate([xs[0], dots[:, i, j]], axis=-1)
