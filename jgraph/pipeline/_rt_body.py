"""The body of the pipelined step, run per device inside `jax.shard_map`.

A `lax.scan` over the schedule's ticks: each tick selects this device's stage
and op (`lax.switch`), clears the slots a backward has consumed, and runs the
fixed ppermute colours that move this tick's pieces. After the loop: the loss
is summed over the mesh, gradients are reduced over data-parallel replicas once
(``psum`` over ``DATA``, then a ring over a stage's rows), and each device
applies the optimizer to its own stage (one more `lax.switch`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from jgraph.core import DATA, STAGE
from jgraph.pipeline._rt_pack import pack, unpack
from jgraph.pipeline._rt_stage import make_branches

if TYPE_CHECKING:
    from jgraph.pipeline._runtime import PipelineProgram

__all__ = ["make_body"]


def make_body(prog: PipelineProgram, *, update: bool) -> Callable[..., Any]:
    """The per-device step body of ``prog`` (``update``: apply the optimizer; else return
    the loss and the reduced gradients)."""
    lay = prog.layout
    n_st = len(lay.stages)
    wire_dtype = prog._fns["wire_dtype"]
    send_width = max(lay.slot_in_size, lay.slot_out_size) + lay.wire
    gin_names = tuple(i.name for i in prog.graph.inputs)
    branches: list[Callable[..., Any]] = []
    for s in range(n_st):
        f, b = make_branches(prog._fns["stage_programs"][s], send_width=send_width,
                             wire_dtype=wire_dtype, gin_names=gin_names)  # fmt: skip
        branches += [f, b]

    def idle(pbufs, gacc, xin, cin, inputs, targets, mb, q):
        return jnp.zeros((send_width,), wire_dtype), gacc, jnp.zeros((), jnp.float32)

    branches.append(idle)
    row_stage = jnp.asarray(lay.row_stage)
    row_q = jnp.asarray(lay.row_q)
    tx = prog.optimizer

    def body(state, inputs, targets, tables):
        row = jax.lax.axis_index(STAGE)
        stage = row_stage[row]
        q = row_q[row]
        pbufs = {k: v[0, 0] for k, v in state["params"].items()}
        tab = tuple(t[:, row] for t in tables)
        inb = jnp.zeros((lay.in_slots, lay.slot_in_size + lay.wire), wire_dtype)
        cot = jnp.zeros((lay.cot_slots, lay.slot_out_size + lay.wire), wire_dtype)
        gacc = {k: jnp.zeros_like(v) for k, v in pbufs.items()}
        zero = jnp.zeros((), jnp.int32)
        carry0 = (inb, cot, gacc, jnp.zeros((), jnp.float32), zero, zero,
                  jnp.zeros((lay.in_slots,), jnp.int32), zero)  # fmt: skip
        iota = jnp.arange(lay.wire)

        def tick(carry, t):
            inb, cot, gacc, loss, live, peak, occ, peak_occ = carry
            op, mb, isl, csl, soff, slen, rkind, rslot, roff = t
            branch = jnp.where((stage >= 0) & (op > 0), stage * 2 + op - 1, 2 * n_st)
            send, gacc, dl = jax.lax.switch(
                branch, branches, pbufs, gacc, inb[isl], cot[csl], inputs, targets, mb, q
            )
            loss = loss + dl
            is_b = op == 2
            live = live + (op == 1).astype(jnp.int32) - is_b.astype(jnp.int32)
            peak = jnp.maximum(peak, live)
            inb = inb.at[isl].set(jnp.where(is_b, 0, inb[isl]))
            cot = cot.at[csl].set(jnp.where(is_b, 0, cot[csl]))
            occ = occ.at[isl].set(jnp.where(is_b, 0, occ[isl]))
            for c, perm in enumerate(lay.perms):
                payload = jax.lax.dynamic_slice(send, (soff[c],), (lay.wire,))
                payload = jnp.where(iota < slen[c], payload, 0)
                got = jax.lax.ppermute(payload, STAGE, perm)
                for kind in (1, 2):
                    buf = inb if kind == 1 else cot
                    slot = buf[rslot[c]]
                    win = jax.lax.dynamic_slice(slot, (roff[c],), (lay.wire,))
                    win = win + jnp.where(rkind[c] == kind, got, 0)
                    buf = buf.at[rslot[c]].set(jax.lax.dynamic_update_slice(slot, win, (roff[c],)))
                    if kind == 1:
                        inb = buf
                    else:
                        cot = buf
                occ = occ.at[rslot[c]].max((rkind[c] == 1).astype(jnp.int32))
            peak_occ = jnp.maximum(peak_occ, occ.sum())
            return (inb, cot, gacc, loss, live, peak, occ, peak_occ), None

        carry, _ = jax.lax.scan(tick, carry0, tab)
        _, _, gacc, loss, _, peak, _, peak_occ = carry
        loss = jax.lax.psum(loss, (STAGE, DATA))
        # Data-parallel reduction, once per step: psum over the row's columns, then a
        # ring over the stage's rows when it has several.
        gacc = {k: jax.lax.psum(v, DATA) for k, v in gacc.items()}
        ring_active = jnp.asarray(lay.ring_active)
        moving = gacc
        for j, perm in enumerate(lay.ring_perms):
            moving = {k: jax.lax.ppermute(v, STAGE, perm) for k, v in moving.items()}
            on = ring_active[j, row]
            gacc = {k: gacc[k] + jnp.where(on, moving[k], 0) for k in gacc}
        if not update:
            return loss, {k: v[None, None] for k, v in gacc.items()}
        obufs = {k: v[0, 0] for k, v in state["opt"].items()}

        def make_update(s: int) -> Callable[..., Any]:
            def upd(pb, ob, gb):
                p = unpack(prog.param_specs[s], pb)
                o = unpack(prog.opt_specs[s], ob)
                g = unpack(prog.param_specs[s], gb)
                updates, o2 = tx.update(g, o, p)
                p2 = jax.tree.map(lambda a, u: (a + u).astype(a.dtype), p, updates)
                return pack(prog.param_specs[s], p2, prog.pbuf), pack(
                    prog.opt_specs[s], o2, prog.obuf
                )

            return upd

        upds = [make_update(s) for s in range(n_st)] + [lambda pb, ob, gb: (pb, ob)]
        new_p, new_o = jax.lax.switch(jnp.where(stage >= 0, stage, n_st), upds, pbufs, obufs, gacc)
        new_state = {
            "params": {k: v[None, None] for k, v in new_p.items()},
            "opt": {k: v[None, None] for k, v in new_o.items()},
            "step": state["step"] + 1,
        }
        metrics = {"loss": loss, "peak_in_flight": peak[None, None],
                   "peak_live_inputs": peak_occ[None, None]}  # fmt: skip
        return new_state, metrics

    return body
