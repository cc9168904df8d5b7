"""Small Linen models for the recipes: CIFAR-style ResNet-20, a CNN and an MLP.

Every model takes ``(x, train: bool)`` with ``x`` [batch, height, width,
channels] and returns logits [batch, classes], so one training loop drives them
all. ResNet-20 follows He et al. (2016) §4.2 as the DGMS code uses it: 3 stages
of 3 basic blocks with 16/32/64 channels and parameter-free "option A"
shortcuts (strided subsampling + zero channel padding), so it has 19 convs and
one Dense; on 8×8 digits the stages run at 8×8, 4×4 and 2×2.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, Float

from jgraph.core import check_choice

__all__ = ["MLP", "MODELS", "MODEL_NAMES", "ResNet20", "SmallCNN", "make_model"]

Images = Float[Array, "batch h w c"]
Logits = Float[Array, "batch classes"]


class _Block(nn.Module):
    features: int
    stride: int

    @nn.compact
    def __call__(self, x: Images, train: bool) -> Images:
        bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)  # noqa: E731
        s = (self.stride, self.stride)
        y = nn.Conv(self.features, (3, 3), s, padding=1, use_bias=False, name="conv1")(x)
        y = nn.relu(bn("bn1")(y))
        y = nn.Conv(self.features, (3, 3), padding=1, use_bias=False, name="conv2")(y)
        y = bn("bn2")(y)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            # Option A: subsample, then zero-pad the new channels (no parameters).
            shortcut = x[:, :: self.stride, :: self.stride, :]
            extra = self.features - x.shape[-1]
            shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        return nn.relu(y + shortcut)


class ResNet20(nn.Module):
    """ResNet-20 (option-A shortcuts) for small images.

    Attributes:
        num_classes: output logits.
        width: channels of the first stage (16 in the paper; stages double it).
    """

    num_classes: int = 10
    width: int = 16

    @nn.compact
    def __call__(self, x: Images, train: bool = False) -> Logits:
        x = nn.Conv(self.width, (3, 3), padding=1, use_bias=False, name="conv1")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn1")(x))
        for stage in range(3):
            for block in range(3):
                stride = 2 if stage > 0 and block == 0 else 1
                x = _Block(self.width * 2**stage, stride, name=f"layer{stage + 1}_{block}")(
                    x, train
                )
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)


class SmallCNN(nn.Module):
    """Three 3×3 convs (BatchNorm, ReLU) and two Dense layers: the demo's model."""

    num_classes: int = 10
    width: int = 16

    @nn.compact
    def __call__(self, x: Images, train: bool = False) -> Logits:
        for i, f in enumerate((self.width, 2 * self.width, 2 * self.width)):
            x = nn.Conv(
                f,
                (3, 3),
                strides=(1, 1) if i == 0 else (2, 2),
                padding=1,
                use_bias=False,
                name=f"conv{i + 1}",
            )(x)
            x = nn.relu(
                nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"bn{i + 1}")(x)
            )
        x = jnp.mean(x, axis=(1, 2))
        x = nn.relu(nn.Dense(4 * self.width, name="fc1")(x))
        return nn.Dense(self.num_classes, name="fc2")(x)


class MLP(nn.Module):
    """Flatten, two hidden Dense layers with ReLU, Dense output."""

    num_classes: int = 10
    hidden: int = 128

    @nn.compact
    def __call__(self, x: Images, train: bool = False) -> Logits:
        del train  # no BatchNorm or dropout; kept for a uniform signature
        x = jnp.reshape(x, (x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden, name="fc1")(x))
        x = nn.relu(nn.Dense(self.hidden, name="fc2")(x))
        return nn.Dense(self.num_classes, name="fc3")(x)


MODELS: dict[str, Callable[[int], nn.Module]] = {
    "resnet20": lambda n: ResNet20(num_classes=n),
    "cnn": lambda n: SmallCNN(num_classes=n),
    "mlp": lambda n: MLP(num_classes=n),
}


MODEL_NAMES: tuple[str, ...] = tuple(MODELS)
"""The names `make_model` builds (the recipes' and the CLI's model choices)."""


def make_model(name: str, num_classes: int) -> nn.Module:
    """Builds one of `MODELS` by name (``resnet20``, ``cnn``, ``mlp``)."""
    check_choice("model", name, tuple(MODELS))
    return MODELS[name](num_classes)
