"""Bytes kept for the finetuning backward, counted without materializing anything.

* Co-serving: the explicit buffers of `CoServeState` that exist for the backward (layer inputs
  ``ft_x``, the finetuning K/V ``ft_k/ft_v``, the top gradient ``ft_dh``, and the token-level
  backward's ``dk_acc/dv_acc`` accumulators, empty in "layer" backward mode), read from
  ``jax.eval_shape(init_state, ...)``.
* Baselines: the residuals that ``jax.vjp`` of the full-sequence loss saves, listed by
  ``jax.ad_checkpoint.print_saved_residuals`` and summed; arguments (weights, tokens) are
  excluded, so only activations count. "lora" stops the gradient of the base weights (LoRA
  training with plain autodiff); "full" differentiates every weight (full finetuning).

Both work on abstract values (`jax.ShapeDtypeStruct`), so Llama-3.1-8B shapes at 8k tokens can
be measured on a laptop. XLA's CPU memory analysis is not used: it ignores rematerialization.
"""

from __future__ import annotations

import contextlib
import io
import re
from typing import Literal

import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np
import optax

from jgraph.coserve._config import CoServeConfig, LlamaConfig, LoraConfig
from jgraph.coserve._lora import init_lora
from jgraph.coserve._model import init_params
from jgraph.coserve._step import init_state

__all__ = ["coserve_backward_bytes", "vjp_residual_bytes"]

_BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "i64": 8, "i32": 4, "i8": 1, "u8": 1}
_LINE = re.compile(r"^(\w+)\[([\d,]*)\]\s+(.*)$")


def coserve_backward_bytes(
    cfg: LlamaConfig, scfg: CoServeConfig, lora_cfg: LoraConfig
) -> dict[str, int]:
    """Bytes of the co-serving step's backward buffers for one sample of ``scfg.ft_max_len``.

    Returns:
        ``{"retained": ft_x + ft_k + ft_v + ft_dh, "workspace": dk_acc + dv_acc,
        "in_step": float32 accumulators that live only inside one backward step}``: in
        "token" mode the carried chunk gradient [C, D]; in "layer" mode one layer's dK/dV
        [S, Hkv, d] each plus the layer-input gradient [S, D] (the state's dK/dV are empty).

    Example:
        >>> from jgraph.coserve import CoServeConfig, LlamaConfig, LoraConfig
        >>> b = coserve_backward_bytes(LlamaConfig.tiny(), CoServeConfig(ft_max_len=8, bwd_chunk=8),
        ...                            LoraConfig())
        >>> b["retained"] == 2 * 8 * (64 + 2 * 32) * 4 + 8 * 64 * 4
        True
    """

    def build():
        lora = init_lora(cfg, lora_cfg, key=jax.random.key(0))
        return init_state(cfg, scfg, lora, optax.sgd(0.0), key=jax.random.key(0))

    st = jax.eval_shape(build)

    def nbytes(a) -> int:
        return int(np.prod(a.shape)) * jnp.dtype(a.dtype).itemsize

    S, C = scfg.ft_buffer_len, scfg.bwd_chunk
    if scfg.backward_mode == "layer":
        in_step = 4 * S * (2 * cfg.kv_dim + cfg.d_model)
    else:
        in_step = 4 * C * cfg.d_model
    return {
        "retained": sum(nbytes(a) for a in (st.ft_x, st.ft_k, st.ft_v, st.ft_dh)),
        "workspace": nbytes(st.dk_acc) + nbytes(st.dv_acc),
        "in_step": in_step,
    }


def vjp_residual_bytes(
    cfg: LlamaConfig,
    lora_cfg: LoraConfig,
    seq_len: int,
    *,
    trainable: Literal["lora", "full"],
) -> int:
    """Activation bytes ``jax.vjp`` keeps for one full-sequence training sample.

    Args:
        cfg: model shape.
        lora_cfg: the adapter (present in both modes).
        seq_len: sample length.
        trainable: "lora" (base weights frozen via `jax.lax.stop_gradient`) or "full".

    Returns:
        Sum of the saved residuals' bytes; arguments, literals and the stop-gradient copies of
        the frozen weights are excluded (the LoRA A/B reshapes, a few MB, stay in).
    """
    from jgraph.coserve._reference import sample_loss_reference

    params = jax.eval_shape(lambda: init_params(cfg, key=jax.random.key(0)))
    lora = jax.eval_shape(lambda: init_lora(cfg, lora_cfg, key=jax.random.key(0)))
    tokens = jax.ShapeDtypeStruct((seq_len,), jnp.int32)

    def loss(lora, params, tokens):
        if trainable == "lora":
            params = jax.lax.stop_gradient(params)
        return sample_loss_reference(cfg, params, lora, lora_cfg, tokens)

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        jax.ad_checkpoint.print_saved_residuals(loss, lora, params, tokens)
    total = 0
    for line in buf.getvalue().splitlines():
        m = _LINE.match(line.strip())
        # Arguments, literals and the frozen weights behind stop_gradient are not activations.
        origin = m.group(3) if m else ""
        if not m or any(
            k in origin for k in ("from the argument", "from a literal", "of stop_gradient")
        ):
            continue
        dims = [int(d) for d in m.group(2).split(",") if d]
        if m.group(1) not in _BYTES and m.group(1) != "bool":
            raise ValueError(f"unknown dtype in residual listing: {line!r}")
        total += int(np.prod(dims, dtype=np.int64)) * _BYTES.get(m.group(1), 1)
    return total
