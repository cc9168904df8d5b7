"""Triton source for μGraph block ops on padded float32 tiles (used by `_triton_emit`).

Each function returns source lines that assign one variable. The arithmetic is
the float interpreter's (`jgraph.superopt._ring.FloatRing`), op for op, as in
`jgraph.superopt._lower_ops`: IEEE division and square root (``tl.div_rn``,
``tl.sqrt_rn``), the tanh form of gelu (written as ``x·sigmoid(2y)``, which is
the same function), gelu_exact's erfc from the same polynomial (`ERFC_POLY`),
the same rational for ``mul_scalar``, and float32 accumulation everywhere.

Padded lanes (see `_triton_pad`) hold whatever the ops made of the zeros that
masked loads put there (``exp(0) = 1``, ``0/0 = nan``). They never reach a real
lane: every reduction along a padded dim first replaces them with the
reduction's neutral element (0 for sums and matmul contractions, -inf for max).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from jgraph.core.pallas import TRITON_MIN_DOT
from jgraph.superopt._ops import ERFC_POLY, scalar_of

__all__ = ["Tiles", "acc_final", "acc_init", "acc_step", "arange", "op_lines", "valid"]

NEG_INF = 'float("-inf")'
_TWO_C = 2 * math.sqrt(2 / math.pi)  # gelu: 0.5·x·(1 + tanh(y)) = x·sigmoid(2y)


@dataclasses.dataclass(frozen=True)
class Tiles:
    """Real and padded shapes of the block tensors, and how dots and masks are emitted.

    Attributes:
        real: real tile shape per block tensor.
        pad: padded (power-of-two) shape per block tensor.
        dot_dtype: ``"tl.float16"``/``"tl.bfloat16"`` for 16-bit storage, else None
            (float32 operands, ``input_precision="ieee"``).
        mask: replace padded lanes before reductions (False only to show, in a
            test, what the masking prevents).
    """

    real: Sequence[tuple[int, ...]]
    pad: Sequence[tuple[int, ...]]
    dot_dtype: str | None
    mask: bool = True
    masks: dict[str, str] = dataclasses.field(default_factory=dict)  # expression -> name


def arange(rank: int, j: int, size: int) -> str:
    """``tl.arange(0, size)`` laid along dim ``j`` of a rank-``rank`` tensor."""
    base = f"tl.arange(0, {size})"
    if rank == 1:
        return base
    return base + "[" + ", ".join(":" if k == j else "None" for k in range(rank)) + "]"


def valid(tiles: Tiles, t: int, dims: Sequence[int]) -> str | None:
    """The name of the mask of real lanes of tensor ``t`` along ``dims`` (None: no padding).

    Masks are registered in ``tiles.masks``; the kernel computes each once, before the loop.
    """
    real, pad = tiles.real[t], tiles.pad[t]
    terms = [f"({arange(len(pad), j, pad[j])} < {real[j]})" for j in dims if pad[j] > real[j]]
    if not terms:
        return None
    return tiles.masks.setdefault(" & ".join(terms), f"mask{len(tiles.masks)}")


def _neutral(tiles: Tiles, expr: str, t: int, dims: Sequence[int], value: str) -> str:
    m = valid(tiles, t, dims) if tiles.mask else None
    return expr if m is None else f"tl.where({m}, {expr}, {value})"


def _unary(kind: str, x: str, attrs: dict[str, Any]) -> str:
    if kind == "mul_scalar":
        return f"{x} * {float(scalar_of(attrs))!r}"
    if kind == "gelu":
        return f"tl.div_rn({x}, 1.0 + tl.exp({-_TWO_C!r} * ({x} + 0.044715 * {x} * {x} * {x})))"
    return {
        "exp": f"tl.exp({x})",
        "square": f"{x} * {x}",
        "sqrt": f"tl.sqrt_rn({x})",
        "rsqrt": f"tl.div_rn(1.0, tl.sqrt_rn({x}))",
        "silu": f"tl.div_rn({x}, 1.0 + tl.exp(-{x}))",
        "relu": f"tl.maximum({x}, 0.0)",
    }[kind]


def _gelu_exact(out: str, x: str) -> list[str]:
    # 0.5·x·erfc(-x/√2), erfc from ERFC_POLY as in _lower_ops (z = -x/√2, a = |z|)
    p = f"{ERFC_POLY[-1]!r} * {out}_t"
    for c in reversed(ERFC_POLY[1:-1]):
        p = f"({c!r} + {p}) * {out}_t"
    return [
        f"{out}_a = tl.abs({x}) * {1 / math.sqrt(2)!r}",
        f"{out}_t = tl.div_rn(1.0, 1.0 + 0.5 * {out}_a)",
        f"{out}_e = {out}_t * tl.exp({ERFC_POLY[0]!r} + {p} - {out}_a * {out}_a)",
        f"{out} = 0.5 * {x} * tl.where({x} > 0.0, 2.0 - {out}_e, {out}_e)",
    ]


def _pow(out: str, x: str, y: str) -> list[str]:
    # numpy's power: |x|^y, the sign of x for odd integer y, nan for x < 0 and other y
    return [
        f"{out}_r = tl.exp2({y} * tl.log2(tl.abs({x})))",
        f"{out}_i = tl.floor({y}) == {y}",
        f"{out}_o = {out}_i & ({y} - 2.0 * tl.floor(0.5 * {y}) == 1.0)",
        f'{out}_n = tl.where({out}_i, tl.where({out}_o, -{out}_r, {out}_r), float("nan"))',
        f"{out} = tl.where({y} == 0.0, 1.0, tl.where({x} < 0.0, {out}_n, {out}_r))",
    ]


def _matmul(tiles: Tiles, out: str, ins: Sequence[int], names: Sequence[str]) -> list[str]:
    a, b = ins
    rank = len(tiles.pad[a])
    pb, pm, pk, pn = tiles.pad[a][:-2], tiles.pad[a][-2], tiles.pad[a][-1], tiles.pad[b][-1]
    lines = [
        f"{out}_a = {_neutral(tiles, names[0], a, [rank - 1], '0.0')}",
        f"{out}_b = {_neutral(tiles, names[1], b, [rank - 2], '0.0')}",
    ]
    if tiles.dot_dtype:  # 16-bit operands, float32 accumulation (tensor cores)
        lines += [
            f"{out}_a = {out}_a.to({tiles.dot_dtype})",
            f"{out}_b = {out}_b.to({tiles.dot_dtype})",
        ]
        dot_kw = "out_dtype=tl.float32"
    else:
        dot_kw = 'input_precision="ieee"'
    if min(pm, pk, pn) < TRITON_MIN_DOT:  # a real dim of 1: broadcast products, summed over K
        if tiles.dot_dtype:
            lines += [f"{out}_a = {out}_a.to(tl.float32)", f"{out}_b = {out}_b.to(tl.float32)"]
        ia = ", ".join([":"] * rank + ["None"])
        ib = ", ".join([":"] * (rank - 2) + ["None", ":", ":"])
        return [*lines, f"{out} = tl.sum({out}_a[{ia}] * {out}_b[{ib}], axis={rank - 1})"]
    if rank == 2:
        return [*lines, f"{out} = tl.dot({out}_a, {out}_b, {dot_kw})"]
    if math.prod(pb) == 1:  # batch dims of 1: squeezed to a 2-D dot
        return [
            *lines,
            f"{out} = tl.dot(tl.reshape({out}_a, ({pm}, {pk})), tl.reshape({out}_b, ({pk}, {pn})), {dot_kw})",
            f"{out} = tl.reshape({out}, {(*pb, pm, pn)})",
        ]
    if rank == 3:  # one real batch dim: Triton's batched dot
        return [*lines, f"{out} = tl.dot({out}_a, {out}_b, {dot_kw})"]
    raise NotImplementedError(
        f"matmul tile {tiles.real[a]} has several batch dims > 1; tl.dot batches one"
    )


def op_lines(
    tiles: Tiles, kind: str, out: str, t: int, ins: Sequence[int], names: Sequence[str],
    attrs: dict[str, Any],
) -> list[str]:  # fmt: skip
    """Source lines computing non-accumulator op ``kind`` into variable ``out`` (tensor ``t``).

    Raises:
        NotImplementedError: concat, or a matmul with several real batch dims.
    """
    rank = len(tiles.pad[t])
    x = names[0]
    if kind in ("add", "sub", "mul"):
        return [f"{out} = {x} {'+-*'[('add', 'sub', 'mul').index(kind)]} {names[1]}"]
    if kind == "div":
        return [f"{out} = tl.div_rn({x}, {names[1]})"]
    if kind == "pow":
        return _pow(out, x, names[1])
    if kind == "matmul":
        return _matmul(tiles, out, ins, names)
    if kind in ("reduce_sum", "reduce_max"):
        d = attrs.get("dim", rank - 1) % rank
        fn, neutral = ("tl.sum", "0.0") if kind == "reduce_sum" else ("tl.max", NEG_INF)
        return [
            f"{out} = {fn}({_neutral(tiles, x, ins[0], [d], neutral)}, axis={d}, keep_dims=True)"
        ]
    if kind == "rms_norm":
        n = tiles.real[t][-1]
        sq = _neutral(tiles, f"{x} * {x}", ins[0], [rank - 1], "0.0")
        ms = f"tl.sum({sq}, axis={rank - 1}, keep_dims=True) * {1.0 / n!r}"
        return [f"{out} = tl.div_rn({x}, tl.sqrt_rn({ms}))"]
    if kind == "concat":
        raise NotImplementedError("the Triton emitter has no concat yet")
    if kind == "gelu_exact":
        return _gelu_exact(out, x)
    return [f"{out} = {_unary(kind, x, attrs)}"]


def acc_init(tiles: Tiles, kind: str, acc: str, t: int, ins: Sequence[int]) -> list[str]:
    """Lines initializing the float32 loop carry of accumulator ``kind`` (tensor ``t``)."""
    zeros = f"tl.zeros({tiles.pad[t]}, dtype=tl.float32)"
    if kind == "accum_max":
        return [f'{acc} = {zeros} - float("inf")']
    if kind == "accum_rescale":  # (running row max, rescaled sum)
        return [f"{acc}_m = tl.zeros({tiles.pad[ins[1]]}, dtype=tl.float32) - float(\"inf\")",
                f"{acc} = {zeros}"]  # fmt: skip
    return [f"{acc} = {zeros}"]


def _fold(tiles: Tiles, x: str, src: int, t: int, dimx: int) -> str:
    """``out[..., d] = Σ_k x[..., k·dimx + d]`` on padded tiles."""
    rank = len(tiles.pad[src])
    n, pn, pd = tiles.real[src][-1], tiles.pad[src][-1], tiles.pad[t][-1]
    if pn == n and pd == dimx:  # no padding on either side: a reshape
        shape = (*tiles.pad[src][:-1], n // dimx, dimx)
        return f"tl.sum(tl.reshape({x}, {shape}), axis={rank - 1})"
    lane, d = arange(rank + 1, rank - 1, pn), arange(rank + 1, rank, pd)
    sel = f"({lane} % {dimx} == {d})"
    if tiles.mask:
        sel = f"{sel} & ({lane} < {n})"
    name = tiles.masks.setdefault(sel, f"mask{len(tiles.masks)}")
    expand = ", ".join([":"] * rank + ["None"])
    return f"tl.sum(tl.where({name}, {x}[{expand}], 0.0), axis={rank - 1})"


def acc_step(
    tiles: Tiles, kind: str, acc: str, t: int, ins: Sequence[int], names: Sequence[str],
    attrs: dict[str, Any],
) -> list[str]:  # fmt: skip
    """Lines folding this iteration's tile(s) into the carry (`jgraph.superopt._interp`)."""
    x = names[0]
    last = len(tiles.pad[ins[0]]) - 1
    if kind == "accum_rescale":
        m = names[1]
        return [
            f"{acc}_n = tl.maximum({acc}_m, {m})",
            f"{acc} = {acc} * tl.exp({acc}_m - {acc}_n) + {x} * tl.exp({m} - {acc}_n)",
            f"{acc}_m = {acc}_n",
        ]
    if kind == "accum_max":
        return [f"{acc} = tl.maximum({acc}, {x})"]
    if kind == "accum_sum":
        return [f"{acc} = {acc} + {x}"]
    if kind in ("accum_sum_ld", "accum_mean_ld", "accum_rms_ld"):
        v = f"{x} * {x}" if kind == "accum_rms_ld" else x
        summed = _neutral(tiles, v, ins[0], [last], "0.0")
        return [f"{acc} = {acc} + tl.sum({summed}, axis={last}, keep_dims=True)"]
    if kind == "accum_redtox_ld":
        return [f"{acc} = {acc} + {_fold(tiles, x, ins[0], t, attrs['dimx'])}"]
    raise ValueError(f"unknown accumulator {kind!r}")


def acc_final(kind: str, out: str, acc: str, frange: int, n: int) -> list[str]:
    """Lines giving the accumulator's value after the loop (``n``: the tile's real last dim)."""
    if kind == "accum_mean_ld":
        return [f"{out} = {acc} * {1.0 / (frange * n)!r}"]
    if kind == "accum_rms_ld":
        return [f"{out} = tl.sqrt_rn({acc} * {1.0 / (frange * n)!r})"]
    return [f"{out} = {acc}"]
