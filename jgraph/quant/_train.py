"""Training loops for full-precision and DGMS phases: optimizer, jitted step, Orbax resume.

Data flow of `train`:

* The caller passes an ``apply(variables, x, *, train, tau_scale)`` function
  (the FP model or a `DGMS` wrapper), the starting variables and a `Recipe`.
* Trainable variables are ``params`` (and ``mixture`` for DGMS); other
  collections (``batch_stats``) are carried as mutable state.
* One jitted, donated step per batch: cross-entropy, ``jax.value_and_grad``
  over the trainable dict, `make_optimizer`'s update. Batches have a fixed
  size (the remainder of an epoch is dropped), so the step compiles once.
* Epoch e shuffles with ``default_rng([seed, e])``, so a resumed run sees the
  same batches as an uninterrupted one; after each epoch the whole state
  (step, epoch, variables, optimizer state) is saved with Orbax, and the
  history (loss, test accuracy per epoch) atomically as JSON next to it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jgraph.core import ConfigError, atomic_write_json, progress
from jgraph.quant._config import MIXTURE, Recipe
from jgraph.quant._transform import DGMS

__all__ = [
    "ApplyFn",
    "TrainResult",
    "evaluate",
    "make_optimizer",
    "reestimate_batch_stats",
    "train",
]

log = logging.getLogger(__name__)

ApplyFn = Callable[..., Any]
"""``apply(variables, x, *, train: bool, tau_scale) -> logits`` (or ``(logits, updates)``
when ``train`` is True and the model has mutable collections)."""

_TRAINABLE = ("params", MIXTURE)


@dataclasses.dataclass(frozen=True)
class FPApply:
    """``apply`` for a plain Linen model: BatchNorm statistics update in train mode."""

    model: nn.Module

    def __call__(self, v: Any, x: Any, *, train: bool, tau_scale: Any = 1.0) -> Any:
        del tau_scale
        if train:
            return self.model.apply(v, x, train=True, mutable=["batch_stats"])
        return self.model.apply(v, x, train=False)


@dataclasses.dataclass(frozen=True)
class DGMSApply:
    """``apply`` for a `DGMS` model: soft weights in train mode, hard in eval mode.

    ``hard_in_train`` uses hard weights in train mode too (BatchNorm re-estimation).
    """

    qmodel: DGMS
    hard_in_train: bool = False

    def __call__(self, v: Any, x: Any, *, train: bool, tau_scale: Any = 1.0) -> Any:
        if train:
            return self.qmodel.apply(
                v,
                x,
                hard=self.hard_in_train,
                tau_scale=tau_scale,
                train=True,
                mutable=["batch_stats"],
            )
        return self.qmodel.apply(v, x, hard=True, train=False)


def make_optimizer(recipe: Recipe, total_steps: int) -> optax.GradientTransformation:
    """The recipe's optimizer over ``{"params": ..., "mixture": ...}`` (mixture optional).

    `optax.multi_transform` gives the two groups their own chains: weight decay
    on the mixture only if ``recipe.decay_mixture``, and the mixture's learning
    rate scaled by ``recipe.mixture_lr_scale``. Both follow PyTorch's
    ``OneCycleLR`` defaults (30% warm-up, cosine, div 25, final div 1e4), and
    weight decay is L2 added to the gradient as in ``torch.optim.SGD``.

    Example:
        >>> import jax.numpy as jnp
        >>> opt = make_optimizer(Recipe.original(), total_steps=10)
        >>> tree = {"params": {"w": jnp.ones(2)}, "mixture": {"mu": jnp.ones(3)}}
        >>> state = opt.init(tree)
    """
    steps = max(int(total_steps), 1)

    def chain(scale: float, decay: bool) -> optax.GradientTransformation:
        sched = optax.cosine_onecycle_schedule(
            steps, recipe.lr * scale, pct_start=0.3, div_factor=25.0, final_div_factor=1e4
        )
        base = (
            optax.sgd(sched, momentum=recipe.momentum)
            if recipe.optimizer == "sgd"
            else optax.adam(sched)
        )
        parts = [optax.add_decayed_weights(recipe.weight_decay)] if decay else []
        return optax.chain(*parts, base)

    wd = recipe.weight_decay > 0
    return optax.multi_transform(
        {
            "params": chain(1.0, wd),
            MIXTURE: chain(recipe.mixture_lr_scale, wd and recipe.decay_mixture),
        },
        lambda tree: {k: jax.tree.map(lambda _, k=k: k, v) for k, v in tree.items()},
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainResult:
    """What `train` returns.

    Attributes:
        variables: the trained variables (all collections).
        history: one dict per epoch: ``epoch``, ``loss`` (mean train loss) and
            ``test_accuracy`` (eval mode).
        seconds: wall time of this call (resumed epochs excluded).
        resumed_from: the epoch a checkpoint was restored at, or 0.
    """

    variables: dict[str, Any]
    history: list[dict[str, float]]
    seconds: float
    resumed_from: int


@functools.partial(jax.jit, static_argnames="apply")
def _predict(variables: Any, x: jax.Array, *, apply: ApplyFn) -> jax.Array:
    return jnp.argmax(apply(variables, x, train=False, tau_scale=1.0), axis=-1)


def evaluate(
    apply: ApplyFn,
    variables: Mapping[str, Any],
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int = 256,
) -> float:
    """Accuracy of ``apply(..., train=False)`` on (x, y), in fixed-size padded batches.

    ``apply`` should be hashable (e.g. `FPApply`, `DGMSApply`): it is a static
    argument of the jitted forward pass.
    """
    n = len(x)
    bs = min(batch_size, n)
    correct = 0
    for start in range(0, n, bs):
        xb = x[start : start + bs]
        real = len(xb)
        if real < bs:  # pad to the compiled batch size; padded rows are not counted
            xb = np.concatenate([xb, np.zeros((bs - real, *xb.shape[1:]), xb.dtype)])
        pred = np.asarray(_predict(variables, xb, apply=apply))[:real]
        correct += int(np.sum(pred == y[start : start + real]))
    return correct / max(n, 1)


def _tau_scale(recipe: Recipe, tau0: float, step: jax.Array, total: int) -> jax.Array:
    """Annealing factor on τ: from tau_start/τ0 down to 1 over the first 70% of steps."""
    if recipe.tau_start is None:
        return jnp.asarray(1.0, jnp.float32)
    frac = jnp.clip(step.astype(jnp.float32) / (0.7 * max(total, 1)), 0.0, 1.0)
    return jnp.exp(math.log(recipe.tau_start / tau0) * (1.0 - frac))


@functools.partial(jax.jit, static_argnames=("apply", "recipe", "tau0", "total"), donate_argnums=0)
def _train_step(
    state: dict[str, Any],
    x: jax.Array,
    y: jax.Array,
    *,
    apply: ApplyFn,
    recipe: Recipe,
    tau0: float,
    total: int,
) -> tuple[dict[str, Any], jax.Array]:
    # Module-level and keyed on hashable static arguments (the apply object,
    # the frozen recipe), so every `train` call with the same setup reuses
    # one compiled step: resumed runs and benchmark seeds do not recompile.
    opt = make_optimizer(recipe, total)
    variables = state["variables"]
    trainable = {k: variables[k] for k in _TRAINABLE if k in variables}
    other = {k: v for k, v in variables.items() if k not in _TRAINABLE}
    tau_scale = _tau_scale(recipe, tau0, state["step"], total)

    def loss_fn(tr: dict[str, Any]) -> tuple[jax.Array, Any]:
        out = apply({**other, **tr}, x, train=True, tau_scale=tau_scale)
        logits, updates = out if isinstance(out, tuple) else (out, {})
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    upd, opt_state = opt.update(grads, state["opt_state"], trainable)
    trainable = optax.apply_updates(trainable, upd)
    new_other = {**other, **{k: v for k, v in dict(updates).items() if k in other}}
    return {
        "step": state["step"] + 1,
        "epoch": state["epoch"],
        "variables": {**new_other, **trainable},
        "opt_state": opt_state,
    }, loss


def _manager(ckpt_dir: Path):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        ckpt_dir.absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    )


def train(
    apply: ApplyFn,
    variables: Mapping[str, Any],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    recipe: Recipe,
    *,
    seed: int,
    tau0: float = 0.01,
    ckpt_dir: Path | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    description: str = "training",
    meta: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Trains ``variables`` with the recipe; checkpoints each epoch and resumes exactly.

    Args:
        apply: ``apply(variables, x, *, train, tau_scale)``.
        variables: starting variables (``params``, optional ``mixture`` and
            ``batch_stats``).
        x_train: [n, h, w, c] training images; ``y_train`` their labels.
        y_train: int labels.
        x_test: images for the per-epoch test accuracy.
        y_test: their labels.
        recipe: epochs, batch size, optimizer, schedule, τ annealing.
        seed: shuffling seed (epoch e uses ``default_rng([seed, e])``).
        tau0: τ0 of the DGMS config (the annealing schedule's end point scale).
        ckpt_dir: Orbax checkpoint folder; None disables checkpointing.
        resume: continue from the latest checkpoint in ``ckpt_dir`` if any.
        stop_after: stop once this many epochs are done (simulates an
            interruption; the schedule still spans ``recipe.epochs``).
        description: label of the progress bar.
        meta: more JSON-able settings that a resumed run must match (the
            recipe, seed and training-set size are always checked).

    Returns:
        A `TrainResult`.

    Raises:
        ConfigError: ``resume`` with a checkpoint written with other settings,
            or checkpoints in ``ckpt_dir`` without ``resume``.
    """
    n = len(x_train)
    bs = min(recipe.batch_size, n)
    per_epoch = n // bs
    total = per_epoch * recipe.epochs
    opt = make_optimizer(recipe, total)
    trainable = {k: variables[k] for k in _TRAINABLE if k in variables}
    state = {
        "step": jnp.asarray(0, jnp.int32),
        "epoch": jnp.asarray(0, jnp.int32),
        "variables": jax.tree.map(jnp.array, dict(variables)),
        "opt_state": opt.init(trainable),
    }
    history: list[dict[str, float]] = []
    meta = {"recipe": dataclasses.asdict(recipe), "seed": seed, "n_train": n, **(meta or {})}
    mngr = _manager(ckpt_dir) if ckpt_dir is not None else None
    resumed_from = 0
    if mngr is not None and not resume and mngr.latest_step() is not None:
        raise ConfigError(
            "ckpt_dir",
            str(ckpt_dir),
            f"already holds checkpoints (epoch {mngr.latest_step()})",
            "pass resume=True (--resume) to continue that run, or use a new folder (--out)",
        )
    if ckpt_dir is not None and mngr is not None and resume and mngr.latest_step() is not None:
        import orbax.checkpoint as ocp

        saved = json.loads((ckpt_dir / "history.json").read_text())
        if saved["meta"] != json.loads(json.dumps(meta)):
            raise ConfigError(
                "resume",
                str(ckpt_dir),
                "holds a run with different settings (recipe, seed, data, model or bits)",
                "resume with the same settings, or use a new --out folder",
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        state = mngr.restore(mngr.latest_step(), args=ocp.args.StandardRestore(abstract))
        resumed_from = int(state["epoch"])
        history = saved["history"][:resumed_from]
        log.info("%s: resumed from epoch %d in %s", description, resumed_from, ckpt_dir)
    start_time = time.perf_counter()
    last = recipe.epochs if stop_after is None else min(stop_after, recipe.epochs)
    for epoch in progress(
        range(resumed_from, last), description=description, total=last - resumed_from
    ):
        order = np.random.default_rng([seed, epoch]).permutation(n)
        losses = []
        for b in range(per_epoch):
            idx = order[b * bs : (b + 1) * bs]
            state, loss = _train_step(
                state,
                x_train[idx],
                y_train[idx],
                apply=apply,
                recipe=recipe,
                tau0=tau0,
                total=total,
            )
            losses.append(loss)
        state["epoch"] = jnp.asarray(epoch + 1, jnp.int32)
        acc = evaluate(apply, state["variables"], x_test, y_test)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(np.mean(jax.device_get(losses))),
                "test_accuracy": acc,
            }
        )
        log.info(
            "%s epoch %d: loss %.4f, test accuracy %.4f",
            description,
            epoch + 1,
            history[-1]["loss"],
            acc,
        )
        if mngr is not None and ckpt_dir is not None:
            import orbax.checkpoint as ocp

            mngr.save(epoch + 1, args=ocp.args.StandardSave(state))
            mngr.wait_until_finished()
            atomic_write_json(ckpt_dir / "history.json", {"meta": meta, "history": history})
    if mngr is not None:
        mngr.close()
    return TrainResult(
        variables=state["variables"],
        history=history,
        seconds=time.perf_counter() - start_time,
        resumed_from=resumed_from,
    )


