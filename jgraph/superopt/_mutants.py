"""A corpus of wrong μGraphs for measuring the verifier's false-positive rate.

Mutations of correct μGraphs (the hand-written known-good ones): a wrong imap,
fmap or omap (an off-by-one dim index or a dropped/added mapping), a wrong
accumulator kind, swapped operands of a non-commutative op, a changed loop
range or grid size, and a dropped op (e.g. a dropped normalization). A mutant
enters the corpus only if it is a valid μGraph and is *wrong*: its float64
output differs from the reference program's on random inputs. Equivalent
mutants (a changed loop range often is one) are discarded, so every accepted
mutant is a false positive.

The ``congruent`` family is what separates small fields from large ones: a
``mul_scalar`` by a constant ``c`` inserted after one block op, with ``c`` wrong
over the reals but invisible modulo Mirage's primes (p, q) = (167, 83):
``c ≡ 1 (mod pq)`` (a normalization or trip count off by a multiple of ``pq``),
``c ≡ 1 (mod q)`` (an exp argument scaled wrongly: ω has order q, so only the
exponent's value mod q matters) and ``c ≡ 1 (mod p)`` (a wrong factor on a value
derived from exp, which lives mod p only). Over q ≈ 2^25 these constants are not
1, so the large-prime verifier still rejects them.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator

import numpy as np

from jgraph.core import ConfigError
from jgraph.superopt._interp import evaluate
from jgraph.superopt._ir import BlockGraph, BlockInput, BlockOutput, KernelGraph, Op, make_attrs
from jgraph.superopt._ring import MIRAGE_PRIMES

__all__ = ["CONGRUENT_SCALARS", "mutants"]

_P, _Q = MIRAGE_PRIMES
# c ≡ 1 mod pq, mod q only, mod p only (see the module docstring)
CONGRUENT_SCALARS = (1 + _P * _Q, 1 + 2 * _P * _Q, 1 + _Q, 1 + 3 * _Q, 1 + _P, 1 + 2 * _P)

_ACC_SWAP = ("accum_sum", "accum_sum_ld", "accum_mean_ld", "accum_rms_ld", "accum_max")
_NONCOMM = ("div", "sub", "matmul", "pow")


def _drop(block: BlockGraph, k: int) -> BlockGraph | None:
    """Removes block op ``k``, rewiring its consumers to its first operand."""
    n_in = len(block.inputs)
    dead, src = n_in + k, block.ops[k].inputs[0]

    def fix(i: int) -> int:
        i = src if i == dead else i
        return i - 1 if i > dead else i

    ops = tuple(
        Op(o.kind, tuple(fix(i) for i in o.inputs), o.attrs)
        for j, o in enumerate(block.ops)
        if j != k
    )
    outs = tuple(BlockOutput(fix(o.src), o.omap) for o in block.outputs)
    return dataclasses.replace(block, ops=ops, outputs=outs)


def _insert_scale(block: BlockGraph, k: int, c: int) -> BlockGraph:
    """Inserts ``mul_scalar(c)`` after block op ``k``; its consumers and savers read the result."""
    t = len(block.inputs) + k

    def fix(i: int) -> int:
        return i + 1 if i >= t else i

    scaled = Op("mul_scalar", (t,), make_attrs({"scalar": c}))
    ops = (
        *block.ops[: k + 1],
        scaled,
        *(Op(o.kind, tuple(fix(i) for i in o.inputs), o.attrs) for o in block.ops[k + 1 :]),
    )
    outs = tuple(BlockOutput(fix(o.src), o.omap) for o in block.outputs)
    return dataclasses.replace(block, ops=ops, outputs=outs)


def _congruent(block: BlockGraph) -> Iterator[BlockGraph]:
    for k in range(len(block.ops)):
        for c in CONGRUENT_SCALARS:
            yield _insert_scale(block, k, c)


def _block_mutations(block: BlockGraph, rng: random.Random) -> Iterator[BlockGraph]:
    for k, bi in enumerate(block.inputs):
        for a in range(3):
            for d in (bi.imap[a] - 1, bi.imap[a] + 1, -1):
                if d != bi.imap[a] and d >= -1:
                    imap = list(bi.imap)
                    imap[a] = d
                    ins = list(block.inputs)
                    ins[k] = BlockInput((imap[0], imap[1], imap[2]), bi.fmap)
                    yield dataclasses.replace(block, inputs=tuple(ins))
        for f in (bi.fmap - 1, bi.fmap + 1, -1):
            if f != bi.fmap and f >= -1:
                ins = list(block.inputs)
                ins[k] = BlockInput(bi.imap, f)
                yield dataclasses.replace(block, inputs=tuple(ins))
    for k, o in enumerate(block.outputs):
        for a in range(3):
            for d in (o.omap[a] - 1, o.omap[a] + 1):
                om = list(o.omap)
                om[a] = d
                outs = list(block.outputs)
                outs[k] = BlockOutput(o.src, (om[0], om[1], om[2]))
                yield dataclasses.replace(block, outputs=tuple(outs))
    for k, op in enumerate(block.ops):
        if op.kind in _ACC_SWAP:
            for kind in _ACC_SWAP:
                if kind != op.kind:
                    ops = list(block.ops)
                    ops[k] = Op(kind, op.inputs, ())
                    yield dataclasses.replace(block, ops=tuple(ops))
        if op.kind in _NONCOMM:
            ops = list(block.ops)
            ops[k] = Op(op.kind, op.inputs[::-1], op.attrs)
            yield dataclasses.replace(block, ops=tuple(ops))
        if op.kind in ("div", "rms_norm", "mul", "add", "exp", "silu", "sub"):
            dropped = _drop(block, k)
            if dropped is not None:
                yield dropped
    for f in (block.frange - 1, block.frange + 1, block.frange * 2, max(1, block.frange // 2)):
        if f != block.frange and f >= 1:
            yield dataclasses.replace(block, frange=f)
    for a in range(3):
        for g in (block.grid[a] * 2, max(1, block.grid[a] // 2)):
            grid = list(block.grid)
            grid[a] = g
            yield dataclasses.replace(block, grid=(grid[0], grid[1], grid[2]))
    del rng


def _single(
    graph: KernelGraph, rng: random.Random, family: str = "structural"
) -> list[KernelGraph]:
    out = []
    gen = _block_mutations if family == "structural" else (lambda b, _r: _congruent(b))
    for j, op in enumerate(graph.ops):
        if op.block is None:
            continue
        for b in gen(op.block, rng):
            ops = list(graph.ops)
            ops[j] = dataclasses.replace(op, block=b)
            out.append(dataclasses.replace(graph, ops=tuple(ops)))
    return out


def _valid(g: KernelGraph) -> bool:
    try:
        g.validate()
    except ConfigError:
        return False
    return True


def mutants(
    reference: KernelGraph,
    correct: KernelGraph,
    *,
    limit: int = 1000,
    seed: int = 0,
    family: str = "structural",
) -> list[KernelGraph]:
    """Wrong μGraphs derived from ``correct`` (equivalent to ``reference``).

    Single mutations first, then random double mutations until ``limit``.
    ``family``: ``"structural"`` (maps, accumulators, operands, loop range, grid,
    dropped ops) or ``"congruent"`` (constants invisible mod (167, 83); see the
    module docstring; a congruent mutation of a structural one for the doubles).

    Example:
        >>> from jgraph.superopt.programs import get_program, handwritten
        >>> p = get_program("rmsnorm_linear", scale=16)
        >>> len(mutants(p.graph, handwritten("rmsnorm_linear", p), limit=5))
        5
    """
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    xs = [nrng.standard_normal(s.shape) for s in reference.inputs]
    ref = evaluate(reference, xs)
    seen: set[KernelGraph] = {correct}
    out: list[KernelGraph] = []

    def consider(g: KernelGraph) -> None:
        if g in seen or len(out) >= limit:
            return
        seen.add(g)
        if not _valid(g) or [g.shapes[o] for o in g.outputs] != [
            reference.shapes[o] for o in reference.outputs
        ]:
            return
        got = evaluate(g, xs)
        wrong = any(
            not np.allclose(a, b, rtol=1e-6, atol=1e-9, equal_nan=False)
            for a, b in zip(got, ref, strict=True)
        )
        if wrong:
            out.append(g)

    if family not in ("structural", "congruent"):
        raise ConfigError("mutants.family", family, "unknown", "use 'structural' or 'congruent'")
    singles = _single(correct, rng, family)
    for g in singles:
        consider(g)
    bases = _single(correct, rng) if family == "congruent" else singles
    tries = 0
    while len(out) < limit and bases and tries < 50 * limit:
        tries += 1
        base = rng.choice(bases)
        if not _valid(base):
            continue
        more = _single(base, rng, family)
        if more:
            consider(rng.choice(more))
    return out
