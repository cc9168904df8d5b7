"""Ordinary JAX and Flax layer code for `superoptimize`: the corpus of issue 18.

Each program is written the way model code is (``flax.linen`` modules applied
with their parameters closed over, ``jax.nn`` activations, ``x.mean(-1)``,
biases added with ``b[None]`` (the test suite runs with
``jax_numpy_rank_promotion="raise"``), masks with ``jnp.where``), not in μGraph terms.
`example(name, rows=..., hidden=...)` builds one at the given sizes: the
function (parameters fixed by a seed) and ``args(seed)``, which draws fresh
arguments of the example shapes. The tests (tests/superopt/test_corpus.py) and
the coverage benchmark (scripts/bench_superopt_coverage.py) run all of them.

Example:
    >>> from jgraph.superopt.corpus import NAMES, example
    >>> ex = example("rmsnorm", rows=4, hidden=32)
    >>> ex.fn(*ex.args(0)).shape
    (4, 32)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

__all__ = ["NAMES", "Example", "example"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Example:
    """One corpus program at fixed sizes.

    Attributes:
        name: the corpus name.
        fn: the JAX function (parameters closed over).
        args: ``args(seed)``: a tuple of fresh float32 arguments of the example shapes.
        xla_ops: the primitives `superoptimize` keeps as XLA today, in order: ops the
            μGraph IR has no op for (``"log"``, ``"cumsum"``, ``"sort"``; the exact GELU's
            ``"erfc"`` is captured as the ``gelu_exact`` op), a transpose that moves data (``k.T``) and a ``jnp.where`` whose
            mask capture does not fold (``jnp.tril``'s); empty when the whole program is
            μGraph ops.
    """

    name: str
    fn: Callable[..., Any]
    args: Callable[[int], tuple[Any, ...]]
    xla_ops: tuple[str, ...] = ()


def _normal(seed: int, *shapes: tuple[int, ...]) -> tuple[Any, ...]:
    import jax

    key = jax.random.key(seed)
    return tuple(jax.random.normal(jax.random.fold_in(key, i), s) for i, s in enumerate(shapes))


def _params(module: Any, rows: int, hidden: int) -> Any:
    import jax
    import jax.numpy as jnp

    return module.init(jax.random.key(42), jnp.zeros((rows, hidden)))


def _flax(module: Any, rows: int, hidden: int) -> Callable[..., Any]:
    params = _params(module, rows, hidden)
    return lambda x: module.apply(params, x)


def _weights(hidden: int, *shapes: tuple[int, ...]) -> tuple[Any, ...]:
    # Fan-in scaled, as initializers do, so activations stay O(1) at any hidden size.
    return tuple(w / math.sqrt(s[0]) for w, s in zip(_normal(7, *shapes), shapes, strict=True))


def _layernorm(x: Any, g: Any, b: Any, eps: float = 1e-5) -> Any:
    import jax

    mean = x.mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(x.var(-1, keepdims=True) + eps) * g[None] + b[None]


def _rmsnorm(x: Any, g: Any, eps: float = 1e-6) -> Any:
    import jax
    import jax.numpy as jnp

    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps) * g[None]


def _attention(q: Any, k: Any, v: Any, causal: bool) -> Any:
    import jax
    import jax.numpy as jnp

    s = q @ k.T / math.sqrt(q.shape[-1])
    if causal:
        mask = jnp.tril(jnp.ones((q.shape[0], k.shape[0]), bool))
        s = jnp.where(mask, s, -jnp.inf)
    return jax.nn.softmax(s, axis=-1) @ v


def _safe_softmax(x: Any) -> Any:
    import jax.numpy as jnp

    e = jnp.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _build(name: str, rows: int, hidden: int) -> Example:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    h, f = hidden, 2 * hidden  # model width and MLP width
    o = hidden // 2
    x_only = lambda seed: _normal(seed, (rows, h))  # noqa: E731
    g, b = jnp.linspace(0.5, 1.5, h), jnp.linspace(-0.1, 0.1, h)
    w1, w2, w3 = _weights(h, (h, f), (f, h), (h, f))
    b1, b2 = jnp.linspace(-0.1, 0.1, f), jnp.linspace(-0.1, 0.1, h)

    def mlp_gelu(x: Any, approximate: bool) -> Any:
        return jax.nn.gelu(x @ w1 + b1[None], approximate=approximate) @ w2 + b2[None]

    def swiglu(x: Any) -> Any:
        return (jax.nn.silu(x @ w1 + b1[None]) * (x @ w3 + b1[None])) @ w2 + b2[None]

    def with_w(fn: Callable[..., Any], *shapes: tuple[int, ...]) -> Example:
        return Example(name=name, fn=fn, args=lambda seed: _normal(seed, (rows, h), *shapes))

    def closed(fn: Callable[..., Any], xla: tuple[str, ...] = ()) -> Example:
        return Example(name=name, fn=fn, args=x_only, xla_ops=xla)

    if name == "flax_dense_relu":
        return closed(_flax(nn.Sequential([nn.Dense(o), nn.relu]), rows, h))
    if name == "flax_dense_gelu_tanh":
        return closed(_flax(nn.Sequential([nn.Dense(o), nn.gelu]), rows, h))
    if name == "flax_dense_silu":
        return closed(_flax(nn.Sequential([nn.Dense(o), nn.silu]), rows, h))
    if name == "flax_layernorm":
        return closed(_flax(nn.LayerNorm(), rows, h))
    if name == "flax_rmsnorm":
        return closed(_flax(nn.RMSNorm(), rows, h))
    if name == "layernorm":
        return with_w(_layernorm, (h,), (h,))
    if name == "rmsnorm":
        return with_w(lambda x, g: _rmsnorm(x, g), (h,))
    if name == "rmsnorm_linear":
        return with_w(lambda x, w: _rmsnorm(x, g) @ w, (h, o))
    if name == "layernorm_linear_bias":
        return with_w(lambda x, w, bias: _layernorm(x, g, b) @ w + bias[None], (h, o), (o,))
    if name == "softmax":
        return closed(lambda x: jax.nn.softmax(x, axis=-1))
    if name == "log_softmax":
        return closed(lambda x: jax.nn.log_softmax(x, axis=-1), ("log",))
    if name == "safe_softmax":
        return closed(_safe_softmax)
    if name == "attention":
        ex = with_w(lambda q, k, v: _attention(q, k, v, False), (rows, h), (rows, h))
        return dataclasses.replace(ex, xla_ops=("transpose",))
    if name == "causal_attention":
        ex = with_w(lambda q, k, v: _attention(q, k, v, True), (rows, h), (rows, h))
        return dataclasses.replace(ex, xla_ops=("transpose",))
    if name == "multihead_attention":
        # (heads, seq, 64) per-head attention with max subtraction, heads = hidden / 64
        heads, d = max(h // 64, 1), min(h, 64)

        def mha(q: Any, k: Any, v: Any) -> Any:
            s = q @ jnp.swapaxes(k, -1, -2) * (1.0 / math.sqrt(d))
            e = jnp.exp(s - s.max(-1, keepdims=True))
            return (e / e.sum(-1, keepdims=True)) @ v

        shape = (heads, rows, d)
        return Example(
            name=name, fn=mha, args=lambda seed: _normal(seed, shape, shape, shape),
            xla_ops=("transpose",),
        )  # fmt: skip
    if name == "gelu_mlp_tanh":
        return closed(lambda x: mlp_gelu(x, True))
    if name == "gelu_mlp_exact":
        return closed(lambda x: mlp_gelu(x, False))
    if name == "swiglu_bias":
        return closed(swiglu)
    if name == "residual_rmsnorm_mlp":
        return closed(lambda x: x + mlp_gelu(_rmsnorm(x, g), True))
    if name == "residual_layernorm_swiglu":
        return closed(lambda x: x + swiglu(_layernorm(x, g, b)))
    if name == "residual_add_norm":
        return with_w(lambda x, y: _rmsnorm(x + y, g), (rows, h))
    if name == "cumsum_exp":
        return closed(lambda x: jnp.cumsum(jnp.exp(x), axis=-1) * 0.5 + 1.0, ("cumsum",))
    if name == "sort_scale":
        return closed(lambda x: jnp.sort(x, axis=-1) * jax.nn.sigmoid(x), ("sort",))
    raise KeyError(name)


NAMES: tuple[str, ...] = (
    "flax_dense_relu",
    "flax_dense_gelu_tanh",
    "flax_dense_silu",
    "flax_layernorm",
    "flax_rmsnorm",
    "layernorm",
    "rmsnorm",
    "rmsnorm_linear",
    "layernorm_linear_bias",
    "softmax",
    "log_softmax",
    "safe_softmax",
    "attention",
    "causal_attention",
    "multihead_attention",
    "gelu_mlp_tanh",
    "gelu_mlp_exact",
    "swiglu_bias",
    "residual_rmsnorm_mlp",
    "residual_layernorm_swiglu",
    "residual_add_norm",
    "cumsum_exp",
    "sort_scale",
)
"""Every corpus program, in the order the benchmark reports them."""


def example(name: str, *, rows: int = 8, hidden: int = 32) -> Example:
    """Corpus program ``name`` with ``rows`` rows (tokens) and width ``hidden``.

    Raises:
        ConfigError: an unknown name, or sizes that are not positive even numbers.

    Example:
        >>> ex = example("flax_dense_relu", rows=4, hidden=16)
        >>> ex.fn(*ex.args(1)).shape
        (4, 8)
    """
    from jgraph.core import ConfigError, check_choice, check_int

    check_choice("corpus.name", name, NAMES)
    check_int("corpus.rows", rows, minimum=1)
    check_int("corpus.hidden", hidden, minimum=2)
    if hidden % 2:
        raise ConfigError(
            "corpus.hidden", hidden, "is odd", "pass an even width (outputs are hidden/2)"
        )
    return _build(name, rows, hidden)
