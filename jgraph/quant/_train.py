"""Training loops for full-precision and DGMS phases: optimizer, jitted step, Orbax resume.

Data flow of `train`:

* The caller passes an ``apply(variables, x, *, train, tau_scale[, rng])``
  function (see `ApplyFn`; `jgraph.quant.training.linen_apply` and
  ``nnx_apply`` build one from a model), the starting variables and a `Recipe`.
* Trainable variables are ``params`` (and ``mixture`` for DGMS); other
  collections (``batch_stats``) are carried as mutable state.
* One jitted, donated step per batch: cross-entropy, ``jax.value_and_grad``
  over the trainable dict, `make_optimizer`'s update. Batches have a fixed
  size (the remainder of an epoch is dropped), so the step compiles once.
  Step s draws its dropout key as ``fold_in(key(seed), s)``.
* Epoch e shuffles with ``default_rng([seed, e])``, so a resumed run sees the
  same batches as an uninterrupted one; after each epoch the state (step,
  epoch, variables, optimizer state) and the run record (settings, history,
  training seconds) are committed together as one Orbax step (`Checkpoints`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jgraph.core import ConfigError, progress
from jgraph.core.checkpoints import Checkpoints
from jgraph.quant._config import MIXTURE, Recipe
from jgraph.quant._data import check_examples

__all__ = [
    "ApplyFn",
    "TrainResult",
    "accepts_rng",
    "evaluate",
    "make_optimizer",
    "train",
]

log = logging.getLogger(__name__)


class ApplyFn(Protocol):
    """What `train`, `evaluate` and `reestimate_batch_stats` call to run a model.

    ``apply(variables, x, *, train, tau_scale=1.0, rng=None)`` returns the
    logits [batch, classes]; with ``train=True`` and mutable collections
    (``batch_stats``) it returns ``(logits, updated_collections)`` instead.
    ``tau_scale`` multiplies DGMS temperatures (τ annealing; models without
    DGMS ignore it) and ``rng`` is the step's dropout key (training only;
    `train` passes it only to functions that accept an ``rng`` argument).

    The function is a static argument of the jitted step, so it must be
    hashable, and equal functions must compute the same thing:
    `jgraph.quant.training.linen_apply` / ``nnx_apply`` build such objects.
    """

    def __call__(
        self,
        variables: Mapping[str, Any],
        x: jax.Array,
        /,
        *,
        train: bool,
        tau_scale: Any = 1.0,
    ) -> Any: ...


_TRAINABLE = ("params", MIXTURE)


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
            ``test_accuracy`` (eval mode). A resumed run's history is the
            uninterrupted run's: the epochs before the checkpoint come from it.
        seconds: training time of the epochs in ``history``, summed over every
            process that ran them (a resumed run adds the time stored in its
            checkpoint; an epoch cut short by an interruption is not counted).
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
    """Top-1 accuracy of ``apply(..., train=False)`` on (x, y), in fixed-size padded batches.

    Args:
        apply: a hashable `ApplyFn` (a static argument of the jitted forward).
        variables: the model's variables.
        x: images [n, ...].
        y: int labels [n].
        batch_size: examples per forward pass (the last batch is padded, so
            one shape compiles).

    Returns:
        The share of correct predictions.

    Raises:
        ConfigError: ``x`` and ``y`` differ in length, are empty or hold NaN.
    """
    x, y = check_examples(x, y, x_field="x", y_field="y")
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
    return correct / n


def _tau_scale(recipe: Recipe, tau0: float, step: jax.Array, total: int) -> jax.Array:
    """Annealing factor on τ: from tau_start/τ0 down to 1 over the first 70% of steps."""
    if recipe.tau_start is None:
        return jnp.asarray(1.0, jnp.float32)
    frac = jnp.clip(step.astype(jnp.float32) / (0.7 * max(total, 1)), 0.0, 1.0)
    return jnp.exp(math.log(recipe.tau_start / tau0) * (1.0 - frac))


def accepts_rng(apply: ApplyFn) -> bool:
    """Whether ``apply`` takes the optional ``rng`` argument of the `ApplyFn` protocol."""
    try:
        params = inspect.signature(apply).parameters
    except (TypeError, ValueError):  # a builtin or C callable: pass only the protocol's arguments
        return False
    return "rng" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


@functools.partial(
    jax.jit, static_argnames=("apply", "recipe", "tau0", "total", "with_rng"), donate_argnums=0
)
def _train_step(
    state: dict[str, Any],
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    apply: ApplyFn,
    recipe: Recipe,
    tau0: float,
    total: int,
    with_rng: bool,
) -> tuple[dict[str, Any], jax.Array]:
    # Module-level and keyed on hashable static arguments (the apply object,
    # the frozen recipe), so every `train` call with the same setup reuses
    # one compiled step: resumed runs and benchmark seeds do not recompile.
    opt = make_optimizer(recipe, total)
    variables = state["variables"]
    trainable = {k: variables[k] for k in _TRAINABLE if k in variables}
    other = {k: v for k, v in variables.items() if k not in _TRAINABLE}
    tau_scale = _tau_scale(recipe, tau0, state["step"], total)
    extra = {"rng": jax.random.fold_in(key, state["step"])} if with_rng else {}

    def loss_fn(tr: dict[str, Any]) -> tuple[jax.Array, Any]:
        out = apply({**other, **tr}, x, train=True, tau_scale=tau_scale, **extra)
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

    A resumed run gives the uninterrupted run's weights bit for bit (on a
    deterministic backend such as the CPU) and its history entry for entry,
    whenever the previous process stopped: the weights and the history of an
    epoch are committed together (see `Checkpoints`).

    Args:
        apply: an `ApplyFn`, e.g. ``training.linen_apply(model)``.
        variables: starting variables (``params``, optional ``mixture`` and
            ``batch_stats``).
        x_train: [n, ...] training images.
        y_train: their int labels [n].
        x_test: images for the per-epoch test accuracy.
        y_test: their labels.
        recipe: epochs, batch size, optimizer, schedule, τ annealing.
        seed: shuffling seed (epoch e uses ``default_rng([seed, e])``) and
            dropout seed (step s uses ``fold_in(key(seed), s)``).
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
            checkpoints in ``ckpt_dir`` without ``resume``, unusable data
            (mismatched counts, empty, NaN; see `check_examples`), or a loss
            that became NaN/inf (the step diverged).
    """
    x_train, y_train = check_examples(x_train, y_train, x_field="x_train", y_field="y_train")
    x_test, y_test = check_examples(x_test, y_test, x_field="x_test", y_field="y_test")
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
    meta = json.loads(json.dumps(meta))  # what the JSON record gives back on resume
    ckpt = Checkpoints(ckpt_dir) if ckpt_dir is not None else None
    resumed_from, prior_seconds = 0, 0.0
    latest = ckpt.latest() if ckpt is not None else None
    if ckpt is not None and latest is not None:
        if not resume:
            raise ConfigError(
                "ckpt_dir",
                str(ckpt_dir),
                f"already holds checkpoints (epoch {latest})",
                "pass resume=True (--resume) to continue that run, or use a new folder (--out)",
            )
        record = ckpt.record(latest)
        if record["meta"] != meta:
            raise ConfigError(
                "resume",
                str(ckpt_dir),
                "holds a run with different settings (recipe, seed, data, model or bits)",
                "resume with the same settings, or use a new --out folder",
            )
        state = ckpt.state(latest, state)
        resumed_from = int(state["epoch"])
        history = list(record["history"])
        prior_seconds = float(record["seconds"])
        log.info("%s: resumed from epoch %d in %s", description, resumed_from, ckpt_dir)
    key = jax.random.key(seed)
    with_rng = accepts_rng(apply)
    seconds = prior_seconds
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
                key,
                apply=apply,
                recipe=recipe,
                tau0=tau0,
                total=total,
                with_rng=with_rng,
            )
            losses.append(loss)
        state["epoch"] = jnp.asarray(epoch + 1, jnp.int32)
        mean_loss = float(np.mean(jax.device_get(losses)))
        if not math.isfinite(mean_loss):
            raise ConfigError(
                "Recipe.lr",
                recipe.lr,
                f"lets {description} diverge: the mean loss of epoch {epoch + 1} is {mean_loss}",
                "lower the learning rate (the data was checked for NaN/inf)",
            )
        acc = evaluate(apply, state["variables"], x_test, y_test)
        history.append({"epoch": epoch + 1, "loss": mean_loss, "test_accuracy": acc})
        log.info(
            "%s epoch %d: loss %.4f, test accuracy %.4f", description, epoch + 1, mean_loss, acc
        )
        seconds = prior_seconds + time.perf_counter() - start_time
        if ckpt is not None:
            ckpt.save(epoch + 1, state, {"meta": meta, "history": history, "seconds": seconds})
    if ckpt is not None:
        ckpt.close()
    return TrainResult(
        variables=state["variables"],
        history=history,
        seconds=seconds,
        resumed_from=resumed_from,
    )
