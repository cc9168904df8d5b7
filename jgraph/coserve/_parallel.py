"""Dependent parallelization: tensor-parallel layers whose LoRA shardings follow the base weight.

Megatron layout over the `jgraph.core.MODEL` mesh axis: q/k/v/gate/up are column-parallel
(output features, i.e. heads and F, sharded), o/down are row-parallel (input features
sharded), so each layer needs exactly two all-reduces (after o_proj and after down_proj).
A LoRA adapter does not get its own parallelization (FlexLLM §a.8): A keeps the base weight's
input-dim sharding and B its output-dim sharding, with the rank dim replicated. For a
row-parallel layer every shard then computes ``x_i W_i + s (x_i A_i) B`` and the one existing
all-reduce sums both terms; for a column-parallel layer the replicated input needs no
communication at all. `tp_forward` runs the layers inside `jax.shard_map` so the collectives
are exactly the ones written in `decoder_layer` (``axis_name``), whatever XLA's partitioner
would prefer; the test counts them in the compiled HLO.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jgraph.core import DATA, MODEL, ConfigError
from jgraph.coserve._config import QKV_BIASES, LlamaConfig
from jgraph.coserve._lora import adapter_sel
from jgraph.coserve._model import decoder_layer, dense_causal_attend, lm_logits

__all__ = ["count_collectives", "lora_specs", "make_tp_forward", "param_specs", "shard_tree"]

COLUMN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROW = ("o_proj", "down_proj")


def check_tp_divisible(cfg: LlamaConfig, mesh: Mesh) -> int:
    """Returns the ``MODEL`` axis size after checking that KV heads and F split evenly over it.

    Raises:
        ConfigError: KV heads or F not divisible by the ``MODEL`` axis size.
    """
    tp = mesh.shape[MODEL]
    for field, value in (("n_kv_heads", cfg.n_kv_heads), ("d_ff", cfg.d_ff)):
        if value % tp:
            raise ConfigError(
                f"LlamaConfig.{field}", value, f"not divisible by the {MODEL} axis size {tp}",
                "pick a model-parallel size that divides heads and F",
            )  # fmt: skip
    return tp


def param_specs(cfg: LlamaConfig) -> dict[str, Any]:
    """PartitionSpecs of the base parameters (layer-stacked) for Megatron tensor parallelism."""
    layers: dict[str, P] = {t: P(None, None, MODEL) for t in COLUMN}
    layers.update({t: P(None, MODEL, None) for t in ROW})
    layers["input_norm"] = layers["post_norm"] = P()
    if cfg.qkv_bias:  # column-parallel outputs: each device adds its slice of the bias
        layers.update({b: P(None, MODEL) for b in QKV_BIASES.values()})
    specs: dict[str, Any] = {"embed": P(), "layers": layers, "final_norm": P()}
    if not cfg.tie_embeddings:
        specs["lm_head"] = P()
    return specs


def lora_specs(base: P, *, stacked_adapters: bool) -> dict[str, P]:
    """LoRA A/B specs derived from the base weight's spec ``[L, in, out]``.

    A [(n,) L, in, r] takes the base input-dim sharding, B [(n,) L, r, out] the base
    output-dim sharding; the rank dim and any adapter dim are replicated.

    Example:
        >>> from jax.sharding import PartitionSpec as P
        >>> specs = lora_specs(P(None, "model", None), stacked_adapters=False)  # row-parallel
        >>> specs["A"] == P(None, "model", None), specs["B"] == P(None, None, None)
        (True, True)
    """
    lead = (None, None) if stacked_adapters else (None,)
    _, d_in, d_out = tuple(base) + (None,) * (3 - len(tuple(base)))
    return {"A": P(*lead, d_in, None), "B": P(*lead, None, d_out)}


def make_tp_forward(
    cfg: LlamaConfig, mesh: Mesh, targets: tuple[str, ...] | None
) -> Callable[..., jax.Array]:
    """A jitted batched forward with tensor parallelism over ``MODEL`` and data over ``DATA``.

    Args:
        cfg: model shape; ``n_kv_heads`` and ``d_ff`` must divide by the ``MODEL`` size.
        mesh: a mesh with axes ``DATA`` and ``MODEL``.
        targets: the bank's LoRA targets, or None for the inference-only (base) model.

    Returns:
        ``fn(params, bank_weights, bank_scales, tokens [batch, seq], adapter [batch])`` ->
        logits [batch, seq, vocab]; ``bank_weights``/``bank_scales`` are ignored (pass ``{}``
        and an empty array) when ``targets`` is None.

    Raises:
        ConfigError: heads or F not divisible by the model-parallel size.
    """
    check_tp_divisible(cfg, mesh)
    pspecs = param_specs(cfg)
    bspecs = (
        {}
        if targets is None
        else {t: lora_specs(pspecs["layers"][t], stacked_adapters=True) for t in targets}
    )

    def body(params, bank_w, scales, tokens, adapter):
        def one(tok, idx):
            pos = jnp.arange(tok.shape[0], dtype=jnp.int32)
            x = params["embed"][tok]
            sel = adapter_sel(scales, jnp.full(tok.shape, idx)) if targets else None
            lora_l = jax.tree.map(lambda a: jnp.moveaxis(a, 1, 0), bank_w)

            def layer_fn(x, xs):
                layer, lo = xs
                ad = ((lo, sel),) if targets else ()
                y, _ = decoder_layer(
                    cfg, layer, x, pos, dense_causal_attend, adapters=ad, axis_name=MODEL
                )
                return y, None

            x, _ = jax.lax.scan(layer_fn, x, (params["layers"], lora_l))
            return lm_logits(cfg, params, x)

        return jax.vmap(one)(tokens, adapter)

    sharded = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(pspecs, bspecs, P(), P(DATA), P(DATA)),
        out_specs=P(DATA),
    )
    return jax.jit(sharded)


def shard_tree(tree: Any, specs: Any, mesh: Mesh) -> Any:
    """`jax.device_put` of a tree with matching PartitionSpecs."""
    return jax.tree.map(
        lambda a, s: jax.device_put(a, NamedSharding(mesh, s)),
        tree,
        specs,
        is_leaf=lambda x: isinstance(x, P),
    )


# An op name followed by "(" (not the "%all-reduce.3 = ..." value names); "-start" is the
# asynchronous form, whose "-done" half is not counted again.
_COLLECTIVE = re.compile(
    r"[\s)](all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(-start)?\("
)


def count_collectives(hlo_text: str) -> dict[str, int]:
    """Counts collective ops (by kind) in compiled HLO text (async pairs counted once)."""
    counts: dict[str, int] = {}
    for m in _COLLECTIVE.finditer(hlo_text):
        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts
