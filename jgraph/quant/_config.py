"""Configuration of the DGMS transform (`DGMSConfig`) and of its training recipe (`Recipe`).

Both are frozen, keyword-only dataclasses validated in ``__post_init__``: a bad
value raises `jgraph.core.ConfigError` naming the field, the value and the fix,
before anything is traced. They are hashable, so they can be static jit args.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal, get_args

from jgraph.core import ConfigError, check_choice, check_int, check_number

__all__ = [
    "INIT_METHODS",
    "MIXTURE",
    "RECIPE_PRESETS",
    "DGMSConfig",
    "InitMethod",
    "Recipe",
    "RecipePreset",
]

MIXTURE = "mixture"
"""The Flax variable collection that holds every layer's mixture (μ, σ, π, τ)."""

InitMethod = Literal["kmeans", "empirical"]
INIT_METHODS: tuple[InitMethod, ...] = get_args(InitMethod)


def _check_regex(field: str, value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ConfigError(field, value, "must be a regex string or None", "pass e.g. 'Conv_.*'")
    try:
        re.compile(value)
    except re.error as exc:
        raise ConfigError(
            field, value, f"is not a valid regex ({exc})", "fix the pattern"
        ) from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class DGMSConfig:
    """What DGMS quantizes and how its mixtures are initialized and clamped.

    Attributes:
        bits: index width b; each quantized layer gets K = 2**b mixture
            components, one of them pinned at zero (1 to 8).
        layers: regex over module paths (``"block1/Conv_0"``) selecting the
            layers to quantize (``re.search``). None is the paper's default:
            every Conv and Dense except the first Conv (the first Dense
            when the model has no Conv) and the last Dense.
        exclude: regex of module paths to leave in full precision, applied after
            ``layers``.
        init: ``"kmeans"`` (σ from each cluster's spread, as the released code)
            or ``"empirical"`` (same means and mixing weights, every σ = 0.01).
        tau0: initial temperature τ of the responsibility softmax (0.01 in the
            released code).
        sigma_min: floor on every σ; keeps densities finite when a component
            collapses.
        tau_min: floor on τ; weight decay on τ can otherwise drive it to 0.
        kmeans_iters: cap on Lloyd iterations of the 1-D k-means initializer.
    """

    bits: int = 4
    layers: str | None = None
    exclude: str | None = None
    init: InitMethod = "kmeans"
    tau0: float = 0.01
    sigma_min: float = 1e-5
    tau_min: float = 1e-4
    kmeans_iters: int = 100

    def __post_init__(self) -> None:
        check_int(
            "DGMSConfig.bits", self.bits, minimum=1, maximum=8, fix="use 1-8 bits (K = 2**bits)"
        )
        _check_regex("DGMSConfig.layers", self.layers)
        _check_regex("DGMSConfig.exclude", self.exclude)
        check_choice("DGMSConfig.init", self.init, INIT_METHODS)
        check_number("DGMSConfig.tau0", self.tau0, minimum=0.0, strict_minimum=True)
        check_number("DGMSConfig.sigma_min", self.sigma_min, minimum=0.0, strict_minimum=True)
        check_number("DGMSConfig.tau_min", self.tau_min, minimum=0.0, strict_minimum=True)
        if self.tau0 < self.tau_min:
            raise ConfigError(
                "DGMSConfig.tau0", self.tau0, f"is below tau_min={self.tau_min}", "raise tau0"
            )
        check_int("DGMSConfig.kmeans_iters", self.kmeans_iters, minimum=1)

    @property
    def num_components(self) -> int:
        """K = 2**bits, the zero component included."""
        return 2**self.bits


Optimizer = Literal["sgd", "adam"]
RecipePreset = Literal["jgraph", "original"]
RECIPE_PRESETS: tuple[RecipePreset, ...] = get_args(RecipePreset)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """How a DGMS (or full-precision) run trains.

    `Recipe.original()` reproduces the released DGMS code; the defaults are
    jgraph's recipe for short runs, which switches on the three improvements.

    Attributes:
        epochs: passes over the training set.
        batch_size: examples per step.
        optimizer: ``"sgd"`` (momentum, as the paper) or ``"adam"``.
        lr: peak learning rate of the one-cycle schedule (PyTorch ``OneCycleLR``
            defaults: 30% warm-up, cosine, start lr/25, end lr/25e4).
        momentum: SGD momentum.
        weight_decay: L2 coefficient added to the gradient (PyTorch SGD style).
        decay_mixture: whether weight decay also applies to μ, σ, π, τ
            (True in the released code; False is an improvement).
        mixture_lr_scale: the mixture parameters' lr is ``lr * mixture_lr_scale``.
        tau_start: if set, τ is annealed from ``tau_start`` down to the learned
            τ over training (an improvement); None keeps the learned τ throughout.
        bn_reestimate: after training, re-estimate BatchNorm statistics with
            the hard weights used at inference (an improvement).
        bn_passes: passes over the training set for that re-estimation.
    """

    epochs: int = 15
    batch_size: int = 64
    optimizer: Optimizer = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    decay_mixture: bool = False
    mixture_lr_scale: float = 1.0
    tau_start: float | None = None
    bn_reestimate: bool = True
    bn_passes: int = 3

    def __post_init__(self) -> None:
        check_int("Recipe.epochs", self.epochs, minimum=1)
        check_int("Recipe.batch_size", self.batch_size, minimum=1)
        check_choice("Recipe.optimizer", self.optimizer, get_args(Optimizer))
        check_number("Recipe.lr", self.lr, minimum=0.0, strict_minimum=True)
        check_number("Recipe.momentum", self.momentum, minimum=0.0, maximum=1.0)
        check_number("Recipe.weight_decay", self.weight_decay, minimum=0.0)
        check_number("Recipe.mixture_lr_scale", self.mixture_lr_scale, minimum=0.0)
        if self.tau_start is not None:
            check_number("Recipe.tau_start", self.tau_start, minimum=0.0, strict_minimum=True)
        check_int("Recipe.bn_passes", self.bn_passes, minimum=1)

    @classmethod
    def preset(cls, name: RecipePreset, *, epochs: int = 15, batch_size: int = 64) -> Recipe:
        """A named recipe: ``"jgraph"`` (the defaults) or ``"original"`` (`Recipe.original`).

        Example:
            >>> Recipe.preset("original", epochs=2).optimizer
            'sgd'
        """
        check_choice("Recipe.preset", name, RECIPE_PRESETS)
        if name == "original":
            return cls.original(epochs=epochs, batch_size=batch_size)
        return cls(epochs=epochs, batch_size=batch_size)

    @classmethod
    def original(cls, *, epochs: int = 15, batch_size: int = 128) -> Recipe:
        """The released code's recipe: SGD momentum 0.9, lr 2e-5 one-cycle, wd 5e-4 on all.

        τ0 = 0.01 lives in `DGMSConfig` (its default); no τ annealing, weight
        decay on the mixture too, and BatchNorm statistics left as the soft
        weights trained them.
        """
        return cls(
            epochs=epochs,
            batch_size=batch_size,
            optimizer="sgd",
            lr=2e-5,
            momentum=0.9,
            weight_decay=5e-4,
            decay_mixture=True,
            mixture_lr_scale=1.0,
            tau_start=None,
            bn_reestimate=False,
        )
