"""Models the tflite_export tests share: Linen and NNX, float and DGMS-hardened."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jgraph.quant import DGMSConfig, Hardened, dgms, dgms_nnx, harden, harden_nnx


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.gelu(nn.Dense(32)(x))
        x = nn.sigmoid(nn.Dense(16)(x))
        return nn.Dense(5)(x)


class CNN(nn.Module):
    """Conv + BatchNorm, a depthwise conv in a residual branch, a grouped conv, pooling, Dense."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(32, (3, 3), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        y = nn.Conv(32, (3, 3), feature_group_count=32)(x)
        y = nn.BatchNorm(use_running_average=not train)(y)
        x = nn.relu(x + y)
        x = nn.Conv(64, (3, 3), strides=2, feature_group_count=2)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.avg_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(10)(x)


class NNXNet(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, 32, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(32, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.fc1 = nnx.Linear(32 * 4 * 4, 64, rngs=rngs)
        self.fc2 = nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn(self.conv(x)))
        x = self.drop(nnx.max_pool(x, (2, 2), (2, 2)))
        x = nnx.relu(self.fc1(x.reshape(x.shape[0], -1)))
        return self.fc2(x)


IMAGE = (1, 8, 8, 3)


def _randomize_batchnorm(variables: dict, seed: int) -> dict:
    """Trained-looking BatchNorm: per-channel scales and statistics, so folding matters."""
    rng = np.random.default_rng(seed)

    def one(path, a):
        p = jax.tree_util.keystr(path)
        if "BatchNorm" not in p:
            return a
        if "var" in p or "scale" in p:
            return jnp.asarray(rng.uniform(0.5, 2.0, a.shape), a.dtype)
        return jnp.asarray(rng.normal(0.0, 0.3, a.shape), a.dtype)

    return jax.tree_util.tree_map_with_path(one, variables)


@pytest.fixture(scope="module")
def cnn_hardened() -> tuple[CNN, Hardened]:
    """A 4-bit DGMS CNN (k-means mixtures on random weights), hardened."""
    model = CNN()
    x = jnp.zeros(IMAGE)
    fp = _randomize_batchnorm(model.init(jax.random.key(0), x), seed=1)
    cfg = DGMSConfig(bits=4)
    variables = dgms(model, cfg).init(fp, x, key=jax.random.key(2))
    return model, harden(variables, cfg)


@pytest.fixture(scope="module")
def nnx_hardened() -> tuple[nnx.Module, Hardened]:
    """A 2-bit DGMS NNX model with every layer quantized (first and last too), hardened."""
    model = NNXNet(rngs=nnx.Rngs(0))
    quantized = dgms_nnx(
        model, DGMSConfig(bits=2, layers=".*"), jnp.zeros(IMAGE), key=jax.random.key(3)
    )
    return harden_nnx(quantized)
