"""Training helpers for your own Flax model: train, evaluate, re-estimate BatchNorm, harden.

`jgraph.quant.recipes.run_recipe` runs the whole recipe on a bundled model or
yours; this module is the same machinery one step at a time, for a Linen or
NNX model of your own:

1. ``apply = linen_apply(model)`` (or `nnx_apply`) adapts the model's call
   (its ``train``/``deterministic`` switch, BatchNorm, dropout) to the
   `ApplyFn` every helper here takes; `ConfigError` if it cannot.
2. `train` (full precision), with Orbax checkpoints and exact resume.
3. ``quant.dgms(model, config).init(...)`` (or ``quant.dgms_nnx``), then
   `train` again on the DGMS adapter: soft weights in training, hard weights
   in `evaluate`.
4. `reestimate_batch_stats`: BatchNorm statistics recomputed with the hard
   weights (2-bit k-means on a 5k-image MNIST subset: 18% -> 78% accuracy).
5. ``quant.harden`` (``quant.harden_nnx``): the hand-off to export: hard
   variables, one K-entry codebook and uint8 indices per layer;
   ``functools.partial(linen_apply(model), hardened.variables, train=False)``
   is the inference function of the plain model (for an NNX model, the plain
   module `harden_nnx` returns).

Example:
    >>> import functools, jax, flax.linen as nn
    >>> from jgraph import quant
    >>> from jgraph.quant import training
    >>> class Net(nn.Module):  # your model: any call signature with a train switch
    ...     @nn.compact
    ...     def __call__(self, x, *, deterministic: bool = True):
    ...         x = nn.relu(nn.Dense(32)(x.reshape(len(x), -1)))
    ...         x = nn.BatchNorm(use_running_average=deterministic, momentum=0.9)(x)
    ...         x = nn.relu(nn.Dense(32)(x))
    ...         return nn.Dense(10)(x)
    >>> data = quant.recipes.load_dataset("digits")
    >>> xy = (data.x_train, data.y_train, data.x_test, data.y_test)
    >>> apply = training.linen_apply(Net())
    >>> fp = training.train(apply, apply.init(jax.random.key(0), data.x_train[:1]), *xy,
    ...                     training.Recipe(epochs=3, lr=1e-2), seed=0)
    >>> config = quant.DGMSConfig(bits=2)
    >>> qmodel = quant.dgms(Net(), config)
    >>> qvars = qmodel.init(fp.variables, data.x_train[:1], key=jax.random.key(1))
    >>> q_apply = training.linen_apply(qmodel)
    >>> q = training.train(q_apply, qvars, *xy, training.Recipe(epochs=1, lr=1e-2), seed=0)
    >>> qvars = training.reestimate_batch_stats(q_apply, q.variables, data.x_train,
    ...                                         batch_size=64, passes=3)
    >>> training.evaluate(q_apply, qvars, data.x_test, data.y_test) > 0.8  # hard weights
    True
    >>> hardened = quant.harden(qvars, config)  # export hand-off
    >>> predict = functools.partial(apply, hardened.variables, train=False)
    >>> predict(data.x_test[:4]).shape
    (4, 10)
"""

from jgraph.quant._adapt import LinenApply as LinenApply
from jgraph.quant._adapt import Mode as Mode
from jgraph.quant._adapt import linen_apply as linen_apply
from jgraph.quant._adapt_nnx import NNXApply as NNXApply
from jgraph.quant._adapt_nnx import nnx_apply as nnx_apply
from jgraph.quant._bn import BNMethod as BNMethod
from jgraph.quant._bn import reestimate_batch_stats as reestimate_batch_stats
from jgraph.quant._config import Recipe as Recipe
from jgraph.quant._data import check_examples as check_examples
from jgraph.quant._train import ApplyFn as ApplyFn
from jgraph.quant._train import TrainResult as TrainResult
from jgraph.quant._train import evaluate as evaluate
from jgraph.quant._train import make_optimizer as make_optimizer
from jgraph.quant._train import train as train

__all__ = [
    "ApplyFn",
    "BNMethod",
    "LinenApply",
    "Mode",
    "NNXApply",
    "Recipe",
    "TrainResult",
    "check_examples",
    "evaluate",
    "linen_apply",
    "make_optimizer",
    "nnx_apply",
    "reestimate_batch_stats",
    "train",
]
