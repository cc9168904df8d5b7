"""Retained-bytes accounting: explicit co-serving buffers vs jax.vjp residual counting."""

from jgraph.coserve import CoServeConfig, LlamaConfig, LoraConfig
from jgraph.coserve.memory import coserve_backward_bytes, vjp_residual_bytes

LORA = LoraConfig(rank=16, alpha=16.0, targets=("down_proj",))


def test_coserve_buffers_match_the_retention_formula():
    cfg = LlamaConfig.small()
    S = 128
    b = coserve_backward_bytes(cfg, CoServeConfig(ft_max_len=S, bwd_chunk=32), LORA)
    per_layer_token = cfg.d_model + 2 * cfg.kv_dim  # layer input + K + V, float32
    assert b["retained"] == 4 * S * (cfg.n_layers * per_layer_token + cfg.d_model)
    assert b["workspace"] == 4 * S * cfg.n_layers * 2 * cfg.kv_dim


def test_layer_mode_carries_no_dkdv_between_steps():
    cfg, S = LlamaConfig.small(), 128
    tok = coserve_backward_bytes(cfg, CoServeConfig(ft_max_len=S, bwd_chunk=32), LORA)
    lay = coserve_backward_bytes(
        cfg, CoServeConfig(ft_max_len=S, bwd_chunk=32, backward_mode="layer", bwd_layers=2), LORA
    )
    assert lay["retained"] == tok["retained"]  # same forward retention
    assert lay["workspace"] == 0 < tok["workspace"]
    # Inside a step: one layer's dK/dV and the layer-input gradient, all tokens, float32.
    assert lay["in_step"] == 4 * S * (2 * cfg.kv_dim + cfg.d_model)
    assert tok["in_step"] == 4 * 32 * cfg.d_model


def test_vjp_residuals_hold_the_quadratic_attention_term():
    cfg = LlamaConfig.tiny()
    one, two = (vjp_residual_bytes(cfg, LORA, s, trainable="lora") for s in (64, 128))
    # Doubling the sequence more than doubles the residuals: the S x S probabilities.
    assert two > 2.5 * one
    assert vjp_residual_bytes(cfg, LORA, 64, trainable="full") >= one


def test_8b_target_at_4096_tokens():
    """Issue target: >= 8x fewer retained bytes than LoRA autodiff (8B shapes, traced only)."""
    cfg = LlamaConfig.llama31_8b()
    co = coserve_backward_bytes(cfg, CoServeConfig(ft_max_len=4096, bwd_chunk=256), LORA)
    naive = vjp_residual_bytes(cfg, LORA, 4096, trainable="lora")
    assert naive >= 8 * (co["retained"] + co["workspace"])
