"""The μGraph operator vocabulary and its shape rules (kernel and block level).

One table serves both levels so that the interpreter, the search, the cost
model and the abstract expressions agree on what an op is. Shapes are tuples
of ints; every rule raises `ShapeError` (a `ConfigError`) naming the op, the
shapes received and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from jgraph.core import ConfigError

__all__ = [
    "ACCUMULATORS",
    "BINARY",
    "BLOCK_OPS",
    "ELEMENTWISE",
    "ERFC_POLY",
    "KERNEL_OPS",
    "NON_ALGEBRAIC",
    "UNARY",
    "ShapeError",
    "broadcast_shapes",
    "op_shape",
    "scalar_of",
]

UNARY = ("exp", "square", "sqrt", "rsqrt", "silu", "gelu", "gelu_exact", "relu", "mul_scalar")
BINARY = ("add", "sub", "mul", "div", "pow")
COMMUTATIVE = frozenset({"add", "mul"})
ELEMENTWISE = frozenset(UNARY + BINARY)
# Ops that have no exact meaning over a finite field: keyed random functions there.
NON_ALGEBRAIC = frozenset({"silu", "gelu", "gelu_exact", "relu", "pow", "reduce_max", "accum_max"})
STRUCTURAL = ("matmul", "reduce_sum", "reduce_max", "rms_norm", "concat")
# Accumulators turn a pre-loop tensor (one tile per for-loop iteration) into a
# post-loop one. Their semantics are documented in `_interp.py`.
ACCUMULATORS = (
    "accum_sum",
    "accum_sum_ld",
    "accum_mean_ld",
    "accum_rms_ld",
    "accum_redtox_ld",
    "accum_max",
    "accum_rescale",
)
KERNEL_OPS = (*UNARY, *BINARY, *STRUCTURAL, "customized")
BLOCK_OPS = (*UNARY, *BINARY, *STRUCTURAL, *ACCUMULATORS)


# erfc(z) = t·exp(P(t) - z²) for z >= 0, t = 1/(1 + z/2), P's coefficients lowest degree
# first (Numerical Recipes' erfcc: relative error < 1.2e-7 for every z >= 0), and
# erfc(-z) = 2 - erfc(z). The kernels compute gelu_exact's 0.5·x·erfc(-x/√2) with it,
# as jax.nn.gelu(approximate=False) does (Pallas-Triton has no erf or erfc).
ERFC_POLY = (
    -1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
    0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277,
)  # fmt: skip


def scalar_of(attrs: Mapping[str, Any]) -> Fraction:
    """A ``mul_scalar`` op's factor as the rational every backend uses.

    The finite-field verifier needs an exact rational; the float interpreter, the Pallas
    lowering and the Triton emitter multiply by the same value so they agree with it.

    Example:
        >>> scalar_of({"scalar": 0.125})
        Fraction(1, 8)
    """
    return Fraction(attrs["scalar"]).limit_denominator(1 << 20)


class ShapeError(ConfigError):
    """Operand shapes that an op cannot take."""


def _fail(kind: str, shapes: Sequence[tuple[int, ...]], problem: str, fix: str) -> ShapeError:
    return ShapeError(f"{kind}.inputs", [tuple(s) for s in shapes], problem, fix)


def broadcast_shapes(kind: str, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """Equal-rank broadcasting: each dimension pair must be equal or contain a 1."""
    if len(a) != len(b):
        raise _fail(kind, (a, b), "ranks differ", "reshape to equal rank (broadcast explicitly)")
    out = []
    for x, y in zip(a, b, strict=True):
        if x != y and 1 not in (x, y):
            raise _fail(
                kind, (a, b), f"dimensions {x} and {y} do not broadcast", "use equal dims or 1"
            )
        out.append(max(x, y))
    return tuple(out)


def _dim(kind: str, shape: tuple[int, ...], attrs: Mapping[str, Any]) -> int:
    dim = attrs.get("dim", len(shape) - 1)
    if not isinstance(dim, int) or not -len(shape) <= dim < len(shape):
        raise _fail(kind, (shape,), f"dim={dim!r} out of range", f"use 0..{len(shape) - 1}")
    return dim % len(shape)


def op_shape(
    kind: str, shapes: Sequence[tuple[int, ...]], attrs: Mapping[str, Any]
) -> tuple[int, ...]:
    """The output shape of a non-customized op (kernel or block level).

    Args:
        kind: the op name (see `KERNEL_OPS`, `BLOCK_OPS`).
        shapes: the operand shapes.
        attrs: the op's attributes (``dim``, ``scalar``, ``dimx``).

    Returns:
        The output shape.

    Raises:
        ShapeError: the operands do not fit the op.

    Example:
        >>> op_shape("matmul", [(2, 8), (8, 3)], {})
        (2, 3)
    """
    arity = 2 if kind in BINARY or kind in ("matmul", "accum_rescale") else None
    if kind == "concat":
        arity = len(shapes)
    elif arity is None:
        arity = 1
    if len(shapes) != arity or not shapes:
        raise _fail(kind, shapes, f"takes {arity} operand(s), got {len(shapes)}", "fix the inputs")
    a = tuple(shapes[0])
    if kind in UNARY or kind in ("accum_sum", "accum_max"):
        return a
    if kind in BINARY:
        return broadcast_shapes(kind, a, tuple(shapes[1]))
    if kind == "accum_rescale":
        broadcast_shapes(kind, a, tuple(shapes[1]))
        if tuple(shapes[1])[-1] != 1:
            raise _fail(kind, shapes, "the row maximum must have last dim 1", "reduce it first")
        return a
    if kind == "matmul":
        b = tuple(shapes[1])
        if len(a) < 2 or len(a) != len(b):
            raise _fail(kind, shapes, "needs equal-rank operands of rank >= 2", "reshape them")
        if a[-1] != b[-2]:
            raise _fail(kind, shapes, f"contraction {a[-1]} != {b[-2]}", "transpose an operand")
        if a[:-2] != b[:-2]:
            raise _fail(kind, shapes, "batch dimensions differ", "use equal batch dimensions")
        return (*a[:-1], b[-1])
    if kind in ("reduce_sum", "reduce_max"):
        d = _dim(kind, a, attrs)
        return (*a[:d], 1, *a[d + 1 :])
    if kind == "rms_norm":
        return a
    if kind in ("accum_sum_ld", "accum_mean_ld", "accum_rms_ld"):
        return (*a[:-1], 1)
    if kind == "accum_redtox_ld":
        dimx = attrs.get("dimx", 0)
        if not isinstance(dimx, int) or dimx < 1 or a[-1] % dimx:
            raise _fail(kind, shapes, f"dimx={dimx!r} does not divide {a[-1]}", "pick a divisor")
        return (*a[:-1], dimx)
    if kind == "concat":
        d = _dim(kind, a, attrs)
        for s in shapes[1:]:
            if len(s) != len(a) or any(
                x != y for i, (x, y) in enumerate(zip(a, s, strict=False)) if i != d
            ):
                raise _fail(kind, shapes, "shapes differ off the concat dim", "match them")
        return (*a[:d], sum(s[d] for s in shapes), *a[d + 1 :])
    raise _fail(kind, shapes, "unknown op", f"use one of {', '.join((*BLOCK_OPS, 'customized'))}")
