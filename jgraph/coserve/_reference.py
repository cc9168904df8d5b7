"""References for the co-serving fast paths: the full-sequence LoRA loss and a plain LoRA
training loop (one `jax.value_and_grad` per sample, the same optax optimizer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jgraph.core import ConfigError
from jgraph.coserve._config import LlamaConfig, LoraConfig
from jgraph.coserve._model import forward
from jgraph.coserve._validate import check_token_samples

__all__ = ["plain_lora_train", "sample_loss_reference"]


def sample_loss_reference(
    cfg: LlamaConfig,
    params: dict[str, Any],
    lora: dict[str, dict[str, jax.Array]],
    lora_cfg: LoraConfig,
    tokens: jax.Array,
    length: jax.Array | int | None = None,
) -> jax.Array:
    """Mean next-token cross-entropy of one sample under the adapter (n - 1 predictions).

    Args:
        cfg: model shape.
        params: base weights.
        lora: the adapter ``{target: {"A": [L, in, r], "B": [L, r, out]}}``.
        lora_cfg: its rank/alpha.
        tokens: the sample [n], or a padded sample [n_pad] with ``length``.
        length: real length n of a padded sample (causal attention: padding after the sample
            cannot change its logits); None means ``tokens.shape[0]``.

    Raises:
        ConfigError: non-integer tokens, fewer than 2 tokens (n - 1 = 0 predictions), a
            ``length`` outside ``[2, tokens.shape[0]]``, or ids outside the vocabulary. Under a
            trace (``jax.jit``/``grad`` with traced ``tokens``/``length``) only the static checks
            (dtype, padded size) can run: validate the samples first, as `plain_lora_train` does.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jgraph.coserve import LlamaConfig, LoraConfig, init_lora, init_params
        >>> cfg, lc = LlamaConfig.tiny(), LoraConfig(rank=2)
        >>> p = init_params(cfg, key=jax.random.key(0))
        >>> a = init_lora(cfg, lc, key=jax.random.key(1))
        >>> float(sample_loss_reference(cfg, p, a, lc, jnp.arange(6))) > 0
        True
    """
    _check_sample(cfg, tokens, length)
    one = jax.tree.map(lambda a: a[None], lora)
    sel = jnp.full((tokens.shape[0], 1), lora_cfg.scale, jnp.float32)
    logits = forward(cfg, params, tokens, lora=one, sel=sel, length=length)[:-1]
    tgt = tokens[1:]
    ce = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, tgt[:, None], -1)[:, 0]
    n = tokens.shape[0] if length is None else length
    valid = jnp.arange(ce.shape[0]) < n - 1
    return jnp.sum(jnp.where(valid, ce, 0.0)) / (n - 1)


def _concrete(x: Any) -> np.ndarray | None:
    """``x`` as a numpy array, or None under a trace (where its values are unknown)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_sample(cfg: LlamaConfig, tokens: Any, length: Any) -> None:
    fix = "pass a sample of at least 2 token ids in [0, vocab_size)"
    if not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
        raise ConfigError("tokens", str(jnp.result_type(tokens)), "must hold integer ids", fix)
    n_pad = int(np.shape(tokens)[0]) if np.ndim(tokens) == 1 else -1
    if n_pad < 2:
        raise ConfigError(
            "tokens", np.shape(tokens), "must be 1-D with >= 2 tokens (n - 1 predictions)", fix
        )
    n = n_pad
    if length is not None and (lv := _concrete(length)) is not None:
        n = int(lv)
        if not 2 <= n <= n_pad:
            raise ConfigError("length", n, f"must be between 2 and tokens.shape[0]={n_pad}", fix)
    if (tv := _concrete(tokens)) is not None:
        bad = np.flatnonzero((tv[:n] < 0) | (tv[:n] >= cfg.vocab_size))
        if bad.size:
            j = int(bad[0])
            raise ConfigError(
                f"tokens[{j}]", int(tv[j]), f"is outside the vocabulary [0, {cfg.vocab_size})", fix
            )


def plain_lora_train(
    cfg: LlamaConfig,
    params: dict[str, Any],
    lora: dict[str, dict[str, jax.Array]],
    lora_cfg: LoraConfig,
    optimizer: optax.GradientTransformation,
    samples: Sequence[Sequence[int]],
    *,
    grad_accum: int = 1,
) -> tuple[list[float], dict[str, dict[str, jax.Array]]]:
    """Trains the adapter sample by sample (full-sequence autodiff): the co-serving baseline.

    Returns:
        (loss of each sample before its update, final adapter).

    Raises:
        ConfigError: no samples, or a sample that `check_token_samples` refuses (under 2
            tokens, ids outside the vocabulary, floats, a flat list of ids).
    """
    samples = check_token_samples(samples, vocab_size=cfg.vocab_size, min_len=2)
    if not samples:
        raise ConfigError("samples", [], "is empty", "pass at least one sample")
    opt = optax.MultiSteps(optimizer, every_k_schedule=grad_accum)
    state = opt.init(lora)
    grad_fn = jax.jit(jax.value_and_grad(sample_loss_reference, argnums=2), static_argnums=(0, 3))
    pad = max(len(s) for s in samples)  # one compilation for all sample lengths
    losses = []
    for s in samples:
        toks = jnp.asarray(list(s) + [0] * (pad - len(s)), jnp.int32)
        loss, g = grad_fn(cfg, params, lora, lora_cfg, toks, jnp.int32(len(s)))
        upd, state = opt.update(g, state, lora)
        lora = optax.apply_updates(lora, upd)
        losses.append(float(loss))
    return losses, lora
