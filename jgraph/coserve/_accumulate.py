"""Gradient accumulation whose settings are data, not code: samples per update and a learning
rate multiplier live in the optimizer state, so finetuning jobs with different settings share
one compiled co-serving step (each job carries its own state; `set_job_settings`).

It replaces ``optax.MultiSteps(opt, every_k_schedule=k)``, whose ``k`` is fixed when the step
is traced. The update of a sample that completes a group is the inner optimizer's update of the
group's mean gradient times ``lr_scale``; other samples give zero updates. Scaling the update is
scaling the learning rate for the optimizers the engine is used with (SGD with momentum, Adam,
AdamW: optax multiplies the decoupled weight decay by the learning rate too).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jgraph.core import check_int, check_number

__all__ = ["AccumulateState", "accumulate", "set_job_settings"]


class AccumulateState(NamedTuple):
    """State of `accumulate`.

    Attributes:
        mini_step: samples accumulated since the last update (int32 scalar).
        every_k: samples per update (int32 scalar; the job's gradient accumulation).
        lr_scale: update multiplier (float32 scalar; the job's learning-rate multiplier).
        acc: float32 sum of the accumulated gradients (params' structure).
        inner: the inner optimizer's state.
    """

    mini_step: jax.Array
    every_k: jax.Array
    lr_scale: jax.Array
    acc: Any
    inner: Any


def accumulate(
    optimizer: optax.GradientTransformation, *, every_k: int = 1
) -> optax.GradientTransformation:
    """``optimizer`` with gradient accumulation over ``every_k`` samples (the initial setting;
    change it per job with `set_job_settings`).

    Example:
        >>> import jax.numpy as jnp, optax
        >>> opt = accumulate(optax.sgd(1.0), every_k=2)
        >>> p = {"w": jnp.zeros(2)}
        >>> s = opt.init(p)
        >>> u, s = opt.update({"w": jnp.ones(2)}, s, p)  # first of two: no update yet
        >>> u2, s = opt.update({"w": jnp.full(2, 3.0)}, s, p)  # mean gradient 2, lr 1
        >>> u["w"].tolist(), u2["w"].tolist()
        ([0.0, 0.0], [-2.0, -2.0])
    """
    check_int("every_k", every_k, minimum=1)

    def init(params: Any) -> AccumulateState:
        return AccumulateState(
            mini_step=jnp.zeros((), jnp.int32),
            every_k=jnp.asarray(every_k, jnp.int32),
            lr_scale=jnp.ones((), jnp.float32),
            acc=jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
            inner=optimizer.init(params),
        )

    def update(grads: Any, state: AccumulateState, params: Any = None) -> tuple[Any, Any]:
        acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), state.acc, grads)
        mini = state.mini_step + 1

        def emit(_: None) -> tuple[Any, Any, Any, jax.Array]:
            k = state.every_k.astype(jnp.float32)
            mean = jax.tree.map(lambda a, g: (a / k).astype(g.dtype), acc, grads)
            upd, inner = optimizer.update(mean, state.inner, params)
            upd = jax.tree.map(lambda u: (u * state.lr_scale).astype(u.dtype), upd)
            zeros = jax.tree.map(jnp.zeros_like, acc)
            return upd, inner, zeros, jnp.zeros((), jnp.int32)

        def hold(_: None) -> tuple[Any, Any, Any, jax.Array]:
            return jax.tree.map(jnp.zeros_like, grads), state.inner, acc, mini

        upd, inner, acc, mini = jax.lax.cond(mini >= state.every_k, emit, hold, None)
        return upd, state._replace(mini_step=mini, acc=acc, inner=inner)

    return optax.GradientTransformation(init, update)


def set_job_settings(
    state: AccumulateState, *, every_k: int, lr_scale: float = 1.0
) -> AccumulateState:
    """``state`` with new settings (call between updates: ``mini_step`` must be 0).

    Raises:
        ConfigError: ``every_k`` < 1 or ``lr_scale`` <= 0.
    """
    check_int("grad_accum", every_k, minimum=1)
    check_number("learning_rate_multiplier", lr_scale, minimum=0.0, strict_minimum=True)
    return state._replace(
        every_k=jnp.asarray(every_k, jnp.int32), lr_scale=jnp.asarray(lr_scale, jnp.float32)
    )