def reestimate_batch_stats(
    apply: ApplyFn,
    variables: Mapping[str, Any],
    x: np.ndarray,
    *,
    batch_size: int,
    passes: int,
) -> dict[str, Any]:
    """Recomputes BatchNorm running statistics with the inference (hard) weights.

    DGMS trains BatchNorm on soft weights; at inference the hard weights shift
    the activations slightly. Running train-mode forward passes (no gradient)
    with ``apply(..., train=True)`` on hard weights refreshes the EMA; after
    ``passes`` epochs the old statistics weigh ~momentum**(passes·batches).

    Args:
        apply: ``apply(variables, x, *, train, tau_scale)`` returning
            ``(logits, updates)`` in train mode, with hard weights.
        variables: the trained variables.
        x: training images.
        batch_size: examples per forward pass.
        passes: epochs over ``x``.

    Returns:
        ``variables`` with new ``batch_stats`` (unchanged if there are none).
    """
    if "batch_stats" not in variables:
        return dict(variables)
    bs = min(batch_size, len(x))

    v = dict(variables)
    for p in range(passes):
        order = np.random.default_rng([p, 7919]).permutation(len(x))
        for b in range(len(x) // bs):
            v = _bn_forward(v, x[order[b * bs : (b + 1) * bs]], apply=apply)
    return v


@functools.partial(jax.jit, static_argnames="apply")
def _bn_forward(v: dict[str, Any], xb: jax.Array, *, apply: ApplyFn) -> dict[str, Any]:
    _, updates = apply(v, xb, train=True, tau_scale=1.0)
    return {**v, "batch_stats": updates["batch_stats"]}
