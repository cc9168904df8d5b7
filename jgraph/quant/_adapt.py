"""Linen and NNX models (NNX: `_adapt_nnx`) as the `ApplyFn` that training calls.

`train`, `evaluate` and `reestimate_batch_stats` call
``apply(variables, x, *, train, tau_scale, rng)`` on plain variable dicts. A
model's own call differs from model to model; the adapters find out how:

* the training-mode switch: a ``__call__`` argument named ``train``,
  ``training`` or ``is_training`` (passed ``train``) or ``deterministic``,
  ``use_running_average``, ``eval``, ``evaluation``, ``inference`` (passed
  ``not train``); else a Linen module field of those names (switched with
  ``model.clone(...)``); else none, which is fine for models without
  BatchNorm or dropout and refused for a Linen model with BatchNorm
  statistics. NNX models are also switched with ``model.train()`` /
  ``model.eval()``, NNX's own convention.
* mutable collections in train mode: every collection but ``params`` and
  ``mixture`` (Linen); ``nnx.BatchStat`` variables (NNX).
* dropout: the step's ``rng`` goes to the Linen ``rngs`` streams named in
  ``rng_streams``; an NNX model's RNG streams are reseeded from it.
* DGMS: a `DGMS` wrapper (Linen) or a model with `DGMSLayer`s (NNX) runs soft
  weights in train mode and hard weights in eval mode; ``with_hard_weights()``
  gives the variant with hard weights in train mode too (BatchNorm
  re-estimation).

A model whose call needs more than the images (a mask, a second input) cannot
be adapted: `linen_apply` / `nnx_apply` raise a `ConfigError` that says so.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax

from jgraph.core import ConfigError
from jgraph.quant._config import MIXTURE
from jgraph.quant._transform import DGMS

__all__ = [
    "EVAL_NAMES",
    "TRAIN_NAMES",
    "LinenApply",
    "Mode",
    "linen_apply",
    "owner",
    "resolve_mode",
]

TRAIN_NAMES = ("train", "training", "is_training")
"""Mode-switch names that are True in training."""
EVAL_NAMES = ("deterministic", "use_running_average", "eval", "evaluation", "inference")
"""Mode-switch names that are True at inference."""

TrainArg = str | None


@dataclasses.dataclass(frozen=True)
class Mode:
    """How a model is switched between training and inference.

    Attributes:
        name: the argument or field, or None.
        where: ``"call"`` (a ``__call__`` argument), ``"attribute"`` (a Linen
            module field, set with ``clone``) or ``"none"``.
        inverted: whether the switch is True at inference (``deterministic``).
        detected: found automatically (``train_arg="auto"``), not named.
    """

    name: str | None
    where: Literal["call", "attribute", "none"]
    inverted: bool = False
    detected: bool = True

    def value(self, train: bool) -> bool:
        return (not train) if self.inverted else train


def _signature(fn: Any, owner: str) -> inspect.Signature:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        raise ConfigError(
            "model",
            owner,
            "has a __call__ whose signature cannot be read",
            "write apply(variables, x, *, train, tau_scale=1.0) yourself "
            "(jgraph.quant.training.ApplyFn)",
        ) from None


def resolve_mode(
    call: Any,
    fields: Sequence[str],
    *,
    owner: str,
    train_arg: TrainArg | Literal["auto"],
    inverted: bool | None,
) -> Mode:
    """Finds the training switch of ``call`` (a bound ``__call__``) and checks its other arguments.

    Raises:
        ConfigError: a named ``train_arg`` that the call and fields lack, two
            candidate switches, or a required argument besides the images.
    """
    sig = _signature(call, owner)
    params = list(sig.parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    named = [p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    if not params or (
        params[0].kind not in positional and params[0].kind is not inspect.Parameter.VAR_POSITIONAL
    ):
        raise ConfigError(
            "model",
            f"{owner}.__call__{sig}",
            "takes no positional input",
            "take the images as the first argument",
        )
    if train_arg is None:
        mode = Mode(None, "none", detected=False)
    elif train_arg != "auto":
        inv = train_arg in EVAL_NAMES if inverted is None else inverted
        if train_arg in named[1:]:
            mode = Mode(train_arg, "call", inv, detected=False)
        elif train_arg in fields:
            mode = Mode(train_arg, "attribute", inv, detected=False)
        else:
            raise ConfigError(
                "train_arg",
                train_arg,
                f"is neither an argument of {owner}.__call__{sig} nor a field of {owner}",
                "name the argument or module field that switches training mode, "
                "or pass train_arg=None for a model without one",
            )
    else:
        known = (*TRAIN_NAMES, *EVAL_NAMES)
        in_call = [n for n in named[1:] if n in known]
        in_fields = [f for f in fields if f in known]
        found = in_call or in_fields
        if len(found) > 1:
            raise ConfigError(
                "train_arg",
                "auto",
                f"finds several training switches in {owner} ({', '.join(found)})",
                f"name the one to use: train_arg={found[0]!r}",
            )
        if found:
            where: Literal["call", "attribute"] = "call" if in_call else "attribute"
            mode = Mode(found[0], where, found[0] in EVAL_NAMES)
        else:
            mode = Mode(None, "none")
    required = [
        p.name
        for p in params[1:]
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and not (mode.where == "call" and p.name == mode.name)
    ]
    if required:
        raise ConfigError(
            "model",
            f"{owner}.__call__{sig}",
            f"needs {', '.join(required)} besides the images; training passes only the "
            "images and the training switch",
            "give those arguments defaults, or write apply(variables, x, *, train, "
            "tau_scale=1.0) yourself (jgraph.quant.training.ApplyFn)",
        )
    return mode


class _ById:
    """Hashes and compares an unhashable object by identity."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ById) and other.obj is self.obj


