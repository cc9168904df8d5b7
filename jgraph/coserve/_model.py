"""A Llama-architecture decoder as pure functions on a layer-stacked parameter tree, plus a Flax
module around them.

Parameters are a dict: ``embed`` [vocab, d_model], ``layers`` (each leaf stacked over layers:
``input_norm`` [L, D], ``q_proj`` [L, D, Hq*d], ``k_proj``/``v_proj`` [L, D, Hkv*d], ``o_proj``
[L, Hq*d, D], ``post_norm`` [L, D], ``gate_proj``/``up_proj`` [L, D, F], ``down_proj`` [L, F, D]),
``final_norm`` [D] and ``lm_head`` [D, vocab] (absent when embeddings are tied). Projections are
stored ``[in, out]`` (x @ W); Hugging Face stores ``[out, in]`` and `_checkpoint` transposes.

Layers are stacked so the co-serving step can `lax.scan` over them and the backward can index
one layer with a traced index. The same `decoder_layer` runs the dense reference, the packed
serving batch and the rematerialized backward, with the attention supplied by the caller, so the
three cannot drift apart.

References:
    Touvron et al., "LLaMA: Open and Efficient Foundation Language Models", 2023; Su et al.,
    "RoFormer" (RoPE), 2021; Shazeer, "GLU Variants Improve Transformer" (SwiGLU), 2020;
    Ainslie et al., "GQA", 2023.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jgraph.coserve._config import LORA_TARGETS, QKV_BIASES, LlamaConfig

__all__ = [
    "Attend",
    "LlamaModel",
    "apply_rope",
    "attend_segments",
    "decoder_layer",
    "dense_causal_attend",
    "forward",
    "init_params",
    "lm_logits",
    "rms_norm",
    "rope_tables",
]

Params = dict[str, Any]
# attend(q [T, Hq, d], k [T, Hkv, d], v [T, Hkv, d]) -> (o [T, Hq, d], aux)
Attend = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, Any]]

_NEG = -1e30  # finite "minus infinity": fully masked padding rows stay NaN-free


def init_params(cfg: LlamaConfig, *, key: jax.Array) -> Params:
    """Random weights (normal, std 0.02 as Hugging Face's ``initializer_range``; norms at 1).

    Example:
        >>> import jax
        >>> from jgraph.coserve import LlamaConfig, init_params
        >>> p = init_params(LlamaConfig.tiny(), key=jax.random.key(0))
        >>> p["layers"]["q_proj"].shape
        (2, 64, 64)
    """
    dt = jnp.dtype(cfg.dtype)
    L, D = cfg.n_layers, cfg.d_model
    keys = iter(jax.random.split(key, len(LORA_TARGETS) + 2 + 3 * cfg.qkv_bias))

    def normal(shape: Sequence[int]) -> jax.Array:
        return (0.02 * jax.random.normal(next(keys), shape, jnp.float32)).astype(dt)

    layers = {t: normal((L, *cfg.proj_shape(t))) for t in LORA_TARGETS}
    layers["input_norm"] = jnp.ones((L, D), dt)
    layers["post_norm"] = jnp.ones((L, D), dt)
    params: Params = {
        "embed": normal((cfg.vocab_size, D)),
        "layers": layers,
        "final_norm": jnp.ones((D,), dt),
    }
    head = normal((D, cfg.vocab_size))
    if not cfg.tie_embeddings:
        params["lm_head"] = head
    if cfg.qkv_bias:  # drawn after the other weights, so bias-free models keep their values
        for t in ("q_proj", "k_proj", "v_proj"):
            layers[QKV_BIASES[t]] = normal((L, cfg.proj_shape(t)[1]))
    return params


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32 (Llama casts up for the variance), result in ``x.dtype``."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * w.astype(jnp.float32)[None, :]).astype(x.dtype)


def _inv_freq(cfg: LlamaConfig) -> np.ndarray:
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    if cfg.rope_scaling_factor is None or cfg.rope_scaling_type == "dynamic":
        return inv
    if cfg.rope_scaling_type == "linear":  # position interpolation (transformers' "linear")
        return inv / cfg.rope_scaling_factor
    # Llama-3.1 "llama3" scaling: long wavelengths are divided by the factor, short ones kept,
    # the band between interpolated (transformers' _compute_llama3_parameters).
    factor, lo, hi = cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    old = cfg.rope_original_max_len
    wavelen = 2 * math.pi / inv
    smooth = (old / wavelen - lo) / (hi - lo)
    scaled = np.where(wavelen > old / lo, inv / factor, inv)
    mid = (wavelen <= old / lo) & (wavelen >= old / hi)
    return np.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)


def _dynamic_inv_freq(cfg: LlamaConfig, lengths: jax.Array) -> jax.Array:
    """Dynamic-NTK inverse frequencies [tok, head_dim // 2] for per-token sequence lengths,
    in float32 as transformers computes them (``_compute_dynamic_ntk_parameters``)."""
    d, factor = cfg.head_dim, float(cfg.rope_scaling_factor or 1.0)
    max_len = cfg.rope_original_max_len
    n = jnp.maximum(lengths.astype(jnp.float32), float(max_len))
    base = cfg.rope_theta * ((factor * n / max_len) - (factor - 1.0)) ** (d / (d - 2))
    expo = jnp.arange(0, d, 2, dtype=jnp.float32) / d
    return 1.0 / (base[:, None] ** expo[None, :])


def rope_tables(
    cfg: LlamaConfig, positions: jax.Array, lengths: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """cos, sin tables [tok, head_dim // 2] (float32) for absolute positions [tok].

    ``lengths`` [tok] matters only for dynamic-NTK RoPE: the length of the sequence each
    token's rotation is computed for. transformers uses ``max(position_ids) + 1`` of each
    forward call, so a full-sequence forward rotates every token for the whole length and
    cached generation rotates the prompt for the prompt's length and each later token for its
    own position + 1 (keys already cached keep their rotation). The default,
    ``max(positions) + 1`` for every token, is right for one sequence; packed batches of
    several sequences pass their own lengths.
    """
    pos = positions.astype(jnp.float32)
    if cfg.rope_scaling_factor is not None and cfg.rope_scaling_type == "dynamic":
        if lengths is None:
            lengths = jnp.broadcast_to(jnp.max(positions) + 1, positions.shape)
        ang = pos[:, None] * _dynamic_inv_freq(cfg, lengths)
    else:
        ang = pos[:, None] * jnp.asarray(_inv_freq(cfg), jnp.float32)[None, :]
    return jnp.cos(ang), jnp.sin(ang)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates the two halves of each head (the Hugging Face "rotate_half" layout)."""
    half = x.shape[-1] // 2
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., :half], x32[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


def attend_segments(
    q: jax.Array,
    segments: Sequence[tuple[jax.Array, jax.Array, jax.Array]],
) -> jax.Array:
    """Grouped-query attention of each query over one softmax across several key segments.

    Args:
        q: queries [T, Hq, d].
        segments: (k, v, mask) triples; k/v are either shared by all queries, [S, Hkv, d], or
            per query, [T, S, Hkv, d]; mask [T, S] says which keys each query may see.

    Returns:
        [T, Hq, d] in ``q.dtype``. A query with no visible key gets an arbitrary finite row.
    """
    T, Hq, d = q.shape
    Hkv = segments[0][0].shape[-2]
    qg = q.reshape(T, Hkv, Hq // Hkv, d).astype(jnp.float32) / math.sqrt(d)
    scores = []
    for k, _v, mask in segments:
        eq = "tkgd,skd->tkgs" if k.ndim == 3 else "tkgd,tskd->tkgs"
        s = jnp.einsum(eq, qg, k.astype(jnp.float32))
        scores.append(jnp.where(mask[:, None, None, :], s, _NEG))
    p = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1)
    out = jnp.zeros((T, Hkv, Hq // Hkv, d), jnp.float32)
    start = 0
    for k, v, _ in segments:
        n = k.shape[-3]
        eq = "tkgs,skd->tkgd" if v.ndim == 3 else "tkgs,tskd->tkgd"
        out = out + jnp.einsum(eq, p[..., start : start + n], v.astype(jnp.float32))
        start += n
    return out.reshape(T, Hq, d).astype(q.dtype)


def dense_causal_attend(q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, None]:
    """Causal self-attention of one whole sequence (the dense reference)."""
    T = q.shape[0]
    mask = jnp.tril(jnp.ones((T, T), bool))
    return attend_segments(q, [(k, v, mask)]), None


Adapters = Sequence[tuple[Params, jax.Array]]


def _proj(h: jax.Array, layer: Params, adapters: Adapters, name: str) -> jax.Array:
    y = h @ layer[name]
    if QKV_BIASES.get(name) in layer:  # Qwen2's q/k/v biases (`LlamaConfig.qkv_bias`)
        y = y + layer[QKV_BIASES[name]][None, :]
    for lora, sel in adapters:
        if name in lora:
            # Punica-style BGMV as a one-hot einsum: every token picks its adapter (and scale)
            # through sel [T, n]; a zero row means "base model only".
            z = jnp.einsum("ti,nir->tnr", h, lora[name]["A"]) * sel[:, :, None].astype(h.dtype)
            y = y + jnp.einsum("tnr,nro->to", z, lora[name]["B"])
    return y


def decoder_layer(
    cfg: LlamaConfig,
    layer: Params,
    x: jax.Array,
    positions: jax.Array,
    attend: Attend,
    *,
    adapters: Adapters = (),
    axis_name: str | None = None,
    rope_lengths: jax.Array | None = None,
) -> tuple[jax.Array, Any]:
    """One pre-norm Llama layer on a packed token batch.

    Args:
        cfg: model shape (head size, eps, RoPE).
        layer: one layer's weights (leaves without the leading layer axis).
        x: the layer input (residual stream) [T, D].
        positions: absolute position of each token [T] (RoPE).
        attend: attention over whatever context the caller keeps (dense, paged, finetuning
            buffer); receives post-RoPE q, k and v.
        adapters: (lora, sel) pairs: this layer's adapters ``{target: {"A": [n, in, r],
            "B": [n, r, out]}}`` and per-token weights sel [T, n] (one-hot times LoraConfig.scale;
            a zero row means base model only). The bank and the trainable adapter are two pairs.
        axis_name: the tensor-parallel mesh axis when called inside `jax.shard_map` with heads
            and F sharded (Megatron layout); the two row-parallel outputs are summed over it,
            LoRA terms included, so adapters add no collective.
        rope_lengths: per-token sequence lengths for dynamic-NTK RoPE [T] (`rope_tables`).

    Returns:
        (layer output [T, D], the ``aux`` value returned by ``attend``).
    """
    T, d = x.shape[0], cfg.head_dim
    cos, sin = rope_tables(cfg, positions, rope_lengths)
    h = rms_norm(x, layer["input_norm"], cfg.norm_eps)
    q = _proj(h, layer, adapters, "q_proj").reshape(T, -1, d)
    k = _proj(h, layer, adapters, "k_proj").reshape(T, -1, d)
    v = _proj(h, layer, adapters, "v_proj").reshape(T, -1, d)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    o, aux = attend(q, k, v)
    a = _proj(o.reshape(T, -1), layer, adapters, "o_proj")
    if axis_name is not None:
        a = jax.lax.psum(a, axis_name)
    x = x + a
    h2 = rms_norm(x, layer["post_norm"], cfg.norm_eps)
    g = _proj(h2, layer, adapters, "gate_proj")
    u = _proj(h2, layer, adapters, "up_proj")
    m = _proj(jax.nn.silu(g) * u, layer, adapters, "down_proj")
    if axis_name is not None:
        m = jax.lax.psum(m, axis_name)
    return x + m, aux


def lm_logits(cfg: LlamaConfig, params: Params, x: jax.Array) -> jax.Array:
    """Final RMSNorm and output head: logits [T, vocab] in float32."""
    h = rms_norm(x, params["final_norm"], cfg.norm_eps)
    head = params["embed"].T if cfg.tie_embeddings else params["lm_head"]
    return (h @ head).astype(jnp.float32)


def forward(
    cfg: LlamaConfig,
    params: Params,
    tokens: jax.Array,
    *,
    lora: Params | None = None,
    sel: jax.Array | None = None,
    length: jax.Array | int | None = None,
) -> jax.Array:
    """Dense causal forward of one sequence: the reference for every fast path.

    Args:
        cfg: model shape.
        params: weights from `init_params` or `load_hf_checkpoint`.
        tokens: token ids [S].
        lora: stacked adapters ``{target: {"A": [n, L, in, r], "B": [n, L, r, out]}}`` or None.
        sel: per-token adapter weights [S, n] (see `decoder_layer`).
        length: the sequence's real length when ``tokens`` ends in padding (dynamic-NTK RoPE
            rotates for the sequence's length; causal attention keeps padding out of the real
            tokens' logits anyway); default: all of ``tokens``.

    Returns:
        Logits [S, vocab], float32.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jgraph.coserve import LlamaConfig, init_params
        >>> from jgraph.coserve.model import forward
        >>> cfg = LlamaConfig.tiny()
        >>> forward(cfg, init_params(cfg, key=jax.random.key(0)), jnp.arange(5)).shape
        (5, 260)
    """
    positions = jnp.arange(tokens.shape[0], dtype=jnp.int32)
    n = tokens.shape[0] if length is None else length
    rope_len = jnp.broadcast_to(jnp.asarray(n, jnp.int32), positions.shape)
    x = params["embed"][tokens]
    lora_l = {} if lora is None else jax.tree.map(lambda a: jnp.moveaxis(a, 1, 0), lora)
    if lora is not None and sel is None:
        raise ValueError("forward: pass sel [seq, n] together with lora")

    def body(x: jax.Array, xs: tuple[Params, Params]) -> tuple[jax.Array, None]:
        layer, lo = xs
        ad = ((lo, sel),) if lora is not None and sel is not None else ()
        y, _ = decoder_layer(
            cfg, layer, x, positions, dense_causal_attend, adapters=ad, rope_lengths=rope_len
        )
        return y, None

    x, _ = jax.lax.scan(body, x, (params["layers"], lora_l))
    return lm_logits(cfg, params, x)


class LlamaModel(nn.Module):
    """Flax (Linen) wrapper: ``init`` draws `init_params`, ``apply`` runs `forward`.

    ``variables["params"]["model"]`` is exactly the functional layout, so the same weights feed
    the co-serving engine.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jgraph.coserve import LlamaConfig
        >>> from jgraph.coserve.model import LlamaModel
        >>> m = LlamaModel(cfg=LlamaConfig.tiny())
        >>> v = m.init(jax.random.key(0), jnp.arange(4))
        >>> m.apply(v, jnp.arange(4)).shape
        (4, 260)
    """

    cfg: LlamaConfig

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        lora: Params | None = None,
        sel: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.cfg
        full = self.param("model", lambda key: init_params(cfg, key=key))
        return forward(cfg, full, tokens, lora=lora, sel=sel)
