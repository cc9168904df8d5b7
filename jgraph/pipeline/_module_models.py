"""A zoo of small trainable Flax module graphs shaped like the GraphPipe benchmark models.

Where `_models` describes the paper's models analytically at paper scale,
these are real `ModuleGraph`s, tiny enough that a training step on a CPU takes
milliseconds, for a pipeline runtime to train and to compare with the
single-device reference (`_module_apply`):

* ``mmt-tiny``: ``branches`` modalities ``x{b}`` of shape ``(8, 8 + 4 b)``; per
  branch ``b{b}.proj`` (Dense + position embedding), ``b{b}.l{j}`` pre-LN
  Transformer blocks and ``b{b}.pool`` (mean over the sequence); ``fuse``
  (concat + Dense) and ``head`` (10 class logits).
* ``dlrm-tiny``: ``dense`` (13 floats) through ``bot{j}``; ``branches`` sparse
  features ``s{k}`` (bags of 4 int32 indices) through embedding bags
  ``emb{k}``; ``interact`` (pairwise dots); ``top{j}`` and ``head`` (one logit).
* ``candle-uno-tiny``: ``branches`` feature vectors ``x{b}`` of size ``16 + 8 b``
  through ``b{b}.l{j}``; ``fuse``, ``top0`` and ``head`` (one regression output).
* ``transformer-tiny``: ``x`` ``(8, 16)`` through ``proj``, ``l{j}``, ``pool``, ``head``.

Flax is imported inside the functions, so importing `jgraph.pipeline.models`
stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jgraph.core import ConfigError, check_choice, check_int
from jgraph.pipeline._profile import GraphInput, ModuleGraph, ModuleNode

__all__ = ["MODULE_MODEL_NAMES", "module_model", "module_model_loss", "synthetic_batch"]

MODULE_MODEL_NAMES = ("mmt-tiny", "dlrm-tiny", "candle-uno-tiny", "transformer-tiny")

SEQ = 8  # tokens per sample (mmt-tiny, transformer-tiny)
HEADS = 4  # attention heads; the width must be a multiple
CLASSES = 10  # mmt-tiny and transformer-tiny are classifiers
BAG = 4  # indices per sparse feature (dlrm-tiny)
DENSE_FEATURES = 13  # dlrm-tiny's dense input, as in the Criteo data set
_TEACHER_SEED = 20250101  # the fixed random function that makes the targets

# name -> (default branches or None for a single chain, default layers, default width)
_DEFAULTS: dict[str, tuple[int | None, int, int]] = {
    "mmt-tiny": (2, 2, 32),
    "dlrm-tiny": (3, 2, 16),
    "candle-uno-tiny": (3, 2, 32),
    "transformer-tiny": (None, 2, 32),
}


def _mmt(branches: int, layers: int, width: int) -> ModuleGraph:
    from jgraph.pipeline import _module_layers as ml

    inputs, nodes = [], []
    for b in range(branches):
        inputs.append(GraphInput(name=f"x{b}", shape=(SEQ, 8 + 4 * b)))
        prev = f"b{b}.proj"
        nodes.append(ModuleNode(name=prev, module=ml.Project(width, SEQ), inputs=(f"x{b}",)))
        for j in range(layers):
            block = ml.TransformerBlock(width, HEADS, 4 * width)
            nodes.append(ModuleNode(name=f"b{b}.l{j}", module=block, inputs=(prev,)))
            prev = f"b{b}.l{j}"
        nodes.append(ModuleNode(name=f"b{b}.pool", module=ml.MeanPool(), inputs=(prev,)))
    pools = tuple(f"b{b}.pool" for b in range(branches))
    nodes.append(ModuleNode(name="fuse", module=ml.Fuse(width), inputs=pools))
    nodes.append(ModuleNode(name="head", module=ml.Head(CLASSES), inputs=("fuse",)))
    return ModuleGraph(name="mmt-tiny", inputs=tuple(inputs), nodes=tuple(nodes))


def _dlrm(branches: int, layers: int, width: int) -> ModuleGraph:
    from jgraph.pipeline import _module_layers as ml

    inputs = [GraphInput(name="dense", shape=(DENSE_FEATURES,))]
    nodes, prev = [], "dense"
    for j in range(layers):
        features = width if j == layers - 1 else 2 * width  # the last matches the embeddings
        nodes.append(ModuleNode(name=f"bot{j}", module=ml.MlpLayer(features), inputs=(prev,)))
        prev = f"bot{j}"
    for k in range(branches):
        inputs.append(GraphInput(name=f"s{k}", shape=(BAG,), dtype="int32"))
        bag = ml.EmbeddingBag(32 * (k + 1), width)
        nodes.append(ModuleNode(name=f"emb{k}", module=bag, inputs=(f"s{k}",)))
    interact_in = (prev, *(f"emb{k}" for k in range(branches)))
    nodes.append(ModuleNode(name="interact", module=ml.Interaction(), inputs=interact_in))
    prev = "interact"
    for j in range(layers):
        nodes.append(ModuleNode(name=f"top{j}", module=ml.MlpLayer(2 * width), inputs=(prev,)))
        prev = f"top{j}"
    nodes.append(ModuleNode(name="head", module=ml.Head(1), inputs=(prev,)))
    return ModuleGraph(name="dlrm-tiny", inputs=tuple(inputs), nodes=tuple(nodes))


def _candle_uno(branches: int, layers: int, width: int) -> ModuleGraph:
    from jgraph.pipeline import _module_layers as ml

    inputs, nodes, ends = [], [], []
    for b in range(branches):
        inputs.append(GraphInput(name=f"x{b}", shape=(16 + 8 * b,)))
        prev = f"x{b}"
        for j in range(layers):
            nodes.append(ModuleNode(name=f"b{b}.l{j}", module=ml.MlpLayer(width), inputs=(prev,)))
            prev = f"b{b}.l{j}"
        ends.append(prev)
    nodes.append(ModuleNode(name="fuse", module=ml.Fuse(width), inputs=tuple(ends)))
    nodes.append(ModuleNode(name="top0", module=ml.MlpLayer(width), inputs=("fuse",)))
    nodes.append(ModuleNode(name="head", module=ml.Head(1), inputs=("top0",)))
    return ModuleGraph(name="candle-uno-tiny", inputs=tuple(inputs), nodes=tuple(nodes))


def _transformer(branches: int | None, layers: int, width: int) -> ModuleGraph:
    from jgraph.pipeline import _module_layers as ml

    del branches  # a single chain
    nodes = [ModuleNode(name="proj", module=ml.Project(width, SEQ), inputs=("x",))]
    prev = "proj"
    for j in range(layers):
        block = ml.TransformerBlock(width, HEADS, 4 * width)
        nodes.append(ModuleNode(name=f"l{j}", module=block, inputs=(prev,)))
        prev = f"l{j}"
    nodes.append(ModuleNode(name="pool", module=ml.MeanPool(), inputs=(prev,)))
    nodes.append(ModuleNode(name="head", module=ml.Head(CLASSES), inputs=("pool",)))
    inputs = (GraphInput(name="x", shape=(SEQ, 16)),)
    return ModuleGraph(name="transformer-tiny", inputs=inputs, nodes=tuple(nodes))


_BUILDERS: dict[str, Callable[..., ModuleGraph]] = {
    "mmt-tiny": _mmt,
    "dlrm-tiny": _dlrm,
    "candle-uno-tiny": _candle_uno,
    "transformer-tiny": _transformer,
}


def module_model(
    name: str, *, branches: int | None = None, layers: int | None = None, width: int | None = None
) -> ModuleGraph:
    """Builds one of the zoo's Flax module graphs.

    Args:
        name: one of `MODULE_MODEL_NAMES`.
        branches: parallel branches (mmt-tiny: modalities, default 2; dlrm-tiny:
            sparse features, default 3; candle-uno-tiny: feature inputs,
            default 3); transformer-tiny is a single chain and takes none.
        layers: Transformer blocks per branch (mmt-tiny, transformer-tiny) or
            Dense layers per MLP stack (dlrm-tiny's bottom and top, each
            candle-uno-tiny branch); default 2.
        width: hidden width (default 32; dlrm-tiny's embedding size, default 16);
            a multiple of 4 (the attention heads) for the Transformer models.

    Returns:
        The `ModuleGraph`; its only sink is ``head``.

    Raises:
        ConfigError: for an unknown name or sizes out of range.

    Example:
        >>> g = module_model("mmt-tiny", branches=2, layers=1)
        >>> [n.name for n in g.nodes]
        ['b0.proj', 'b0.l0', 'b0.pool', 'b1.proj', 'b1.l0', 'b1.pool', 'fuse', 'head']
    """
    check_choice("module_model.name", name, MODULE_MODEL_NAMES)
    d_branches, d_layers, d_width = _DEFAULTS[name]
    if d_branches is None and branches is not None:
        raise ConfigError(
            "module_model.branches", branches, f"{name} is a single chain", "leave branches unset"
        )
    if d_branches is not None:
        branches = d_branches if branches is None else branches
        check_int("module_model.branches", branches, minimum=1, maximum=16)
    layers = check_int(
        "module_model.layers", d_layers if layers is None else layers, minimum=1, maximum=64
    )
    width = check_int(
        "module_model.width", d_width if width is None else width, minimum=4, maximum=1024
    )
    if name in ("mmt-tiny", "transformer-tiny") and width % HEADS:
        raise ConfigError(
            "module_model.width",
            width,
            f"must be a multiple of {HEADS} (the attention heads)",
            f"pass e.g. width={HEADS * max(1, round(width / HEADS))}",
        )
    return _BUILDERS[name](branches, layers, width)


def _softmax_cross_entropy(logits: Any, labels: Any) -> Any:
    import jax
    import jax.numpy as jnp

    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def _sigmoid_bce(logits: Any, targets: Any) -> Any:
    import jax
    import jax.numpy as jnp

    # -[y log s(z) + (1 - y) log(1 - s(z))] = softplus(z) - y z, stable for any z.
    return jnp.mean(jax.nn.softplus(logits) - targets * logits)


def _mse(pred: Any, targets: Any) -> Any:
    import jax.numpy as jnp

    return jnp.mean(jnp.square(pred - targets))


_LOSSES: dict[str, Callable[[Any, Any], Any]] = {
    "mmt-tiny": _softmax_cross_entropy,
    "dlrm-tiny": _sigmoid_bce,
    "candle-uno-tiny": _mse,
    "transformer-tiny": _softmax_cross_entropy,
}


def module_model_loss(name: str) -> Callable[[Any, Any], Any]:
    """The training loss of a zoo model: ``loss(sink_output, targets)``, a mean over the batch.

    Softmax cross-entropy on int labels ``[B]`` for mmt-tiny and transformer-tiny
    (logits ``[B, 10]``), sigmoid binary cross-entropy on 0/1 floats ``[B]`` for
    dlrm-tiny and the mean squared error on floats ``[B]`` for candle-uno-tiny.
    Each is a pure `jax.numpy` function.

    Example:
        >>> import jax.numpy as jnp
        >>> float(module_model_loss("candle-uno-tiny")(jnp.zeros(4), jnp.ones(4)))
        1.0
    """
    check_choice("module_model_loss.name", name, MODULE_MODEL_NAMES)
    return _LOSSES[name]


def _vocab(graph: ModuleGraph, input_name: str) -> int:
    """The table size of the embedding bag that reads an int input."""
    for n in graph.nodes:
        vocab = getattr(n.module, "vocab", None)
        if input_name in n.inputs and isinstance(vocab, int):
            return vocab
    raise ConfigError(
        f"ModuleGraph({graph.name}).inputs[{input_name}]",
        input_name,
        "is an int input that no EmbeddingBag reads, so its index range is unknown",
        "build the graph with module_model",
    )


def synthetic_batch(
    graph: ModuleGraph, name: str, batch: int, *, key: Any
) -> tuple[dict[str, Any], Any]:
    """Random inputs for a zoo graph and targets that a fixed random function makes from them.

    Float inputs are standard normal; int inputs are uniform indices below the
    reading embedding bag's table size. The targets come from a "teacher" whose
    weights are fixed (independent of ``key``), so every batch samples the same
    function and training on a stream of batches learns it: each input is
    reduced to a feature vector (the sequence mean, the vector itself, or a
    fixed random value per index averaged over the bag) and the concatenated
    features are mapped to the argmax of a random linear map (class labels), the
    sign of a random linear map (0/1 floats) or ``tanh`` features through a
    random two-layer map (regression floats, about unit variance).

    Args:
        graph: the graph, as ``module_model(name, ...)`` built it (its name is ``name``).
        name: the zoo model's name (it picks the kind of targets).
        batch: samples.
        key: a JAX PRNG key for the inputs; the same key gives the same batch.

    Returns:
        ``(inputs, targets)``: one ``[batch, *shape]`` array per `GraphInput`
        by name, and targets of shape ``[batch]``.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    check_choice("synthetic_batch.name", name, MODULE_MODEL_NAMES)
    if graph.name != name:
        raise ConfigError(
            "synthetic_batch.name",
            name,
            f"does not match the graph ({graph.name!r}), so the targets would be of the wrong kind",
            f"pass the name the graph was built with: module_model({name!r}, ...)",
        )
    check_int("synthetic_batch.batch", batch, minimum=1)
    # NumPy draws the data (XLA compiles JAX's threefry slowly on a CPU, per shape); the
    # key's bits seed it, so the same key gives the same batch.
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    rng = np.random.default_rng([int(w) for w in np.asarray(key).ravel()])
    teacher = np.random.default_rng(_TEACHER_SEED)
    inputs: dict[str, Any] = {}
    features = []
    for gi in graph.inputs:
        shape = (batch, *gi.shape)
        if np.issubdtype(np.dtype(gi.dtype), np.integer):
            vocab = _vocab(graph, gi.name)
            x = rng.integers(0, vocab, size=shape).astype(gi.dtype)
            table = teacher.standard_normal((vocab, 4))
            feature = table[x].mean(axis=-2) * np.sqrt(gi.shape[-1])
        else:
            x = rng.standard_normal(shape).astype(gi.dtype)
            feature = x if x.ndim == 2 else x.mean(axis=-2) * np.sqrt(gi.shape[-2])
        inputs[gi.name] = jnp.asarray(x)
        features.append(feature.reshape(batch, -1))
    f = np.concatenate(features, axis=-1)
    f /= np.sqrt(f.shape[-1])
    if _LOSSES[name] is _softmax_cross_entropy:
        labels = np.argmax(f @ teacher.standard_normal((f.shape[-1], CLASSES)), axis=-1)
        return inputs, jnp.asarray(labels, dtype=jnp.int32)
    if _LOSSES[name] is _sigmoid_bce:
        logit = f @ teacher.standard_normal(f.shape[-1])
        return inputs, jnp.asarray(logit > 0, dtype=jnp.float32)
    # tanh of a unit normal has variance ~0.39: the targets have about unit variance.
    hidden = np.tanh(f @ teacher.standard_normal((f.shape[-1], 16)))
    y = hidden @ teacher.standard_normal(16) / np.sqrt(16 * 0.39)
    return inputs, jnp.asarray(y, dtype=jnp.float32)
