"""`nnx_apply`: an NNX module as the `ApplyFn` that training calls (see `_adapt`).

NNX modules are mutable objects; training works on plain variable dicts. The
adapter splits the module once into a structure (``graphdef``) and templates
of its ``nnx.Param`` (``params``), `MixtureParam` (``mixture``) and
``nnx.BatchStat`` (``batch_stats``) states; each call merges fresh copies
holding the given values (NNX refuses to mutate Variables created outside the
current trace), switches the copy with ``train()`` / ``eval()``, sets the
`DGMSLayer`s' ``hard`` and ``tau_scale``, reseeds its RNG streams from the
step's key and runs it. Other state (RNG streams, custom Variable types) stays
as it was when the adapter was built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import jax
from flax import nnx

from jgraph.core import ConfigError
from jgraph.quant._adapt import Mode, TrainArg, owner, resolve_mode
from jgraph.quant._config import MIXTURE
from jgraph.quant._nnx import DGMSLayer, MixtureParam

__all__ = ["NNXApply", "nnx_apply"]


def _copy(state: Any) -> Any:
    """Fresh Variable objects holding the same arrays (NNX refuses to mutate another trace's)."""
    return jax.tree.map(lambda a: a, state)


@dataclasses.dataclass(frozen=True, eq=False)
class NNXApply:
    """The `ApplyFn` of an NNX module (build with `nnx_apply`).

    Hashable by identity: keep one adapter per model for the training, the
    evaluation and the re-estimation of one phase so they compile once.

    Attributes:
        graphdef: the model's structure (`nnx.split`).
        variables: its variables as plain dicts: ``params`` (every `nnx.Param`
            but the mixture), ``mixture`` (`MixtureParam`, DGMS models only) and
            ``batch_stats`` (`nnx.BatchStat`, if any); what `train` takes.
        mode: the ``__call__`` training switch, if the model has one.
        hard_in_train: hard DGMS weights in train mode too.
    """

    graphdef: Any
    variables: dict[str, Any]
    mode: Mode
    hard_in_train: bool
    templates: tuple[tuple[str, Any], ...] = dataclasses.field(repr=False)
    rest: Any = dataclasses.field(repr=False)

    def module(self, variables: Mapping[str, Any] | None = None) -> nnx.Module:
        """A new module holding ``variables`` (default: the adapter's own), in eval mode.

        Eval mode: ``model.eval()``, and `DGMSLayer`s use hard weights; pass
        it to `jgraph.quant.harden_nnx` for the deployable model.

        Other state (RNG streams, custom variable types) is the model's as it
        was when the adapter was built.
        """
        v = self.variables if variables is None else variables
        states = []
        for name, template in self.templates:
            state = _copy(template)
            nnx.replace_by_pure_dict(state, v[name])
            states.append(state)
        model = nnx.merge(self.graphdef, *states, _copy(self.rest))
        model.eval()
        for _, node in nnx.iter_graph(model):
            if isinstance(node, DGMSLayer):
                node.hard = True
        return model

    def with_hard_weights(self) -> NNXApply:
        """This adapter with hard DGMS weights in train mode."""
        return dataclasses.replace(self, hard_in_train=True)

    def __call__(
        self,
        variables: Mapping[str, Any],
        x: jax.Array,
        *,
        train: bool,
        tau_scale: Any = 1.0,
        rng: jax.Array | None = None,
    ) -> Any:
        model = self.module(variables)
        if train:
            model.train()
        nodes = [node for _, node in nnx.iter_graph(model)]
        layers = [node for node in nodes if isinstance(node, DGMSLayer)]
        for layer in layers:
            layer.hard = (not train) or self.hard_in_train
            layer.tau_scale = tau_scale if train else 1.0
        if train and rng is not None:
            tags = sorted({node.tag for node in nodes if isinstance(node, nnx.RngStream)})
            if tags:
                keys: dict[str, Any] = {t: jax.random.fold_in(rng, i) for i, t in enumerate(tags)}
                nnx.reseed(model, **keys)
        kwargs = {}
        if self.mode.where == "call" and self.mode.name is not None:
            kwargs[self.mode.name] = self.mode.value(train)
        try:
            out = model(x, **kwargs)
        finally:
            for layer in layers:
                layer.tau_scale = 1.0  # a traced value must not outlive this call
        if not train or "batch_stats" not in variables:
            return out
        return out, {"batch_stats": nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))}


_COLLECTIONS = (
    (MIXTURE, MixtureParam),
    ("params", nnx.Param),
    ("batch_stats", nnx.BatchStat),
)


def nnx_apply(
    model: nnx.Module,
    *,
    train_arg: TrainArg | Literal["auto"] = "auto",
    inverted: bool | None = None,
    hard_in_train: bool = False,
) -> NNXApply:
    """Adapts an NNX module (plain, or after `jgraph.quant.dgms_nnx`) to the training loop.

    The module is split into a structure and plain variable dicts
    (``adapter.variables``); `train` works on those, and ``adapter.module(v)``
    turns trained variables back into a module. Training mode is set with
    ``model.train()`` / ``model.eval()`` (Dropout, BatchNorm) and, if the
    ``__call__`` has one, its ``train``-like argument.

    Args:
        model: the NNX module (left unchanged).
        train_arg: a ``__call__`` argument that switches training mode;
            ``"auto"`` looks for the usual names; None for none.
        inverted: whether ``train_arg`` is True at inference (None: from its name).
        hard_in_train: hard DGMS weights in train mode too.

    Returns:
        An `NNXApply`.

    Raises:
        ConfigError: ``model`` is not an NNX module or takes more than the images.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> model = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)),
        ...                        nnx.BatchNorm(8, rngs=nnx.Rngs(1)), nnx.Linear(8, 3, rngs=nnx.Rngs(2)))
        >>> apply = nnx_apply(model)
        >>> sorted(apply.variables)
        ['batch_stats', 'params']
        >>> logits, updates = apply(apply.variables, jnp.ones((2, 4)), train=True)
        >>> logits.shape, sorted(updates)
        ((2, 3), ['batch_stats'])
    """
    if not isinstance(model, nnx.Module):
        raise ConfigError(
            "model",
            owner(model),
            "is not a flax.nnx.Module",
            "use linen_apply for a Linen module; for anything else write apply(variables, x, "
            "*, train, tau_scale=1.0) yourself (jgraph.quant.training.ApplyFn)",
        )
    mode = resolve_mode(
        model.__call__, (), owner=owner(model), train_arg=train_arg, inverted=inverted
    )
    split: tuple[Any, ...] = nnx.split(model, *(kind for _, kind in _COLLECTIONS), ...)
    graphdef, states, rest = split[0], split[1:-1], split[-1]
    templates, variables = [], {}
    for (name, _), state in zip(_COLLECTIONS, states, strict=True):
        pure = nnx.to_pure_dict(state)
        if jax.tree.leaves(pure):
            templates.append((name, _copy(state)))
            variables[name] = pure
    return NNXApply(
        graphdef=graphdef,
        variables=variables,
        mode=mode,
        hard_in_train=hard_in_train,
        templates=tuple(templates),
        rest=_copy(rest),
    )
