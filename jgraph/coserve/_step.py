"""The co-serving step: one jitted function that runs a packed batch of decode, chunked-prefill
and finetuning-forward tokens through the model, and one token chunk of a finetuning backward.

Data flow of `make_coserve_step(...)(params, bank_weights, bank_scales, state, batch)`:

1. Forward (every step). Rows of ``batch`` are tokens: inference rows carry a request slot and
   write their K/V into the paged pool; finetuning rows (``is_ft``) write K/V into the
   finetuning buffer ``ft_k/ft_v`` [L, S, Hkv, d] at their absolute positions and attend to it
   (token-level forward, FlexLLM §a.4). Every row selects an adapter: a bank slot, `BASE`, or
   the trainable adapter (index ``max_adapters``; finetuning rows always use it). Each row's
   next token is drawn by `sample_tokens` with the row's temperature, top-p and its request's
   key folded with the index of the token generated (greedy rows: exactly ``argmax``).
2. Graph pruning (§a.7-a.8): per layer the forward keeps only the layer input of finetuning
   rows in ``ft_x`` [L, S, D] (indexed by absolute position) beside the K/V it needs anyway,
   and the loss gradient w.r.t. the last hidden state in ``ft_dh`` [S, D] (token-local, so the
   [S, vocab] probabilities are never kept). Frozen weights get no gradient; attention
   probabilities are recomputed; nothing S x S is ever formed.
3. Backward (when ``bwd_chunk >= 0``; `jgraph.coserve._backward`): in "token" mode the
   chunk's tokens go through all layers top-down. Each layer is rematerialized from ``ft_x``
   and differentiated with `jax.vjp` w.r.t. the chunk input, the earlier positions' K/V and
   the LoRA weights; the K/V cotangents go to the ``dk_acc/dv_acc`` accumulators, which later
   (earlier-position) chunks read as the cotangent of their own K/V. Chunks run last to first,
   so when a chunk is processed every use of its K/V has been seen and the accumulated LoRA
   gradient is exact. In "layer" mode a step runs ``bwd_layers`` layers for all tokens instead
   (dK/dV then never leave the step; ``ft_dh`` carries the gradient down between steps).
4. When the backward step is the sample's last (``bwd_last``), the sample's gradient is handed
   to the optax optimizer (wrapped in `accumulate`, so updates happen every ``grad_accum``
   samples, a setting each finetuning job keeps in its optimizer state).

Inference rows' paged attention runs the pure-JAX reference or the Pallas kernel
(``CoServeConfig.attention_impl``); finetuning rows attend to the dense finetuning buffer.

The state is donated; all shapes come from `CoServeConfig`, so different request mixes never
recompile. The host side (`jgraph.coserve.CoServeEngine`) builds batches.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float, Int

from jgraph.core import MODEL
from jgraph.core.pallas import device_platform
from jgraph.coserve._backward import StepSpec, backward_step, check_backward, multi_steps
from jgraph.coserve._config import CoServeConfig, LlamaConfig, LoraConfig
from jgraph.coserve._lora import adapter_sel
from jgraph.coserve._model import attend_segments, decoder_layer, lm_logits
from jgraph.coserve._paged import INVALID, paged_context, write_pages
from jgraph.coserve._paged_pallas import paged_attention_pallas, resolve_attention_impl
from jgraph.coserve._parallel import check_tp_divisible, lora_specs, param_specs
from jgraph.coserve._sampling import sample_tokens, step_keys

__all__ = [
    "CoServeState",
    "StepBatch",
    "StepOutput",
    "empty_batch",
    "init_state",
    "make_coserve_step",
]

Lora = dict[str, dict[str, jax.Array]]
BankScales = Float[Array, " n_bank"]  # one scale per bank slot
RowTokens = Int[Array, " B"]  # one token per batch row
RowLogits = Float[Array, "B vocab"]


@flax.struct.dataclass
class CoServeState:
    """Everything the step carries between calls (fixed capacity, donated).

    Attributes:
        k_pages: paged key pool [L, num_pages, page_size, Hkv, d].
        v_pages: paged value pool, same shape.
        ft_k: finetuning-sample keys (post-RoPE) [L, S, Hkv, d]; here and below S is
            ``scfg.ft_buffer_len`` (``ft_max_len`` rounded up to whole backward chunks).
        ft_v: finetuning-sample values [L, S, Hkv, d].
        ft_x: retained layer inputs of the finetuning sample [L, S, D].
        ft_dh: loss gradient w.r.t. the last layer's output [S, D] (float32); in "layer"
            backward mode each backward step replaces it with the gradient w.r.t. the input
            of the lowest layer it processed.
        dk_acc: key-cotangent accumulator of the token-level backward [L, S, Hkv, d]
            (float32); [L, 0, Hkv, d] (empty) in "layer" backward mode.
        dv_acc: value-cotangent accumulator, same shape.
        lora: the trainable adapter ``{target: {"A": [L, in, r], "B": [L, r, out]}}``.
        grad: the current sample's accumulated LoRA gradient (float32).
        opt_state: the `accumulate` state (inner optax state, accumulated gradients, the
            job's samples per update and learning-rate multiplier).
        loss_acc: the current sample's loss so far.
        samples_done: finetuning samples fully back-propagated.
        updates_done: optimizer updates applied.
    """

    k_pages: jax.Array
    v_pages: jax.Array
    ft_k: jax.Array
    ft_v: jax.Array
    ft_x: jax.Array
    ft_dh: jax.Array
    dk_acc: jax.Array
    dv_acc: jax.Array
    lora: Lora
    grad: Lora
    opt_state: Any
    loss_acc: jax.Array
    samples_done: jax.Array
    updates_done: jax.Array


@flax.struct.dataclass
class StepBatch:
    """One step's work, as fixed-size arrays (B = token budget, R = max requests).

    Attributes:
        tokens: token id per row [B].
        positions: absolute position per row [B].
        slots: request slot of inference rows, `INVALID` otherwise [B].
        adapters: adapter per row [B]: `BASE`, a bank slot, or ``max_adapters`` (trainable).
        is_ft: row is a finetuning forward token [B].
        labels: next-token target of finetuning rows, `INVALID` for none [B].
        temperature: 0 for greedy (exactly ``argmax``), else sampling temperature [B].
        top_p: nucleus-sampling mass per row, in (0, 1] (1 keeps every token) [B].
        rng_key: per-row base PRNG key data [B, *key_shape] (uint32, `jax.random.key_data` of
            the request's `seed_key`); the row's key is ``fold_in(base, sample_index)``, so a
            seeded request's tokens do not depend on its row, the rest of the batch,
            preemption or step boundaries.
        sample_index: index of the token a row's output would be among its request's
            generated tokens (0 for the first) [B].
        rope_len: sequence length each row's RoPE is computed for [B]; read only by
            dynamic-NTK RoPE (``LlamaConfig.rope_scaling_type == "dynamic"``): inference rows
            ``max(prompt_len, position + 1)`` (transformers' cached generation), finetuning
            rows the sample's length (the backward uses ``bwd_len``).
        page_table: [R, max_pages_per_request] pool page per logical page.
        loss_scale: weight of each finetuning token's loss (1 / (n - 1) for a sample of n).
        bwd_chunk: backward step to run, `INVALID` for none: the token chunk ("token"
            mode) or the layer group ("layer" mode: with k = ``bwd_layers`` and G groups, group
            j holds layers [L - (G-j)k, L - (G-1-j)k), clipped at 0); see `backward_steps`.
        bwd_len: length n of the sample being back-propagated (positions >= n of its last
            chunk hold stale data of an earlier, longer sample and are masked out).
        bwd_first: this chunk starts the sample's backward (resets the accumulators).
        bwd_last: this chunk ends it (chunk 0): hand the gradient to the optimizer.
    """

    tokens: jax.Array
    positions: jax.Array
    slots: jax.Array
    adapters: jax.Array
    is_ft: jax.Array
    labels: jax.Array
    temperature: jax.Array
    top_p: jax.Array
    rng_key: jax.Array
    sample_index: jax.Array
    rope_len: jax.Array
    page_table: jax.Array
    loss_scale: jax.Array
    bwd_chunk: jax.Array
    bwd_len: jax.Array
    bwd_first: jax.Array
    bwd_last: jax.Array


@flax.struct.dataclass
class StepOutput:
    """What a step returns to the host.

    Attributes:
        next_tokens: sampled next token per row [B] (meaningful for inference rows).
        ft_loss: the current finetuning sample's loss accumulated so far.
        sample_loss: loss of the sample completed by this step, NaN if none.
        sample_done: a finetuning sample completed its backward in this step.
        updated: the optimizer applied an update in this step.
        samples_done: samples completed so far.
        logits: float32 logits per row [B, vocab] with ``return_logits``, else [B, 0].
    """

    next_tokens: jax.Array
    ft_loss: jax.Array
    sample_loss: jax.Array
    sample_done: jax.Array
    updated: jax.Array
    samples_done: jax.Array
    logits: jax.Array


@functools.cache
def key_data_shape() -> tuple[int, ...]:
    """Shape of one PRNG key's raw data under the default implementation ((2,) for threefry)."""
    return tuple(jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape)


def empty_batch(scfg: CoServeConfig) -> dict[str, Any]:
    """Host-side numpy arrays of an all-padding batch, to fill in and pass to `StepBatch`."""
    B = scfg.token_budget
    return {
        "tokens": np.zeros(B, np.int32),
        "positions": np.zeros(B, np.int32),
        "slots": np.full(B, INVALID, np.int32),
        "adapters": np.full(B, INVALID, np.int32),
        "is_ft": np.zeros(B, bool),
        "labels": np.full(B, INVALID, np.int32),
        "temperature": np.zeros(B, np.float32),
        "top_p": np.ones(B, np.float32),
        "rng_key": np.zeros((B, *key_data_shape()), np.uint32),
        "sample_index": np.zeros(B, np.int32),
        "rope_len": np.zeros(B, np.int32),
        "page_table": np.full((scfg.max_requests, scfg.max_pages_per_request), INVALID, np.int32),
        "loss_scale": np.float32(0.0),
        "bwd_chunk": np.int32(INVALID),
        "bwd_len": np.int32(0),
        "bwd_first": np.bool_(False),
        "bwd_last": np.bool_(False),
    }


def init_state(
    cfg: LlamaConfig,
    scfg: CoServeConfig,
    lora: Lora,
    optimizer: optax.GradientTransformation,
    *,
    key: jax.Array | None = None,
) -> CoServeState:
    """A fresh state: empty KV pool and buffers, the trainable adapter and its optimizer state.

    ``optimizer`` must be the one passed to `make_coserve_step` (wrapped in `accumulate` there).
    ``key`` is not used: sampling keys come per request with the batch (`StepBatch.rng_key`);
    it is accepted so that callers written before per-request keys keep working.
    """
    del key
    dt = jnp.dtype(cfg.dtype)
    L, S, hk, d = cfg.n_layers, scfg.ft_buffer_len, cfg.n_kv_heads, cfg.head_dim
    S_acc = 0 if scfg.backward_mode == "layer" else S  # layer mode keeps dK/dV inside a step
    pool = (L, scfg.num_pages, scfg.page_size, hk, d)
    f32 = jnp.float32
    return CoServeState(
        k_pages=jnp.zeros(pool, dt),
        v_pages=jnp.zeros(pool, dt),
        ft_k=jnp.zeros((L, S, hk, d), dt),
        ft_v=jnp.zeros((L, S, hk, d), dt),
        ft_x=jnp.zeros((L, S, cfg.d_model), dt),
        ft_dh=jnp.zeros((S, cfg.d_model), f32),
        dk_acc=jnp.zeros((L, S_acc, hk, d), f32),
        dv_acc=jnp.zeros((L, S_acc, hk, d), f32),
        lora=jax.tree.map(jnp.copy, lora),  # the state is donated; never alias the caller's
        grad=jax.tree.map(lambda a: jnp.zeros(a.shape, f32), lora),
        opt_state=multi_steps(optimizer, scfg).init(lora),
        loss_acc=jnp.zeros((), f32),
        samples_done=jnp.zeros((), jnp.int32),
        updates_done=jnp.zeros((), jnp.int32),
    )


def _forward(
    spec: StepSpec,
    params: dict[str, Any],
    bank_w: Lora,
    bank_scales: BankScales,
    state: CoServeState,
    batch: StepBatch,
    axis: str | None,
    attn: Callable[..., jax.Array] | None,
) -> tuple[CoServeState, RowTokens, RowLogits]:
    """The forward of every row (see the module docstring, steps 1-2); returns the new state,
    the next token per row and the logits."""
    cfg, lora_cfg, S = spec.cfg, spec.lora_cfg, spec.scfg.ft_buffer_len
    pos, slots, pt, is_ft = batch.positions, batch.slots, batch.page_table, batch.is_ft
    n_bank = bank_scales.shape[0]
    x = params["embed"][batch.tokens]
    sel_bank = adapter_sel(bank_scales, batch.adapters)
    train_row = (batch.adapters == n_bank) | is_ft
    sel_train = train_row[:, None].astype(jnp.float32) * lora_cfg.scale
    ft_idx = jnp.where(is_ft, pos, S)  # S is out of range: non-finetuning rows are dropped
    j = jnp.arange(S, dtype=pos.dtype)
    ft_mask = is_ft[:, None] & (j[None, :] <= pos[:, None])
    bank_l = jax.tree.map(lambda a: jnp.moveaxis(a, 1, 0), bank_w)

    def body(x, xs):
        layer, bl, tl, kp, vp, fk, fv, fx = xs
        fx = fx.at[ft_idx].set(x, mode="drop")

        def attend(q, k, v):
            kp2, vp2 = write_pages(kp, k, pt, slots, pos), write_pages(vp, v, pt, slots, pos)
            fk2 = fk.at[ft_idx].set(k, mode="drop")
            fv2 = fv.at[ft_idx].set(v, mode="drop")
            if attn is None:  # reference: one softmax over the gathered pages and the buffer
                keys, vals, mask = paged_context(kp2, vp2, pt, slots, pos)
                o = attend_segments(q, [(keys, vals, mask), (fk2, fv2, ft_mask)])
            else:
                # A row is an inference row (a slot: pages only) or a finetuning row (the
                # buffer only), so the joint softmax splits exactly into the two.
                o = jnp.where(
                    (slots >= 0)[:, None, None],
                    attn(q, kp2, vp2, pt, slots, pos),
                    attend_segments(q, [(fk2, fv2, ft_mask)]),
                )
            return o, (kp2, vp2, fk2, fv2)

        adapters = [(jax.tree.map(lambda a: a[None], tl), sel_train)]
        if n_bank:
            adapters.insert(0, (bl, sel_bank))
        y, aux = decoder_layer(
            cfg, layer, x, pos, attend, adapters=adapters, axis_name=axis,
            rope_lengths=batch.rope_len,
        )  # fmt: skip
        return y, (*aux, fx)

    xs = (params["layers"], bank_l, state.lora, state.k_pages, state.v_pages, state.ft_k,
          state.ft_v, state.ft_x)  # fmt: skip
    x, (kp, vp, fk, fv, fx) = jax.lax.scan(body, x, xs)

    w = (is_ft & (batch.labels >= 0)).astype(jnp.float32) * batch.loss_scale
    labels = jnp.clip(batch.labels, 0, cfg.vocab_size - 1)

    def loss_fn(h):
        logits = lm_logits(cfg, params, h)
        ce = (
            jax.nn.logsumexp(logits, axis=-1)
            - jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
        )
        return jnp.sum(w * ce), logits

    (loss, logits), dh = jax.value_and_grad(loss_fn, has_aux=True)(x)
    ft_dh = state.ft_dh.at[ft_idx].set(dh.astype(jnp.float32), mode="drop")
    keys = step_keys(batch.rng_key, batch.sample_index)
    next_tokens = sample_tokens(logits, batch.temperature, batch.top_p, keys)
    state = dataclasses.replace(state,
        k_pages=kp, v_pages=vp, ft_k=fk, ft_v=fv, ft_x=fx, ft_dh=ft_dh,
        loss_acc=state.loss_acc + loss,
    )  # fmt: skip
    return state, next_tokens, logits


def make_coserve_step(
    cfg: LlamaConfig,
    scfg: CoServeConfig,
    lora_cfg: LoraConfig,
    optimizer: optax.GradientTransformation,
    *,
    mesh: Mesh | None = None,
    bank_targets: tuple[str, ...] = (),
    inference_only: bool = False,
    return_logits: bool = False,
) -> Callable[..., tuple[CoServeState, StepOutput]]:
    """Builds the jitted co-serving step (state donated).

    The step trusts its inputs, and nothing inside it can raise. Token ids and labels must lie
    in ``[0, vocab_size)``: a token id past the end reads the last embedding row, a negative
    one counts from the end as in numpy, and a label outside is clamped into range, all
    silently wrong. Positions must be each request's real positions, consecutive with what its
    KV pages already hold; slots, page-table entries and adapter indices must name live slots,
    pages and bank entries (out-of-range page writes are dropped); ``top_p`` must lie in (0, 1]
    and ``rng_key`` hold each sampled row's request key data (rows with the same key and
    ``sample_index`` draw with the same randomness); ``rope_len`` must follow the rule of
    `StepBatch` (only dynamic-NTK RoPE reads it); ``params``, the bank and the
    state must have the shapes the step was built for (a mismatch fails inside ``lax.scan``).
    `CoServeEngine` validates at its boundary (the checks of `jgraph.coserve.validate`); code
    that drives the raw step must do the same.

    Args:
        cfg: model shape.
        scfg: static capacities.
        lora_cfg: the trainable adapter.
        optimizer: optax optimizer (wrapped in `accumulate`, ``scfg.grad_accum`` samples per
            update unless a job's state says otherwise).
        mesh: optional mesh with a ``MODEL`` axis: the step then runs under `jax.shard_map`
            with Megatron tensor parallelism (heads, F, KV pool and finetuning buffers sharded
            by KV head) and LoRA shardings derived from the base weights (`lora_specs`). Only
            elementwise optimizers are exact here (each shard updates its own slice). Place the
            inputs with `coserve_specs` + `shard_tree`.
        bank_targets: the bank's targets (needed with ``mesh`` to shard the bank).
        inference_only: build the step without the finetuning backward (the baseline the
            co-serving step is compared with; finetuning rows still run forward).
        return_logits: also return every row's logits (``StepOutput.logits`` [B, vocab]);
            otherwise that field is empty ([B, 0]) so nothing large leaves the device.

    Returns:
        ``step(params, bank_weights, bank_scales, state, batch) -> (state, StepOutput)`` where
        ``bank_weights``/``bank_scales`` are an `AdapterBank`'s arrays (capacity
        ``scfg.max_adapters``; may be empty) and ``batch`` is a `StepBatch`.

    Raises:
        ConfigError: ``bwd_layers`` > ``n_layers``; ``attention_impl="pallas"`` with a head
            size that is not a power of two, on a backend without a Pallas kernel, or with
            ``mesh``.
    """
    axis = None if mesh is None else MODEL
    check_backward(cfg, scfg)
    spec = StepSpec(cfg=cfg, lora_cfg=lora_cfg, scfg=scfg)
    device = mesh.devices.flat[0] if mesh is not None else jax.devices()[0]
    impl, interpret = resolve_attention_impl(
        scfg.attention_impl,
        device_platform(device),
        head_dim=cfg.head_dim,
        page_size=scfg.page_size,
        tensor_parallel=mesh is not None,
    )
    attn = (
        None
        if impl == "reference"
        else functools.partial(paged_attention_pallas, interpret=interpret)
    )

    def step(params, bank_w, bank_scales, state: CoServeState, batch: StepBatch):
        state, next_tokens, logits = _forward(
            spec, params, bank_w, bank_scales, state, batch, axis, attn
        )
        has_bwd = (batch.bwd_chunk >= 0) & (not inference_only)
        state = (
            state
            if inference_only
            else jax.lax.cond(
                has_bwd,
                lambda st: backward_step(spec, optimizer, params, st, batch, axis),
                lambda st: st,
                state,
            )
        )
        done = has_bwd & batch.bwd_last
        sample_loss = jnp.where(done, state.loss_acc, jnp.nan)
        samples = state.samples_done + done.astype(jnp.int32)
        # the job's accumulation count is in its optimizer state (`accumulate`)
        updated = done & (state.opt_state.mini_step == 0)
        state = dataclasses.replace(
            state,
            loss_acc=jnp.where(done, 0.0, state.loss_acc),
            samples_done=samples,
            updates_done=state.updates_done + updated.astype(jnp.int32),
        )
        out = StepOutput(
            next_tokens=next_tokens,
            ft_loss=state.loss_acc,
            sample_loss=sample_loss,
            sample_done=done,
            updated=updated,
            samples_done=samples,
            logits=logits if return_logits else jnp.zeros((logits.shape[0], 0), logits.dtype),
        )
        return state, out

    if mesh is None:
        return jax.jit(step, donate_argnums=(3,))
    pspecs, bspecs, sspecs = coserve_specs(cfg, scfg, lora_cfg, optimizer, mesh, bank_targets)
    batch_specs = _spec_tree(StepBatch, **{k: P() for k in empty_batch(scfg)})
    out_specs = _spec_tree(StepOutput, **{f.name: P() for f in dataclasses.fields(StepOutput)})
    sharded = jax.shard_map(
        step,
        mesh=mesh,
        in_specs=(pspecs, bspecs, P(), sspecs, batch_specs),
        out_specs=(sspecs, out_specs),
    )
    return jax.jit(sharded, donate_argnums=(3,))


def _spec_tree(cls: type, **specs: Any) -> Any:
    """An instance of the pytree dataclass ``cls`` holding PartitionSpecs instead of arrays
    (the spec prefix `jax.shard_map` takes); typed Any since its fields say Array."""
    return cls(**specs)


def coserve_specs(
    cfg: LlamaConfig,
    scfg: CoServeConfig,
    lora_cfg: LoraConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    bank_targets: tuple[str, ...] = (),
) -> tuple[Any, Any, CoServeState]:
    """PartitionSpecs of (params, bank weights, state) for the tensor-parallel step.

    Raises:
        ConfigError: KV heads or F not divisible by the ``MODEL`` axis size.
    """
    check_tp_divisible(cfg, mesh)
    pspecs = param_specs(cfg)
    lay = pspecs["layers"]
    bspecs = {t: lora_specs(lay[t], stacked_adapters=True) for t in bank_targets}
    lspecs = {t: lora_specs(lay[t], stacked_adapters=False) for t in lora_cfg.targets}
    abstract = jax.eval_shape(
        lambda: init_state(cfg, scfg, _zeros_lora(cfg, lora_cfg), optimizer, key=jax.random.key(0))
    )
    opt_specs = optax.tree_map_params(
        multi_steps(optimizer, scfg),
        lambda _, spec: spec,
        abstract.opt_state,
        lspecs,
        transform_non_params=lambda _: P(),
        is_leaf=lambda x: isinstance(x, P),
    )
    kv = P(None, None, MODEL, None)  # [L, S, Hkv, d]
    sspecs = _spec_tree(
        CoServeState,
        k_pages=P(None, None, None, MODEL, None),
        v_pages=P(None, None, None, MODEL, None),
        ft_k=kv,
        ft_v=kv,
        ft_x=P(),
        ft_dh=P(),
        dk_acc=kv,
        dv_acc=kv,
        lora=lspecs,
        grad=lspecs,
        opt_state=opt_specs,
        loss_acc=P(),
        samples_done=P(),
        updates_done=P(),
    )
    return pspecs, bspecs, sspecs


def _zeros_lora(cfg: LlamaConfig, lora_cfg: LoraConfig) -> Lora:
    dt = jnp.dtype(cfg.dtype)
    out = {}
    for t in lora_cfg.targets:
        d_in, d_out = cfg.proj_shape(t)
        out[t] = {
            "A": jnp.zeros((cfg.n_layers, d_in, lora_cfg.rank), dt),
            "B": jnp.zeros((cfg.n_layers, lora_cfg.rank, d_out), dt),
        }
    return out
