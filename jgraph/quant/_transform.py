"""`dgms(model, config)`: the DGMS weight transform for Flax Linen models.

Data flow:

1. ``qmodel = dgms(model, config)`` wraps any Linen module; nothing is traced.
2. ``qmodel.init(variables, *sample_args, key=key)`` finds the model's Conv and
   Dense layers in call order (one `jax.eval_shape` of ``model.init`` under
   `flax.linen.intercept_methods`), selects them by module-path regex (default:
   all but the first Conv and the last Dense), and adds a ``"mixture"``
   collection initialized by k-means on the pretrained kernels. The mixture
   collection mirrors the params tree: ``variables["mixture"]["block1"]["Conv_0"]
   == {"mu", "sigma", "pi", "tau"}``.
3. ``qmodel.apply(variables, *args, hard=False, **kwargs)`` replaces every
   selected kernel by its soft (training) or hard (inference) quantized value
   and calls ``model.apply`` — the Linen equivalent of `nn.map_variables` at the
   root, so gradients reach both ``params`` and ``mixture`` by plain autodiff.
   Train ``{"params", "mixture"}`` with one optax optimizer, or separately
   with `optax.multi_transform` (see `jgraph.quant.training.make_optimizer`).
4. `jgraph.quant.harden` turns the variables into hard weights + codebooks +
   b-bit indices for deployment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jgraph.core import ConfigError
from jgraph.quant._config import MIXTURE, DGMSConfig
from jgraph.quant._gmm import hard_weights, soft_weights
from jgraph.quant._kmeans import init_mixture
from jgraph.quant._select import choose_layers

__all__ = ["DGMS", "Layer", "dgms", "iter_mixtures", "select_layers"]

LayerKind = Literal["conv", "dense"]
_MIXTURE_KEYS = frozenset({"mu", "sigma", "pi", "tau"})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Layer:
    """A Conv or Dense layer of a model, in call order.

    Attributes:
        path: module path, e.g. ``("layer1", "block0", "conv1")``.
        kind: ``"conv"`` or ``"dense"``.
        shape: the kernel's shape.
        selected: whether DGMS quantizes it.
    """

    path: tuple[str, ...]
    kind: LayerKind
    shape: tuple[int, ...]
    selected: bool

    @property
    def name(self) -> str:
        return "/".join(self.path)


def _kind(module: nn.Module) -> LayerKind | None:
    if isinstance(module, nn.Conv | nn.ConvTranspose | nn.ConvLocal):
        return "conv"
    if isinstance(module, nn.Dense | nn.DenseGeneral):
        return "dense"
    return None


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: Mapping[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of ``tree`` with ``tree[path] = value`` (only the spine is copied)."""
    out = dict(tree)
    if len(path) == 1:
        out[path[0]] = value
    else:
        out[path[0]] = _set(tree.get(path[0], {}), path[1:], value)
    return out


def iter_mixtures(mixture: Mapping[str, Any]) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """Yields ``(layer_path, {"mu", "sigma", "pi", "tau"})`` for each quantized layer."""

    def walk(node: Mapping[str, Any], prefix: tuple[str, ...]) -> Iterator[tuple]:
        if set(node) == _MIXTURE_KEYS:
            yield prefix, dict(node)
            return
        for name, child in node.items():
            if isinstance(child, Mapping):
                yield from walk(child, (*prefix, name))

    yield from walk(mixture, ())


def select_layers(
    model: nn.Module, config: DGMSConfig, *args: Any, **kwargs: Any
) -> tuple[Layer, ...]:
    """Lists the model's Conv and Dense layers in call order, marking those DGMS quantizes.

    Args:
        model: a Linen module.
        config: layer selection comes from ``config.layers`` / ``config.exclude``.
        *args: sample inputs for ``model.init`` (only shapes matter; nothing runs).
        **kwargs: keyword arguments for ``model.init``.

    Returns:
        Every Conv/Dense layer with a ``kernel``, ``selected`` set per the config.

    Raises:
        ConfigError: the patterns select no layer; the message lists the layers
            that exist.
    """
    seen: dict[tuple[str, ...], LayerKind] = {}

    def record(f: Any, a: Any, kw: Any, ctx: nn.module.InterceptorContext) -> Any:
        kind = _kind(ctx.module)
        if ctx.method_name == "__call__" and kind is not None:
            seen.setdefault(tuple(ctx.module.path), kind)
        return f(*a, **kw)

    with nn.intercept_methods(record):
        shapes = jax.eval_shape(lambda k: model.init(k, *args, **kwargs), jax.random.key(0))
    params = shapes["params"]
    found = []
    for path, kind in seen.items():
        try:
            kernel = _get(params, (*path, "kernel"))
        except (KeyError, TypeError):
            continue  # a layer without a kernel of its own (e.g. a shared/lifted one)
        found.append((path, kind, tuple(kernel.shape)))
    names = ["/".join(p) for p, _, _ in found]
    chosen = choose_layers(names, [k for _, k, _ in found], config, family="Conv/Dense")
    return tuple(
        Layer(path=p, kind=k, shape=s, selected=c)
        for (p, k, s), c in zip(found, chosen, strict=True)
    )


