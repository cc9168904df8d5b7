"""The finetuning backward of the co-serving step, in FlexLLM's two splits.

Both modes start from what the forward retained (``ft_x`` layer inputs [L, S, D], ``ft_k/ft_v``
post-RoPE keys/values [L, S, Hkv, d], ``ft_dh`` = dLoss/d(last hidden) [S, D]) and rematerialize
one layer on a chunk of C query tokens at a time with `jax.vjp` w.r.t. the chunk input, the
layer's keys/values of all positions and the layer's LoRA weights. The K/V cotangents of earlier
positions go to dK/dV accumulators; a chunk reads the accumulated cotangent of its own K/V before
its vjp, so chunks must run last to first. Frozen weights get no gradient; the widest transient
is one chunk's [C, Hq, S] scores.

* ``token`` (FlexLLM's token-level backward): one step = one token chunk through all layers,
  top-down. dK/dV of every layer must survive between steps: ``dk_acc/dv_acc`` [L, S, Hkv, d].
* ``layer`` (FlexLLM's layer-level split, k layers per step): one step = ``bwd_layers`` layers,
  top-down, for all of the sample's tokens (chunk by chunk, last to first, inside the step).
  A layer's dK/dV are complete when its last chunk is done, so they live only inside the step;
  between steps the state carries the gradient w.r.t. the lowest processed layer's input, which
  overwrites ``ft_dh``. The state's ``dk_acc/dv_acc`` are empty in this mode.

S is the buffers' length ``CoServeConfig.ft_buffer_len``: ``ft_max_len`` rounded up to whole
chunks, so a partial last chunk (``bwd_chunk`` need not divide the sample) is sliced without
clamping; its rows past the sample's end get zero cotangents and so add nothing. Dynamic-NTK
RoPE is recomputed for the sample's length (``bwd_len``), as the forward rotated it.

The sample's LoRA gradient accumulates in ``grad``; when the last backward step of the sample
runs (``bwd_last``), it goes to the optimizer (`accumulate` adds gradient accumulation).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float

from jgraph.core import ConfigError
from jgraph.coserve._accumulate import accumulate
from jgraph.coserve._config import CoServeConfig, LlamaConfig, LoraConfig
from jgraph.coserve._model import attend_segments, decoder_layer

if TYPE_CHECKING:  # the step module imports this one
    from jgraph.coserve._step import CoServeState, StepBatch

__all__ = ["StepSpec", "backward_step", "backward_steps", "check_backward", "multi_steps"]

Lora = dict[str, dict[str, jax.Array]]
ChunkRows = Float[Array, "C D"]  # one query chunk's rows (hidden size D)
ChunkKV = Float[Array, "C Hkv d"]  # the chunk's key/value cotangents
SeqKV = Float[Array, "S Hkv d"]  # one layer's keys/values of all S positions


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepSpec:
    """The static description of a co-serving step: model shape, trainable adapter and
    capacities (hashable: a static argument of the jitted step and its parts)."""

    cfg: LlamaConfig
    lora_cfg: LoraConfig
    scfg: CoServeConfig


def multi_steps(
    optimizer: optax.GradientTransformation, scfg: CoServeConfig
) -> optax.GradientTransformation:
    """The optimizer with gradient accumulation, ``scfg.grad_accum`` samples per update
    initially (`accumulate`: the setting is in the state, so each finetuning job has its own)."""
    return accumulate(optimizer, every_k=scfg.grad_accum)


def check_backward(cfg: LlamaConfig, scfg: CoServeConfig) -> None:
    """Validates the backward split against the model (``bwd_layers <= n_layers``)."""
    if scfg.backward_mode == "layer" and scfg.bwd_layers > cfg.n_layers:
        raise ConfigError(
            "CoServeConfig.bwd_layers",
            scfg.bwd_layers,
            f"exceeds the model's n_layers={cfg.n_layers}",
            f"use 1 <= bwd_layers <= {cfg.n_layers}",
        )


def backward_steps(cfg: LlamaConfig, scfg: CoServeConfig, length: int) -> int:
    """Steps the backward of a sample of ``length`` tokens takes (indices run from this - 1
    down to 0): ceil(length / bwd_chunk) token chunks or ceil(n_layers / bwd_layers) groups.

    Example:
        >>> from jgraph.coserve import CoServeConfig, LlamaConfig
        >>> cfg = LlamaConfig.tiny(n_layers=3)
        >>> backward_steps(cfg, CoServeConfig(ft_max_len=16, bwd_chunk=4), 13)
        4
        >>> backward_steps(cfg, CoServeConfig(backward_mode="layer", bwd_layers=2), 13)
        2
    """
    if scfg.backward_mode == "layer":
        return math.ceil(cfg.n_layers / scfg.bwd_layers)
    return math.ceil(length / scfg.bwd_chunk)


def _chunk_vjp(
    spec: StepSpec,
    layer: dict[str, jax.Array],
    tl: Lora,
    x_c: ChunkRows,
    K: SeqKV,
    V: SeqKV,
    s: jax.Array,
    n: jax.Array,
    dh: ChunkRows,
    dkc: ChunkKV,
    dvc: ChunkKV,
    axis: str | None,
) -> tuple[ChunkRows, SeqKV, SeqKV, Lora]:
    """vjp of one layer on the query chunk starting at ``s`` (C rows) over all S positions of
    a sample of ``n`` tokens (``n`` is the length dynamic-NTK RoPE rotates for, as the forward
    did; rows at positions >= n carry zero cotangents).

    Returns (d chunk input [C, D], dK [S, Hkv, d], dV, d LoRA of this layer), float32.
    """
    cfg, lora_cfg = spec.cfg, spec.lora_cfg
    C, S = x_c.shape[0], K.shape[0]
    pos_c = s + jnp.arange(C, dtype=jnp.int32)
    mask = jnp.arange(S, dtype=jnp.int32)[None, :] <= pos_c[:, None]  # [C, S] causal
    sel = jnp.full((C, 1), lora_cfg.scale, jnp.float32)
    rope_len = jnp.full((C,), n, jnp.int32)

    def g(x_c, K, V, tl):
        def attend(q, k, v):
            # The chunk's own K/V are recomputed (so their gradient reaches x_c); earlier
            # positions come from the retained buffer (their gradient goes to dK/dV).
            K2 = jax.lax.dynamic_update_slice_in_dim(K, k.astype(K.dtype), s, 0)
            V2 = jax.lax.dynamic_update_slice_in_dim(V, v.astype(V.dtype), s, 0)
            return attend_segments(q, [(K2, V2, mask)]), (k, v)

        ad = ((jax.tree.map(lambda a: a[None], tl), sel),)
        return decoder_layer(
            cfg, layer, x_c, pos_c, attend, adapters=ad, axis_name=axis, rope_lengths=rope_len
        )

    (y, (kc, vc)), vjp = jax.vjp(g, x_c, K, V, tl)
    dx, dK, dV, dtl = vjp((dh.astype(y.dtype), (dkc.astype(kc.dtype), dvc.astype(vc.dtype))))
    f32 = jnp.float32
    return (
        dx.astype(f32),
        dK.astype(f32),
        dV.astype(f32),
        jax.tree.map(lambda a: a.astype(f32), dtl),
    )


def _add_layer(grad: Lora, li: jax.Array, dtl: Lora) -> Lora:
    return jax.tree.map(lambda a, d: a.at[li].add(d), grad, dtl)


def _token_backward(
    spec: StepSpec,
    params: dict[str, Any],
    state: CoServeState,
    batch: StepBatch,
    grad: Lora,
    axis: str | None,
) -> tuple[CoServeState, Lora]:
    C, L = spec.scfg.bwd_chunk, spec.cfg.n_layers
    s = batch.bwd_chunk * C
    first = batch.bwd_first
    dk0 = jnp.where(first, 0.0, state.dk_acc)
    dv0 = jnp.where(first, 0.0, state.dv_acc)
    pos_c = s + jnp.arange(C, dtype=jnp.int32)
    dh0 = jax.lax.dynamic_slice_in_dim(state.ft_dh, s, C, 0)
    dh0 = jnp.where((pos_c < batch.bwd_len)[:, None], dh0, 0.0)  # stale rows of a longer sample

    def layer_bwd(i, carry):
        dh, dk, dv, grad = carry
        li = L - 1 - i
        layer = jax.tree.map(lambda a: a[li], params["layers"])
        tl = jax.tree.map(lambda a: a[li], state.lora)
        x_c = jax.lax.dynamic_slice_in_dim(state.ft_x[li], s, C, 0)
        dkc = jax.lax.dynamic_slice_in_dim(dk[li], s, C, 0)
        dvc = jax.lax.dynamic_slice_in_dim(dv[li], s, C, 0)
        dx, dK, dV, dtl = _chunk_vjp(
            spec, layer, tl, x_c, state.ft_k[li], state.ft_v[li], s, batch.bwd_len, dh, dkc, dvc,
            axis,
        )  # fmt: skip
        return dx, dk.at[li].add(dK), dv.at[li].add(dV), _add_layer(grad, li, dtl)

    _, dk, dv, grad = jax.lax.fori_loop(0, L, layer_bwd, (dh0, dk0, dv0, grad))
    return dataclasses.replace(state, dk_acc=dk, dv_acc=dv), grad


def _layer_backward(
    spec: StepSpec,
    params: dict[str, Any],
    state: CoServeState,
    batch: StepBatch,
    grad: Lora,
    axis: str | None,
) -> tuple[CoServeState, Lora]:
    scfg = spec.scfg
    C, S, L, k = scfg.bwd_chunk, scfg.ft_buffer_len, spec.cfg.n_layers, scfg.bwd_layers
    groups = math.ceil(L / k)
    hi = L - (groups - 1 - batch.bwd_chunk) * k  # one past this group's top layer
    n_chunks = (batch.bwd_len + C - 1) // C  # chunks past the sample's end are all-zero: skip
    rows_ok = (jnp.arange(S, dtype=jnp.int32) < batch.bwd_len)[:, None]
    dh0 = jnp.where(rows_ok, state.ft_dh, 0.0)  # stale rows of a longer sample

    def layer_bwd(i, carry):
        dh, grad = carry
        li = hi - 1 - i
        layer = jax.tree.map(lambda a: a[li], params["layers"])
        tl = jax.tree.map(lambda a: a[li], state.lora)
        K, V, X = state.ft_k[li], state.ft_v[li], state.ft_x[li]

        def chunk_bwd(ci, carry):
            dx_all, dk, dv, grad = carry
            s = (n_chunks - 1 - ci) * C
            x_c = jax.lax.dynamic_slice_in_dim(X, s, C, 0)
            dh_c = jax.lax.dynamic_slice_in_dim(dh, s, C, 0)
            dkc = jax.lax.dynamic_slice_in_dim(dk, s, C, 0)
            dvc = jax.lax.dynamic_slice_in_dim(dv, s, C, 0)
            dx, dK, dV, dtl = _chunk_vjp(
                spec, layer, tl, x_c, K, V, s, batch.bwd_len, dh_c, dkc, dvc, axis
            )
            dx_all = jax.lax.dynamic_update_slice_in_dim(dx_all, dx, s, 0)
            return dx_all, dk + dK, dv + dV, _add_layer(grad, li, dtl)

        f32 = jnp.float32
        # This layer's dK/dV [S, Hkv, d] live only inside the step (complete after chunk 0).
        # zeros_like(K) keeps K's variance over a tensor-parallel mesh axis (KV heads sharded).
        dk0 = jnp.zeros_like(K, dtype=f32)
        init = (jnp.zeros_like(dh), dk0, jnp.zeros_like(V, dtype=f32), grad)
        dx_all, _, _, grad = jax.lax.fori_loop(0, n_chunks, chunk_bwd, init)
        return dx_all, grad

    # The lowest group may be partial (k does not divide L): only layers >= 0 run.
    dh, grad = jax.lax.fori_loop(0, jnp.minimum(k, hi), layer_bwd, (dh0, grad))
    return dataclasses.replace(state, ft_dh=dh), grad


def backward_step(
    spec: StepSpec,
    optimizer: optax.GradientTransformation,
    params: dict[str, Any],
    state: CoServeState,
    batch: StepBatch,
    axis: str | None,
) -> CoServeState:
    """One backward step (token chunk or layer group ``batch.bwd_chunk``) and, when it is the
    sample's last, the optimizer update. Returns the new state."""
    scfg = spec.scfg
    g0 = jax.tree.map(lambda g: jnp.where(batch.bwd_first, 0.0, g), state.grad)
    run = _layer_backward if scfg.backward_mode == "layer" else _token_backward
    state, grad = run(spec, params, state, batch, g0, axis)

    def update(args):
        lora, opt_state, grad = args
        g = jax.tree.map(lambda a, p: a.astype(p.dtype), grad, lora)
        upd, opt_state = multi_steps(optimizer, scfg).update(g, opt_state, lora)
        return optax.apply_updates(lora, upd), opt_state

    lora, opt_state = jax.lax.cond(
        batch.bwd_last, update, lambda a: (a[0], a[1]), (state.lora, state.opt_state, grad)
    )
    return dataclasses.replace(state, grad=grad, lora=lora, opt_state=opt_state)
