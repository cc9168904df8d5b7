"""The arithmetic of μGraph ops on float32 JAX values, shared by kernel bodies and XLA ops.

It mirrors the float interpreter (`jgraph.superopt._ring.FloatRing`) op for op, so
a lowered kernel differs from the float64 reference only by float32 rounding, by
reduction order and, for gelu_exact, by its erfc polynomial (`ERFC_POLY`, 1.2e-7
relative). Matmuls are the exception that buys speed: with 16-bit
storage both operands are cast to the storage dtype and multiplied with float32
accumulation (tensor cores), as FlashAttention does with its probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jgraph.superopt._ops import ERFC_POLY, scalar_of

__all__ = ["accumulate_step", "apply", "dot", "dot_dtype", "finalize", "init_accumulator"]

F32 = jnp.float32


def dot_dtype(storage: Any) -> Any:
    """The matmul operand dtype: 16-bit storage stays 16-bit (tensor cores), else float32."""
    return storage if jnp.dtype(storage).itemsize == 2 else F32


def dot(a: jax.Array, b: jax.Array, dot_dtype: Any) -> jax.Array:
    """``a @ b`` over the last two dims with float32 accumulation.

    Tiles whose batch dims are all 1 are reshaped to 2-D (Triton has no batched
    dot); a tile with a real batch dim uses a batched ``dot_general`` (the
    interpreter and XLA take it; the Triton lowering rejects it, and the lowering
    check then drops the candidate).
    """
    *batch, m, k = a.shape
    n = b.shape[-1]
    prec = jax.lax.Precision.HIGHEST if jnp.dtype(dot_dtype) == F32 else None
    a, b = a.astype(dot_dtype), b.astype(dot_dtype)
    if math.prod(batch) == 1:
        out = jnp.dot(a.reshape(m, k), b.reshape(k, n), precision=prec, preferred_element_type=F32)
        return out.reshape(*batch, m, n)
    dims = tuple(range(len(batch)))
    return jax.lax.dot_general(
        a, b, (((a.ndim - 1,), (b.ndim - 2,)), (dims, dims)),
        precision=prec, preferred_element_type=F32,
    )  # fmt: skip


def apply(kind: str, xs: Sequence[jax.Array], attrs: dict[str, Any], dot_dtype: Any) -> jax.Array:
    """One non-accumulator op on float32 values (the interpreter's float semantics)."""
    x = xs[0]
    if kind == "exp":
        return jnp.exp(x)
    if kind == "square":
        return x * x
    if kind == "sqrt":
        return jnp.sqrt(x)
    if kind == "rsqrt":
        return 1.0 / jnp.sqrt(x)
    if kind == "silu":
        return x / (1.0 + jnp.exp(-x))
    if kind == "gelu":  # tanh form, as the interpreter and jax.nn.gelu(approximate=True)
        c = math.sqrt(2 / math.pi)
        return 0.5 * x * (1.0 + jnp.tanh(c * (x + 0.044715 * x * x * x)))
    if kind == "gelu_exact":  # 0.5·x·(1 + erf(x/√2)), as jax.nn.gelu(approximate=False)
        return 0.5 * x * _erfc(x * (-1 / math.sqrt(2)))
    if kind == "relu":
        return jnp.maximum(x, 0.0)
    if kind == "mul_scalar":
        return x * float(scalar_of(attrs))
    if kind == "add":
        return x + xs[1]
    if kind == "sub":
        return x - xs[1]
    if kind == "mul":
        return x * xs[1]
    if kind == "div":
        return x / xs[1]
    if kind == "pow":
        return jnp.power(x, xs[1])
    if kind == "matmul":
        return dot(x, xs[1], dot_dtype)
    rank = x.ndim
    if kind in ("reduce_sum", "reduce_max"):
        axis = attrs.get("dim", rank - 1) % rank
        if kind == "reduce_sum":
            return jnp.sum(x, axis=axis, keepdims=True)
        return jnp.max(x, axis=axis, keepdims=True)
    if kind == "rms_norm":
        ms = jnp.sum(x * x, axis=-1, keepdims=True) * (1.0 / x.shape[-1])
        return x / jnp.sqrt(ms)
    if kind == "concat":
        return jnp.concatenate(list(xs), axis=attrs.get("dim", rank - 1) % rank)
    raise ValueError(f"the lowering has no op {kind!r}")


def _erfc(z: jax.Array) -> jax.Array:
    """erfc in float32 from `ERFC_POLY` (Pallas-Triton lowers no erf/erfc primitive)."""
    a = jnp.abs(z)
    t = 1.0 / (1.0 + 0.5 * a)
    p = ERFC_POLY[-1] * t
    for c in reversed(ERFC_POLY[1:-1]):
        p = (c + p) * t
    e = t * jnp.exp(ERFC_POLY[0] + p - a * a)
    return jnp.where(z < 0.0, 2.0 - e, e)


def init_accumulator(kind: str, shape: tuple[int, ...], max_shape: tuple[int, ...]) -> Any:
    """The for-loop carry of an accumulator before iteration 0 (float32)."""
    if kind == "accum_max":
        return jnp.full(shape, -jnp.inf, F32)
    if kind == "accum_rescale":  # (running row max, rescaled sum)
        return (jnp.full(max_shape, -jnp.inf, F32), jnp.zeros(shape, F32))
    return jnp.zeros(shape, F32)


def _fold(x: jax.Array, dimx: int) -> jax.Array:
    n = x.shape[-1]
    return jnp.sum(x.reshape(*x.shape[:-1], n // dimx, dimx), axis=-2)


def accumulate_step(kind: str, carry: Any, xs: Sequence[jax.Array], attrs: dict[str, Any]) -> Any:
    """Folds one iteration's tile(s) into the carry (see `jgraph.superopt._interp`)."""
    x = xs[0]
    if kind == "accum_rescale":
        big_m, acc = carry
        m_i = xs[1]
        new_m = jnp.maximum(big_m, m_i)
        return new_m, acc * jnp.exp(big_m - new_m) + x * jnp.exp(m_i - new_m)
    if kind == "accum_max":
        return jnp.maximum(carry, x)
    if kind == "accum_sum":
        return carry + x
    if kind in ("accum_sum_ld", "accum_mean_ld"):
        return carry + jnp.sum(x, axis=-1, keepdims=True)
    if kind == "accum_rms_ld":
        return carry + jnp.sum(x * x, axis=-1, keepdims=True)
    if kind == "accum_redtox_ld":
        return carry + _fold(x, attrs["dimx"])
    raise ValueError(f"unknown accumulator {kind!r}")


def finalize(kind: str, carry: Any, frange: int, n: int) -> jax.Array:
    """The accumulator's value after the loop; ``n`` is the per-iteration tile's last dim."""
    if kind == "accum_rescale":
        return carry[1]
    if kind == "accum_mean_ld":
        return carry * (1.0 / (frange * n))
    if kind == "accum_rms_ld":
        return jnp.sqrt(carry * (1.0 / (frange * n)))
    return carry