@dataclasses.dataclass(frozen=True, eq=False)
class LinenApply:
    """The `ApplyFn` of a Linen module or of a `DGMS`-wrapped one (build with `linen_apply`).

    Hashable by value (the module and settings), so equal adapters share one
    compiled training step; a module that cannot be hashed (a list field, as
    in ``nn.Sequential``) is compared by identity instead.

    Attributes:
        model: the Linen module or `DGMS` wrapper.
        mode: how the model is switched to training (see `Mode`).
        hard_in_train: DGMS only: hard weights in train mode too.
        rng_streams: Linen RNG streams that get a key per training step.
    """

    model: nn.Module | DGMS
    mode: Mode
    hard_in_train: bool = False
    rng_streams: tuple[str, ...] = ("dropout",)

    def _key(self) -> tuple[Any, ...]:
        try:
            hash(self.model)
            model: Any = self.model
        except TypeError:
            model = _ById(self.model)
        return (model, self.mode, self.hard_in_train, self.rng_streams)

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LinenApply) and self._key() == other._key()

    @property
    def module(self) -> nn.Module:
        """The plain Linen module (the wrapped one for a `DGMS`)."""
        return self.model.model if isinstance(self.model, DGMS) else self.model

    def call_kwargs(self, train: bool) -> dict[str, Any]:
        """The keyword arguments that put ``module`` in training or inference mode."""
        if self.mode.where == "call" and self.mode.name is not None:
            return {self.mode.name: self.mode.value(train)}
        return {}

    def _module(self, train: bool) -> nn.Module:
        if self.mode.where == "attribute" and self.mode.name is not None:
            fields: dict[str, Any] = {self.mode.name: self.mode.value(train)}
            return self.module.clone(**fields)
        return self.module

    def init(self, key: jax.Array, x: jax.Array) -> dict[str, Any]:
        """``module.init`` in inference mode: fresh variables of the plain model."""
        return dict(self._module(False).init(key, x, **self.call_kwargs(False)))

    def with_hard_weights(self) -> LinenApply:
        """This adapter with hard DGMS weights in train mode (unchanged for a plain model)."""
        if not isinstance(self.model, DGMS):
            return self
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
        kwargs = self.call_kwargs(train)
        if train:
            mutable = [c for c in variables if c not in ("params", MIXTURE)]
            if "batch_stats" in mutable and self.mode.where == "none" and self.mode.detected:
                raise ConfigError(
                    "train_arg",
                    "auto",
                    f"finds no training switch in {type(self.module).__name__} (an argument or "
                    f"field named one of {', '.join((*TRAIN_NAMES, *EVAL_NAMES))}), yet its "
                    "variables hold batch_stats: BatchNorm could not switch between batch and "
                    "running statistics",
                    "add a `train: bool` argument, name yours with "
                    "linen_apply(model, train_arg='name'), or pass train_arg=None if the "
                    "model switches by itself",
                )
            kwargs["mutable"] = mutable or False
            if rng is not None and self.rng_streams:
                kwargs["rngs"] = {
                    s: jax.random.fold_in(rng, i) for i, s in enumerate(self.rng_streams)
                }
        module = self._module(train)
        if isinstance(self.model, DGMS):
            hard = (not train) or self.hard_in_train
            return DGMS(module, self.model.config).apply(
                variables, x, hard=hard, tau_scale=tau_scale if train else 1.0, **kwargs
            )
        return module.apply(variables, x, **kwargs)


