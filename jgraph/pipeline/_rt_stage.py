"""One stage's forward and backward as the runtime's `lax.switch` branches.

A branch reads its stage's parameters out of the packed buffers, its inputs
from other stages out of its input slot and the graph inputs (and targets)
out of the resident batch, and returns the flat vector the tick's ppermutes
send: the outputs other stages read (forward) or the cotangents of its inputs
(backward). The backward recomputes the forward under `jax.vjp` from the stored
stage inputs (stage-input rematerialisation) and adds the weight gradients to
the running sums.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jgraph.pipeline._rt_layout import StageIO
from jgraph.pipeline._rt_pack import PackSpec, pack, unpack

__all__ = ["StageProgram", "make_branches"]


@dataclasses.dataclass(frozen=True)
class StageProgram:
    """What a stage's branches need besides the layout."""

    io: StageIO
    modules: Mapping[str, Any]  # node -> flax module
    node_inputs: Mapping[str, tuple[str, ...]]
    out_struct: Mapping[str, Any]  # node -> per-sample pytree of ShapeDtypeStruct
    param_spec: PackSpec
    sink: str
    loss_fn: Callable[[Any, Any], jax.Array]
    loss_weight: float  # rows / batch: this replica's share of the batch mean


def _leaves_elems(struct: Any) -> list[tuple[tuple[int, ...], Any, int]]:
    return [
        (tuple(x.shape), x.dtype, int(np.prod(x.shape, dtype=np.int64)))
        for x in jax.tree.leaves(struct)
    ]


def _read(flat: jax.Array, off: int, rows: int, struct: Any) -> Any:
    """A node's output for ``rows`` samples from a flat wire vector laid out ``[rows, e]``
    (sample-major, so a range of samples is a contiguous range of elements)."""
    specs = _leaves_elems(struct)
    e = sum(n for _, _, n in specs)
    block = flat[off : off + rows * e].reshape(rows, e)
    leaves, pos = [], 0
    for shape, dtype, n in specs:
        leaves.append(block[:, pos : pos + n].reshape(rows, *shape).astype(dtype))
        pos += n
    return jax.tree.unflatten(jax.tree.structure(struct), leaves)


def _flat(values: list[Any], width: int, dtype: Any) -> jax.Array:
    parts = []
    for v in values:
        leaves = [x.reshape(x.shape[0], -1).astype(dtype) for x in jax.tree.leaves(v)]
        parts.append(jnp.ravel(jnp.concatenate(leaves, axis=1) if len(leaves) > 1 else leaves[0]))
    used = sum(int(p.shape[0]) for p in parts)
    parts.append(jnp.zeros((width - used,), dtype))
    return jnp.concatenate(parts) if len(parts) > 1 else parts[0]


def _forward(sp: StageProgram, params: Any, ext: Mapping[str, Any], gin: Mapping[str, Any],
             targets: Any) -> tuple[dict[str, Any], jax.Array]:  # fmt: skip
    env: dict[str, Any] = {**gin, **ext}
    for v in sp.io.nodes:
        env[v] = sp.modules[v].apply(params[v], *(env[u] for u in sp.node_inputs[v]))
    loss = jnp.zeros((), jnp.float32)
    if sp.io.has_loss:
        loss = sp.loss_fn(env[sp.sink], targets).astype(jnp.float32) * sp.loss_weight
    return {u: env[u] for u in sp.io.ext_out}, loss


def make_branches(
    sp: StageProgram, *, send_width: int, wire_dtype: Any, gin_names: tuple[str, ...]
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The forward and backward branch of one stage (same signature and result types).

    Branch arguments: ``(pbufs, gacc, xin, cin, inputs, targets, mb, q)``: packed
    params, packed gradient sums, the input slot, the output-cotangent slot, the
    resident batch ``{name: [M, 1, b / D, ...]}``, targets alike, the micro-batch
    and this row's index within the stage. Result: ``(send, gacc, loss)``.
    """
    io = sp.io
    rows = io.rows

    def take(x: jax.Array, mb: jax.Array, q: jax.Array) -> jax.Array:
        # [M, 1, b/D, ...] -> this replica's [rows, ...] of micro-batch mb
        blk = jax.lax.dynamic_index_in_dim(x, mb, axis=0, keepdims=False)[0]
        return jax.lax.dynamic_slice_in_dim(blk, q * rows, rows, axis=0)

    def gather(xin, inputs, targets, mb, q):
        ext = {u: _read(xin, io.in_off[i], rows, sp.out_struct[u]) for i, u in enumerate(io.ext_in)}
        needed = {u for v in io.nodes for u in sp.node_inputs[v] if u in gin_names}
        gin = {u: take(inputs[u], mb, q) for u in sorted(needed)}
        tg = jax.tree.map(lambda t: take(t, mb, q), targets) if io.has_loss else None
        return ext, gin, tg

    def fwd_branch(pbufs, gacc, xin, cin, inputs, targets, mb, q):
        del cin
        params = unpack(sp.param_spec, pbufs)
        ext, gin, tg = gather(xin, inputs, targets, mb, q)
        outs, loss = _forward(sp, params, ext, gin, tg)
        send = _flat([outs[u] for u in io.ext_out], send_width, wire_dtype)
        return send, gacc, loss

    def bwd_branch(pbufs, gacc, xin, cin, inputs, targets, mb, q):
        params = unpack(sp.param_spec, pbufs)
        ext, gin, tg = gather(xin, inputs, targets, mb, q)
        (outs, loss), pull = jax.vjp(lambda p, e: _forward(sp, p, e, gin, tg), params, ext)
        cots = {
            u: _read(cin, io.out_off[i], rows, sp.out_struct[u]) for i, u in enumerate(io.ext_out)
        }
        cots = jax.tree.map(lambda c, o: c.astype(o.dtype), cots, outs)
        gp, gext = pull((cots, jnp.ones_like(loss)))
        send = _flat([gext[u] for u in io.ext_in], send_width, wire_dtype)
        flat = pack(sp.param_spec, gp, {k: int(v.shape[0]) for k, v in gacc.items()})
        gacc = {k: gacc[k] + flat[k].astype(gacc[k].dtype) for k in gacc}
        return send, gacc, jnp.zeros((), jnp.float32)

    return fwd_branch, bwd_branch
