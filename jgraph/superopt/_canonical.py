"""Canonical op order (each DAG generated once) and small expression helpers for the search."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from jgraph.superopt._absexpr import Expr
from jgraph.superopt._ops import COMMUTATIVE

__all__ = ["HEAD_OF", "RANK", "canonical_key", "enumerate_dags", "expr_heads", "expr_size"]

_ALL_KINDS = (
    "matmul", "exp", "sqrt", "silu", "gelu", "relu", "add", "mul", "div", "pow", "rms_norm",
    "reduce_sum", "reduce_max", "accum_sum", "accum_sum_ld", "accum_rms_ld", "accum_redtox_ld",
    "accum_max", "accum_rescale", "customized", "square", "gelu_exact",
)  # fmt: skip
RANK = {k: i for i, k in enumerate(_ALL_KINDS)}
HEAD_OF = {"exp": "exp", "sqrt": "sqrt", "silu": "silu", "gelu": "gelu", "relu": "relu",
            "add": "add", "mul": "mul", "div": "div", "pow": "pow", "square": "sq",
            "gelu_exact": "gelu_exact"}  # fmt: skip


def canonical_key(inputs: Sequence[int], kind: str, attrs: Any = ()) -> tuple[Any, ...]:
    """The order key of an op: inputs largest-first, then as given, then kind and attributes.

    A consumer of tensor ``t`` always has a larger key than ``t``'s producer, so
    the strictly increasing sequence of keys is exactly one topological order of
    each DAG.
    """
    return (tuple(sorted(inputs, reverse=True)), tuple(inputs), RANK.get(kind, 99), repr(attrs))


def expr_size(e: Expr) -> int:
    """Number of nodes of an abstract expression."""
    return 1 + sum(expr_size(a) for a in e[1:] if isinstance(a, tuple))


def expr_heads(e: Expr, out: set[str]) -> None:
    out.add(e[0])
    if e[0] in ("sum", "rms", "max"):
        expr_heads(e[2], out)
    elif e[0] != "var":
        for a in e[1:]:
            if isinstance(a, tuple):
                expr_heads(a, out)


def enumerate_dags(
    n_inputs: int, arities: dict[str, int], max_ops: int
) -> list[tuple[tuple[str, tuple[int, ...]], ...]]:
    """All op sequences up to ``max_ops`` whose `canonical_key` strictly increases.

    The same canonical rule the search applies (without its pruning), exposed so
    that tests can check that it yields every DAG exactly once. An op is
    ``(kind, input ids)``; tensor ids are inputs first, then ops in order.
    """
    out: list[tuple[tuple[str, tuple[int, ...]], ...]] = []

    def rec(seq: list[tuple[str, tuple[int, ...]]], last: Any) -> None:
        if seq:
            out.append(tuple(seq))
        if len(seq) == max_ops:
            return
        n = n_inputs + len(seq)
        for kind, arity in arities.items():
            for ins in itertools.product(range(n), repeat=arity):
                if kind in COMMUTATIVE and ins[0] > ins[1]:
                    continue
                key = canonical_key(ins, kind)
                if last is None or key > last:
                    rec([*seq, (kind, ins)], key)

    rec([], None)
    return out