def owner(model: Any) -> str:
    return type(model).__name__


def linen_apply(
    model: nn.Module | DGMS,
    *,
    train_arg: TrainArg | Literal["auto"] = "auto",
    inverted: bool | None = None,
    hard_in_train: bool = False,
    rng_streams: Sequence[str] = ("dropout",),
) -> LinenApply:
    """Adapts a Linen module, or a `jgraph.quant.dgms` wrapper of one, to the training loop.

    Args:
        model: the Linen module (full-precision training) or ``dgms(model, config)``
            (DGMS training: soft weights in train mode, hard in eval mode).
        train_arg: the ``__call__`` argument or module field that switches
            training mode; ``"auto"`` looks for the usual names (`TRAIN_NAMES`,
            `EVAL_NAMES`); None for a model without one.
        inverted: whether ``train_arg`` is True at inference; None infers it
            from the name (``deterministic`` and the like are inverted).
        hard_in_train: DGMS only: hard weights in train mode too (what
            `reestimate_batch_stats` switches to by itself).
        rng_streams: RNG streams to feed each training step (``"dropout"``).

    Returns:
        A `LinenApply`.

    Raises:
        ConfigError: ``model`` is not a Linen module, takes more than the
            images, has several switches or lacks the named one, or
            ``hard_in_train`` without DGMS.

    Example:
        >>> import jax, jax.numpy as jnp, flax.linen as nn
        >>> class Net(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x, *, training: bool):
        ...         x = nn.BatchNorm(use_running_average=not training)(x.reshape(len(x), -1))
        ...         return nn.Dense(3)(x)
        >>> apply = linen_apply(Net())
        >>> apply.mode.name, apply.mode.where
        ('training', 'call')
        >>> v = apply.init(jax.random.key(0), jnp.ones((2, 4, 4, 1)))
        >>> logits, updates = apply(v, jnp.ones((2, 4, 4, 1)), train=True)
        >>> logits.shape, sorted(updates)
        ((2, 3), ['batch_stats'])
    """
    inner = model.model if isinstance(model, DGMS) else model
    if not isinstance(inner, nn.Module):
        raise ConfigError(
            "model",
            owner(model),
            "is not a flax.linen.Module or a jgraph.quant.dgms wrapper of one",
            "use nnx_apply for an NNX module; for anything else write apply(variables, x, *, "
            "train, tau_scale=1.0) yourself (jgraph.quant.training.ApplyFn)",
        )
    if hard_in_train and not isinstance(model, DGMS):
        raise ConfigError(
            "hard_in_train",
            True,
            f"applies to DGMS models; {owner(model)} is a plain module",
            "wrap it first: linen_apply(quant.dgms(model, config), hard_in_train=True)",
        )
    fields = [f.name for f in dataclasses.fields(inner) if f.name not in ("parent", "name")]
    mode = resolve_mode(
        inner.__call__, fields, owner=owner(inner), train_arg=train_arg, inverted=inverted
    )
    return LinenApply(model, mode, hard_in_train, tuple(rng_streams))