@dataclasses.dataclass(frozen=True)
class DGMS:
    """A Linen model whose selected kernels are DGMS-quantized (build with `dgms`).

    Attributes:
        model: the wrapped Linen module (unchanged).
        config: the `DGMSConfig`.
    """

    model: nn.Module
    config: DGMSConfig

    def layers(self, *args: Any, **kwargs: Any) -> tuple[Layer, ...]:
        """The model's Conv/Dense layers and which ones are selected (see `select_layers`)."""
        return select_layers(self.model, self.config, *args, **kwargs)

    def init(
        self, variables: Mapping[str, Any], *args: Any, key: jax.Array, **kwargs: Any
    ) -> dict[str, Any]:
        """Adds the k-means-initialized ``"mixture"`` collection to pretrained variables.

        Args:
            variables: the full-precision model's variables (``params`` and any
                other collections such as ``batch_stats``).
            *args: sample inputs (shapes only) used to find the layers.
            key: PRNG key for k-means++ seeding (split per layer).
            **kwargs: keyword arguments for ``model.init`` (e.g. ``train=False``).

        Returns:
            ``variables`` plus ``variables["mixture"]``.
        """
        layers = [layer for layer in self.layers(*args, **kwargs) if layer.selected]
        mixture: dict[str, Any] = {}
        for i, layer in enumerate(layers):
            kernel = _get(variables["params"], (*layer.path, "kernel"))
            mix = init_mixture(
                kernel,
                self.config.bits,
                key=jax.random.fold_in(key, i),
                empirical=self.config.init == "empirical",
                tau0=self.config.tau0,
                iters=self.config.kmeans_iters,
            )
            mixture = _set(mixture, layer.path, jax.tree.map(jnp.asarray, mix))
        return {**variables, MIXTURE: mixture}

    def quantized_params(
        self,
        variables: Mapping[str, Any],
        *,
        hard: bool = False,
        tau_scale: float | jax.Array = 1.0,
    ) -> dict[str, Any]:
        """``params`` with every selected kernel replaced by its soft or hard quantized value."""
        if MIXTURE not in variables:
            raise ConfigError(
                "variables",
                sorted(variables),
                f"has no {MIXTURE!r} collection",
                "call DGMS.init(variables, *sample_args, key=...) first",
            )
        params = variables["params"]
        c = self.config
        for path, mix in iter_mixtures(variables[MIXTURE]):
            w = _get(params, (*path, "kernel"))
            q = (
                hard_weights(w, mix, sigma_min=c.sigma_min)
                if hard
                else soft_weights(
                    w, mix, sigma_min=c.sigma_min, tau_min=c.tau_min, tau_scale=tau_scale
                )
            )
            params = _set(params, (*path, "kernel"), q)
        return params

    def apply(
        self,
        variables: Mapping[str, Any],
        *args: Any,
        hard: bool = False,
        tau_scale: float | jax.Array = 1.0,
        **kwargs: Any,
    ) -> Any:
        """Runs the model with quantized kernels: soft for training, ``hard=True`` for inference.

        Args:
            variables: from `DGMS.init` (``params``, ``mixture``, others).
            *args: the model's inputs.
            hard: use the argmax assignment (at most K values per kernel).
            tau_scale: multiplies every learned τ (τ annealing; keep it a
                traced scalar inside jit to avoid recompiles).
            **kwargs: passed to ``model.apply`` (``mutable=``, ``train=``, ``rngs=``).

        Returns:
            Whatever ``model.apply`` returns.
        """
        params = self.quantized_params(variables, hard=hard, tau_scale=tau_scale)
        rest = {k: v for k, v in variables.items() if k not in (MIXTURE, "params")}
        return self.model.apply({**rest, "params": params}, *args, **kwargs)


def dgms(model: nn.Module, config: DGMSConfig | None = None) -> DGMS:
    """Wraps a Flax Linen model so that its Conv/Dense kernels train as DGMS mixtures.

    Args:
        model: any Linen module with Conv/Dense layers.
        config: what to quantize and how; defaults to ``DGMSConfig()`` (4 bits).

    Returns:
        A `DGMS` with ``init`` (adds the mixture collection to pretrained
        variables), ``apply`` (soft or hard forward) and ``layers``.

    Example:
        >>> import jax, jax.numpy as jnp, flax.linen as nn
        >>> from jgraph import quant
        >>> model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(16), nn.relu, nn.Dense(3)])
        >>> x = jnp.ones((2, 4))
        >>> variables = model.init(jax.random.key(0), x)
        >>> qmodel = quant.dgms(model, quant.DGMSConfig(bits=2))
        >>> qvars = qmodel.init(variables, x, key=jax.random.key(1))
        >>> sorted(qvars["mixture"])  # the first and last Dense stay full precision
        ['layers_2']
        >>> qmodel.apply(qvars, x, hard=True).shape
        (2, 3)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"dgms expects a flax.linen.Module, got {type(model).__name__}")
    return DGMS(model, config or DGMSConfig())
